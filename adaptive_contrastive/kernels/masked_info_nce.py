# Fused masked InfoNCE (SPEC §2–3, §8) in the rows-against-columns form of `reference.py`.
#
# Row i of Q is scored against every column j of K: s_j = q_i·k_j, l_j = s_j/τ. Column p = partner[i]
# is the positive, column self_index[i] is left out, C(i) = the other columns (the candidates).
# Known positives (labels): κ_j = [row_label_i >= 0 and row_label_i == column_label_j] on C(i).
#
# Forward, per row:
#   ν_j = [s_j <= t_i] (hard)  or  σ((t_i - s_j)/β) (soft);   φ_j = 1 - ν_j on C(i)
#   with labels φ'_j = κ_j + (1 - κ_j) φ_j, ν'_j = 1 - φ'_j replace φ, ν (φ' = κ without a threshold)
#   w_j = ν_j on C(i) for drop/attract, 1 for keep/relabel;  w_p = 1;  w_self = 0
#   lse_i = log(e^{l_p} + Σ_C w_j e^{l_j})     online max and sum over column tiles (flash attention)
#   F_i = Σ_C φ_j,   Φ_i = Σ_C φ_j l_j,   l_p = partner logit          (the saved row statistics)
#   σ_i = (1-α)/max(F_i, 1) for attract/relabel, 0 for keep/drop;   y_j = σ_i φ_j,   y_p = 1 - σ_i F_i
#   ℓ_i = lse_i - y_p l_p - σ_i Φ_i
#
# Backward, with g_i = ∂L/∂ℓ_i and P_j = w_j e^{l_j - lse_i} (0 on self and on masked-out columns):
#   ∂ℓ_i/∂s_j = (P_j - y_j)/τ - D_j                                       (y_p on the partner column)
#   D_j = (1/β)·([drop/attract] P_j φ_j + [attract/relabel] σ_i (l_j - c_i) ν_j φ_j)   soft mask; 0 when hard
#   c_i = l_p + [F_i > 1] (Φ_i - F_i l_p)/F_i
#   ∂ℓ_i/∂t_i = Σ_C D_j
#   dQ = G K,  dK = Gᵀ Q,  dt = g ⊙ Σ_C D   with G_ij = g_i ∂ℓ_i/∂s_ij
# That is the exact derivative (mask_gradient="full"). With mask_gradient="labels" (the public default)
# the softmax denominator holds ν constant and t is a constant of the loss: D_j keeps only its labels'
# part [attract/relabel] σ_i (l_j - c_i) ν_j φ_j / β, and there is no dt. The backward kernels take
# this as the compile-time flag EXACT_MASK_GRAD; the forward is the same for both.
#
# How the kernels keep the tile loops short (each claim is checked in SASS by benchmarks/kernel_stats.py):
# - The partner never enters a tile. Its logit l_p = q_i·k_p is an O(D) dot per row before the loop
#   (full float32), it seeds the online softmax (m = l_p, sum = 1, so the running max is never -inf),
#   and its gradient column (P_p - y_p)/τ is added outside the kernels, O(N·D).
# - Only the few column tiles that can hold a row's self or partner column, and the last partial tile,
#   run the compares against self/partner/bounds ("special" tiles, their own loop); every other tile
#   runs the mask arithmetic alone, on unmasked loads.
# - Logits live in log2 units (log2(e)/τ folded into one scale), so every exponential is one exp2.
#   The soft mask's weight ν e^{l} is 2^{l log2 e + min(a, 0)} · r with a = (t - s) log2(e)/β,
#   r = 1/(1 + 2^{-|a|}): exp2 and one reciprocal, no logarithm, and never inf·0.
# - float32 inputs run on tensor cores as 3xTF32 by default: each operand is split on the host into
#   a TF32 head and a float32 remainder, and a·b ≈ a_hi·b_lo + a_lo·b_hi + a_hi·b_hi (error ~2^-21 of
#   |a||b| against 2^-11 for one TF32 product). "tf32" and "ieee" are options (set_fp32_precision).
# - bfloat16/float16 stay 16-bit in the kernels and accumulate in float32. The gradient tile is cast
#   to the input dtype for its tensor-core product; in float16 it is first scaled into float16's
#   normal range (g_i/max|g| times a power of two, `_gradient_scaling`) and the float32
#   accumulators are scaled back, so that a mean's g_i = 1/N does not flush it to zero.
#
# Kernels (`_kernels.py`; tile helpers in `_tiles.py`): `_fwd_kernel` (one program per BLOCK_M rows,
# loops over column tiles, stores four floats per row), `_bwd_dq_kernel` (same row tiling: dQ and
# dt) and `_bwd_dk_kernel` (one program per BLOCK_N columns, loops over row tiles, computes the
# transposed score tile so that dsᵀ feeds the dK product from registers). Both backward kernels
# recompute the score tiles, so nothing of size Nq×Nk is ever stored, and each output tile is owned
# by one program: no atomics, deterministic gradients. A fused backward (one element-wise pass, dK
# by atomics) was evaluated and not kept: see benchmarks/RESULTS.md.
#
# Rows wider than 256 features (128 for float32) are processed in BLOCK_D-wide chunks: the score
# tile accumulates over chunks and each backward program owns one BLOCK_D-wide slice of its output.
"""Launchers, tile plans and the autograd Function of the fused masked InfoNCE."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
from torch import Tensor

from .._checks import is_compiling
from ..reference import LossSettings, label_centre, label_terms, row_loss
from ._kernels import _bwd_dk_kernel, _bwd_dq_kernel, _fwd_kernel

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - other Triton layouts
    OutOfResources = RuntimeError  # type: ignore[misc,assignment]

__all__ = [
    "FP32_PRECISIONS",
    "MAX_DIM",
    "MaskedInfoNCETriton",
    "fp32_precision",
    "set_fp32_precision",
    "triton_masked_info_nce_rows",
]

# Widest row the kernels take; wider rows belong to the reference backend.
MAX_DIM = 4096
# How float32 inputs use the tensor cores (see `set_fp32_precision`).
FP32_PRECISIONS = ("3xtf32", "tf32", "ieee")
# Tile sizes under the CPU interpreter: small, so that tests with a few dozen rows cross tile
# boundaries and hit the fast and the special tile loops alike.
FIXED_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}

LOG2E = math.log2(math.e)
BIG_INDEX = 2**31 - 1  # "no row": above every row index

# ---------------------------------------------------------------------------------------------
# float32 precision


_fp32_precision_choice: str | None = None


def set_fp32_precision(precision: str | None) -> str | None:
    """Choose how float32 inputs use the tensor cores on the Triton backend; returns the previous choice.

    ``"3xtf32"`` (the default): three TF32 products per tile, accuracy close to float32 (tested
    against float64 at about 1e-6, norm-relative); ``"tf32"``: one TF32 product, about 3x faster
    on the score products and about 1e-4 accurate; ``"ieee"``: float32 FMAs without tensor
    cores, the slowest. ``None`` restores the default rule: the environment variable
    ``ADAPTIVE_CONTRASTIVE_FP32_PRECISION`` if set, else ``"tf32"`` when
    ``torch.backends.cuda.matmul.allow_tf32`` is on (the user accepted TF32 for matmuls), else
    ``"3xtf32"``. bfloat16 and float16 inputs are not affected.

    Raises:
        ValueError: for any other value.
    """
    global _fp32_precision_choice
    if precision is not None and precision not in FP32_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, FP32_PRECISIONS))} or None, got {precision!r}")
    previous, _fp32_precision_choice = _fp32_precision_choice, precision
    return previous


def fp32_precision() -> str:
    """The precision float32 inputs get now (see `set_fp32_precision`)."""
    if _fp32_precision_choice is not None:
        return _fp32_precision_choice
    from_env = os.environ.get("ADAPTIVE_CONTRASTIVE_FP32_PRECISION")
    if from_env:
        if from_env not in FP32_PRECISIONS:
            raise ValueError(
                f"ADAPTIVE_CONTRASTIVE_FP32_PRECISION={from_env!r} is not one of {', '.join(FP32_PRECISIONS)}"
            )
        return from_env
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "3xtf32"


# ---------------------------------------------------------------------------------------------
# Plans: tile sizes and chunking per dtype, precision and width


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch settings of one kernel. block_m: rows; block_n: columns."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    out_d: int | None = None  # backward: width of each program's output slice (None: the whole row)


@dataclass(frozen=True)
class KernelPlan:
    """How one call runs: operand dtype, precision, feature chunking and each kernel's tiles."""

    dtype: torch.dtype  # dtype of the operands in the kernels
    precision: str  # "3xtf32", "tf32", "ieee" (float32) or "native" (16-bit)
    block_d: int  # features per chunk (the whole padded row when num_chunks == 1)
    num_chunks: int
    fwd: TileConfig
    dq: TileConfig
    dk: TileConfig

    @property
    def stride(self) -> int:
        """Row length of the padded operands."""
        return self.block_d * self.num_chunks

    @property
    def split(self) -> bool:
        return self.precision == "3xtf32"

    @property
    def dot_precision(self) -> str:
        return "ieee" if self.precision == "ieee" else "tf32"


# Widest padded row kept on chip (resident operand) per operand kind; wider rows are chunked.
RESIDENT_DIM = {"16bit": 256, "tf32": 128, "3xtf32": 128, "ieee": 32}
# Chunk width of rows wider than that.
CHUNK_DIM = {"16bit": 128, "tf32": 64, "3xtf32": 64, "ieee": 32}

# Default tiles (forward, dQ, dK) per operand kind, row width ("chunked": rows wider than what
# stays on chip) and mask, chosen from the sm_90 static profile (benchmarks/kernel_stats.py, the
# table in benchmarks/RESULTS.md): no spills, wgmma in every tile loop (FMA units for "ieee"),
# shared memory within 227 KB, and the fewest predicted cycles. A TileConfig is block_m (rows of
# Q), block_n (columns of K), warps, pipeline stages. 8 warps = two warpgroups of 64 rows: 128-row
# tiles halve how often K streams through L2 (64-row tiles would be L2-bound in bfloat16). The soft
# mask keeps more values per element live, so its backward tiles are narrower.
_T = TileConfig
_HALF = (_T(128, 64, 8, 2), _T(128, 64, 8, 2), _T(64, 128, 8, 2))
_HALF_SOFT = (_T(128, 64, 8, 2), _T(128, 32, 8, 2), _T(64, 128, 8, 2))
_TF32 = (_T(128, 64, 8, 2), _T(128, 32, 8, 2), _T(32, 128, 8, 2))
_X3 = (_T(128, 32, 8, 2), _T(128, 32, 8, 2), _T(32, 128, 8, 2))
# 3xTF32 at D = 128: dQ in two 64-wide slices (one program each, the scores computed twice):
# with the whole 128-wide accumulator Triton 3.6 spills it.
_X3_WIDE = (_T(128, 32, 8, 2), _T(128, 32, 8, 2, out_d=64), _T(16, 128, 8, 2))
_X3_NARROW = (_T(128, 32, 8, 2), _T(128, 16, 8, 2), _T(16, 128, 8, 2))
_IEEE = (_T(32, 32, 4, 2), _T(32, 16, 4, 2), _T(16, 32, 4, 2))
_TILES: dict[tuple[str, int | str, bool], tuple[TileConfig, TileConfig, TileConfig]] = {
    **{("16bit", w, False): _HALF for w in (64, 128, 256, "chunked")},
    **{("16bit", w, True): _HALF_SOFT for w in (64, 128, "chunked")},
    ("16bit", 256, True): (_T(128, 64, 8, 2), _T(128, 32, 8, 2), _T(32, 128, 8, 2)),
    **{("tf32", w, soft): _TF32 for w in (64, 128, "chunked") for soft in (False, True)},
    ("3xtf32", 64, False): _X3,
    ("3xtf32", 64, True): _X3,
    ("3xtf32", 128, False): _X3_WIDE,
    ("3xtf32", 128, True): _X3_WIDE,
    ("3xtf32", "chunked", False): _X3_NARROW,
    ("3xtf32", "chunked", True): _X3_NARROW,
    **{("ieee", w, soft): _IEEE for w in (32, "chunked") for soft in (False, True)},
}


def _kind(dtype: torch.dtype, precision: str) -> str:
    return "16bit" if dtype in (torch.float16, torch.bfloat16) else precision


def _default_tiles(kind: str, block_d: int, chunked: bool, soft: bool) -> tuple[TileConfig, TileConfig, TileConfig]:
    """(forward, dQ, dK) tiles of rows padded to `block_d` (the chunk width when chunked)."""
    width: int | str = "chunked" if chunked else max(block_d, 64 if kind != "ieee" else 32)
    return _TILES[(kind, width, soft)]


def make_plan(dtype: torch.dtype, d: int, precision: str, interpreted: bool = False, soft: bool = False) -> KernelPlan:
    """The plan for rows of width `d` in `dtype` (float32: `precision`, else ignored); `soft`: the
    soft mask is on."""
    kind = _kind(dtype, precision)
    if kind == "16bit":
        precision = "native"
    block_d = max(16, triton.next_power_of_2(d))
    num_chunks = 1
    if block_d > RESIDENT_DIM[kind]:
        block_d = CHUNK_DIM[kind]
        num_chunks = triton.cdiv(d, block_d)
    fwd, dq, dk = _default_tiles(kind, block_d, num_chunks > 1, soft)
    if interpreted:
        fixed = TileConfig(FIXED_CONFIG["BLOCK_M"], FIXED_CONFIG["BLOCK_N"], 4, 1)
        fwd = dq = dk = fixed
    return KernelPlan(dtype, precision, block_d, num_chunks, fwd, dq, dk)


# ---------------------------------------------------------------------------------------------
# Launches


@dataclass
class Launch:
    """One kernel launch: what `kernel_stats.py` compiles ahead of time is exactly what runs.

    The grid is cdiv(rows, the config's `block`) programs by `slices` (output slices along D)."""

    name: str
    kernel: Any
    rows: int
    block: str  # "block_m" or "block_n": the tile size the grid's first axis counts
    slices: int
    args: dict[str, Any]
    constexprs: dict[str, Any]
    config: TileConfig

    @property
    def grid(self) -> tuple[int, int]:
        return triton.cdiv(self.rows, getattr(self.config, self.block)), self.slices

    def run(self) -> None:
        """Launch with the default tiles; on a Triton whose code for them needs more shared
        memory than a block may have (Triton 3.0 does for some float32 kernels), with the next
        smaller tiles, remembered for the next launch of the same kernel."""
        key = (self.kernel, self.config, tuple(sorted(self.constexprs.items())))
        config = _SMALLER_TILES.get(key, self.config)
        while True:
            try:
                launch = Launch(self.name, self.kernel, self.rows, self.block, self.slices, self.args,
                                self.constexprs, config)  # fmt: skip
                self.kernel[launch.grid](
                    **self.args,
                    **self.constexprs,
                    BLOCK_M=config.block_m,
                    BLOCK_N=config.block_n,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                )
                return
            except OutOfResources:
                smaller = smaller_tiles(config, self.block)
                if smaller is None:
                    raise
                config = _SMALLER_TILES[key] = smaller

    def compile_constexprs(self) -> dict[str, Any]:
        return {**self.constexprs, "BLOCK_M": self.config.block_m, "BLOCK_N": self.config.block_n}


# Tiles that replaced a default on this Triton (see Launch.run).
_SMALLER_TILES: dict[tuple[Any, ...], TileConfig] = {}


def smaller_tiles(config: TileConfig, resident: str = "block_m") -> TileConfig | None:
    """The next smaller tiles: one pipeline stage, then half the streamed side (the one that is
    not `resident`) down to 16, then half the resident side (with at most 4 warps)."""
    if config.num_stages > 1:
        return dataclasses.replace(config, num_stages=1)
    streamed = "block_n" if resident == "block_m" else "block_m"
    if getattr(config, streamed) > 16:
        return dataclasses.replace(config, **{streamed: getattr(config, streamed) // 2})
    if getattr(config, resident) > 16:
        return dataclasses.replace(
            config, **{resident: getattr(config, resident) // 2}, num_warps=min(config.num_warps, 4)
        )
    return None


def _flags(settings: LossSettings, ops: Operands) -> dict[str, Any]:
    has_threshold = settings.uses_threshold and ops.has_threshold
    return {
        "HANDLES_FN": settings.uses_threshold,
        "HAS_THRESHOLD": has_threshold,
        "HARD_MASK": settings.mask == "hard" or not has_threshold,
        "HAS_LABELS": settings.uses_threshold and ops.has_labels,
        "MASKS_DENOM": settings.masks_denominator,
        "SOFT_LABELS": settings.soft_labels,
    }


def _exact_mask_gradient(settings: LossSettings, ops: Operands) -> bool:
    """EXACT_MASK_GRAD of the backward kernels: whether a soft mask is differentiated exactly (its
    denominator part and the threshold's gradient). True without a soft mask, where the kernels
    ignore it, so that hard-mask launches compile once whatever `mask_gradient` says."""
    soft = settings.uses_threshold and settings.mask == "soft" and ops.has_threshold
    return not soft or settings.exact_mask_gradient


def _plan_constexprs(plan: KernelPlan) -> dict[str, Any]:
    return {
        "SPLIT": plan.split,
        "PRECISION": plan.dot_precision,
        "EMULATE_TF32": _INTERPRETED and plan.precision in ("3xtf32", "tf32"),
        "NUM_CHUNKS": plan.num_chunks,
        "BLOCK_D": plan.block_d,
    }


def _scalars(settings: LossSettings) -> dict[str, float]:
    return {
        "scale2": LOG2E / settings.temperature,
        "mask_scale2": LOG2E / settings.mask_temperature,
        "inv_tau": 1.0 / settings.temperature,
    }


@dataclass
class Operands:
    """Kernel-ready q and k: row-major, padded to the plan's stride, in the kernel dtype; with
    3xTF32, each as a TF32 head and its float32 remainder (head + remainder = the input)."""

    q_hi: Tensor
    q_lo: Tensor
    k_hi: Tensor
    k_lo: Tensor
    partner: Tensor  # (Nq,) int32
    self_index: Tensor  # (Nq,) int32
    thresholds: Tensor  # (Nq,) float32 (a placeholder without thresholds)
    row_labels: Tensor  # (Nq,) int32 dense label ids, -2 = unknown (a placeholder without labels)
    column_labels: Tensor  # (Nk,) int32 dense label ids, -1 = unknown
    has_threshold: bool
    has_labels: bool

    def full_q(self) -> Tensor:
        return self.q_hi + self.q_lo if self.q_hi is not self.q_lo else self.q_hi.float()

    def full_k(self) -> Tensor:
        return self.k_hi + self.k_lo if self.k_hi is not self.k_lo else self.k_hi.float()


def _padded(x: Tensor, width: int) -> Tensor:
    if x.shape[1] != width:
        x = torch.nn.functional.pad(x, (0, width - x.shape[1]))
    return x.contiguous()


def _split_tf32_host(x: Tensor) -> tuple[Tensor, Tensor]:
    """(head, remainder): head = x rounded to TF32 (10 mantissa bits, ties away from zero), exact
    remainder x - head, |remainder| <= 2^-11 |x|."""
    head = ((x.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)
    return head, x - head


def dense_label_ids(row_labels: Tensor, column_labels: Tensor) -> tuple[Tensor, Tensor]:
    """int32 ids with row_id[i] == column_id[j] exactly when the labels are equal and known.

    Labels are int64 (any range); ranks over their sorted union fit int32 for any N the kernels
    take. Unknown (negative) labels become -2 on rows and -1 on columns, which never match.
    No host sync: sort and cumulative sum on the device."""
    both = torch.cat([row_labels, column_labels])
    ordered, order = torch.sort(both)
    starts = torch.ones_like(ordered, dtype=torch.int32)
    starts[1:] = (ordered[1:] != ordered[:-1]).to(torch.int32)
    ranks = torch.empty_like(starts)
    ranks[order] = torch.cumsum(starts, 0, dtype=torch.int32) - 1
    rows, cols = ranks[: row_labels.shape[0]], ranks[row_labels.shape[0] :]
    rows = torch.where(row_labels < 0, torch.full_like(rows, -2), rows)
    cols = torch.where(column_labels < 0, torch.full_like(cols, -1), cols)
    return rows.contiguous(), cols.contiguous()


def prepare_operands(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    plan: KernelPlan,
) -> Operands:
    """Kernel inputs of one call (O(N·D) copies at most: padding, the 3xTF32 split). When q and k
    are the same rows (one process: Z against itself), they are prepared once."""
    same = q.shape == k.shape and q.stride() == k.stride() and q.data_ptr() == k.data_ptr() and q.dtype == k.dtype
    q = _padded(q.to(plan.dtype), plan.stride)
    k = q if same else _padded(k.to(plan.dtype), plan.stride)
    if plan.split:
        q_hi, q_lo = _split_tf32_host(q)
        k_hi, k_lo = (q_hi, q_lo) if same else _split_tf32_host(k)
    else:
        q_hi = q_lo = q
        k_hi = k_lo = k
    thr = thresholds.to(torch.float32).contiguous() if thresholds is not None else q.new_zeros(1, dtype=torch.float32)
    if row_labels is not None and column_labels is not None:
        rl, cl = dense_label_ids(row_labels, column_labels)
    else:
        rl = cl = partner.new_zeros(1, dtype=torch.int32)
    return Operands(
        q_hi,
        q_lo,
        k_hi,
        k_lo,
        partner.to(torch.int32).contiguous(),
        self_index.to(torch.int32).contiguous(),
        thr,
        rl,
        cl,
        has_threshold=thresholds is not None,
        has_labels=row_labels is not None,
    )


def forward_launch(ops: Operands, stats: Tensor, settings: LossSettings, plan: KernelPlan) -> Launch:
    """The forward kernel's launch; `stats` is (4, Nq) float32: lse, l_p, F, Φ."""
    nq, nk = ops.q_hi.shape[0], ops.k_hi.shape[0]
    args = {
        "Q": ops.q_hi, "QL": ops.q_lo, "K": ops.k_hi, "KL": ops.k_lo, "THR": ops.thresholds,
        "PARTNER": ops.partner, "SELF": ops.self_index, "ROW_LABEL": ops.row_labels, "COL_LABEL": ops.column_labels,
        "LSE": stats[0], "LP": stats[1], "FN": stats[2], "PHIL": stats[3],
        "Nq": nq, "Nk": nk, "stride": plan.stride,
        **_scalars(settings),
    }  # fmt: skip
    constexprs = {**_flags(settings, ops), **_plan_constexprs(plan)}
    return Launch("fwd", _fwd_kernel, nq, "block_m", 1, args, constexprs, plan.fwd)


@dataclass
class RowTerms:
    """Per-row float32 inputs of the backward kernels (see `_row_terms`)."""

    lse2: Tensor
    coef_p: Tensor
    coef_y: Tensor
    coef_d: Tensor
    sigma: Tensor
    centre: Tensor
    out_scale: Tensor  # 1 element: what the kernels multiply their float32 accumulators by


def backward_launches(
    ops: Operands,
    terms: RowTerms,
    grad_q: Tensor,
    grad_k: Tensor,
    grad_thr: Tensor,
    settings: LossSettings,
    plan: KernelPlan,
) -> list[Launch]:
    """The dQ and dK kernels' launches (each writes its own output: no atomics)."""
    nq, nk = ops.q_hi.shape[0], ops.k_hi.shape[0]
    common = {
        "Q": ops.q_hi, "QL": ops.q_lo, "K": ops.k_hi, "KL": ops.k_lo, "THR": ops.thresholds,
        "PARTNER": ops.partner, "SELF": ops.self_index, "ROW_LABEL": ops.row_labels, "COL_LABEL": ops.column_labels,
        "LSE2": terms.lse2, "COEF_P": terms.coef_p, "COEF_Y": terms.coef_y, "COEF_D": terms.coef_d,
        "SIGMA": terms.sigma, "CENTRE": terms.centre, "OUT_SCALE": terms.out_scale,
    }  # fmt: skip
    scalars = _scalars(settings)
    constexprs = {
        **_flags(settings, ops),
        "EXACT_MASK_GRAD": _exact_mask_gradient(settings, ops),
        **_plan_constexprs(plan),
    }
    dq_args = {
        **common, "DQ": grad_q, "DTHR": grad_thr, "Nq": nq, "Nk": nk, "stride": plan.stride,
        **scalars, "inv_beta": 1.0 / settings.mask_temperature,
    }  # fmt: skip
    self_rows = _rows_naming_each_column(ops.self_index, nk)
    partner_rows = _rows_naming_each_column(ops.partner, nk)
    dk_args = {
        **common, "SELF_ROWS": self_rows, "PARTNER_ROWS": partner_rows, "DK": grad_k,
        "Nq": nq, "Nk": nk, "stride": plan.stride, **scalars,
    }  # fmt: skip
    dq_out = plan.dq.out_d or plan.block_d
    dk_out = plan.dk.out_d or plan.block_d
    return [
        Launch("bwd_dq", _bwd_dq_kernel, nq, "block_m", plan.stride // dq_out, dq_args,
               {**constexprs, "OUT_D": dq_out}, plan.dq),
        Launch("bwd_dk", _bwd_dk_kernel, nk, "block_n", plan.stride // dk_out, dk_args,
               {**constexprs, "OUT_D": dk_out}, plan.dk),
    ]  # fmt: skip


def _rows_naming_each_column(index: Tensor, n_cols: int) -> Tensor:
    """(2, n_cols) int32: the first and last row i with index[i] == j (BIG and -1 when none)."""
    rows = torch.arange(index.shape[0], dtype=torch.int32, device=index.device)
    first = torch.full((n_cols,), BIG_INDEX, dtype=torch.int32, device=index.device)
    last = torch.full((n_cols,), -1, dtype=torch.int32, device=index.device)
    first.scatter_reduce_(0, index.long(), rows, "amin")
    last.scatter_reduce_(0, index.long(), rows, "amax")
    return torch.stack([first, last]).contiguous()


def _gradient_scaling(g: Tensor, ops: Operands, settings: LossSettings, plan: KernelPlan) -> tuple[Tensor, Tensor]:
    """(per-row factor, accumulator scale): the gradient tiles are g_i·factor... so that they stay
    in range in the kernel dtype, and the float32 accumulators times the scale are the gradients.

    Only float16 needs it: its normal range starts at 6e-5, and with ``mean`` g_i = 1/N, so the
    plain tile g_i (P - y)/τ (~1/(N²τ)) would be mostly subnormal or zero. The tile is divided by
    max|g| and multiplied by a power of two S chosen from a bound on |∂ℓ/∂s| (1/τ, plus the soft
    mask's (1 + |l|max/2)/β), so that it stays under 2^14. No host sync: all on the device."""
    if plan.dtype != torch.float16:
        return g, torch.ones(1, dtype=torch.float32, device=g.device)
    g_max = g.abs().amax().clamp_min(torch.finfo(torch.float32).tiny)
    bound = torch.full((), 1.0 / settings.temperature, device=g.device)
    if settings.uses_threshold and settings.mask == "soft":
        logit_max = ops.full_q().norm(dim=1).amax() * ops.full_k().norm(dim=1).amax() / settings.temperature
        bound = bound + (1.0 + 0.5 * logit_max) / settings.mask_temperature
    scale = torch.exp2(torch.floor(torch.log2(2.0**14 / bound))).clamp(2.0**-20, 2.0**40)
    return g * (scale / g_max), (g_max / scale).reshape(1).to(torch.float32)


def _row_terms(
    g: Tensor,
    ops: Operands,
    lse: Tensor,
    partner_logit: Tensor,
    fn_count: Tensor,
    phi_logit_sum: Tensor,
    settings: LossSettings,
    plan: KernelPlan,
) -> RowTerms:
    """lse in log2 units and the scaled coefficients: G' = coef_p P - coef_y φ - coef_d β D."""
    spread, _ = label_terms(fn_count, settings)
    centre = label_centre(fn_count, partner_logit, phi_logit_sum)
    g_scaled, out_scale = _gradient_scaling(g, ops, settings, plan)
    inv_tau = 1.0 / settings.temperature
    return RowTerms(
        lse2=(lse * LOG2E).contiguous(),
        coef_p=(g_scaled * inv_tau).contiguous(),
        coef_y=(g_scaled * spread * inv_tau).contiguous(),
        coef_d=(g_scaled / settings.mask_temperature).contiguous(),
        sigma=spread.contiguous(),
        centre=centre.contiguous(),
        out_scale=out_scale,
    )


# ---------------------------------------------------------------------------------------------
# One call and its autograd Function


@dataclass
class FusedCall:
    """The kernel inputs and launches of one loss call: what the autograd Function runs, and what
    the benchmarks time and the static profile compiles, kernel by kernel."""

    ops: Operands
    plan: KernelPlan
    settings: LossSettings
    stats: Tensor  # (4, Nq) float32: lse, l_p, F, Φ (written by the forward kernel)

    @classmethod
    def prepare(
        cls,
        q: Tensor,
        k: Tensor,
        thresholds: Tensor | None,
        partner: Tensor,
        self_index: Tensor,
        settings: LossSettings,
        row_labels: Tensor | None = None,
        column_labels: Tensor | None = None,
    ) -> FusedCall:
        dtype = _kernel_dtype(q.dtype)
        if q.dtype == torch.float32:
            precision = fp32_precision()
        else:  # 16-bit (or, in the interpreter, bfloat16 run as float32)
            precision = "native" if dtype != torch.float32 else "ieee"
        soft = settings.uses_threshold and settings.mask == "soft" and thresholds is not None
        plan = make_plan(dtype, q.shape[1], precision, _INTERPRETED, soft)
        ops = prepare_operands(q, k, thresholds, partner, self_index, row_labels, column_labels, plan)
        stats = torch.zeros((4, q.shape[0]), dtype=torch.float32, device=q.device)
        return cls(ops, plan, settings, stats)

    def forward(self) -> Launch:
        return forward_launch(self.ops, self.stats, self.settings, self.plan)

    @property
    def soft(self) -> bool:
        return self.settings.uses_threshold and self.settings.mask == "soft" and self.ops.has_threshold

    @property
    def threshold_gradient(self) -> bool:
        """Whether the backward writes dt: a soft mask differentiated exactly (mask_gradient="full")."""
        return self.soft and self.settings.exact_mask_gradient

    def backward(self, g: Tensor) -> tuple[list[Launch], Tensor, Tensor, Tensor | None]:
        """The dQ and dK launches for upstream gradient `g` (Nq,) float32, and the float32 buffers
        they write: dQ, dK (padded rows) and dt (soft mask with mask_gradient="full" only)."""
        lse, partner_logit, fn_count, phi_logit_sum = self.stats.unbind(0)
        nq, nk = self.ops.q_hi.shape[0], self.ops.k_hi.shape[0]
        terms = _row_terms(g, self.ops, lse, partner_logit, fn_count, phi_logit_sum, self.settings, self.plan)
        grad_q = torch.empty((nq, self.plan.stride), dtype=torch.float32, device=g.device)
        grad_k = torch.empty((nk, self.plan.stride), dtype=torch.float32, device=g.device)
        grad_thr = torch.empty(nq, dtype=torch.float32, device=g.device) if self.threshold_gradient else None
        thr_out = grad_thr if grad_thr is not None else terms.lse2  # never written without a threshold gradient
        launches = backward_launches(self.ops, terms, grad_q, grad_k, thr_out, self.settings, self.plan)
        return launches, grad_q, grad_k, grad_thr

    def add_partner_gradients(self, g: Tensor, grad_q: Tensor, grad_k: Tensor) -> None:
        """The partner column, outside the tiles: ∂ℓ_i/∂s_ip = (P_p - y_p)/τ, P_p = e^{l_p - lse}. O(N·D)."""
        lse, partner_logit, fn_count, _ = self.stats.unbind(0)
        _, partner_label = label_terms(fn_count, self.settings)
        partner_grad = g * (torch.exp(partner_logit - lse) - partner_label) / self.settings.temperature
        partner_rows = self.ops.partner.long()
        grad_q.addcmul_(partner_grad[:, None], self.ops.full_k()[partner_rows])
        grad_k.index_add_(0, partner_rows, partner_grad[:, None] * self.ops.full_q())


class MaskedInfoNCETriton(torch.autograd.Function):
    """Fused masked InfoNCE: saves four floats per row, recomputes score tiles in backward.

    q, k: `(Nq, D)`, `(Nk, D)` float32, float16 or bfloat16; thresholds `(Nq,)` float32 or None;
    partner, self_index `(Nq,)` int64; row_labels `(Nq,)`, column_labels `(Nk,)` int64 or None.
    Returns float32 `(Nq,)` row losses and F.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        thresholds: Tensor | None,
        partner: Tensor,
        self_index: Tensor,
        settings: LossSettings,
        row_labels: Tensor | None,
        column_labels: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        call = FusedCall.prepare(q, k, thresholds, partner, self_index, settings, row_labels, column_labels)
        call.forward().run()
        lse, partner_logit, fn_count, phi_logit_sum = call.stats.unbind(0)
        rows_loss = row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
        ctx.call, ctx.input_dtype, ctx.d = call, q.dtype, q.shape[1]
        ctx.mark_non_differentiable(fn_count)
        return rows_loss, fn_count

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor, _grad_count: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: this backward is not differentiable
            from .op import second_order_error

            raise second_order_error()
        call: FusedCall = ctx.call
        g = grad_rows.to(torch.float32).contiguous()  # a mean's gradient arrives expanded (stride 0)
        launches, grad_q, grad_k, grad_thr = call.backward(g)
        for launch in launches:
            launch.run()
        call.add_partner_gradients(g, grad_q, grad_k)
        grad_thresholds = grad_thr * g if grad_thr is not None and ctx.needs_input_grad[2] else None
        d = ctx.d
        return grad_q[:, :d].to(ctx.input_dtype), grad_k[:, :d].to(ctx.input_dtype), grad_thresholds, *([None] * 5)


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    # Triton's interpreter (3.9 at least) multiplies bfloat16 tiles in tl.dot as their raw uint16
    # bits; there, bfloat16 runs as float32. Compiled kernels take bfloat16 as it is.
    if _INTERPRETED and dtype == torch.bfloat16:
        return torch.float32
    return dtype


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# triton.jit reads TRITON_INTERPRET when the kernels are defined, i.e. at first import of this module.
_INTERPRETED = type(_fwd_kernel).__name__ == "InterpretedFunction"


def triton_masked_info_nce_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None = None,
    column_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row loss and false-negative count F on the fused Triton path (no Nq×Nk buffer).

    Same contract as `reference.masked_info_nce_rows`. bfloat16 and float16 run as such in the
    kernels, accumulating in float32; float32 runs on tensor cores as 3xTF32 unless
    `set_fp32_precision` says otherwise; float64 is cast to float32 at this boundary (the GPU has
    no fast float64 tl.dot) and the results and gradients are cast back to float64. Row losses
    and F are float32 (float64 for float64 inputs).

    Args:
        q: `(Nq, D)` queries, D <= 4096, already normalised for cosine similarity.
        k: `(Nk, D)` candidates, same dtype and device.
        thresholds: `(Nq,)` thresholds in similarity units, or None (``keep``, or labels alone).
        partner: `(Nq,)` int64 column of each row's positive.
        self_index: `(Nq,)` int64 column each row leaves out.
        settings: the loss settings.
        row_labels: `(Nq,)` int64 label of each row (negative: unknown), or None.
        column_labels: `(Nk,)` int64 label of each column; given exactly when row_labels is.

    Returns:
        `(Nq,)` row losses (differentiable w.r.t. q, k, and thresholds with the soft mask and
        ``settings.mask_gradient == "full"``; with ``"labels"`` the thresholds get None, as on the
        reference backend) and `(Nq,)` F, without gradient.

    Raises:
        ValueError, TypeError: on shapes, dtypes or devices the kernels cannot take.
    """
    _check_inputs(q, k, thresholds, partner, self_index, settings, row_labels, column_labels)
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if q.dtype == torch.float64:
        q, k = q.to(torch.float32), k.to(torch.float32)  # differentiable casts: grads come back as float64
    thr = None
    if settings.uses_threshold and thresholds is not None:
        thr = thresholds if thresholds.dtype == torch.float32 else thresholds.to(torch.float32)
    if not is_compiling() and _inside_torch_func(q, k, thr):
        raise RuntimeError(
            'backend="triton" does not run under torch.func transforms (grad, vjp, vmap, ...): its kernels take '
            'plain tensors; use backend="reference", which supports torch.func.grad'
        )
    from . import op  # the custom operators (torch >= 2.4), or this module's Function on older torch

    rows_loss, fn_count = op.masked_info_nce(q, k, thr, partner, self_index, settings, row_labels, column_labels)
    return rows_loss.to(out_dtype), fn_count.to(out_dtype)


def _inside_torch_func(*tensors: Tensor | None) -> bool:
    """Whether torch.func wrapped these tensors (they are being transformed by grad, vmap, ...)."""
    functorch = getattr(torch._C, "_functorch", None)
    wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and any(t is not None and wrapped(t) for t in tensors)


def _check_inputs(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
) -> None:
    """Shape, dtype and device checks that need no device sync."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"q and k must be (Nq, D) and (Nk, D) with the same D, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.dtype != k.dtype or q.dtype not in (*_KERNEL_DTYPES, torch.float64):
        raise TypeError(f"q and k must share a float16/bfloat16/float32/float64 dtype, got {q.dtype} and {k.dtype}")
    if not q.is_cuda and not _INTERPRETED:
        raise ValueError(
            f"the Triton kernels run on CUDA tensors, got {q.device.type}; CPU tensors need TRITON_INTERPRET=1 "
            "set before adaptive_contrastive.kernels is first imported"
        )
    if not 1 <= q.shape[1] <= MAX_DIM:
        raise ValueError(f"the Triton backend takes 1 <= D <= {MAX_DIM}, got D={q.shape[1]}; use backend='reference'")
    if q.shape[0] >= 2**31 or k.shape[0] >= 2**31:
        raise ValueError(f"the Triton backend takes fewer than 2^31 rows, got {q.shape[0]} and {k.shape[0]}")
    nq, nk = q.shape[0], k.shape[0]
    if (row_labels is None) != (column_labels is None):
        raise ValueError("row_labels and column_labels must be given together (or both None)")
    tensors = [q, k, partner, self_index] + [t for t in (thresholds, row_labels, column_labels) if t is not None]
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    for name, idx in (("partner", partner), ("self_index", self_index)):
        if idx.shape != (nq,) or idx.dtype != torch.int64:
            raise ValueError(f"{name} must be an int64 tensor of shape ({nq},), got {idx.dtype} {tuple(idx.shape)}")
    if row_labels is not None and column_labels is not None:
        if not settings.uses_threshold:
            raise ValueError('labels need a mode that handles false negatives; false_negatives="keep" takes none')
        for name, labels, n in (("row_labels", row_labels, nq), ("column_labels", column_labels, nk)):
            if labels.shape != (n,) or labels.dtype != torch.int64:
                raise ValueError(
                    f"{name} must be an int64 tensor of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
                )
    if settings.uses_threshold:
        if thresholds is None and row_labels is None:
            raise ValueError(f'false_negatives="{settings.false_negatives}" needs thresholds (or labels), got None')
        if thresholds is not None and thresholds.shape != (nq,):
            raise ValueError(f"thresholds must have shape ({nq},), got {tuple(thresholds.shape)}")
    if not math.isfinite(settings.temperature) or settings.temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {settings.temperature!r}")
