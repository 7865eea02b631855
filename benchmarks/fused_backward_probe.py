"""Would one fused backward kernel beat the separate dQ and dK kernels? A static probe for sm_90.

The fused form runs the element-wise gradient pass once per tile: one program per row block,
dQ accumulated in registers as in `_bwd_dq_kernel`, and each tile's dK contribution dsᵀ q
added to global memory with atomics (the separate kernels recompute the score tile and the
element-wise pass twice instead, and own their outputs without atomics). This compiles such a
kernel — the fast-tile loop only, bfloat16, attract with the hard mask, the default 128×64 tiles
of the dQ kernel — and prints its static profile beside the two kernels it would replace, plus the
atomic traffic it adds (which a static profile cannot time).

Usage: python benchmarks/fused_backward_probe.py [--d 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from adaptive_contrastive.kernels._tiles import grad_dot, grad_tile, load_rows, scores  # noqa: E402


@triton.jit
def _fused_bwd_probe(
    Q, K, THR, LSE2, COEF_P, COEF_Y, DQ, DK, Nq, Nk, stride, scale2,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Fast tiles only (no self/partner/bounds work), attract, hard mask, 16-bit operands."""
    row0 = tl.program_id(0) * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    thr = tl.load(THR + offs_m)
    lse2 = tl.load(LSE2 + offs_m)
    coef_p = tl.load(COEF_P + offs_m)
    coef_y = tl.load(COEF_Y + offs_m)
    q = load_rows(Q, row0, Nq, stride, BLOCK_M, BLOCK_D, False)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for col0 in range(0, Nk, BLOCK_N):
        s, k, _ = scores(q, q, Q, Q, K, K, row0, col0, Nq, Nk, stride, BLOCK_M, BLOCK_N, BLOCK_D, 1,
                         False, False, False, "tf32", False)  # fmt: skip
        ds, _ = grad_tile(s, thr[:, None], thr[:, None], None, None, lse2[:, None], coef_p[:, None], coef_y[:, None],
                          coef_p[:, None], coef_p[:, None], coef_p[:, None], scale2, scale2, scale2,
                          True, True, True, False, True, True, False)  # fmt: skip
        dq = grad_dot(ds, k, k, dq, False, "tf32", False)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q)  # this tile's share of dK, added with atomics
        offs_n = col0 + tl.arange(0, BLOCK_N)
        tl.atomic_add(DK + offs_n[:, None] * stride + offs_d[None, :], dk, sem="relaxed")
    tl.store(DQ + row0 * stride + (tl.arange(0, BLOCK_M)[:, None] * stride + offs_d[None, :]), dq)


def probe(d: int) -> dict[str, Any]:
    import kernel_stats
    import torch
    from sass_profile import compile_for_sm90, profile_binary

    n = kernel_stats.N_PROFILE
    bm, bn, warps, stages = 128, 64, 8, 2
    z = torch.zeros(n, d, dtype=torch.bfloat16)
    f = torch.zeros(n)
    args = {
        "Q": z, "K": z, "THR": f, "LSE2": f, "COEF_P": f, "COEF_Y": f, "DQ": torch.zeros(n, d), "DK": torch.zeros(n, d),
        "Nq": n, "Nk": n, "stride": d, "scale2": 1.0,
    }  # fmt: skip
    binary = compile_for_sm90(_fused_bwd_probe, args, {"BLOCK_D": d, "BLOCK_M": bm, "BLOCK_N": bn}, warps, stages)
    fused = profile_binary(binary).summary()
    loop = profile_binary(binary).tile_loop
    fused["atomics_per_tile"] = loop.count("RED", "ATOM") if loop else None
    separate = {
        r["kernel"]: r for r in kernel_stats.profile_one(("bfloat16", d, "attract-hard")) if r["kernel"] != "fwd"
    }
    # Issue cycles per 128 rows × 128 columns of (row, column) pairs, 4 warp instructions per clock.
    pair_cycles_fused = 2 * warps * fused["sass_per_tile"] / 4
    dq, dk = separate["bwd_dq"], separate["bwd_dk"]
    pair_cycles_separate = sum(
        (128 * 128) / (r["block_m"] * r["block_n"]) * r["num_warps"] * r["sass_per_tile"] / 4 for r in (dq, dk)
    )
    atomic_bytes_per_tile = bn * d * 4
    tc_clk_per_tile = 3 * 2 * bm * bn * d / kernel_stats.TC_FLOP_PER_CLK["native"]
    atomic_tb_s = atomic_bytes_per_tile / tc_clk_per_tile * kernel_stats.CLOCK_HZ * kernel_stats.SMS / 1e12
    return {
        "d": d,
        "fused": fused,
        "separate": {"bwd_dq": dq, "bwd_dk": dk},
        "issue_cycles_per_128x128_fused": pair_cycles_fused,
        "issue_cycles_per_128x128_separate": pair_cycles_separate,
        "atomic_bytes_per_tile": atomic_bytes_per_tile,
        "atomic_tb_per_s_at_tensor_core_rate": atomic_tb_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = probe(args.d)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    f, sep = result["fused"], result["separate"]
    print(f"D = {args.d}, bfloat16, attract, hard mask, fast tiles")
    print(f"fused:  registers {f['registers']}, stack {f['stack_bytes']} B, SASS/tile {f['sass_per_tile']}, "
          f"atomics/tile {f['atomics_per_tile']}, wgmma {f['wgmma']}")  # fmt: skip
    for name, r in sep.items():
        print(f"{name}: registers {r['registers']}, stack {r['stack_bytes']} B, SASS/tile {r['sass_per_tile']} "
              f"({r['block_m']}×{r['block_n']}, {r['num_warps']} warps)")  # fmt: skip
    print(f"issue cycles per 128×128 pairs: fused {result['issue_cycles_per_128x128_fused']:.0f}, "
          f"separate {result['issue_cycles_per_128x128_separate']:.0f}")  # fmt: skip
    print(f"dK atomics: {result['atomic_bytes_per_tile']} B per tile = "
          f"{result['atomic_tb_per_s_at_tensor_core_rate']:.1f} TB/s at the tensor-core rate")  # fmt: skip


if __name__ == "__main__":
    main()
