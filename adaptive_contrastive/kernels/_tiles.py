# fmt: off
# (Triton device code: argument lists stay on a few lines, as in Triton's own tutorials.)
"""Device helpers of the fused kernels: tile loads, score products, masks and gradient tiles.

Every helper works on one tile held in registers; `_kernels.py` composes them into the loops.
Notation as in `masked_info_nce.py`'s header. Logits are in log2 units (x = s·log2(e)/τ), so
every exponential is one exp2.
"""

import triton
import triton.language as tl

# Globals that kernels read must be constexpr.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
TF32_MASK = tl.constexpr(0xFFFFE000)  # sign, exponent and the 10 mantissa bits a TF32 operand keeps
BIG_INDEX = tl.constexpr(2**31 - 1)  # "no row/column": above every index


@triton.jit
def dot_acc(a_hi, a_lo, b_hi, b_lo, acc, SPLIT: tl.constexpr, SWAPPED: tl.constexpr,
            PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr):
    """acc + a·b on tensor cores.

    SPLIT (3xTF32): a·b ≈ a_hi·b_lo + a_lo·b_hi + a_hi·b_hi, the small cross terms first.
    SWAPPED: the forward's product with its operands exchanged (the dK kernel's transposed
    scores); the cross terms then keep the forward's order, so both round alike.
    EMULATE_TF32: the CPU interpreter multiplies in full float32, so there the operands are cut
    to what TF32 tensor cores read (the top 19 bits) by hand."""
    if EMULATE_TF32:
        a_hi = (a_hi.to(tl.uint32, bitcast=True) & TF32_MASK).to(tl.float32, bitcast=True)
        b_hi = (b_hi.to(tl.uint32, bitcast=True) & TF32_MASK).to(tl.float32, bitcast=True)
        if SPLIT:
            a_lo = (a_lo.to(tl.uint32, bitcast=True) & TF32_MASK).to(tl.float32, bitcast=True)
            b_lo = (b_lo.to(tl.uint32, bitcast=True) & TF32_MASK).to(tl.float32, bitcast=True)
    if SPLIT:
        if SWAPPED:
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        else:
            acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
            acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(a_hi, b_hi, acc, input_precision=PRECISION)
    return acc


@triton.jit
def grad_dot(ds, b_hi, b_lo, acc, SPLIT: tl.constexpr, PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr):
    """acc + ds·b: the gradient product, ds cast to the operand dtype (3xTF32: split in registers)."""
    if SPLIT:
        ds_hi = (ds.to(tl.uint32, bitcast=True) & TF32_MASK).to(tl.float32, bitcast=True)
        return dot_acc(ds_hi, ds - ds_hi, b_hi, b_lo, acc, True, False, PRECISION, EMULATE_TF32)
    ds = ds.to(b_hi.dtype)
    return dot_acc(ds, ds, b_hi, b_hi, acc, False, False, PRECISION, EMULATE_TF32)


@triton.jit
def load_rows(PTR, row0, n_rows, stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, MASKED: tl.constexpr):
    """Rows row0 .. row0 + BLOCK_R of a row-major matrix, columns 0 .. BLOCK_C of PTR; 64-bit
    arithmetic only in the scalar base. MASKED: the tile may run past n_rows (zeros there)."""
    offs_r = tl.arange(0, BLOCK_R)
    ptrs = PTR + row0.to(tl.int64) * stride + (offs_r[:, None] * stride + tl.arange(0, BLOCK_C)[None, :])
    if MASKED:
        return tl.load(ptrs, mask=(row0 + offs_r < n_rows)[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def scores(a_hi, a_lo, A, AL, B, BL, a0, b0, n_a, n_b, stride,
           BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, NUM_CHUNKS: tl.constexpr,
           MASK_B: tl.constexpr, SPLIT: tl.constexpr, SWAPPED: tl.constexpr,
           PRECISION: tl.constexpr, EMULATE_TF32: tl.constexpr):
    """s = a·bᵀ of one tile, [BLOCK_A, BLOCK_B] float32, and the b tile (its last chunk).

    One chunk: a (the resident rows, head and remainder) is given and only b is loaded. Several
    chunks (rows too wide to stay on chip): both are loaded chunk by chunk."""
    s = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    if NUM_CHUNKS == 1:
        b_hi = load_rows(B, b0, n_b, stride, BLOCK_B, BLOCK_D, MASK_B)
        b_lo = b_hi
        if SPLIT:
            b_lo = load_rows(BL, b0, n_b, stride, BLOCK_B, BLOCK_D, MASK_B)
        s = dot_acc(a_hi, a_lo, tl.trans(b_hi), tl.trans(b_lo), s, SPLIT, SWAPPED, PRECISION, EMULATE_TF32)
    else:
        b_hi = tl.zeros([BLOCK_B, BLOCK_D], dtype=B.dtype.element_ty)  # (callers load the slice they need)
        b_lo = b_hi
        for c in range(0, NUM_CHUNKS * BLOCK_D, BLOCK_D):
            ac_hi = load_rows(A + c, a0, n_a, stride, BLOCK_A, BLOCK_D, True)
            bc_hi = load_rows(B + c, b0, n_b, stride, BLOCK_B, BLOCK_D, MASK_B)
            ac_lo = ac_hi
            bc_lo = bc_hi
            if SPLIT:
                ac_lo = load_rows(AL + c, a0, n_a, stride, BLOCK_A, BLOCK_D, True)
                bc_lo = load_rows(BL + c, b0, n_b, stride, BLOCK_B, BLOCK_D, MASK_B)
            s = dot_acc(ac_hi, ac_lo, tl.trans(bc_hi), tl.trans(bc_lo), s, SPLIT, SWAPPED, PRECISION, EMULATE_TF32)
    return s, b_hi, b_lo


@triton.jit
def partner_scores(Q, QL, K, KL, offs_m, row_ok, partner, stride,
                   BLOCK_D: tl.constexpr, NUM_CHUNKS: tl.constexpr, SPLIT: tl.constexpr):
    """s_p = q_i·k_{p(i)} per row with float32 FMAs, O(D) per row (head + remainder = the input)."""
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = offs_m.to(tl.int64)[:, None] * stride
    k_rows = partner.to(tl.int64)[:, None] * stride
    acc = tl.zeros([offs_m.shape[0], BLOCK_D], dtype=tl.float32)
    for c in range(0, NUM_CHUNKS * BLOCK_D, BLOCK_D):
        q = tl.load(Q + q_rows + (c + offs_d)[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        kp = tl.load(K + k_rows + (c + offs_d)[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
        if SPLIT:
            q += tl.load(QL + q_rows + (c + offs_d)[None, :], mask=row_ok[:, None], other=0.0)
            kp += tl.load(KL + k_rows + (c + offs_d)[None, :], mask=row_ok[:, None], other=0.0)
        acc += q * kp
    return tl.sum(acc, 1)


@triton.jit
def special_intervals(lo_a, hi_a, lo_b, hi_b, n_full):
    """Two tile intervals [lo, hi) that may hold a self or a partner column, clipped to the full
    tiles, sorted and merged: (lo0, len0, lo1, len1), disjoint, lo0 + len0 <= lo1."""
    lo_a = tl.minimum(lo_a, n_full)
    hi_a = tl.minimum(hi_a, n_full)
    lo_b = tl.minimum(lo_b, n_full)
    hi_b = tl.minimum(hi_b, n_full)
    swap = lo_b < lo_a
    lo0 = tl.where(swap, lo_b, lo_a)
    hi0 = tl.where(swap, hi_b, hi_a)
    lo1 = tl.where(swap, lo_a, lo_b)
    hi1 = tl.where(swap, hi_a, hi_b)
    overlap = lo1 <= hi0
    hi0 = tl.where(overlap, tl.maximum(hi0, hi1), hi0)
    lo1 = tl.where(overlap, hi0, lo1)
    hi1 = tl.where(overlap, hi0, hi1)
    return lo0, hi0 - lo0, lo1, hi1 - lo1


@triton.jit
def tile_start(t, n_fast, lo0, len0, lo1, len1, n_full, BLOCK: tl.constexpr):
    """First index of the t-th tile of a sweep: n_fast tiles outside both special intervals,
    then the special ones (first interval, second interval, the partial last tile)."""
    fast = t + tl.where(t >= lo0, len0, 0)
    fast = fast + tl.where(fast >= lo1, len1, 0)
    u = t - n_fast
    special = tl.where(u < len0, lo0 + u, tl.where(u < len0 + len1, lo1 + u - len0, n_full + u - len0 - len1))
    return tl.where(t < n_fast, fast, special) * BLOCK


@triton.jit
def mask_terms(s, thr_b, thr_m_b, kappa, cand, mask_scale2,
               HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
               CHECK_CAND: tl.constexpr):
    """fneg (hard: φ' as a predicate), φ', ν' and the denominator weight w = 2^shift · scale of a tile.

    thr_b: thresholds, thr_m_b: thresholds·log2(e)/β, both broadcast along the columns; kappa:
    known positives (labels); cand: candidates (special tiles only). Hard: shift = -inf where a
    column leaves the denominator, 0 elsewhere, scale = 1. Soft, with a = (t - s)·log2(e)/β:
    ν e^l = 2^{x + min(a, 0)} · r, r = 1/(1 + 2^{-|a|}) (no logarithm, never inf·0); κ columns
    leave the denominator (ν' = 0, φ' = 1)."""
    if HARD_MASK:
        if HAS_THRESHOLD:
            fneg = s > thr_b
            if HAS_LABELS:
                fneg = fneg | kappa
        else:
            fneg = kappa  # labels alone decide
        if CHECK_CAND:
            fneg = fneg & cand
        phi = tl.where(fneg, 1.0, 0.0)
        nu = 1.0 - phi
        shift = tl.where(fneg, float("-inf"), 0.0)
        scale = 1.0
    else:
        a = thr_m_b - s * mask_scale2
        e = tl.exp2(-tl.abs(a))
        r = 1.0 / (1.0 + e)
        er = e * r
        above = a < 0  # s > t: φ = r, ν = e·r
        fneg = above  # (unused by the soft mask's callers)
        phi = tl.where(above, r, er)
        nu = tl.where(above, er, r)
        shift = tl.minimum(a, 0.0)
        scale = r
        if HAS_LABELS:
            phi = tl.where(kappa, 1.0, phi)
            nu = tl.where(kappa, 0.0, nu)
            shift = tl.where(kappa, float("-inf"), shift)
        if CHECK_CAND:
            phi = tl.where(cand, phi, 0.0)
    return fneg, phi, nu, shift, scale


@triton.jit
def forward_tile(s, thr, thr_m, kappa, cand, scale2, mask_scale2, m_i, l_i, fn, phis,
                 HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr,
                 HAS_LABELS: tl.constexpr, MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr,
                 CHECK_CAND: tl.constexpr):
    """One column tile of the forward (rows × columns): the online max and sum of the
    denominator in log2 units, F += Σ φ' and Σ φ' s."""
    z = s * scale2
    wscale = 1.0
    if HANDLES_FN:
        fneg, phi, nu, shift, scale = mask_terms(s, thr[:, None], thr_m[:, None], kappa, cand, mask_scale2,
                                           HAS_THRESHOLD, HARD_MASK, HAS_LABELS, CHECK_CAND)
        if MASKS_DENOM:
            if HARD_MASK:
                z = tl.where(fneg, float("-inf"), z)  # one select, no add of -inf/0
            else:
                z = z + shift
                wscale = scale
    if CHECK_CAND:
        z = tl.where(cand, z, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(z, 1))
    l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(z - m_new[:, None]) * wscale, 1)
    if HANDLES_FN:
        fn += tl.sum(phi, 1)
        if SOFT_LABELS:
            if HARD_MASK:
                phis += tl.sum(tl.where(fneg, s, 0.0), 1)
            else:
                phis += tl.sum(phi * s, 1)
    return m_new, l_i, fn, phis


@triton.jit
def grad_tile(s, thr_b, thr_m_b, kappa, cand, lse2_b, coef_p_b, coef_y_b, coef_d_b, sigma_b, centre_b,
              scale2, mask_scale2, inv_tau,
              HANDLES_FN: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HARD_MASK: tl.constexpr,
              HAS_LABELS: tl.constexpr, MASKS_DENOM: tl.constexpr, SOFT_LABELS: tl.constexpr,
              EXACT_MASK_GRAD: tl.constexpr, CHECK_CAND: tl.constexpr):
    """The scaled gradient tile coef·∂ℓ/∂s = coef_p P - coef_y φ - coef_d βD, and βD (soft mask).

    EXACT_MASK_GRAD (soft mask): βD holds the denominator's part P φ (drop/attract) besides the
    labels' σ (l - c) ν φ; without it (mask_gradient="labels") the denominator holds ν constant
    and βD is the labels' part alone. Orientation-free: every per-row term arrives broadcast along
    the columns of the tile ([M, 1] in the row-major dQ kernel, [1, M] in the dK kernel's
    transposed tile)."""
    z = s * scale2 - lse2_b
    wscale = 1.0
    if HANDLES_FN:
        fneg, phi, nu, shift, scale = mask_terms(s, thr_b, thr_m_b, kappa, cand, mask_scale2,
                                           HAS_THRESHOLD, HARD_MASK, HAS_LABELS, CHECK_CAND)
        if MASKS_DENOM:
            if HARD_MASK:
                z = tl.where(fneg, float("-inf"), z)
            else:
                z = z + shift
                wscale = scale
    if CHECK_CAND:
        z = tl.where(cand, z, float("-inf"))
    p = tl.exp2(z) * wscale  # P = w e^{l - lse}
    ds = p * coef_p_b
    dmask = tl.zeros_like(s)
    if HANDLES_FN:
        if SOFT_LABELS:
            if HARD_MASK:
                ds -= tl.where(fneg, coef_y_b, 0.0)
            else:
                ds -= phi * coef_y_b
        if not HARD_MASK:
            if MASKS_DENOM and EXACT_MASK_GRAD:
                dmask += p * phi
            if SOFT_LABELS:
                dmask += sigma_b * (s * inv_tau - centre_b) * nu * phi
            if SOFT_LABELS or (MASKS_DENOM and EXACT_MASK_GRAD):  # (drop, "labels": D = 0)
                ds -= dmask * coef_d_b
    return ds, dmask
