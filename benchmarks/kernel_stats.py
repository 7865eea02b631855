"""Static profile of the fused kernels on Hopper (sm_90), without a GPU, and a predicted GPU time.

Compiles every kernel (forward, dQ, dK) exactly as the autograd Function would launch it — the
same `Launch` objects, their default tile configs and the argument specialisation of Triton's
launcher for N = 16384 — for sm_90 with Triton's own ptxas, then reads the cubin (cuobjdump,
nvdisasm): registers, stack frame (spills), shared memory, whether the tile loop issues wgmma,
and the SASS instructions of the hot tile loop (`sass_profile.py` says how the loop is found).

From those counts it predicts the time of one forward+backward at N = 16384 (Nq = Nk), D = 128:
per tile the larger of instruction issue, tensor-core, MUFU and L2→SM time, summed over the tiles
of each kernel. Rates assumed (H100/H200 SXM datasheet, 132 SMs at 1.83 GHz): 4 warp instructions
per clock per SM, 4096 bf16/fp16 and 2048 TF32 FLOP per clock per SM on tensor cores, 256 FP32
FLOP per clock per SM on FMA units, 16 MUFU results per clock per SM, 5.5 TB/s from L2. The
"floor" assumes perfect overlap of those; "serial" adds issue and tensor-core time (no overlap):
the first GPU run should land between them, or the model is wrong.

Usage:
    python benchmarks/kernel_stats.py                   # markdown table + predictions
    python benchmarks/kernel_stats.py --json            # one JSON record per kernel x dtype x D x mode
    python benchmarks/kernel_stats.py --dims 128 --dtypes bfloat16 --modes attract-hard
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's launcher default, and 3.9's without warning

# dtype names: the input dtype, and for float32 the tensor-core precision (3xTF32 by default).
DTYPES = ("float32", "float32-tf32", "float32-ieee", "bfloat16", "float16")
# "-soft" is the soft mask's exact derivative (mask_gradient="full"), "-soft-labelgrad" the public default
# (mask_gradient="labels": no denominator term, no threshold gradient); "-labels" is the hard mask with known
# positives (labels=).
MODES = ("attract-hard", "attract-soft", "attract-soft-labelgrad", "keep-hard", "attract-labels")
N_PROFILE = 16384

SMS = 132
CLOCK_HZ = 1.83e9
ISSUE_PER_CLK = 4  # warp instructions per clock per SM
TC_FLOP_PER_CLK = {"native": 4096, "tf32": 2048, "3xtf32": 2048 / 3, "ieee": 256}
MUFU_PER_CLK = 16
L2_BYTES_PER_S = 5.5e12


def _dtype(name: str) -> tuple[Any, str | None]:
    import torch

    base, _, precision = name.partition("-")
    dtype = getattr(torch, base)
    if dtype == torch.float32:
        return dtype, precision or "3xtf32"
    return dtype, None


def _settings(mode: str) -> tuple[Any, bool, bool]:
    """LossSettings of a profile mode, whether it has thresholds, whether it has labels."""
    from adaptive_contrastive.reference import LossSettings

    fn, _, mask = mode.partition("-")
    labels = mask == "labels"
    mask, _, gradient = mask.partition("-")
    mask_gradient = "labels" if gradient == "labelgrad" else "full"
    return LossSettings(0.1, fn, 0.5, "hard" if labels else mask, 0.05, mask_gradient), True, labels


def launches(dtype_name: str, d: int, mode: str, n: int = N_PROFILE) -> list[Any]:
    """The forward, dQ and dK `Launch`es of one call at N = n, built on CPU tensors (not run)."""
    import torch

    from adaptive_contrastive.kernels import masked_info_nce as kernel_module

    dtype, precision = _dtype(dtype_name)
    settings, has_threshold, has_labels = _settings(mode)
    z = torch.zeros(n, d, dtype=dtype)
    rows = torch.arange(n)
    thresholds = torch.zeros(n) if settings.uses_threshold and has_threshold else None
    labels = rows // 4 if has_labels else None
    previous = kernel_module.set_fp32_precision(precision)
    try:
        call = kernel_module.FusedCall.prepare(z, z, thresholds, (rows + n // 2) % n, rows, settings, labels, labels)
    finally:
        kernel_module.set_fp32_precision(previous)
    backward, *_ = call.backward(torch.zeros(n))
    return [call.forward(), *backward]


def profile_one(job: tuple[str, int, str]) -> list[dict[str, Any]]:
    """Compile and profile the three kernels of one (dtype, D, mode)."""
    from sass_profile import compile_for_sm90, profile_binary

    dtype_name, d, mode = job
    records = []
    for launch in launches(dtype_name, d, mode):
        started = time.monotonic()
        config = launch.config
        binary = compile_for_sm90(
            launch.kernel, launch.args, launch.compile_constexprs(), config.num_warps, config.num_stages
        )
        constexprs = launch.constexprs
        summary = profile_binary(binary).summary(chunks=constexprs["NUM_CHUNKS"])
        records.append(
            {
                "kernel": launch.name,
                "dtype": dtype_name,
                "mode": mode,
                "d": d,
                "block_d": constexprs["BLOCK_D"],
                "num_chunks": constexprs["NUM_CHUNKS"],
                "out_d": constexprs.get("OUT_D", constexprs["BLOCK_D"] * constexprs["NUM_CHUNKS"]),
                "block_m": config.block_m,
                "block_n": config.block_n,
                "num_warps": config.num_warps,
                "num_stages": config.num_stages,
                **summary,
                "compile_s": round(time.monotonic() - started, 1),
            }
        )
    return records


def predict_ms(record: dict[str, Any], n: int = N_PROFILE) -> dict[str, float]:
    """Predicted time of one kernel at Nq = Nk = n from its static profile (see the module doc)."""
    dtype_name = record["dtype"]
    _, precision = _dtype(dtype_name)
    rate = TC_FLOP_PER_CLK[precision or "native"]
    bm, bn, d_pad = record["block_m"], record["block_n"], record["block_d"] * record["num_chunks"]
    out_d = record.get("out_d", d_pad)  # backward: each program's slice of the output
    slices = 1 if record["kernel"] == "fwd" else d_pad // out_d
    tiles = (n / bm) * (n / bn) * slices
    # scores over the whole row, plus (backward) the gradient product of this slice
    flops = 2 * bm * bn * (d_pad + (0 if record["kernel"] == "fwd" else out_d))
    tc_clk = flops / rate
    issue_clk = record["num_warps"] * record["sass_per_tile"] / ISSUE_PER_CLK
    mufu_clk = record["num_warps"] * 32 * record["tile_loop_mufu"] / MUFU_PER_CLK
    item = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype_name.partition("-")[0]]
    rows = bn if record["kernel"] != "bwd_dk" else bm
    streamed = rows * (d_pad + (out_d if slices > 1 else 0)) * item * (2 if precision == "3xtf32" else 1)
    l2_clk = streamed / (L2_BYTES_PER_S / SMS / CLOCK_HZ)
    per_tile = max(tc_clk, issue_clk, mufu_clk, l2_clk)
    scale = tiles / SMS / CLOCK_HZ * 1e3
    return {
        "floor_ms": per_tile * scale,
        "serial_ms": (issue_clk + tc_clk) * scale,
        "bound": ("tensor cores", "issue", "MUFU", "L2")[[tc_clk, issue_clk, mufu_clk, l2_clk].index(per_tile)],
    }


def markdown(records: list[dict[str, Any]]) -> str:
    lines = [
        "| kernel | dtype | mode | D | tiles (M×N, warps, stages) | registers | stack B | shared B | wgmma "
        "| SASS/tile | MUFU/tile |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        tiles = f"{r['block_m']}×{r['block_n']}, {r['num_warps']}, {r['num_stages']}"
        if r["num_chunks"] > 1:
            tiles += f"; {r['num_chunks']} chunks of {r['block_d']}"
        elif r.get("out_d", r["block_d"]) < r["block_d"]:
            tiles += f"; output in {r['block_d'] // r['out_d']} slices"
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {r['mode']} | {r['d']} | {tiles} | {r['registers']} | "
            f"{r['stack_bytes']} | {r['shared_bytes']} | {'yes' if r['wgmma'] else 'no'} | {r['sass_per_tile']} | "
            f"{r['tile_loop_mufu']} |"
        )
    return "\n".join(lines)


def prediction_table(records: list[dict[str, Any]], d: int = 128, mode: str = "attract-hard") -> str:
    lines = [
        f"Predicted time at N = {N_PROFILE}, D = {d}, {mode} (forward | dQ | dK | total; floor = perfect overlap, "
        "serial = issue + tensor cores):",
        "",
        "| dtype | forward ms | dQ ms | dK ms | total floor–serial ms | bound |",
        "|---|---|---|---|---|---|",
    ]
    for dtype_name in DTYPES:
        rows = [r for r in records if r["dtype"] == dtype_name and r["d"] == d and r["mode"] == mode]
        if len(rows) != 3:
            continue
        preds = {r["kernel"]: predict_ms(r) for r in rows}
        floor = sum(p["floor_ms"] for p in preds.values())
        serial = sum(p["serial_ms"] for p in preds.values())
        cells = " | ".join(f"{preds[k]['floor_ms']:.3f}" for k in ("fwd", "bwd_dq", "bwd_dk"))
        bounds = ", ".join(sorted({p["bound"] for p in preds.values()}))
        lines.append(f"| {dtype_name} | {cells} | {floor:.2f}–{serial:.2f} | {bounds} |")
    return "\n".join(lines)


def _tile(r: dict[str, Any]) -> str:
    tile = f"{r['block_m']}×{r['block_n']}/{r['num_warps']}w"
    if r["num_chunks"] > 1:
        tile += f", {r['num_chunks']}×{r['block_d']}"
    elif r.get("out_d", r["block_d"]) < r["block_d"]:
        tile += f", out {r['out_d']}"
    return tile


def comparison(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Before/after table on each dtype's default path: float32 was IEEE before and is 3xTF32
    after; the SASS count per tile is per thread, with the tile elements a thread holds."""
    paths = (("float32: IEEE → 3xTF32", "float32-ieee", "float32"), ("float32, TF32", "float32-tf32", "float32-tf32"))
    paths += (("bfloat16", "bfloat16", "bfloat16"), ("float16", "float16", "float16"))
    lines = [
        "| kernel | dtype (default path) | mask | D | tile before → after | registers | stack B | shared KB | wgmma "
        "| SASS per tile (elements per thread) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def per_thread(r: dict[str, Any]) -> int:
        return r["block_m"] * r["block_n"] // (32 * r["num_warps"])

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    index = {(r["kernel"], r["dtype"], r["d"], r["mode"]): r for r in before}
    for label, before_dtype, after_dtype in paths:
        for a in (r for r in after if r["dtype"] == after_dtype):
            b = index.get((a["kernel"], before_dtype, a["d"], a["mode"]))
            if b is None:
                continue
            cells = [
                f"{_tile(b)} → {_tile(a)}",
                f"{b['registers']} → {a['registers']}",
                f"{b['stack_bytes']} → {a['stack_bytes']}",
                f"{b['shared_bytes'] // 1024} → {a['shared_bytes'] // 1024}",
                f"{yes(b['wgmma'])} → {yes(a['wgmma'])}",
                f"{b['sass_per_tile']} ({per_thread(b)}) → {a['sass_per_tile']} ({per_thread(a)})",
            ]
            mask = a["mode"].split("-")[1]
            lines.append(f"| {a['kernel']} | {label} | {mask} | {a['d']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON record per line instead of tables")
    parser.add_argument("--dims", default="64,128,256", help="comma-separated D")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, from {','.join(DTYPES)}")
    parser.add_argument(
        "--modes",
        default="attract-hard,attract-soft,attract-soft-labelgrad",
        help=f"comma-separated, from {','.join(MODES)}",
    )
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--out", help="also write the JSON records to this file")
    parser.add_argument(
        "--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="only print the tables of two record files"
    )
    parser.add_argument("--tables", metavar="RECORDS", help="only print the tables of a record file")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        for r in before + after:
            r.update(predict_ms(r))
        print(comparison(before, after))
        for label, records in (("before", before), ("after", after)):
            for mode in ("attract-hard", "attract-soft"):
                print(f"\n{label}:\n")
                print(prediction_table(records, 128, mode))
        return
    if args.tables:
        records = json.loads(Path(args.tables).read_text())
        for r in records:
            r.update(predict_ms(r))
        print_tables(records)
        return
    jobs = [
        (dtype_name, int(d), mode)
        for dtype_name in args.dtypes.split(",")
        for d in args.dims.split(",")
        for mode in args.modes.split(",")
    ]
    unknown = [j for j in jobs if j[0] not in DTYPES or j[2] not in MODES]
    if unknown:
        parser.error(f"unknown dtype or mode in {unknown}")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        records = [r for batch in pool.map(profile_one, jobs) for r in batch]
    for r in records:
        r.update(predict_ms(r))
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))
    if args.json:
        for r in records:
            print(json.dumps(r))
        return
    print_tables(records)


def print_tables(records: list[dict[str, Any]]) -> None:
    print(markdown(records))
    print()
    for d in sorted({r["d"] for r in records}):
        for mode in sorted({r["mode"] for r in records if r["d"] == d}):
            print(prediction_table(records, d, mode))
            print()


if __name__ == "__main__":
    main()
