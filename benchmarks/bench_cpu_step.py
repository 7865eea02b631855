"""CPU training-step benchmark of the full AdaptiveRec loss against the losses people use today.

Forward + backward of one contrastive step, `(B, D)` views, median over repeats, each point in a
fresh subprocess with a capped address space so that an out-of-memory method fails as such
(instead of taking the machine down) and its peak resident memory is its own.

Methods:
    adaptive       AdaptiveInfoNCE (attract, hard mask, ThresholdNet, its per-step k_stat, L_reg)
    keep           this library's plain InfoNCE (false_negatives="keep")
    lightly        lightly NTXentLoss
    pml            pytorch-metric-learning NTXentLoss
    authors_shape  the authors' released step: per-row Python loop for the soft labels and a full
                   sort of the N(N-2) similarities (see authors_shape.py)

Usage:
    python benchmarks/bench_cpu_step.py                      # B in 256 1024 2048, D = 64
    python benchmarks/bench_cpu_step.py --batch-sizes 256 --methods adaptive lightly
    python benchmarks/bench_cpu_step.py --overhead           # adaptive vs keep, and where the difference goes
                                                             # (with and without the compiled CPU kernel)
    python benchmarks/bench_cpu_step.py --profile --batch-sizes 1024 --rounds 20   # the same, op by op
    python benchmarks/bench_cpu_step.py --overhead --compiled --tag compiled      # with torch.compile cases too
Writes benchmarks/results/cpu_step/{results.json,results.md} (``--overhead``: overhead.{json,md};
``--profile``: overhead_profile.{json,md}).

``--overhead`` runs in one process and interleaves the cases: every round times each case once,
in a rotated order, so that load from other processes hits all cases alike; the medians over
rounds, and the median of the per-round ratios, are reported. Times are the process's CPU time
(one thread), which load from other processes inflates far less than wall time; wall times are
reported beside them. CPU time is split into user time (the arithmetic) and system time, which is
almost all page faults: the first touch of freshly mapped memory. How many faults a case takes
depends on what the allocator kept from the cases before it, so the user-time ratio is the one to
compare across versions; both are reported, with the faults per call. The cases split a step of
`AdaptiveInfoNCE` into its parts: the batch k_stat, the ThresholdNet (forward and backward of its
regulariser), the masked loss with fixed thresholds, and the known-positive labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("adaptive", "keep", "lightly", "pml", "authors_shape")
TEMPERATURE = 0.1
# The address-space cap of each measuring subprocess (bytes).
MEMORY_CAP = 16 * 1024**3


def _build(method: str, dim: int):  # noqa: ANN202 - returns a (z1, z2) -> loss callable
    sys.path.insert(0, str(HERE))
    import baselines

    if method == "adaptive":
        import torch

        from adaptive_contrastive import AdaptiveInfoNCE

        loss_fn = AdaptiveInfoNCE(dim=dim, temperature=TEMPERATURE, warmup_epochs=0, backend="reference")
        loss_fn.train()
        # A "previous epoch" leaves a k̄_stat, so that L_reg runs as in training; the target is then
        # set to 0.1 through the state dict (the module keeps host-side copies of its state in step).
        loss_fn(torch.randn(8, dim), torch.randn(8, dim))
        loss_fn.end_epoch()
        state = loss_fn.state_dict()
        state["k_bar"] = torch.tensor(0.1, dtype=torch.float64)
        loss_fn.load_state_dict(state)
        return loss_fn
    if method == "keep":
        return baselines.make_adaptive("keep", backend="reference", temperature=TEMPERATURE)
    if method == "authors_shape":
        from authors_shape import authors_shape_loss

        return lambda z1, z2: authors_shape_loss(z1, z2, threshold=0.1, temperature=TEMPERATURE)[0]
    builder = {"lightly": baselines.lightly_ntxent, "pml": baselines.pml_ntxent}[method]
    return builder(TEMPERATURE)


def measure_point(method: str, batch: int, dim: int, repeats: int, budget_s: float) -> dict:
    """Time one (method, B, D) point in this process; called inside the capped subprocess."""
    import torch

    torch.manual_seed(0)
    loss_fn = _build(method, dim)
    if loss_fn is None:
        return {"status": "missing package"}
    z1 = torch.randn(batch, dim, requires_grad=True)
    z2 = torch.randn(batch, dim, requires_grad=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss_fn(z1, z2).backward()
        elapsed = time.perf_counter() - start
        z1.grad = z2.grad = None
        if i > 0 or repeats == 0:  # the first call warms up allocator and caches
            times.append(elapsed)
        if time.perf_counter() > deadline and times:
            break
        if i == 0 and elapsed * (repeats + 1) > budget_s:
            times.append(elapsed)  # too slow to repeat: report the single measured call
            break
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "status": "ok",
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "runs": len(times),
        "peak_rss_growth_mb": (rss_after - rss_before) / 1024,
    }


def run_point(method: str, batch: int, dim: int, repeats: int, budget_s: float) -> dict:
    """Measure a point in a subprocess whose address space is capped at MEMORY_CAP."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    cmd = [sys.executable, __file__, "--point", method, str(batch), str(dim), str(repeats), str(budget_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = proc.stderr.strip().splitlines()
    text = err[-1] if err else f"exit code {proc.returncode}"
    oom = "memory" in proc.stderr.lower() or proc.returncode in (-9, 137)
    return {"status": "out of memory" if oom else "error", "detail": text[:200]}


def environment() -> dict:
    import numpy
    import torch

    return {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "memory_cap_gb": MEMORY_CAP / 1024**3,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_markdown(rows: list[dict], env: dict) -> str:
    batches = sorted({r["B"] for r in rows})
    out = [
        f"Forward+backward per step, D = {rows[0]['D']}, float32, τ = {TEMPERATURE}; median ms "
        f"(peak RSS growth MB). {env['cores']} cores ({env['processor']}), torch {env['torch']}.",
        "",
        "| method | " + " | ".join(f"B = {b} (N = {2 * b})" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for b in batches:
            r = next((x for x in rows if x["method"] == method and x["B"] == b), None)
            if r is None:
                cells.append("–")
            elif r["status"] == "ok":
                cells.append(f"{r['median_ms']:.1f} ({r['peak_rss_growth_mb']:.0f})")
            else:
                cells.append(r["status"])
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    ok = {(r["method"], r["B"]): r for r in rows if r["status"] == "ok"}
    out.append("")
    for b in batches:
        a, li, au = ok.get(("adaptive", b)), ok.get(("lightly", b)), ok.get(("authors_shape", b))
        if a and li:
            out.append(f"- B = {b}: adaptive / lightly = {a['median_ms'] / li['median_ms']:.2f}×")
        if a and au:
            out.append(f"- B = {b}: authors' shape / adaptive = {au['median_ms'] / a['median_ms']:.0f}× faster")
    return "\n".join(out) + "\n"


def overhead_cases(batch: int, dim: int, compiled: bool = False) -> dict:  # noqa: ANN201 - name -> zero-argument step
    """The overhead breakdown's cases on one pair of views (reference backend, τ = TEMPERATURE); with
    `compiled`, also `keep` and `adaptive` under ``torch.compile`` (Inductor), on their own modules."""
    import torch

    from adaptive_contrastive import AdaptiveInfoNCE
    from adaptive_contrastive.functional import adaptive_info_nce, k_stat

    torch.manual_seed(0)
    z1 = torch.randn(batch, dim, requires_grad=True)
    z2 = (z1.detach() + torch.randn(batch, dim)).requires_grad_(True)
    adaptive = _build("adaptive", dim)
    keep = AdaptiveInfoNCE(threshold=None, false_negatives="keep", temperature=TEMPERATURE, backend="reference")
    net = adaptive.threshold_net
    k = torch.full((batch,), 0.1)
    labels = torch.arange(batch) // 4  # groups of four sequences share a label
    plain = {"temperature": TEMPERATURE, "backend": "reference"}

    def step(loss: object) -> None:
        loss.backward()  # type: ignore[attr-defined]
        z1.grad = z2.grad = None

    cases = {
        "keep": lambda: step(keep(z1, z2)),
        "adaptive": lambda: step(adaptive(z1, z2)),
        "k_stat": lambda: k_stat(z1.detach(), z2.detach()),
        "threshold_net": lambda: (net(z1.detach()) - 0.1).square().mean().backward(),
        "masked_loss": lambda: step(adaptive_info_nce(z1, z2, k, **plain)),
    }
    # The same two steps with the compiled CPU kernel turned off: the reference backend's PyTorch ops alone.
    cases["keep_pytorch_ops"] = _without_cpu_kernel(cases["keep"])
    cases["adaptive_pytorch_ops"] = _without_cpu_kernel(cases["adaptive"])
    try:
        adaptive_info_nce(z1[:4], z2[:4], k[:4], labels=labels[:4], **plain)
        cases["masked_loss_labels"] = lambda: step(adaptive_info_nce(z1, z2, k, labels=labels, **plain))
    except TypeError:  # a version without known positives
        pass
    if compiled:
        keep_c = torch.compile(
            AdaptiveInfoNCE(threshold=None, false_negatives="keep", temperature=TEMPERATURE, backend="reference")
        )
        adaptive_c = torch.compile(_build("adaptive", dim))
        cases["keep_compiled"] = lambda: step(keep_c(z1, z2))
        cases["adaptive_compiled"] = lambda: step(adaptive_c(z1, z2))
    return cases


def _without_cpu_kernel(step):  # noqa: ANN001, ANN202 - a zero-argument step in, one out
    """`step` with ADAPTIVE_CONTRASTIVE_CPU_KERNEL=0 for its duration."""

    def run() -> None:
        previous = os.environ.get("ADAPTIVE_CONTRASTIVE_CPU_KERNEL")
        os.environ["ADAPTIVE_CONTRASTIVE_CPU_KERNEL"] = "0"
        try:
            step()
        finally:
            if previous is None:
                del os.environ["ADAPTIVE_CONTRASTIVE_CPU_KERNEL"]
            else:
                os.environ["ADAPTIVE_CONTRASTIVE_CPU_KERNEL"] = previous

    return run


def measure_overhead(batch: int, dim: int, rounds: int, threads: int, compiled: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    cases = overhead_cases(batch, dim, compiled)
    names = list(cases)
    for fn in cases.values():  # warm-up (and compilation)
        fn()
    samples: dict[str, dict[str, list[float]]] = {
        name: {"cpu": [], "user": [], "system": [], "wall": [], "faults": []} for name in names
    }
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            cases[name]()
            wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            for key, value in (("cpu", user + system), ("user", user), ("system", system), ("wall", wall)):
                samples[name][key].append(value)
            samples[name]["faults"].append(after.ru_minflt - before.ru_minflt)

    def median_ms(key: str) -> dict[str, float]:
        return {name: 1e3 * statistics.median(s[key]) for name, s in samples.items()}

    def ratio(a: str, b: str, key: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a][key], samples[b][key], strict=True))

    pairs = [("adaptive", "keep")]
    if "adaptive_pytorch_ops" in samples:
        pairs += [("adaptive_pytorch_ops", "keep_pytorch_ops"), ("adaptive", "adaptive_pytorch_ops"),
                  ("keep", "keep_pytorch_ops")]  # fmt: skip
    ratios = {f"{a} / {b}": ratio(a, b, "cpu") for a, b in pairs}
    user_ratios = {f"{a} / {b}": ratio(a, b, "user") for a, b in pairs}
    if "masked_loss_labels" in samples:
        ratios["labels / no labels"] = ratio("masked_loss_labels", "masked_loss", "cpu")
        user_ratios["labels / no labels"] = ratio("masked_loss_labels", "masked_loss", "user")
    if "adaptive_compiled" in samples:
        for pair in (
            ("adaptive_compiled", "keep_compiled"),
            ("keep_compiled", "keep"),
            ("adaptive_compiled", "adaptive"),
        ):
            ratios[" / ".join(pair)] = ratio(*pair, "cpu")
            user_ratios[" / ".join(pair)] = ratio(*pair, "user")
    return {
        "B": batch,
        "D": dim,
        "threads": threads,
        "rounds": rounds,
        "median_ms": median_ms("cpu"),
        "median_user_ms": median_ms("user"),
        "median_system_ms": median_ms("system"),
        "median_wall_ms": median_ms("wall"),
        "median_page_faults": {name: statistics.median(s["faults"]) for name, s in samples.items()},
        "ratios": ratios,
        "user_ratios": user_ratios,
    }


def profile_overhead(batch: int, dim: int, steps: int, threads: int) -> list[dict]:
    """Self CPU time per step of every aten op in a `keep` and an `adaptive` step (torch.profiler), so
    that the difference between the two shows which passes the threshold machinery adds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    cases = overhead_cases(batch, dim)
    per_op: dict[str, dict[str, tuple[float, float]]] = {}
    for name in ("keep", "adaptive"):
        for _ in range(3):  # warm-up
            cases[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                cases[name]()
        for event in prof.key_averages():
            if event.key.startswith(("aten::", "adaptive_contrastive::")):
                ms = event.self_cpu_time_total / 1e3 / steps
                per_op.setdefault(event.key, {})[name] = (event.count / steps, ms)
    rows = []
    for op, by_case in per_op.items():
        keep_calls, keep_ms = by_case.get("keep", (0.0, 0.0))
        calls, ms = by_case.get("adaptive", (0.0, 0.0))
        row = {"op": op, "keep_calls": keep_calls, "keep_ms": keep_ms, "adaptive_calls": calls, "adaptive_ms": ms}
        rows.append(row)
    return sorted(rows, key=lambda r: r["keep_ms"] - r["adaptive_ms"])


def profile_markdown(rows: list[dict], batch: int, dim: int, steps: int, env: dict) -> str:
    keep_total = sum(r["keep_ms"] for r in rows)
    adaptive_total = sum(r["adaptive_ms"] for r in rows)
    lines = [
        f"Self CPU ms per step of each aten op and of the compiled CPU kernel (torch.profiler, {steps} steps after 3 "
        "warm-up ones, which the "
        f"profiler itself slows down), B = {batch}, D = {dim}, τ = {TEMPERATURE}, 1 thread; torch {env['torch']}, "
        f"{env['processor']}. Ops whose difference is under 0.05 ms are left out.",
        "",
        "| op | keep: calls | keep: ms | adaptive: calls | adaptive: ms | difference ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = r["adaptive_ms"] - r["keep_ms"]
        if abs(diff) >= 0.05:
            lines.append(
                f"| {r['op']} | {r['keep_calls']:.0f} | {r['keep_ms']:.2f} | {r['adaptive_calls']:.0f} "
                f"| {r['adaptive_ms']:.2f} | {diff:+.2f} |"
            )
    lines += ["", f"Total self time of these ops: keep {keep_total:.1f} ms, adaptive {adaptive_total:.1f} ms."]
    return "\n".join(lines) + "\n"


def overhead_markdown(result: dict, env: dict) -> str:
    lines = [
        f"B = {result['B']}, D = {result['D']}, τ = {TEMPERATURE}, float32, {result['threads']} thread(s), "
        f"{result['rounds']} interleaved rounds; torch {env['torch']}, {env['processor']}.",
        "",
        "| case | CPU ms | user ms | system ms | page faults | wall ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {ms:.1f} | {result['median_user_ms'][name]:.1f} | {result['median_system_ms'][name]:.1f} "
            f"| {result['median_page_faults'][name]:.0f} | {result['median_wall_ms'][name]:.1f} |"
            for name, ms in result["median_ms"].items()
        ),
        "",
        "Medians over rounds; CPU = user + system.",
        "",
        *(
            f"- {name}: {value:.2f}× CPU time, {result['user_ratios'][name]:.2f}× user time "
            "(medians of per-round ratios)"
            for name, value in result["ratios"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=30.0, help="time budget per point")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_step")
    parser.add_argument("--point", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--overhead", action="store_true", help="interleaved adaptive-vs-keep breakdown instead")
    parser.add_argument(
        "--profile", action="store_true", help="per-op profile of a keep and an adaptive step (overhead_profile.*)"
    )
    parser.add_argument(
        "--compiled", action="store_true", help="--overhead: also keep and adaptive under torch.compile (Inductor)"
    )
    parser.add_argument("--rounds", type=int, default=40, help="--overhead: interleaved rounds; --profile: steps")
    parser.add_argument("--threads", type=int, default=1, help="--overhead: torch threads")
    parser.add_argument("--tag", default="", help="--overhead: suffix of the output files (e.g. before)")
    args = parser.parse_args()

    if args.profile:
        env = environment()
        rows = profile_overhead(args.batch_sizes[0], args.dim, args.rounds, args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "command": " ".join(sys.argv), "steps": args.rounds, "ops": rows}
        (args.out / "overhead_profile.json").write_text(json.dumps(payload, indent=2))
        table = profile_markdown(rows, args.batch_sizes[0], args.dim, args.rounds, env)
        (args.out / "overhead_profile.md").write_text(table)
        print(table)
        return

    if args.overhead:
        env = environment()
        result = measure_overhead(args.batch_sizes[0], args.dim, args.rounds, args.threads, args.compiled)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "overhead" + (f"_{args.tag}" if args.tag else "")
        payload = {"environment": env, "command": " ".join(sys.argv), **result}
        (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
        table = overhead_markdown(result, env)
        (args.out / f"{stem}.md").write_text(table)
        print(table)
        return

    if args.point:
        method, batch, dim, repeats, budget = args.point
        print(json.dumps(measure_point(method, int(batch), int(dim), int(repeats), float(budget))))
        return

    env = environment()
    rows: list[dict] = []
    failed: set[str] = set()
    for batch in args.batch_sizes:
        for method in args.methods:
            if method in failed:
                result = {"status": "skipped (failed at a smaller B)"}
            else:
                result = run_point(method, batch, args.dim, args.repeats, args.budget_s)
            if result["status"] not in ("ok", "missing package"):
                failed.add(method)
            row = {"method": method, "B": batch, "N": 2 * batch, "D": args.dim, **result}
            rows.append(row)
            shown = f"{row['median_ms']:.1f} ms" if row["status"] == "ok" else row["status"]
            print(f"B={batch:5d} {method:>14}: {shown}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"environment": env, "command": " ".join(sys.argv), "rows": rows}, indent=2)
    )
    table = to_markdown(rows, env)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
