"""Forward+backward time and peak memory of the fused loss and its baselines, over N and D.

One command on CPU or CUDA. N is the number of rows of Z = cat(z1, z2) (B = N/2 per view);
every method gets the same random float `(B, D)` views, the same temperature and computes
loss.backward() through z1 and z2. Methods (see baselines.py for what each scores):

    triton_attract    adaptive_info_nce(false_negatives="attract", backend="triton")
    triton_keep       plain InfoNCE / NT-Xent through the same kernel (false_negatives="keep")
    triton_attract_labels     attract with known positives too (labels: groups of 4 sequences)
    reference_attract adaptive_info_nce(false_negatives="attract", backend="reference")
    reference_attract_labels  the same with labels on the reference backend
    pml, lightly, info_nce, inf_cl   third-party losses (each skipped when not installed)

Timing: CUDA uses `triton.testing.do_bench` (median, 20th and 80th percentiles) for calls under
0.2 s and `--repeats` timed calls above that; CPU times `--repeats` calls after one warm-up.

Peak memory:
    CUDA: torch.cuda.max_memory_allocated during one forward+backward, minus the memory allocated
        before it (the inputs): what the loss itself needs, gradients included.
    CPU: each (method, N, D) point runs in a fresh subprocess; peak = growth of the process's
        peak resident set (getrusage ru_maxrss) over one forward+backward, measured after the
        inputs exist and after a tiny warm-up call. Large blocks are mmap'ed and returned on
        free, so this tracks the live peak; it includes allocator and library overheads.

A method that runs out of memory (or exceeds --max-seconds per call) is recorded as such and not
run at larger N. Results are written after every point, so an interrupted run keeps what it did:
bench_loss.json (long format), bench_loss.md, bench_loss.png in --out.

Examples:
    python benchmarks/bench_loss.py --device cpu --quick --interpret --out benchmarks/results/cpu
    python benchmarks/bench_loss.py --device cuda --dims 128 --out gpu_results
    python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --dims 128 --out gpu_results/bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

METHODS = (
    "triton_attract",
    "triton_keep",
    "triton_attract_labels",
    "reference_attract",
    "reference_attract_labels",
    "pml",
    "lightly",
    "info_nce",
    "inf_cl",
)
GPU_SIZES = [512 * 2**i for i in range(10)]  # 512 .. 262144
CPU_SIZES = [512 * 2**i for i in range(5)]  # 512 .. 8192
DTYPES = ("float32", "bfloat16", "float16")
# Pairs each method scores, as a fraction of N² (info-nce-pytorch is one-directional B×B).
PAIR_FRACTION = {"info_nce": 0.25}


# ---------------------------------------------------------------------------------------------
# Building a method


def build_method(name: str, device: str) -> Callable[[Any, Any], Any] | None:
    """The loss callable of `name`, or None when it cannot run on `device` here."""
    import baselines

    if name.startswith(("triton_", "reference_")):
        backend, mode = name.split("_", 1)
        if backend == "triton":
            import torch

            from adaptive_contrastive.functional import triton_unavailable_reason

            if triton_unavailable_reason(torch.device(device)) is not None:
                return None
        mode, _, labels = mode.partition("_")
        return baselines.make_adaptive(mode, backend=backend, labels=labels == "labels")
    builder = baselines.BASELINES.get(name)
    if builder is None:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    fn = builder()
    if name == "inf_cl" and device != "cuda":
        return None
    return fn


def make_inputs(n: int, d: int, dtype: str, device: str, seed: int = 0) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    b = n // 2
    z1 = torch.randn(b, d, generator=gen).to(device=device, dtype=getattr(torch, dtype)).requires_grad_()
    z2 = torch.randn(b, d, generator=gen).to(device=device, dtype=getattr(torch, dtype)).requires_grad_()
    return z1, z2


def step_fn(fn: Callable[[Any, Any], Any], z1: Any, z2: Any) -> Callable[[], None]:
    def step() -> None:
        z1.grad = None
        z2.grad = None
        fn(z1, z2).backward()

    return step


def quantiles_ms(samples_s: list[float]) -> tuple[float, float, float]:
    ms = sorted(1e3 * s for s in samples_s)
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    cuts = statistics.quantiles(ms, n=10, method="inclusive")
    return statistics.median(ms), cuts[1], cuts[7]


# ---------------------------------------------------------------------------------------------
# One point on CUDA (in process)


def measure_cuda(fn: Callable[[Any, Any], Any], n: int, d: int, dtype: str, repeats: int) -> dict[str, Any]:
    import gc

    import torch
    import triton

    gc.collect()
    torch.cuda.empty_cache()
    z1, z2 = make_inputs(n, d, dtype, "cuda")
    step = step_fn(fn, z1, z2)
    try:
        step()  # compile, autotune, lazy initialisation
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
        once_s = start.elapsed_time(stop) / 1e3
        if once_s < 0.2:
            median, p20, p80 = triton.testing.do_bench(step, quantiles=[0.5, 0.2, 0.8], grad_to_none=[z1, z2])
        else:
            samples = [once_s]
            for _ in range(max(repeats - 1, 0)):
                start.record()
                step()
                stop.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(stop) / 1e3)
            median, p20, p80 = quantiles_ms(samples)
        return {"status": "ok", "median_ms": median, "p20_ms": p20, "p80_ms": p80, "peak_mb": peak_mb}
    except torch.cuda.OutOfMemoryError:
        return {"status": "oom"}
    except Exception as err:  # a baseline failing at some shape must not end the sweep
        message = str(err).splitlines()[0][:160] if str(err) else ""
        if "out of memory" in str(err).lower():
            return {"status": "oom"}
        return {"status": f"error: {type(err).__name__}: {message}"}
    finally:
        del z1, z2, step
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# One point on CPU (in a fresh subprocess, for an honest peak RSS)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: warm up on a tiny input, then one measured call and `repeats` timed ones."""
    if spec["interpret"]:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    torch.set_num_threads(spec["threads"])
    fn = build_method(spec["method"], "cpu")
    if fn is None:
        return {"status": "skipped: not available"}
    if spec["method"].startswith("triton_"):
        from adaptive_contrastive.kernels import masked_info_nce

        # The interpreter pays per tile, not per element: big tiles make it ~16x faster than the
        # tests' 16-wide ones.
        masked_info_nce.FIXED_CONFIG.update(BLOCK_M=64, BLOCK_N=64)
    tiny1, tiny2 = make_inputs(8, spec["D"], spec["dtype"], "cpu", seed=1)
    step_fn(fn, tiny1, tiny2)()
    z1, z2 = make_inputs(spec["N"], spec["D"], spec["dtype"], "cpu")
    step = step_fn(fn, z1, z2)
    try:
        base = _maxrss_mb()
        t0 = time.perf_counter()
        step()
        first_s = time.perf_counter() - t0
        peak_mb = _maxrss_mb() - base
        samples: list[float] = []
        for _ in range(spec["repeats"]):
            if sum(samples) + first_s > spec["max_seconds"]:
                break
            t0 = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
        median, p20, p80 = quantiles_ms(samples or [first_s])
    except (MemoryError, RuntimeError) as err:
        if "memory" in str(err).lower() or isinstance(err, MemoryError):
            return {"status": "oom"}
        raise
    del torch
    return {"status": "ok", "median_ms": median, "p20_ms": p20, "p80_ms": p80, "peak_mb": peak_mb}


def measure_cpu(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout_s:.0f} s)"}
    if proc.returncode != 0:
        if proc.returncode in (-9, 137):  # killed by the kernel's OOM killer
            return {"status": "oom"}
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"error: {tail[0][:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Environment and outputs


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "triton", "pytorch-metric-learning", "lightly", "info-nce-pytorch", "inf-cl"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def device_name(device: str, interpret: bool) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def write_outputs(records: list[dict[str, Any]], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_loss.json").write_text(json.dumps(records, indent=1))
    (out / "bench_loss.md").write_text(markdown_table(records, title))
    if records:
        plot(records, out / "bench_loss.png", title)


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _cell(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "—"
    if rec["status"] != "ok":
        return rec["status"].split(":")[0]
    spread = f" [{_num(rec['p20_ms'])}–{_num(rec['p80_ms'])}]" if rec["p80_ms"] > rec["p20_ms"] else ""
    return f"{_num(rec['median_ms'])} ms{spread} · {_num(rec['peak_mb'])} MB"


def _label(method: str, records: list[dict[str, Any]]) -> str:
    interpreted = method.startswith("triton_") and "interpreter" in records[0]["device_name"]
    return f"{method} (interpreter)" if interpreted else method


def markdown_table(records: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", ""]
    if not records:
        return "\n".join(lines + ["(no results)", ""])
    first = records[0]
    lines += [
        f"Device: {first['device_name']} · dtype {first['dtype']} · "
        + ", ".join(f"{k} {v}" for k, v in first["versions"].items()),
        "",
        (f"CPU threads per measurement: {first['cpu_threads']}. " if first.get("cpu_threads") else "")
        + "Cells: median forward+backward time [20th–80th percentile] · peak extra memory. "
        "`oom`: out of memory; `skipped`: not run (after an OOM/timeout at smaller N, or unavailable). "
        "info_nce scores N²/4 pairs (z1 against z2 only), every other method N².",
        "",
    ]
    if "interpreter" in first["device_name"]:
        lines += [
            "triton_* rows on CPU run in Triton's interpreter (numpy emulation of the kernels): they show the",
            "kernels run and their memory stays flat, not how fast they are. Their peak is the process's RSS",
            "growth, which the interpreter's small tiles keep under the measurement's resolution.",
            "",
        ]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    for d in sorted({r["D"] for r in records}):
        lines += [f"**D = {d}**", "", "| N | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for n in sorted({r["N"] for r in records if r["D"] == d}):
            by_method = {r["method"]: r for r in records if r["D"] == d and r["N"] == n}
            lines.append(f"| {n} | " + " | ".join(_cell(by_method.get(m)) for m in methods) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["D"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m and r["status"] == "ok" for r in records)]
    fig, axes = plt.subplots(2, len(dims), figsize=(5 * len(dims), 8), squeeze=False)
    styles = {m: (f"C{i}", "o" if m.startswith(("triton", "reference")) else "s") for i, m in enumerate(METHODS)}
    for col, d in enumerate(dims):
        for row, (key, label) in enumerate((("median_ms", "fwd+bwd time (ms)"), ("peak_mb", "peak extra memory (MB)"))):
            ax = axes[row][col]
            for m in methods:
                pts = sorted(
                    (r["N"], r[key]) for r in records if r["method"] == m and r["D"] == d and r["status"] == "ok"
                )
                pts = [(n, v) for n, v in pts if v > 0]
                if pts:
                    color, marker = styles[m]
                    name = _label(m, records)
                    face = "none" if name != m else color  # hollow: interpreted, not a performance figure
                    ax.plot(*zip(*pts, strict=True), marker=marker, color=color, mfc=face, label=name, lw=1.5, ms=5)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (rows of cat(z1, z2))")
            ax.set_ylabel(label)
            ax.set_title(f"D = {d}")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The sweep


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = args.device
    out = Path(args.out)
    meta = {
        "device": device,
        "device_name": device_name(device, args.interpret) + (" · Triton interpreter" if args.interpret else ""),
        "dtype": args.dtype,
        "versions": versions(),
        "tf32": bool(args.tf32),
        "cpu_threads": args.threads if device == "cpu" else None,
    }
    title = f"bench_loss.py on {meta['device_name']}"
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget_s if args.budget_s else math.inf
    if device == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    # N on the outer loop: a run cut short by its budget still has every method at the small sizes.
    fns: dict[str, Any] = {}
    stop: dict[tuple[str, int], str] = {}
    for method in args.methods:
        fns[method] = build_method(method, device) if device == "cuda" else None
        unavailable = device == "cuda" and fns[method] is None
        if device == "cpu" and not args.interpret and method.startswith("triton_"):
            unavailable = True  # compiled Triton needs CUDA; the interpreter is opt-in (--interpret)
        if device == "cpu" and method == "inf_cl":
            unavailable = True
        for d in args.dims:
            stop[(method, d)] = "skipped: not available" if unavailable else ""
    for n in args.sizes:
        for d in args.dims:
            for method in args.methods:
                rec = {"method": method, "N": n, "D": d, **meta, "pairs": int(n * n * PAIR_FRACTION.get(method, 1.0))}
                if not stop[(method, d)] and time.monotonic() > deadline:
                    stop[(method, d)] = "skipped: time budget"
                if (
                    not stop[(method, d)]
                    and device == "cpu"
                    and method.startswith("triton_")
                    and n > args.interpret_max_n
                ):
                    stop[(method, d)] = f"skipped: interpreter only up to N={args.interpret_max_n}"
                if stop[(method, d)]:
                    result: dict[str, Any] = {"status": stop[(method, d)]}
                elif device == "cuda":
                    result = measure_cuda(fns[method], n, d, args.dtype, args.repeats)
                else:
                    spec = {
                        "method": method,
                        "N": n,
                        "D": d,
                        "dtype": args.dtype,
                        "repeats": args.repeats,
                        "interpret": args.interpret,
                        "max_seconds": args.max_seconds,
                        "threads": args.threads,
                    }
                    result = measure_cpu(spec, timeout_s=max(60.0, 4 * args.max_seconds))
                rec.update(result)
                records.append(rec)
                if result["status"] == "oom":
                    stop[(method, d)] = f"skipped: OOM at N={n}"
                elif result["status"].startswith(("timeout", "error")):
                    stop[(method, d)] = f"skipped: {result['status'].split(' ')[0]} at N={n}"
                elif result["status"] == "ok" and 4 * result["median_ms"] > 1e3 * args.max_seconds:
                    # Doubling N at least quadruples the work of every method here.
                    stop[(method, d)] = f"skipped: next N projected > {args.max_seconds:g} s per call"
                if not result["status"].startswith("skipped"):
                    print(f"[{method:>24}] D={d:<4} N={n:<7} {_cell(rec)}", flush=True)
                write_outputs(records, out, title)
    return records


# ---------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument(
        "--sizes", type=_ints, default=None, help="comma-separated N (default: 512..262144 on GPU, 512..8192 on CPU)"
    )
    parser.add_argument("--dims", type=_ints, default=None, help="comma-separated D (default 64,128,256)")
    parser.add_argument(
        "--methods",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(METHODS),
        help=f"comma-separated, from {','.join(METHODS)}",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--out", default="benchmarks/results/latest", help="output folder")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point on CPU / slow GPU points")
    parser.add_argument("--quick", action="store_true", help="a small grid (CPU: N 512..4096, D 64,128)")
    parser.add_argument(
        "--interpret", action="store_true", help="CPU only: run the Triton methods in the interpreter (tiny N)"
    )
    parser.add_argument("--interpret-max-n", type=int, default=512, help="largest N for interpreted Triton")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU: torch threads per point (1 by default: on a shared machine, spinning OpenMP\n"
        "threads of a busy 2-core box made calls 10-40x slower and the numbers meaningless)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="stop growing N for a method once the next call is projected above this",
    )
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="skip remaining points after this many seconds (0: none)"
    )
    parser.add_argument(
        "--tf32", action="store_true", help="CUDA: allow TF32 matmuls for every method (and the kernel)"
    )
    parser.add_argument("--from-json", help="only rebuild the table and plot of an earlier bench_loss.json into --out")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.sizes is None:
        if args.quick:
            args.sizes = [512, 1024, 2048, 4096] if args.device == "cpu" else [512 * 2**i for i in range(6)]
        else:
            args.sizes = GPU_SIZES if args.device == "cuda" else CPU_SIZES
    if args.dims is None:
        args.dims = [64, 128] if args.quick else [64, 128, 256]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.interpret and args.device != "cpu":
        parser.error("--interpret is for --device cpu")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(worker(json.loads(argv[1]))))
        return
    args = parse_args(argv)
    if args.from_json:
        records = json.loads(Path(args.from_json).read_text())
        write_outputs(records, Path(args.out), f"bench_loss.py on {records[0]['device_name']}")
        return
    started = time.monotonic()
    records = sweep(args)
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok}/{len(records)} points measured in {time.monotonic() - started:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
