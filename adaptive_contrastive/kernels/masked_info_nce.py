# Fused masked InfoNCE (SPEC §2–3) in the rows-against-columns form of `reference.py`.
#
# Row i of Q is scored against every column j of K: s_j = q_i·k_j, l_j = s_j/τ. Column p = partner[i]
# is the positive, column self_index[i] is left out, C(i) = the other columns (the candidates).
#
# Forward, per row:
#   ν_j = [s_j <= t_i] (hard)  or  σ((t_i - s_j)/β) (soft);   φ_j = 1 - ν_j on C(i), 0 elsewhere
#   w_j = ν_j on C(i) for drop/attract, 1 for keep/relabel;  w_p = 1;  w_self = 0
#   lse_i = log Σ_j w_j e^{l_j}                 online max and sum over column tiles (flash attention)
#   F_i = Σ_C φ_j,   Φ_i = Σ_C φ_j l_j,   l_p = partner logit         (the other saved row statistics)
#   σ_i = (1-α)/max(F_i, 1) for attract/relabel, 0 for keep/drop;   y_j = σ_i φ_j,   y_p = 1 - σ_i F_i
#   ℓ_i = lse_i - y_p l_p - σ_i Φ_i
#
# Backward, with g_i = ∂L/∂ℓ_i and P_j = w_j e^{l_j - lse_i} (0 on self and on masked-out columns):
#   ∂ℓ_i/∂s_j = (P_j - y_j)/τ - D_j                                       (y_p on the partner column)
#   D_j = (1/β)·([drop/attract] P_j φ_j + [attract/relabel] σ_i (l_j - c_i) ν_j φ_j)   soft mask; 0 when hard
#   c_i = l_p + [F_i > 1] (Φ_i - F_i l_p)/F_i
#   ∂ℓ_i/∂t_i = Σ_C D_j
#   dQ = G K,  dK = Gᵀ Q,  dt = g ⊙ Σ_C D   with G_ij = g_i ∂ℓ_i/∂s_ij
# (P_j φ_j is e^{l_j - lse} ν_j φ_j of the reference written without e^{l_j - lse} alone, which can
# overflow where ν_j underflows.)
#
# Kernels: `_fwd_kernel` (one program per BLOCK_M rows, loops over column tiles, stores four floats
# per row), `_bwd_dq_kernel` (same row tiling: dQ and dt) and `_bwd_dk_kernel` (one program per
# BLOCK_N columns, loops over row tiles: dK). Both backward kernels recompute the score tiles, so
# nothing of size Nq×Nk is ever stored, and each output tile is owned by one program: no atomics,
# deterministic gradients.
"""Triton kernels, launchers and the autograd Function of the fused masked InfoNCE."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference import LossSettings, label_centre, label_terms, row_loss

__all__ = ["MaskedInfoNCETriton", "triton_masked_info_nce_rows"]

# Widest row the kernels hold in one tile: D is padded to the next power of two, at least 16
# (the smallest tl.dot operand), and kept whole in registers/shared memory.
MAX_DIM = 1024
# Tile sizes used where no autotuning happens (the CPU interpreter): small, so that tests with a
# few dozen rows still cross tile boundaries.
FIXED_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}


@triton.jit
def _sigmoid(x):
    # Through e^{-|x|} <= 1: never overflows, exact 0 and 1 at ±inf, full relative precision for x < 0.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _log_sigmoid(x):
    # min(x, 0) - log(1 + e^{-|x|}): no overflow for large |x|, -inf at x = -inf.
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _masked_tile(
    s,
    thr,
    partner,
    self_idx,
    offs_n,
    Nk,
    inv_tau,
    inv_beta,
    USES_THRESHOLD: tl.constexpr,
    HARD_MASK: tl.constexpr,
    MASKS_DENOM: tl.constexpr,
):
    """Logits l = s/τ, denominator logits z = l + log w (-inf where w = 0), ν, φ and the partner mask of a tile."""
    logit = s * inv_tau
    is_partner = offs_n[None, :] == partner[:, None]
    # Candidates: real columns other than self and partner.
    cand = (offs_n[None, :] < Nk) & (offs_n[None, :] != self_idx[:, None]) & ~is_partner
    if USES_THRESHOLD:
        if HARD_MASK:
            below = s <= thr[:, None]
            nu = tl.where(below, 1.0, 0.0)
            phi = tl.where(cand & ~below, 1.0, 0.0)
            in_denom = below
            log_w = tl.zeros_like(logit)
        else:
            x = (thr[:, None] - s) * inv_beta
            nu = _sigmoid(x)
            # σ(-x) rather than 1 - σ(x): φ keeps its relative precision when it is tiny.
            phi = tl.where(cand, _sigmoid(-x), 0.0)
            in_denom = cand
            log_w = _log_sigmoid(x)
        if MASKS_DENOM:
            z = tl.where(is_partner, logit, tl.where(cand & in_denom, logit + log_w, float("-inf")))
        else:
            z = tl.where(is_partner | cand, logit, float("-inf"))
    else:
        nu = tl.zeros_like(logit)
        phi = tl.zeros_like(logit)
        z = tl.where(is_partner | cand, logit, float("-inf"))
    return logit, z, nu, phi, is_partner


@triton.jit
def _dscores(
    logit,
    z,
    nu,
    phi,
    is_partner,
    lse,
    spread,
    partner_label,
    centre,
    g,
    inv_tau,
    inv_beta,
    USES_THRESHOLD: tl.constexpr,
    HARD_MASK: tl.constexpr,
    MASKS_DENOM: tl.constexpr,
    SOFT_LABELS: tl.constexpr,
):
    """G = g ∂ℓ/∂s of a tile and the row sums Σ_C D_j (the threshold gradient before g)."""
    p = tl.exp(z - lse[:, None])  # P_j = w_j e^{l_j - lse}; 0 where z = -inf
    y = tl.where(is_partner, partner_label[:, None], spread[:, None] * phi)
    ds = (p - y) * inv_tau
    dthr = tl.zeros_like(lse)
    if USES_THRESHOLD and not HARD_MASK:
        dmask = tl.zeros_like(logit)
        if MASKS_DENOM:
            dmask += p * phi
        if SOFT_LABELS:
            dmask += spread[:, None] * (logit - centre[:, None]) * nu * phi
        dmask = dmask * inv_beta
        ds -= dmask
        dthr = tl.sum(dmask, 1)
    return ds * g[:, None], dthr


@triton.jit
def _fwd_kernel(
    Q,
    K,
    THR,
    PARTNER,
    SELF,  # inputs
    LSE,
    LP,
    FN,
    PHIL,  # outputs: lse_i, l_p, F_i, Φ_i (float32, one per row)
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kd,
    Nq,
    Nk,
    D,
    inv_tau,
    inv_beta,
    N_BUCKET,  # autotune key only: a coarse log-size of Nk
    USES_THRESHOLD: tl.constexpr,
    HARD_MASK: tl.constexpr,
    MASKS_DENOM: tl.constexpr,
    SOFT_LABELS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Nq
    d_ok = offs_d < D
    # int64 offsets: Nq·stride overflows int32 from 2^31 elements on (e.g. 2^21 rows of D = 1024).
    q = tl.load(
        Q + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :].to(tl.int64) * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # q stays in registers for the whole sweep over the columns
    partner = tl.load(PARTNER + offs_m, mask=row_ok, other=-1)
    self_idx = tl.load(SELF + offs_m, mask=row_ok, other=-1)
    if USES_THRESHOLD:
        thr = tl.load(THR + offs_m, mask=row_ok, other=0.0).to(tl.float32)
    else:
        thr = tl.zeros([BLOCK_M], dtype=tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of z
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running Σ e^{z - m_i}
    lp = tl.zeros([BLOCK_M], dtype=tl.float32)
    fn = tl.zeros([BLOCK_M], dtype=tl.float32)
    phil = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :].to(tl.int64) * stride_kd,
            mask=(offs_n[:, None] < Nk) & d_ok[None, :],
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # float32 accumulate
        logit, z, nu, phi, is_partner = _masked_tile(
            s, thr, partner, self_idx, offs_n, Nk, inv_tau, inv_beta, USES_THRESHOLD, HARD_MASK, MASKS_DENOM
        )
        m_new = tl.maximum(m_i, tl.max(z, 1))
        # A row whose columns so far are all masked has m = -inf; shifting by 0 instead avoids inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(z - m_safe[:, None]), 1)
        m_i = m_new
        lp += tl.sum(tl.where(is_partner, logit, 0.0), 1)
        if USES_THRESHOLD:
            fn += tl.sum(phi, 1)
            if SOFT_LABELS:
                phil += tl.sum(phi * logit, 1)
    # The partner is always in the denominator, so l_i >= e^{l_p - m_i} > 0 and lse is finite.
    tl.store(LSE + offs_m, m_i + tl.log(l_i), mask=row_ok)
    tl.store(LP + offs_m, lp, mask=row_ok)
    tl.store(FN + offs_m, fn, mask=row_ok)
    tl.store(PHIL + offs_m, phil, mask=row_ok)


@triton.jit
def _load_row_terms(
    THR,
    PARTNER,
    SELF,
    LSE,
    G,
    SPREAD,
    YP,
    CENTRE,
    offs_m,
    row_ok,
    BLOCK_M: tl.constexpr,
    USES_THRESHOLD: tl.constexpr,
):
    """The per-row inputs of both backward kernels; g is 0 on padding rows, so they add nothing."""
    partner = tl.load(PARTNER + offs_m, mask=row_ok, other=-1)
    self_idx = tl.load(SELF + offs_m, mask=row_ok, other=-1)
    if USES_THRESHOLD:
        thr = tl.load(THR + offs_m, mask=row_ok, other=0.0).to(tl.float32)
    else:
        thr = tl.zeros([BLOCK_M], dtype=tl.float32)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
    g = tl.load(G + offs_m, mask=row_ok, other=0.0)
    spread = tl.load(SPREAD + offs_m, mask=row_ok, other=0.0)
    partner_label = tl.load(YP + offs_m, mask=row_ok, other=0.0)
    centre = tl.load(CENTRE + offs_m, mask=row_ok, other=0.0)
    return partner, self_idx, thr, lse, g, spread, partner_label, centre


@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    THR,
    PARTNER,
    SELF,
    LSE,
    G,
    SPREAD,
    YP,
    CENTRE,  # per-row float32: lse, upstream grad, σ_i, y_p, c_i
    DQ,
    DTHR,  # outputs: (Nq, D) float32 and (Nq,) float32
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_dqm,
    Nq,
    Nk,
    D,
    inv_tau,
    inv_beta,
    N_BUCKET,
    USES_THRESHOLD: tl.constexpr,
    HARD_MASK: tl.constexpr,
    MASKS_DENOM: tl.constexpr,
    SOFT_LABELS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Nq
    d_ok = offs_d < D
    q = tl.load(
        Q + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :].to(tl.int64) * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    partner, self_idx, thr, lse, g, spread, partner_label, centre = _load_row_terms(
        THR, PARTNER, SELF, LSE, G, SPREAD, YP, CENTRE, offs_m, row_ok, BLOCK_M, USES_THRESHOLD
    )

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dthr = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(
            K + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :].to(tl.int64) * stride_kd,
            mask=(offs_n[:, None] < Nk) & d_ok[None, :],
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        logit, z, nu, phi, is_partner = _masked_tile(
            s, thr, partner, self_idx, offs_n, Nk, inv_tau, inv_beta, USES_THRESHOLD, HARD_MASK, MASKS_DENOM
        )
        ds, dthr_tile = _dscores(
            logit,
            z,
            nu,
            phi,
            is_partner,
            lse,
            spread,
            partner_label,
            centre,
            g,
            inv_tau,
            inv_beta,
            USES_THRESHOLD,
            HARD_MASK,
            MASKS_DENOM,
            SOFT_LABELS,
        )
        # Padding columns have phi = 0 and z = -inf, so ds is already 0 there.
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        dthr += dthr_tile
    tl.store(
        DQ + offs_m[:, None].to(tl.int64) * stride_dqm + offs_d[None, :],
        dq,
        mask=row_ok[:, None] & d_ok[None, :],
    )
    if USES_THRESHOLD and not HARD_MASK:
        tl.store(DTHR + offs_m, dthr * g, mask=row_ok)


@triton.jit
def _bwd_dk_kernel(
    Q,
    K,
    THR,
    PARTNER,
    SELF,
    LSE,
    G,
    SPREAD,
    YP,
    CENTRE,
    DK,  # output: (Nk, D) float32
    stride_qm,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_dkn,
    Nq,
    Nk,
    D,
    inv_tau,
    inv_beta,
    N_BUCKET,
    USES_THRESHOLD: tl.constexpr,
    HARD_MASK: tl.constexpr,
    MASKS_DENOM: tl.constexpr,
    SOFT_LABELS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < Nk
    d_ok = offs_d < D
    k = tl.load(
        K + offs_n[:, None].to(tl.int64) * stride_kn + offs_d[None, :].to(tl.int64) * stride_kd,
        mask=col_ok[:, None] & d_ok[None, :],
        other=0.0,
    )  # k stays in registers while the row tiles stream past
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, Nq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Nq
        q = tl.load(
            Q + offs_m[:, None].to(tl.int64) * stride_qm + offs_d[None, :].to(tl.int64) * stride_qd,
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        partner, self_idx, thr, lse, g, spread, partner_label, centre = _load_row_terms(
            THR, PARTNER, SELF, LSE, G, SPREAD, YP, CENTRE, offs_m, row_ok, BLOCK_M, USES_THRESHOLD
        )
        # Same orientation as the forward (rows × columns), so the recomputed scores match it.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        logit, z, nu, phi, is_partner = _masked_tile(
            s, thr, partner, self_idx, offs_n, Nk, inv_tau, inv_beta, USES_THRESHOLD, HARD_MASK, MASKS_DENOM
        )
        ds, _ = _dscores(
            logit,
            z,
            nu,
            phi,
            is_partner,
            lse,
            spread,
            partner_label,
            centre,
            g,
            inv_tau,
            inv_beta,
            USES_THRESHOLD,
            HARD_MASK,
            MASKS_DENOM,
            SOFT_LABELS,
        )
        # Padding rows have g = 0, so their ds rows are 0 and add nothing to dk.
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
    tl.store(
        DK + offs_n[:, None].to(tl.int64) * stride_dkn + offs_d[None, :],
        dk,
        mask=col_ok[:, None] & d_ok[None, :],
    )


# ---------------------------------------------------------------------------------------------
# Tile sizes: autotuned on CUDA, FIXED_CONFIG under the interpreter.
#
# Set ADAPTIVE_CONTRASTIVE_AUTOTUNE=0 to skip tuning on CUDA and take `_default_config` (each new
# combination of mode, D and dtype then compiles one config per kernel instead of several: useful
# for test suites that sweep many of them).

# A resident row tile (and its float32 gradient accumulator) holds at most this many elements:
# 128×128 at D <= 128, down to 16×1024 at D = 1024 (16×16 tiles there).
_RESIDENT_ELEMENTS = 128 * 128


def _candidate_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4 if bm * bn <= 4096 else 8, num_stages=stages)
        for bm in (16, 32, 64, 128)
        for bn in (16, 32, 64)
        for stages in (1, 2)
    ]


def _fits(config: triton.Config, block_d: int) -> bool:
    """Whether a config suits rows padded to `block_d`.

    The resident tile (q rows in the forward and dq kernels, k rows in the dk kernel) and its
    float32 accumulator live in registers, so max(BLOCK_M, BLOCK_N)·BLOCK_D is capped; below the
    cap, only the larger row tiles are worth compiling (each config costs a compile per mode). The
    streamed tile is double-buffered in shared memory up to D = 256 and single-buffered above.
    """
    bm, bn = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    wants_stages = 2 if block_d <= 256 else 1
    min_rows = min(64, _RESIDENT_ELEMENTS // block_d // 2)
    min_cols = min(32, _RESIDENT_ELEMENTS // block_d)
    return (
        config.num_stages == wants_stages
        and bm >= min_rows
        and bn >= min_cols
        and max(bm, bn) * block_d <= _RESIDENT_ELEMENTS
    )


def _prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
    block_d = int({**named_args, **kwargs}["BLOCK_D"])
    kept = [c for c in configs if _fits(c, block_d)]
    # Every D <= MAX_DIM keeps at least one config; the smallest tiles are the last resort.
    return kept or [_smallest_config(configs)]


def _smallest_config(configs: list[triton.Config]) -> triton.Config:
    return min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))


def _default_config(block_d: int) -> triton.Config:
    """The untuned choice: 64×64 tiles where they fit, the largest fitting tiles otherwise."""
    kept = [c for c in _candidate_configs() if _fits(c, block_d)]
    preferred = [c for c in kept if c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_N"] == 64]
    if preferred:
        return preferred[0]
    if not kept:
        return _smallest_config(_candidate_configs())
    return max(kept, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])


_TUNE_KEY = ["D", "N_BUCKET", "USES_THRESHOLD", "HARD_MASK", "MASKS_DENOM", "SOFT_LABELS", "DOT_PRECISION", "BLOCK_D"]


def _tuned(kernel: Any) -> Any:
    return triton.autotune(
        configs=_candidate_configs(), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune}
    )(kernel)


_fwd_kernel_tuned = _tuned(_fwd_kernel)
_bwd_dq_kernel_tuned = _tuned(_bwd_dq_kernel)
_bwd_dk_kernel_tuned = _tuned(_bwd_dk_kernel)


def _launch(kernel: Any, tuned: Any, on_cuda: bool, grid_dim: str, rows: int, *args: Any, **kwargs: Any) -> None:
    """Run `kernel` over cdiv(rows, grid_dim) programs: autotuned on CUDA unless switched off,
    with `_default_config` on CUDA without tuning, with FIXED_CONFIG under the interpreter."""
    if on_cuda and os.environ.get("ADAPTIVE_CONTRASTIVE_AUTOTUNE", "1") != "0":
        tuned[lambda meta: (triton.cdiv(rows, meta[grid_dim]),)](*args, **kwargs)
        return
    if on_cuda:
        config = _default_config(kwargs["BLOCK_D"])
        blocks, launch = config.kwargs, {"num_warps": config.num_warps, "num_stages": config.num_stages}
    else:
        blocks, launch = FIXED_CONFIG, {}
    kernel[(triton.cdiv(rows, blocks[grid_dim]),)](*args, **kwargs, **blocks, **launch)


# ---------------------------------------------------------------------------------------------
# Launchers and autograd.


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _size_bucket(n: int) -> int:
    # One tuning per factor of ~8 in size, capped: tuning at huge N costs seconds per config.
    return min(n.bit_length() // 3, 5)


def _dot_precision(q: Tensor) -> str:
    # fp32 inputs follow torch's own switch for matmuls, so both backends round alike:
    # IEEE float32 by default, TF32 when the user enabled it for torch.
    if q.is_cuda and q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _flags(settings: LossSettings) -> dict[str, Any]:
    return {
        "USES_THRESHOLD": settings.uses_threshold,
        "HARD_MASK": settings.mask == "hard",
        "MASKS_DENOM": settings.masks_denominator,
        "SOFT_LABELS": settings.soft_labels,
    }


class MaskedInfoNCETriton(torch.autograd.Function):
    """Fused masked InfoNCE: saves four floats per row, recomputes score tiles in backward.

    q, k: `(Nq, D)`, `(Nk, D)` float32, float16 or bfloat16 (any strides); thresholds `(Nq,)` or
    None; partner, self_index `(Nq,)` int64 contiguous. Returns float32 `(Nq,)` row losses and F.
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
    ) -> tuple[Tensor, Tensor]:
        nq, d = q.shape
        nk = k.shape[0]
        input_dtype = q.dtype
        q, k = _interpreter_safe(q), _interpreter_safe(k)
        stats = torch.empty((4, nq), dtype=torch.float32, device=q.device)
        lse, partner_logit, fn_count, phi_logit_sum = stats.unbind(0)
        thr = thresholds if thresholds is not None else lse  # never read without a threshold
        common = _common_args(q, k, settings)
        _launch(
            _fwd_kernel,
            _fwd_kernel_tuned,
            q.is_cuda,
            "BLOCK_M",
            nq,
            q,
            k,
            thr,
            partner,
            self_index,
            lse,
            partner_logit,
            fn_count,
            phi_logit_sum,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            nq,
            nk,
            d,
            *common["scalars"],
            **common["meta"],
        )
        rows_loss = row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
        ctx.save_for_backward(q, k, thresholds, partner, self_index, lse, partner_logit, fn_count, phi_logit_sum)
        ctx.settings = settings
        ctx.input_dtype = input_dtype
        ctx.mark_non_differentiable(fn_count)
        return rows_loss, fn_count

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor, _grad_count: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, thresholds, partner, self_index, lse, partner_logit, fn_count, phi_logit_sum = ctx.saved_tensors
        settings: LossSettings = ctx.settings
        nq, d = q.shape
        nk = k.shape[0]
        # Row constants of the gradient, O(Nq) elementwise work on the device (no host sync).
        spread, partner_label = label_terms(fn_count, settings)
        centre = label_centre(fn_count, partner_logit, phi_logit_sum)
        g = grad_rows.to(torch.float32).contiguous()  # a mean's gradient arrives expanded (stride 0)
        soft = settings.uses_threshold and settings.mask == "soft"
        grad_q = torch.empty((nq, d), dtype=torch.float32, device=q.device)
        grad_k = torch.empty((nk, d), dtype=torch.float32, device=q.device)
        grad_thr = torch.empty(nq, dtype=torch.float32, device=q.device) if soft else lse
        thr = thresholds if thresholds is not None else lse
        common = _common_args(q, k, settings)
        row_inputs = (q, k, thr, partner, self_index, lse, g, spread, partner_label, centre)
        strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1))
        _launch(
            _bwd_dq_kernel,
            _bwd_dq_kernel_tuned,
            q.is_cuda,
            "BLOCK_M",
            nq,
            *row_inputs,
            grad_q,
            grad_thr,
            *strides,
            grad_q.stride(0),
            nq,
            nk,
            d,
            *common["scalars"],
            **common["meta"],
        )
        _launch(
            _bwd_dk_kernel,
            _bwd_dk_kernel_tuned,
            q.is_cuda,
            "BLOCK_N",
            nk,
            *row_inputs,
            grad_k,
            *strides,
            grad_k.stride(0),
            nq,
            nk,
            d,
            *common["scalars"],
            **common["meta"],
        )
        grad_thresholds = None
        if soft and thresholds is not None and ctx.needs_input_grad[2]:
            grad_thresholds = grad_thr.to(thresholds.dtype)
        return grad_q.to(ctx.input_dtype), grad_k.to(ctx.input_dtype), grad_thresholds, None, None, None


def _interpreter_safe(x: Tensor) -> Tensor:
    # Triton's interpreter (3.9 at least) multiplies bfloat16 tiles in tl.dot as their raw uint16
    # bits; there, bfloat16 runs as float32. Compiled kernels take bfloat16 as it is.
    return x.float() if _INTERPRETED and x.dtype == torch.bfloat16 else x


def _common_args(q: Tensor, k: Tensor, settings: LossSettings) -> dict[str, Any]:
    return {
        "scalars": (1.0 / settings.temperature, 1.0 / settings.mask_temperature, _size_bucket(k.shape[0])),
        "meta": {**_flags(settings), "DOT_PRECISION": _dot_precision(q), "BLOCK_D": _block_d(q.shape[1])},
    }


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
) -> tuple[Tensor, Tensor]:
    """Per-row loss and false-negative count F on the fused Triton path (no Nq×Nk buffer).

    Same contract as `reference.masked_info_nce_rows`. float32, float16 and bfloat16 run as such
    in the kernels, always accumulating in float32; float64 is cast to float32 at this boundary
    (the GPU has no fast float64 tl.dot) and the results and gradients are cast back to float64,
    so they agree with the reference to float32 round-off. Row losses and F are float32
    (float64 for float64 inputs).

    Args:
        q: `(Nq, D)` queries, D <= 1024, already normalised for cosine similarity.
        k: `(Nk, D)` candidates, same dtype and device.
        thresholds: `(Nq,)` thresholds in similarity units, or None for ``keep``.
        partner: `(Nq,)` int64 column of each row's positive.
        self_index: `(Nq,)` int64 column each row leaves out.
        settings: the loss settings.

    Returns:
        `(Nq,)` row losses (differentiable w.r.t. q, k, and thresholds with the soft mask) and
        `(Nq,)` F, without gradient.

    Raises:
        ValueError, TypeError: on shapes, dtypes or devices the kernels cannot take.
    """
    _check_inputs(q, k, thresholds, partner, self_index, settings)
    out_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if q.dtype == torch.float64:
        q, k = q.to(torch.float32), k.to(torch.float32)  # differentiable casts: grads come back as float64
    thr = None
    if settings.uses_threshold and thresholds is not None:
        thr = thresholds if thresholds.dtype == torch.float32 else thresholds.to(torch.float32)
        thr = thr.contiguous()
    rows_loss, fn_count = MaskedInfoNCETriton.apply(q, k, thr, partner.contiguous(), self_index.contiguous(), settings)
    return rows_loss.to(out_dtype), fn_count.to(out_dtype)


def _check_inputs(
    q: Tensor, k: Tensor, thresholds: Tensor | None, partner: Tensor, self_index: Tensor, settings: LossSettings
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
    tensors = (q, k, partner, self_index) if thresholds is None else (q, k, partner, self_index, thresholds)
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    nq = q.shape[0]
    for name, idx in (("partner", partner), ("self_index", self_index)):
        if idx.shape != (nq,) or idx.dtype != torch.int64:
            raise ValueError(f"{name} must be an int64 tensor of shape ({nq},), got {idx.dtype} {tuple(idx.shape)}")
    if settings.uses_threshold:
        if thresholds is None:
            raise ValueError(f'false_negatives="{settings.false_negatives}" needs thresholds, got None')
        if thresholds.shape != (nq,):
            raise ValueError(f"thresholds must have shape ({nq},), got {tuple(thresholds.shape)}")
    if not math.isfinite(settings.temperature) or settings.temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {settings.temperature!r}")
