"""The first minute of a GPU run: the fused kernels against float64, per dtype and mask.

For each dtype (float32 as 3xTF32, TF32 and IEEE; bfloat16; float16) and mask (hard, soft), one
``attract`` call of N rows against N columns of width D: row losses, F, dQ, dK and (soft mask)
dt against the float64 reference backend on the same (rounded) inputs, as norm-relative errors
‖got − want‖ / ‖want‖, with the upstream gradient of a mean (1/N). The kernels run with their
default tiles (no tuning). Every point is written as soon as it is measured
(``check_<dtype>.jsonl``, merged into ``check.json`` at the end); the exit status is 1 when a point
misses its tolerance, 2 when a point failed to run.

Each dtype runs in its own process, so their kernels compile in parallel; N divisible by 16 and
D = 128 give the kernels the same specialisation as the timing steps at N = 16384, so Triton's
disk cache serves those afterwards.

Usage:
    python benchmarks/gpu_check.py --out gpu_results                      # CUDA
    python benchmarks/gpu_check.py --device cpu --interpret --n 40 --d 16 --out /tmp/check   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DTYPES = ("float32", "float32-tf32", "float32-ieee", "bfloat16", "float16")
# Norm-relative tolerance against float64, per dtype (float32: per tensor-core precision).
TOLERANCE = {"float32": 1e-5, "float32-tf32": 1e-2, "float32-ieee": 1e-5, "bfloat16": 3e-2, "float16": 5e-3}


def check_point(dtype_name: str, mask: str, n: int, d: int, device: str, seed: int = 0) -> dict[str, Any]:
    """Errors of one (dtype, mask) point against float64."""
    import torch

    from adaptive_contrastive.kernels import masked_info_nce as kernel_module
    from adaptive_contrastive.reference import LossSettings, masked_info_nce_rows

    base, _, precision = dtype_name.partition("-")
    dtype = getattr(torch, base)
    kernel_module.set_fp32_precision((precision or "3xtf32") if dtype == torch.float32 else None)
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
    q = z.to(device=device, dtype=dtype)
    k = q.roll(1, 0)
    rows = torch.arange(n, device=device)
    partner, self_index = (rows + n // 2) % n, rows
    sims = torch.sort(q.double() @ k.double().T, dim=1).values  # thresholds between two similarities
    j = int(0.9 * (n - 1))
    thr = ((sims[:, j] + sims[:, j + 1]) / 2).float()
    settings = LossSettings(0.1, "attract", 0.5, mask, 0.05)
    upstream = torch.full((n,), 1.0 / n, device=device)

    def run(fn: Any, qq: Any, kk: Any, tt: Any, g: Any) -> list[Any]:
        qq, kk = qq.detach().clone().requires_grad_(), kk.detach().clone().requires_grad_()
        tt = tt.detach().clone().requires_grad_(mask == "soft")
        loss_rows, counts = fn(qq, kk, tt, partner, self_index, settings)
        (loss_rows * g.to(loss_rows.dtype)).sum().backward()
        return [loss_rows.detach(), counts, qq.grad, kk.grad, tt.grad]

    started = time.monotonic()
    got = run(kernel_module.triton_masked_info_nce_rows, q, k, thr, upstream)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - started
    want = run(masked_info_nce_rows, q.double(), k.double(), thr.double(), upstream.double())
    errors = {}
    for name, g, w in zip(("rows", "false_negatives", "dq", "dk", "dthr"), got, want, strict=True):
        if w is None or (name == "false_negatives" and mask == "hard"):
            continue
        errors[name] = float((g.double() - w).norm() / w.norm().clamp_min(1e-300))
    mismatched = int((got[1].double() != want[1]).sum()) if mask == "hard" else None
    finite = all(bool(torch.isfinite(t).all()) for t in got if t is not None)
    worst = max(errors.values())
    return {
        "dtype": dtype_name,
        "mask": mask,
        "N": n,
        "D": d,
        "errors": errors,
        "worst": worst,
        "false_negative_mismatches": mismatched,
        "tolerance": TOLERANCE[dtype_name],
        "pass": finite and worst <= TOLERANCE[dtype_name] and not mismatched,
        "first_call_s": round(seconds, 2),  # compile included
    }


def worker(dtype_name: str, args: argparse.Namespace) -> int:
    """One dtype, both masks, one JSON line per point."""
    out = Path(args.out) / f"check_{dtype_name}.jsonl"
    status = 0
    for mask in args.masks.split(","):
        try:
            record = check_point(dtype_name, mask, args.n, args.d, args.device)
        except Exception as err:  # recorded, and the other points still run
            record = {"dtype": dtype_name, "mask": mask, "error": f"{type(err).__name__}: {err}"[:500], "pass": False}
            status = 2
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        if not record["pass"] and status == 0:
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--interpret", action="store_true", help="CPU: run the kernels in Triton's interpreter")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--masks", default="hard,soft")
    parser.add_argument("--out", default="gpu_results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args.worker, args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if args.interpret:
        env["TRITON_INTERPRET"] = "1"
    forwarded = ["--device", args.device, "--n", str(args.n), "--d", str(args.d), "--masks", args.masks]
    forwarded += ["--out", args.out]
    procs = {
        name: subprocess.Popen([sys.executable, __file__, "--worker", name, *forwarded], env=env)
        for name in args.dtypes.split(",")
    }
    codes = {name: proc.wait() for name, proc in procs.items()}
    records = []
    for name in procs:
        path = Path(args.out) / f"check_{name}.jsonl"
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    (Path(args.out) / "check.json").write_text(json.dumps(records, indent=1))
    lines = ["| dtype | mask | worst error | tolerance | pass | first call s |", "|---|---|---|---|---|---|"]
    for r in records:
        worst = f"{r['worst']:.2e}" if "worst" in r else r.get("error", "?")
        lines.append(
            f"| {r['dtype']} | {r['mask']} | {worst} | {r.get('tolerance', '')} | {'yes' if r['pass'] else 'NO'} "
            f"| {r.get('first_call_s', '')} |"
        )
    (Path(args.out) / "check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return max(codes.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
