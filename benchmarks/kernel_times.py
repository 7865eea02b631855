"""Kernel by kernel: the fused loss's forward, dQ and dK times at one size, against the reference and inf-cl.

For each variant (input dtype and mode), the three kernels are timed separately with
`triton.testing.do_bench` (median and 20th/80th percentiles, ms) on the launches the autograd
Function would make, then one forward+backward through the public API gives the end-to-end time
and the peak memory it allocates beyond its inputs. The reference backend and inf-cl (when
importable) run the same forward+backward on the same views. Every point is appended to
``kernel_times.json`` as soon as it is measured; ``kernel_times.md`` holds the table and the goals.

Variants are named ``<dtype>-<mode>``: dtype float32 (3xTF32), float32-tf32, float32-ieee,
bfloat16, float16; mode attract-hard, attract-soft, keep, attract-labels (known positives: groups
of 4 sequences share a label).

Usage:
    python benchmarks/kernel_times.py --n 16384 --d 128 --out gpu_results/n16384
    python benchmarks/kernel_times.py --device cpu --interpret --n 64 --d 16 --out /tmp/kt   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# In the order they run: the first two variants, the baselines, then the other variants.
VARIANTS = (
    "bfloat16-attract-hard",
    "float32-attract-hard",
    "float32-tf32-attract-hard",
    "bfloat16-attract-labels",
    "float16-attract-hard",
    "bfloat16-keep",
    "bfloat16-attract-soft",
    "float32-attract-soft",
)
BASELINES = ("reference-float32", "inf_cl-bfloat16", "inf_cl-float32", "reference-float32-tf32")
TEMPERATURE = 0.1
THRESHOLD = 0.1
LABEL_GROUP = 4


def parse_variant(name: str) -> tuple[str, str, str]:
    """(dtype, precision or "", mode) of a variant name such as float32-tf32-attract-hard."""
    parts = name.split("-")
    dtype = parts.pop(0)
    precision = parts.pop(0) if parts and parts[0] in ("tf32", "ieee", "3xtf32") else ""
    return dtype, precision, "-".join(parts)


class Timer:
    """do_bench on CUDA (median, p20, p80 in ms); on CPU (the dry run) `repeats` timed calls, no warm-up."""

    def __init__(self, device: str, repeats: int = 1) -> None:
        self.device = device
        self.repeats = repeats

    def __call__(self, fn: Callable[[], Any]) -> dict[str, float]:
        if self.device == "cuda":
            import triton

            median, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
        samples = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - started))
        samples.sort()
        return {"median_ms": samples[len(samples) // 2], "p20_ms": samples[0], "p80_ms": samples[-1]}


def views(n: int, d: int, dtype: Any, device: str) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(n // 2, d, generator=gen).to(device=device, dtype=dtype)
    z2 = (z1.float() + 0.5 * torch.randn(n // 2, d, generator=gen).to(device)).to(dtype)
    return z1, z2


def peak_and_time(step: Callable[[], Any], device: str, timer: Timer) -> dict[str, Any]:
    """Peak extra memory of one call (CUDA), then its time."""
    import torch

    result: dict[str, Any] = {}
    try:
        if device == "cuda":
            step()  # compile, lazy initialisation
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            result["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        result.update(timer(step))
        result["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        result["status"] = "oom"
    except Exception as err:  # a baseline failing must not end the run
        result["status"] = "oom" if "out of memory" in str(err).lower() else f"error: {type(err).__name__}: {err}"[:300]
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


def set_precision(precision: str) -> None:
    from adaptive_contrastive.kernels import set_fp32_precision

    set_fp32_precision(precision or None)


def fused_points(variant: str, n: int, d: int, device: str, timer: Timer) -> list[dict[str, Any]]:
    """fwd, dQ, dK kernel times of one variant, then its forward+backward through the public API."""
    import torch

    from adaptive_contrastive.functional import adaptive_info_nce, embed
    from adaptive_contrastive.kernels import masked_info_nce as kernel_module
    from adaptive_contrastive.reference import LossSettings

    dtype_name, precision, mode = parse_variant(variant)
    dtype = getattr(torch, dtype_name)
    set_precision((precision or "3xtf32") if dtype == torch.float32 else "")
    fn, _, mask = mode.partition("-")
    labelled = mask == "labels"
    settings = LossSettings(TEMPERATURE, fn, 0.5, "hard" if labelled or not mask else mask, 0.05)
    z1, z2 = views(n, d, dtype, device)
    q = torch.cat([embed(z1, "cos", keep_half=True), embed(z2, "cos", keep_half=True)]).detach()
    rows = torch.arange(n, device=device)
    thresholds = torch.full((n,), THRESHOLD, device=device) if settings.uses_threshold else None
    labels = (rows % (n // 2)) // LABEL_GROUP if labelled else None
    records: list[dict[str, Any]] = []
    common = {"method": "triton", "variant": variant, "N": n, "D": d}
    try:
        call = kernel_module.FusedCall.prepare(q, q, thresholds, (rows + n // 2) % n, rows, settings, labels, labels)
        forward = call.forward()
        records.append({**common, "kernel": "fwd", **timer(forward.run), "status": "ok"})
        g = torch.full((n,), 1.0 / n, device=device)
        (dq, dk), *_ = call.backward(g)
        records.append({**common, "kernel": "bwd_dq", **timer(dq.run), "status": "ok"})
        records.append({**common, "kernel": "bwd_dk", **timer(dk.run), "status": "ok"})
        del call, forward, dq, dk
    except Exception as err:
        records.append({**common, "kernel": "fwd", "status": f"error: {type(err).__name__}: {err}"[:300]})
        return records
    z1.requires_grad_()
    z2.requires_grad_()
    extra = {"labels": torch.arange(n // 2, device=device) // LABEL_GROUP} if labelled else {}

    def step() -> None:
        z1.grad = z2.grad = None
        adaptive_info_nce(
            z1, z2, THRESHOLD if settings.uses_threshold else None, temperature=TEMPERATURE,
            false_negatives=fn, mask=settings.mask, backend="triton", **extra,
        ).backward()  # fmt: skip

    records.append({**common, "kernel": "fwd+bwd", **peak_and_time(step, device, timer)})
    return records


def baseline_points(name: str, n: int, d: int, device: str, timer: Timer) -> list[dict[str, Any]]:
    """Forward+backward of the reference backend (attract, hard) or inf-cl (plain InfoNCE)."""
    import baselines
    import torch

    method, _, dtype_part = name.partition("-")
    dtype_name, _, precision = dtype_part.partition("-")
    dtype = getattr(torch, dtype_name)
    common = {"method": method, "variant": dtype_part, "N": n, "D": d, "kernel": "fwd+bwd"}
    if method == "inf_cl":
        loss = baselines.inf_cl(TEMPERATURE) if device == "cuda" else None
        if loss is None:
            return [{**common, "status": "skipped: inf-cl not importable (or no CUDA)"}]
    else:
        loss = baselines.make_adaptive("attract", backend="reference", temperature=TEMPERATURE, threshold=THRESHOLD)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        z1, z2 = views(n, d, dtype, device)
        z1.requires_grad_()
        z2.requires_grad_()

        def step() -> None:
            z1.grad = z2.grad = None
            loss(z1, z2).backward()

        return [{**common, **peak_and_time(step, device, timer)}]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def goals(records: list[dict[str, Any]], n: int) -> list[str]:
    """The acceptance ratios of the fused loss at this size (information, no pass/fail here)."""

    def point(method: str, variant: str) -> dict[str, Any] | None:
        for r in records:
            if r["method"] == method and r["variant"] == variant and r["kernel"] == "fwd+bwd" and r["status"] == "ok":
                return r
        return None

    lines = []
    t32, t32_tf32, bf16 = "float32-attract-hard", "float32-tf32-attract-hard", "bfloat16-attract-hard"
    pairs = [
        ("reference (float32, IEEE) / triton (float32, 3xTF32) time", ("reference", "float32"), ("triton", t32)),
        ("reference / triton time, both TF32 (float32)", ("reference", "float32-tf32"), ("triton", t32_tf32)),
        ("reference (float32) / triton (bfloat16) time", ("reference", "float32"), ("triton", bf16)),
        ("triton / reference peak memory (float32)", ("triton", t32), ("reference", "float32")),
        ("triton (float32, TF32) / inf-cl (float32) time", ("triton", t32_tf32), ("inf_cl", "float32")),
        ("triton (bfloat16) / inf-cl (bfloat16) time", ("triton", bf16), ("inf_cl", "bfloat16")),
    ]
    for label, top, bottom in pairs:
        field = "peak_mb" if "memory" in label else "median_ms"
        a, b = point(*top), point(*bottom)
        if a and b and a.get(field) and b.get(field):
            lines.append(f"| {label} | {a[field] / b[field]:.3g} |")
        else:
            lines.append(f"| {label} | n/a |")
    return [f"Ratios at N = {n}:", "", "| ratio | value |", "|---|---|", *lines]


def markdown(records: list[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "", "| method | variant | kernel | median ms [p20–p80] | peak MB | status |"]
    lines.append("|---|---|---|---|---|---|")
    for r in records:
        time_cell = ""
        if "median_ms" in r:
            time_cell = f"{r['median_ms']:.4g} [{r['p20_ms']:.4g}–{r['p80_ms']:.4g}]"
        peak = f"{r['peak_mb']:.1f}" if "peak_mb" in r else ""
        lines.append(f"| {r['method']} | {r['variant']} | {r['kernel']} | {time_cell} | {peak} | {r['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--interpret", action="store_true", help="CPU: run the kernels in Triton's interpreter")
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--out", default="gpu_results/kernel_times")
    args = parser.parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton
    import torch

    sys.path.insert(0, str(HERE.parent))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(args.device)
    meta = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    if args.device == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
    records: list[dict[str, Any]] = []
    title = f"kernel_times.py, N = {args.n}, D = {args.d}, {meta.get('device_name', args.device)}"

    def save() -> None:
        (out / "kernel_times.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
        (out / "kernel_times.md").write_text(
            markdown(records, title) + "\n\n" + "\n".join(goals(records, args.n)) + "\n"
        )

    # The headline comparisons first (a run cut short by its timeout keeps them), then the rest.
    variants = [v for v in args.variants.split(",") if v]
    baselines = [b for b in args.baselines.split(",") if b]
    jobs: list[tuple[Callable[..., list[dict[str, Any]]], str]] = [(fused_points, v) for v in variants[:2]]
    jobs += [(baseline_points, b) for b in baselines] + [(fused_points, v) for v in variants[2:]]
    for job, name in jobs:
        started = time.monotonic()
        for record in job(name, args.n, args.d, args.device, timer):
            record["wall_s"] = round(time.monotonic() - started, 2)
            records.append(record)
            cell = f"{record['median_ms']:.4g} ms" if "median_ms" in record else record["status"]
            print(f"[{record['method']:>9}] {record['variant']:>26} {record['kernel']:>8}: {cell}", flush=True)
            save()


if __name__ == "__main__":
    main()
