# fmt: off
# (Triton device code: argument lists stay on a few lines, as in Triton's own tutorials.)
"""The three kernels of the fused masked InfoNCE: forward, dQ and dK (math in masked_info_nce.py).

Each kernel sweeps the tiles of its program in two loops: the "fast" tiles, which cannot hold a
self or partner column and are full (no compares against indices or bounds, unmasked loads), then
the few "special" ones (self/partner/bounds checks). The partner column never enters a tile.
"""

import triton
import triton.language as tl

from ._tiles import (
    BIG_INDEX,
    LN2,
    LOG2E,
    forward_tile,
    grad_dot,
    grad_tile,
    load_rows,
    partner_scores,
    scores,
    special_intervals,
    tile_start,
)


@triton.jit
def _row_intervals(self_idx, partner, row_ok, n_full, BLOCK: tl.constexpr):
    """Special column tiles of a row block: those that may hold one of its self or partner columns."""
    big = tl.full(self_idx.shape, BIG_INDEX, dtype=tl.int32)
    return special_intervals(
        tl.min(tl.where(row_ok, self_idx, big)) // BLOCK, tl.max(tl.where(row_ok, self_idx, 0)) // BLOCK + 1,
        tl.min(tl.where(row_ok, partner, big)) // BLOCK, tl.max(tl.where(row_ok, partner, 0)) // BLOCK + 1,
        n_full,
    )


@triton.jit
def _fwd_kernel(
    Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, COL_LABEL,  # inputs (QL, KL: 3xTF32 remainders)
    LSE, LP, FN, PHIL,  # outputs: lse_i, l_p, F_i, Φ_i (float32, one per row)
    Nq, Nk, stride,  # stride: the padded row length of Q and K
    scale2, mask_scale2, inv_tau,  # log2(e)/τ, log2(e)/β, 1/τ
    HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
    MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr,
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr,
    NUM_CHUNKS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    row0 = tl.program_id(0) * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Nq
    partner = tl.load(PARTNER + offs_m, mask=row_ok, other=0)
    self_idx = tl.load(SELF + offs_m, mask=row_ok, other=0)
    thr = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_THRESHOLD:
        thr = tl.load(THR + offs_m, mask=row_ok, other=0.0)
    thr_m = thr * mask_scale2
    rl = partner
    if HAS_LABELS:
        rl = tl.load(ROW_LABEL + offs_m, mask=row_ok, other=-2)
    q_hi = tl.zeros([BLOCK_M, BLOCK_D], dtype=Q.dtype.element_ty)
    q_lo = q_hi
    if NUM_CHUNKS == 1:  # q stays on chip for the whole sweep over the columns
        q_hi = load_rows(Q, row0, Nq, stride, BLOCK_M, BLOCK_D, True)
        q_lo = q_hi
        if SPLIT:
            q_lo = load_rows(QL, row0, Nq, stride, BLOCK_M, BLOCK_D, True)

    lp = partner_scores(Q, QL, K, KL, offs_m, row_ok, partner, stride, BLOCK_D, NUM_CHUNKS, SPLIT) * inv_tau
    # The partner is always in the denominator: the online softmax starts from its term alone,
    # so the running max is finite from the start.
    m_i = lp * LOG2E
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    fn = tl.zeros([BLOCK_M], dtype=tl.float32)
    phis = tl.zeros([BLOCK_M], dtype=tl.float32)

    n_full = Nk // BLOCK_N
    lo0, len0, lo1, len1 = _row_intervals(self_idx, partner, row_ok, n_full, BLOCK_N)
    n_fast = n_full - len0 - len1
    for t in range(0, n_fast):
        col0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_N)
        s, k_hi, k_lo = scores(q_hi, q_lo, Q, QL, K, KL, row0, col0, Nq, Nk, stride,
                               BLOCK_M, BLOCK_N, BLOCK_D, NUM_CHUNKS, False, SPLIT, False, PRECISION, EMULATE_TF32)
        kappa = None
        if HAS_LABELS:
            kappa = rl[:, None] == tl.load(COL_LABEL + col0 + tl.arange(0, BLOCK_N))[None, :]
        m_i, l_i, fn, phis = forward_tile(s, thr, thr_m, kappa, None, scale2, mask_scale2, m_i, l_i, fn, phis,
                                          HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS,
                                          False)
    for t in range(n_fast, n_fast + len0 + len1 + tl.cdiv(Nk, BLOCK_N) - n_full):
        col0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_N)
        offs_n = col0 + tl.arange(0, BLOCK_N)
        s, k_hi, k_lo = scores(q_hi, q_lo, Q, QL, K, KL, row0, col0, Nq, Nk, stride,
                               BLOCK_M, BLOCK_N, BLOCK_D, NUM_CHUNKS, True, SPLIT, False, PRECISION, EMULATE_TF32)
        cand = (offs_n[None, :] < Nk) & (offs_n[None, :] != self_idx[:, None]) & (offs_n[None, :] != partner[:, None])
        kappa = None
        if HAS_LABELS:
            kappa = rl[:, None] == tl.load(COL_LABEL + offs_n, mask=offs_n < Nk, other=-1)[None, :]
        m_i, l_i, fn, phis = forward_tile(s, thr, thr_m, kappa, cand, scale2, mask_scale2, m_i, l_i, fn, phis,
                                          HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS,
                                          True)
    # l_i >= 2^{l_p log2 e - m_i} > 0: lse is finite.
    tl.store(LSE + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=row_ok)
    tl.store(LP + offs_m, lp, mask=row_ok)
    tl.store(FN + offs_m, fn, mask=row_ok)
    tl.store(PHIL + offs_m, phis * inv_tau, mask=row_ok)


@triton.jit
def _dq_tile(q_hi, q_lo, Q, QL, K, KL, COL_LABEL, row0, col0, d0, Nq, Nk, stride,
             partner, self_idx, thr, thr_m, rl, lse2, coef_p, coef_y, coef_d, sigma, centre,
             scale2, mask_scale2, inv_tau, dq, dthr,
             HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
             MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr, EXACT_MASK_GRAD: tl.constexpr,
             SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr,
             NUM_CHUNKS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             OUT_D: tl.constexpr, CHECK_CAND: tl.constexpr):
    """dQ (and, with the exact soft-mask gradient, Σ βD) of one column tile against the program's rows."""
    offs_n = col0 + tl.arange(0, BLOCK_N)
    s, k_hi, k_lo = scores(q_hi, q_lo, Q, QL, K, KL, row0, col0, Nq, Nk, stride,
                           BLOCK_M, BLOCK_N, BLOCK_D, NUM_CHUNKS, CHECK_CAND, SPLIT, False, PRECISION, EMULATE_TF32)
    cand = None
    if CHECK_CAND:
        cand = (offs_n[None, :] < Nk) & (offs_n[None, :] != self_idx[:, None]) & (offs_n[None, :] != partner[:, None])
    kappa = None
    if HAS_LABELS:
        if CHECK_CAND:
            kappa = rl[:, None] == tl.load(COL_LABEL + offs_n, mask=offs_n < Nk, other=-1)[None, :]
        else:
            kappa = rl[:, None] == tl.load(COL_LABEL + offs_n)[None, :]
    ds, dmask = grad_tile(s, thr[:, None], thr_m[:, None], kappa, cand, lse2[:, None], coef_p[:, None],
                          coef_y[:, None], coef_d[:, None], sigma[:, None], centre[:, None],
                          scale2, mask_scale2, inv_tau,
                          HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                          CHECK_CAND)
    if NUM_CHUNKS > 1 or OUT_D < BLOCK_D:  # the slice of K that this program's slice of dQ needs
        k_hi = load_rows(K + d0, col0, Nk, stride, BLOCK_N, OUT_D, CHECK_CAND)
        k_lo = k_hi
        if SPLIT:
            k_lo = load_rows(KL + d0, col0, Nk, stride, BLOCK_N, OUT_D, CHECK_CAND)
    dq = grad_dot(ds, k_hi, k_lo, dq, SPLIT, PRECISION, EMULATE_TF32)
    if not HARD_MASK and EXACT_MASK_GRAD:
        dthr += tl.sum(dmask, 1)
    return dq, dthr


@triton.jit
def _bwd_dq_kernel(
    Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, COL_LABEL,
    LSE2, COEF_P, COEF_Y, COEF_D, SIGMA, CENTRE, OUT_SCALE,  # per-row float32 terms (masked_info_nce.RowTerms)
    DQ, DTHR,  # outputs: (Nq, stride) float32, (Nq,) float32
    Nq, Nk, stride,
    scale2, mask_scale2, inv_tau, inv_beta,
    HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
    MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr,
    EXACT_MASK_GRAD: tl.constexpr,  # soft mask: mask_gradient="full" (D's denominator part and dt)
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr,
    NUM_CHUNKS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OUT_D: tl.constexpr,  # width of this program's slice of dQ
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    row0 = tl.program_id(0) * BLOCK_M
    d0 = tl.program_id(1) * OUT_D  # this program's slice of dQ (one unless OUT_D < the row)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < Nq
    partner = tl.load(PARTNER + offs_m, mask=row_ok, other=0)
    self_idx = tl.load(SELF + offs_m, mask=row_ok, other=0)
    thr = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_THRESHOLD:
        thr = tl.load(THR + offs_m, mask=row_ok, other=0.0)
    thr_m = thr * mask_scale2
    rl = partner
    if HAS_LABELS:
        rl = tl.load(ROW_LABEL + offs_m, mask=row_ok, other=-2)
    # coef_* = 0 on padding rows (g = 0 there), so they add nothing.
    lse2 = tl.load(LSE2 + offs_m, mask=row_ok, other=0.0)
    coef_p = tl.load(COEF_P + offs_m, mask=row_ok, other=0.0)
    coef_y = coef_p
    if SOFT_LABELS:
        coef_y = tl.load(COEF_Y + offs_m, mask=row_ok, other=0.0)
    coef_d = coef_p
    sigma = coef_p
    centre = coef_p
    if not HARD_MASK:
        coef_d = tl.load(COEF_D + offs_m, mask=row_ok, other=0.0)
        sigma = tl.load(SIGMA + offs_m, mask=row_ok, other=0.0)
        centre = tl.load(CENTRE + offs_m, mask=row_ok, other=0.0)
    q_hi = tl.zeros([BLOCK_M, BLOCK_D], dtype=Q.dtype.element_ty)
    q_lo = q_hi
    if NUM_CHUNKS == 1:
        q_hi = load_rows(Q, row0, Nq, stride, BLOCK_M, BLOCK_D, True)
        q_lo = q_hi
        if SPLIT:
            q_lo = load_rows(QL, row0, Nq, stride, BLOCK_M, BLOCK_D, True)

    dq = tl.zeros([BLOCK_M, OUT_D], dtype=tl.float32)
    dthr = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_full = Nk // BLOCK_N
    lo0, len0, lo1, len1 = _row_intervals(self_idx, partner, row_ok, n_full, BLOCK_N)
    n_fast = n_full - len0 - len1
    for t in range(0, n_fast):
        col0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_N)
        dq, dthr = _dq_tile(q_hi, q_lo, Q, QL, K, KL, COL_LABEL, row0, col0, d0, Nq, Nk, stride,
                            partner, self_idx, thr, thr_m, rl, lse2, coef_p, coef_y, coef_d, sigma, centre,
                            scale2, mask_scale2, inv_tau, dq, dthr,
                            HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                            SPLIT, PRECISION, EMULATE_TF32, NUM_CHUNKS, BLOCK_D, BLOCK_M, BLOCK_N, OUT_D, False)
    for t in range(n_fast, n_fast + len0 + len1 + tl.cdiv(Nk, BLOCK_N) - n_full):
        col0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_N)
        dq, dthr = _dq_tile(q_hi, q_lo, Q, QL, K, KL, COL_LABEL, row0, col0, d0, Nq, Nk, stride,
                            partner, self_idx, thr, thr_m, rl, lse2, coef_p, coef_y, coef_d, sigma, centre,
                            scale2, mask_scale2, inv_tau, dq, dthr,
                            HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                            SPLIT, PRECISION, EMULATE_TF32, NUM_CHUNKS, BLOCK_D, BLOCK_M, BLOCK_N, OUT_D, True)
    dq = dq * tl.load(OUT_SCALE)
    offs_d = d0 + tl.arange(0, OUT_D)
    tl.store(DQ + row0.to(tl.int64) * stride + (tl.arange(0, BLOCK_M)[:, None] * stride + offs_d[None, :]),
             dq, mask=row_ok[:, None])
    if not HARD_MASK and EXACT_MASK_GRAD:  # the threshold's gradient (mask_gradient="full" only)
        if tl.program_id(1) == 0:
            tl.store(DTHR + offs_m, dthr * inv_beta, mask=row_ok)


@triton.jit
def _load_row_term(PTR, offs_m, row_ok, other, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(PTR + offs_m, mask=row_ok, other=other)
    return tl.load(PTR + offs_m)


@triton.jit
def _dk_tile(k_hi, k_lo, Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, LSE2, COEF_P, COEF_Y, COEF_D, SIGMA, CENTRE,
             row0, col0, d0, Nq, Nk, stride, cl, scale2, mask_scale2, inv_tau, dk,
             HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
             MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr, EXACT_MASK_GRAD: tl.constexpr,
             SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr,
             NUM_CHUNKS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             OUT_D: tl.constexpr, CHECK_CAND: tl.constexpr):
    """dK of one row tile against the program's columns, on the transposed tile (columns × rows)."""
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = col0 + tl.arange(0, BLOCK_N)
    row_ok = offs_m < Nq
    # sᵀ = k·qᵀ: dsᵀ is then the A operand of dK += dsᵀ q, straight from registers.
    s, q_hi, q_lo = scores(k_hi, k_lo, K, KL, Q, QL, col0, row0, Nk, Nq, stride,
                           BLOCK_N, BLOCK_M, BLOCK_D, NUM_CHUNKS, CHECK_CAND, SPLIT, True, PRECISION, EMULATE_TF32)
    lse2 = _load_row_term(LSE2, offs_m, row_ok, 0.0, CHECK_CAND)
    coef_p = _load_row_term(COEF_P, offs_m, row_ok, 0.0, CHECK_CAND)
    coef_y = coef_p
    if SOFT_LABELS:
        coef_y = _load_row_term(COEF_Y, offs_m, row_ok, 0.0, CHECK_CAND)
    thr = coef_p
    if HAS_THRESHOLD:
        thr = _load_row_term(THR, offs_m, row_ok, 0.0, CHECK_CAND)
    thr_m = thr * mask_scale2
    coef_d = coef_p
    sigma = coef_p
    centre = coef_p
    if not HARD_MASK:
        coef_d = _load_row_term(COEF_D, offs_m, row_ok, 0.0, CHECK_CAND)
        sigma = _load_row_term(SIGMA, offs_m, row_ok, 0.0, CHECK_CAND)
        centre = _load_row_term(CENTRE, offs_m, row_ok, 0.0, CHECK_CAND)
    cand = None
    if CHECK_CAND:
        partner = tl.load(PARTNER + offs_m, mask=row_ok, other=-1)
        self_idx = tl.load(SELF + offs_m, mask=row_ok, other=-1)
        cand = row_ok[None, :] & (offs_n[:, None] != self_idx[None, :]) & (offs_n[:, None] != partner[None, :])
    kappa = None
    if HAS_LABELS:
        kappa = cl[:, None] == _load_row_term(ROW_LABEL, offs_m, row_ok, -2, CHECK_CAND)[None, :]
    ds, _ = grad_tile(s, thr[None, :], thr_m[None, :], kappa, cand, lse2[None, :], coef_p[None, :], coef_y[None, :],
                      coef_d[None, :], sigma[None, :], centre[None, :], scale2, mask_scale2, inv_tau,
                      HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                      CHECK_CAND)
    if NUM_CHUNKS > 1 or OUT_D < BLOCK_D:
        q_hi = load_rows(Q + d0, row0, Nq, stride, BLOCK_M, OUT_D, CHECK_CAND)
        q_lo = q_hi
        if SPLIT:
            q_lo = load_rows(QL + d0, row0, Nq, stride, BLOCK_M, OUT_D, CHECK_CAND)
    return grad_dot(ds, q_hi, q_lo, dk, SPLIT, PRECISION, EMULATE_TF32)


@triton.jit
def _bwd_dk_kernel(
    Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, COL_LABEL,
    LSE2, COEF_P, COEF_Y, COEF_D, SIGMA, CENTRE, OUT_SCALE,
    SELF_ROWS, PARTNER_ROWS,  # (2, Nk) int32: first and last row naming each column as self / partner
    DK,  # output: (Nk, stride) float32
    Nq, Nk, stride,
    scale2, mask_scale2, inv_tau,
    HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
    MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr,
    EXACT_MASK_GRAD: tl.constexpr,  # soft mask: mask_gradient="full" (D's denominator part and dt)
    SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr,
    NUM_CHUNKS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    OUT_D: tl.constexpr,  # width of this program's slice of dK
):
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs inner tiles of at least 16")
    col0 = tl.program_id(0) * BLOCK_N
    d0 = tl.program_id(1) * OUT_D
    offs_n = col0 + tl.arange(0, BLOCK_N)
    col_ok = offs_n < Nk
    cl = offs_n
    if HAS_LABELS:
        cl = tl.load(COL_LABEL + offs_n, mask=col_ok, other=-1)
    k_hi = tl.zeros([BLOCK_N, BLOCK_D], dtype=K.dtype.element_ty)
    k_lo = k_hi
    if NUM_CHUNKS == 1:  # k stays on chip while the row tiles stream past
        k_hi = load_rows(K, col0, Nk, stride, BLOCK_N, BLOCK_D, True)
        k_lo = k_hi
        if SPLIT:
            k_lo = load_rows(KL, col0, Nk, stride, BLOCK_N, BLOCK_D, True)
    # Special row tiles: those that may name one of these columns as self or partner.
    self_first = tl.min(tl.load(SELF_ROWS + offs_n, mask=col_ok, other=BIG_INDEX))
    self_last = tl.max(tl.load(SELF_ROWS + Nk + offs_n, mask=col_ok, other=-1))
    partner_first = tl.min(tl.load(PARTNER_ROWS + offs_n, mask=col_ok, other=BIG_INDEX))
    partner_last = tl.max(tl.load(PARTNER_ROWS + Nk + offs_n, mask=col_ok, other=-1))
    has_self = self_first <= self_last
    has_partner = partner_first <= partner_last
    n_full = Nq // BLOCK_M
    lo0, len0, lo1, len1 = special_intervals(
        tl.where(has_self, self_first // BLOCK_M, 0), tl.where(has_self, self_last // BLOCK_M + 1, 0),
        tl.where(has_partner, partner_first // BLOCK_M, 0), tl.where(has_partner, partner_last // BLOCK_M + 1, 0),
        n_full,
    )
    n_fast = n_full - len0 - len1
    dk = tl.zeros([BLOCK_N, OUT_D], dtype=tl.float32)
    for t in range(0, n_fast):
        row0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_M)
        dk = _dk_tile(k_hi, k_lo, Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, LSE2, COEF_P, COEF_Y, COEF_D, SIGMA,
                      CENTRE, row0, col0, d0, Nq, Nk, stride, cl, scale2, mask_scale2, inv_tau, dk,
                      HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                      SPLIT, PRECISION, EMULATE_TF32, NUM_CHUNKS, BLOCK_D, BLOCK_M, BLOCK_N, OUT_D, False)
    for t in range(n_fast, n_fast + len0 + len1 + tl.cdiv(Nq, BLOCK_M) - n_full):
        row0 = tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK_M)
        dk = _dk_tile(k_hi, k_lo, Q, QL, K, KL, THR, PARTNER, SELF, ROW_LABEL, LSE2, COEF_P, COEF_Y, COEF_D, SIGMA,
                      CENTRE, row0, col0, d0, Nq, Nk, stride, cl, scale2, mask_scale2, inv_tau, dk,
                      HANDLES_FN, HAS_THRESHOLD, HARD_MASK, HAS_LABELS, MASKS_DENOM, SOFT_LABELS, EXACT_MASK_GRAD,
                      SPLIT, PRECISION, EMULATE_TF32, NUM_CHUNKS, BLOCK_D, BLOCK_M, BLOCK_N, OUT_D, True)
    dk = dk * tl.load(OUT_SCALE)
    offs_d = d0 + tl.arange(0, OUT_D)
    tl.store(DK + col0.to(tl.int64) * stride + (tl.arange(0, BLOCK_N)[:, None] * stride + offs_d[None, :]),
             dk, mask=col_ok[:, None])
