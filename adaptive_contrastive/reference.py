"""Reference PyTorch backend: the masked InfoNCE of SPEC §2–3 on dense similarity blocks.

Rows-against-columns form shared with the Triton kernel: queries ``q`` (Nq×D) are scored
against candidates ``k`` (Nk×D); row i has a partner column ``partner[i]`` (its positive) and a
``self_index[i]`` column that is left out, and a threshold ``thresholds[i]`` in similarity units.
The single-process loss is ``q = k = Z``; the distributed one is local rows against all gathered
columns.

Forward, for row i with s_j = q_i·k_j and l_j = s_j/τ, over candidates C(i) (all columns but
self and partner):

    ν_j = [s_j <= k_i]  (hard)  or  sigmoid((k_i - s_j)/β)  (soft);   φ_j = 1 - ν_j;  F = Σ_C φ_j
    with known positives κ_j = [label_i = label_j >= 0]:  ν_j ← (1 - κ_j) ν_j  (no threshold: ν_j = 1 - κ_j)
    w_j = ν_j for drop/attract, 1 for keep/relabel;  w_partner = 1
    lse = log Σ_j w_j e^{l_j}
    y_j = (1-α) φ_j / max(F, 1) for attract/relabel (0 otherwise);  y_partner = 1 - Σ_C y_j
    ℓ   = lse - Σ_j y_j l_j

Backward (recomputing the blocks, like flash attention), with P_j = w_j e^{l_j - lse}:

    ∂ℓ/∂s_j = (P_j - y_j)/τ - D_j

where D_j is the soft mask's own term (0 for the hard mask). With ``mask_gradient="labels"`` (the
library's soft mask) the softmax denominator holds ν as a constant and the threshold gets no
gradient: only the labels' dependence on s is differentiated,

    D_j = [attract/relabel] σ_i (l_j - c_i) ν_j φ_j / β,   σ_i = (1-α)/max(F,1),
    c_i = l_p + [F>1] Σ_C φ_j (l_j - l_p)/F

(∂ℓ/∂φ_j through the labels is -σ_i (l_j - c_i); k is a constant of the loss, as with the hard mask).
With ``mask_gradient="full"`` (the exact derivative, kept to reproduce the collapse it causes)

    D_j = ∂ℓ/∂ν_j · ν_j φ_j / β,   ∂ℓ/∂k_i = Σ_C D_j,
    ∂ℓ/∂ν_j = [drop/attract] e^{l_j - lse} + [attract/relabel] σ_i (l_j - c_i)

whose denominator part ν_j e^{l_j - lse} φ_j / β is evaluated as P_j φ_j / β. That part is >= 0 for
every candidate: lowering k always lowers the loss, and it outweighs L_reg (see the DuoRec example's
README), so k falls until every candidate is flagged.

and dQ = G K, dK = Gᵀ Q with G_ij = g_i ∂ℓ_i/∂s_ij. Rows are processed in chunks so that the
temporaries of one chunk stay in cache.

With a hard mask (or labels alone, or ``keep``) ∂ℓ/∂l = P - y does not depend on g, so the
forward stores it (one Nq×Nk float block) and the backward is a row scaling and two matrix
products, as cheap as plain InfoNCE's. The soft mask saves P and ν instead and recomputes the
similarities. Masked-out entries are pushed far below the row maximum (by a finite offset, so that
no arithmetic meets -inf - -inf), and the thresholded blocks are exponentiated in log2 units with
``exp2``, like the Triton kernel: on CPUs ``exp`` slows down several-fold on blocks holding -inf or
far-underflowing values, ``exp2`` does not, and those entries come out exactly 0.

On a CPU the cost of these passes is mostly memory traffic, and fresh multi-megabyte temporaries
add page faults (the kernel zeroing new pages) on top: each call allocates its chunk buffers once
and reuses them for every chunk. Float32 blocks of the hard path on a CPU skip all of that: a compiled
C loop (`cpu.hard_rows`) makes three passes over one row at a time, in place in the saved block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu as cpu_kernel
from ._modes import DENOMINATOR_MASKED, SOFT_LABELLED

# Elements per dense block: 2^20 float32 values (4 MiB) keep a block in a CPU's cache.
_BLOCK_ELEMENTS = 1 << 20
_LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class LossSettings:
    """The scalar settings of one call, shared by the reference and Triton backends."""

    temperature: float
    false_negatives: str
    positive_weight: float
    mask: str
    mask_temperature: float
    # The public API passes "labels" (its default); "full", the exact derivative, stays the default of direct
    # constructions, which the backends' tests and benchmarks use. Both backends implement both.
    mask_gradient: str = "full"

    @property
    def masks_denominator(self) -> bool:
        return self.false_negatives in DENOMINATOR_MASKED

    @property
    def soft_labels(self) -> bool:
        return self.false_negatives in SOFT_LABELLED

    @property
    def uses_threshold(self) -> bool:
        return self.false_negatives != "keep"

    @property
    def exact_mask_gradient(self) -> bool:
        """Whether the soft mask is differentiated exactly (denominator and threshold included)."""
        return self.mask_gradient == "full"


def _row_chunk(num_rows: int, num_cols: int) -> int:
    return max(1, min(num_rows, _BLOCK_ELEMENTS // max(num_cols, 1)))


def _negative_weights(
    s: Tensor,
    thr: Tensor | None,
    known: Tensor | None,
    rows: Tensor,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
) -> Tensor:
    """ν of a block on C(i), zero on the self and partner columns and on known positives; bool (hard,
    or labels alone when there is no threshold) or float (soft)."""
    if thr is None:
        assert known is not None
        nu = ~known
    elif settings.mask == "hard":
        nu = s <= thr[:, None]
        if known is not None:
            nu &= ~known
    else:
        nu = torch.sigmoid((thr[:, None] - s) / settings.mask_temperature)
        if known is not None:
            nu.masked_fill_(known, 0.0)
    nu[rows, self_index] = 0
    nu[rows, partner] = 0
    return nu


def known_positives(row_labels: Tensor, column_labels: Tensor) -> Tensor:
    """κ of a block: True where a column shares the row's known (non-negative) label, SPEC §8.

    Self and partner columns are True too when labelled; every caller treats them separately.
    """
    return (row_labels[:, None] == column_labels[None, :]) & (row_labels >= 0)[:, None]


def _denominator_logits(
    logits: Tensor,
    nu: Tensor | None,
    log_nu: Tensor | None,
    rows: Tensor,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
) -> Tensor:
    """l_j + log w_j: -inf where a column leaves the softmax denominator.

    The soft mask passes log ν = logsigmoid((k - s)/β) itself: ν may underflow to 0 where e^l is
    still large enough for ν·e^l to matter.
    """
    if not settings.masks_denominator:
        out = logits.clone()
    elif log_nu is not None:
        out = logits + log_nu
    else:
        assert nu is not None
        out = torch.where(nu, logits, float("-inf"))
    out[rows, self_index] = float("-inf")
    out[rows, partner] = logits[rows, partner]
    return out


def _phi_logit_sum(logits: Tensor, nu: Tensor, rows: Tensor, partner: Tensor, self_index: Tensor) -> Tensor:
    """Σ_C φ_j l_j, the label term's sum over suspected false negatives."""
    weighted = torch.where(nu, 0.0, logits) if nu.dtype == torch.bool else (1 - nu) * logits
    weighted[rows, self_index] = 0
    weighted[rows, partner] = 0
    return weighted.sum(1)


def label_terms(fn_count: Tensor, settings: LossSettings) -> tuple[Tensor, Tensor]:
    """σ_i = (1-α)/max(F_i, 1), the label of each suspected false negative, and y_p = 1 - σ_i F_i,
    the partner's; (0, 1) for the modes without soft labels. Shared by every backend."""
    if not settings.soft_labels:
        return torch.zeros_like(fn_count), torch.ones_like(fn_count)
    spread = (1.0 - settings.positive_weight) / fn_count.clamp_min(1.0)
    return spread, 1.0 - spread * fn_count


def row_loss(
    lse: Tensor, partner_logit: Tensor, fn_count: Tensor, phi_logit_sum: Tensor, settings: LossSettings
) -> Tensor:
    """ℓ_i = lse_i - y_p l_p - σ_i Σ_C φ_j l_j from the saved row statistics."""
    spread, partner_label = label_terms(fn_count, settings)
    return lse - partner_label * partner_logit - spread * phi_logit_sum


def label_centre(fn_count: Tensor, partner_logit: Tensor, phi_logit_sum: Tensor) -> Tensor:
    """c_i = l_p + [F>1]·Σ_C φ_j (l_j - l_p)/F: ∂(label term)/∂φ_j = σ_i (l_j - c_i) (soft mask).

    The [F>1] comes from SPEC's max(F, 1): the label spread only moves with F above 1.
    """
    spread_mean = (phi_logit_sum - fn_count * partner_logit) / fn_count.clamp_min(1.0)
    return partner_logit + torch.where(fn_count > 1, spread_mean, 0.0)


def _masked_offset(dtype: torch.dtype) -> float:
    """How far masked-out similarities are pushed down: far below any finite similarity."""
    return torch.finfo(dtype).max / 4


def _false_negative_block(
    sims: Tensor,
    thr: Tensor | None,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    rows: Tensor,
    partner: Tensor,
    self_index: Tensor,
    out: tuple[Tensor, Tensor],
) -> Tensor:
    """φ of a block of similarities as 0/1 floats: above the threshold or a known positive, on C(i) only.

    `out`: two buffers shaped like `sims` to write into (reused across chunks instead of allocated); φ always
    lands in the first, so the second is free again once this returns.
    """
    phi, spare = out
    if thr is not None:
        torch.gt(sims, thr[:, None], out=phi)
    if row_labels is not None and column_labels is not None:
        known = phi if thr is None else spare
        torch.eq(row_labels[:, None], column_labels[None, :], out=known)
        if known is not phi:
            torch.maximum(phi, known, out=phi)
    phi[rows, self_index] = 0
    phi[rows, partner] = 0
    return phi


def _comparable_labels(row_labels: Tensor, column_labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Labels as small integers in `dtype`, so that a block compares them in its own floating dtype (an int64
    comparison written into a float block takes a slow casting path on CPUs, several times the cost of the
    float one). Dense ranks of the labels, computed without data-dependent shapes; unknown labels (< 0) must
    match nothing, so rows get -1 and columns -2. Falls back to the integers when the ranks would not be
    exact in `dtype`."""
    n_rows = row_labels.shape[0]
    if n_rows + column_labels.shape[0] > 2 / torch.finfo(dtype).eps:
        rows, columns = row_labels, column_labels
    else:
        both = torch.cat([row_labels, column_labels])
        ordered, order = torch.sort(both)
        starts = torch.ones_like(ordered, dtype=torch.bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        ranks = torch.empty_like(both, dtype=dtype).scatter_(0, order, starts.cumsum(0).to(dtype))  # from 1 up
        rows, columns = ranks[:n_rows], ranks[n_rows:]
    return torch.where(row_labels < 0, -1, rows), torch.where(column_labels < 0, -2, columns)


def _hard_forward(
    q: Tensor,
    k: Tensor,
    thr: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """Hard mask, labels alone, or ``keep``: row statistics and the block ∂ℓ/∂l = P - y."""
    if row_labels is not None and column_labels is not None:
        row_labels, column_labels = _comparable_labels(row_labels, column_labels, q.dtype)
    if cpu_kernel.usable(q) and (row_labels is None or row_labels.dtype == q.dtype):
        return _hard_forward_kernel(q, k, thr, partner, self_index, settings, row_labels, column_labels)
    n, n_cols = q.shape[0], k.shape[0]
    inv_tau = 1.0 / settings.temperature
    handles_fn = settings.uses_threshold
    grad_logits = q.new_empty((n, n_cols))
    lse = q.new_empty(n)
    partner_logit = q.new_empty(n)
    fn_count = q.new_zeros(n)
    phi_logit_sum = q.new_zeros(n)
    # keep compares nothing with a threshold, so 1/τ can be folded into q (one pass less per block).
    q_in = q if handles_fn else q * inv_tau
    step = _row_chunk(n, n_cols)
    # Buffers reused by every chunk: the similarities, and φ and κ (fresh blocks per chunk cost more in page faults
    # than filling them on a CPU).
    scratch = q.new_empty((3 if handles_fn else 1, min(step, n), n_cols))
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        p_sl, s_sl = partner[sl], self_index[sl]
        rows = torch.arange(p_sl.shape[0], device=q.device)
        buffers = scratch[:, : sl.stop - sl.start]
        sims = torch.mm(q_in[sl], k.T, out=buffers[0])  # similarities (logits for keep)
        partner_logit[sl] = sims[rows, p_sl] * (inv_tau if handles_fn else 1.0)
        phi = None
        if handles_fn:
            phi = _false_negative_block(
                sims,
                None if thr is None else thr[sl],
                None if row_labels is None else row_labels[sl],
                column_labels,
                rows,
                p_sl,
                s_sl,
                (buffers[1], buffers[2]),
            )
            fn_count[sl] = phi.sum(1)
            if settings.soft_labels:
                # Σ φ_j s_j through the spare buffer (κ is spent by now): a fresh product block per chunk
                # costs more in page faults than the multiplication itself.
                phi_logit_sum[sl] = torch.mul(phi, sims, out=buffers[2]).sum(1) * inv_tau
            if settings.masks_denominator:
                sims.add_(phi, alpha=-_masked_offset(sims.dtype))
        sims[rows, s_sl] = float("-inf")
        row_max = sims.amax(1, keepdim=True)
        shifted = sims.sub_(row_max)  # exact (Sterbenz) before the scaling, which must not round it away
        if handles_fn:
            # In log2 units, like the Triton kernel: exp2 keeps its speed on the masked (far below) and self (-inf)
            # columns, which come out exactly 0, where exp slows down several-fold.
            exp = shifted.mul_(_LOG2E * inv_tau).exp2_()
            row_max = row_max * inv_tau
        else:
            exp = shifted.exp_()  # e^{-inf} = 0 on the self column
        total = exp.sum(1, keepdim=True)
        lse[sl] = (row_max + total.log()).squeeze(1)
        block = torch.div(exp, total, out=grad_logits[sl])
        spread, partner_label = label_terms(fn_count[sl], settings)
        if phi is not None and settings.soft_labels:
            block.addcmul_(phi, spread[:, None], value=-1)
        block[rows, p_sl] -= partner_label
    rows_loss = row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
    return rows_loss, fn_count, grad_logits, None, lse, partner_logit, phi_logit_sum


def _hard_forward_kernel(
    q: Tensor,
    k: Tensor,
    thr: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """`_hard_forward` with the passes after the matrix product done by the compiled CPU loop (`cpu.hard_rows`):
    the same statistics and block, to float32 rounding. Labels arrive comparable.

    Unlike the PyTorch ops, the loop needs no row chunks: it makes its three passes over one row at a time."""
    n, n_cols = q.shape[0], k.shape[0]
    handles_fn = settings.uses_threshold
    flags = 0
    if handles_fn:
        flags = cpu_kernel.USES_PHI
        flags |= cpu_kernel.MASKS_DENOMINATOR if settings.masks_denominator else 0
        flags |= cpu_kernel.SOFT_LABELS if settings.soft_labels else 0
    else:
        thr = row_labels = column_labels = None
    grad_logits = q.new_empty((n, n_cols))
    lse, partner_logit, fn_count, phi_logit_sum = (q.new_empty(n) for _ in range(4))
    partner, self_index = partner.contiguous().long(), self_index.contiguous().long()
    thr = None if thr is None else thr.contiguous()
    if row_labels is not None and column_labels is not None:
        row_labels, column_labels = row_labels.contiguous(), column_labels.contiguous()
    # The similarities go straight into the saved block, and the loop overwrites them with P - y, row by row: one
    # matrix product and one call (whose rows are split over threads once, not once per chunk).
    torch.mm(q, k.T, out=grad_logits)
    with torch.profiler.record_function("adaptive_contrastive::cpu_hard_rows"):
        cpu_kernel.hard_rows(
            grad_logits, thr, row_labels, column_labels, partner, self_index, settings.temperature, flags,
            settings.positive_weight, grad_logits, lse, partner_logit, fn_count, phi_logit_sum,
        )  # fmt: skip
    rows_loss = row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
    return rows_loss, fn_count, grad_logits, None, lse, partner_logit, phi_logit_sum


def _soft_forward(
    q: Tensor,
    k: Tensor,
    thr: Tensor,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
) -> tuple[Tensor, ...]:
    """Soft mask: row statistics, the softmax P and the mask ν (the backward needs both)."""
    n, n_cols = q.shape[0], k.shape[0]
    prob = q.new_empty((n, n_cols))
    nu_all = q.new_empty((n, n_cols))
    lse = q.new_empty(n)
    partner_logit = q.new_empty(n)
    fn_count = q.new_zeros(n)
    phi_logit_sum = q.new_zeros(n)
    step = _row_chunk(n, n_cols)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        p_sl, s_sl = partner[sl], self_index[sl]
        rows = torch.arange(p_sl.shape[0], device=q.device)
        logits = q[sl] @ k.T
        known = None
        if row_labels is not None and column_labels is not None:
            known = known_positives(row_labels[sl], column_labels)
        nu = _negative_weights(logits, thr[sl], known, rows, p_sl, s_sl, settings)
        log_nu = None
        if settings.masks_denominator:
            log_nu = F.logsigmoid((thr[sl, None] - logits) / settings.mask_temperature)
            if known is not None:
                log_nu.masked_fill_(known, float("-inf"))
        nu_all[sl] = nu
        # Σ(1 - ν) directly: |C| - Σν loses digits when most ν are near 1
        phi = 1 - nu
        phi[rows, s_sl] = 0
        phi[rows, p_sl] = 0
        fn_count[sl] = phi.sum(1)
        logits.mul_(1.0 / settings.temperature)
        partner_logit[sl] = logits[rows, p_sl]
        if settings.soft_labels:
            phi_logit_sum[sl] = _phi_logit_sum(logits, nu, rows, p_sl, s_sl)
        # Softmax over the denominator, shifted by its own row max for stability.
        exp = _denominator_logits(logits, nu, log_nu, rows, p_sl, s_sl, settings)
        row_max = exp.amax(1, keepdim=True)
        exp.sub_(row_max).exp_()
        total = exp.sum(1, keepdim=True)
        lse[sl] = (row_max + total.log()).squeeze(1)
        torch.div(exp, total, out=prob[sl])
    rows_loss = row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
    return rows_loss, fn_count, prob, nu_all, lse, partner_logit, phi_logit_sum


def _soft_backward(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    prob: Tensor,
    nu_all: Tensor,
    fn_count: Tensor,
    partner_logit: Tensor,
    phi_logit_sum: Tensor,
    g: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """dQ, dK and (``mask_gradient="full"`` only) the threshold's gradient of the soft mask."""
    spread, partner_label = label_terms(fn_count, settings)
    centre = label_centre(fn_count, partner_logit, phi_logit_sum)
    n = q.shape[0]
    exact = settings.exact_mask_gradient
    grad_q = torch.empty_like(q)
    grad_k = torch.zeros_like(k)
    grad_thr = torch.zeros_like(fn_count) if exact else None
    step = _row_chunk(n, k.shape[0])
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        p_sl, s_sl = partner[sl], self_index[sl]
        rows = torch.arange(p_sl.shape[0], device=q.device)
        nu = nu_all[sl]
        # ∂ℓ/∂l = P - y, labels (1-α)/max(F,1) on the suspected false negatives.
        if settings.soft_labels:
            dlogits = prob[sl] - (1 - nu) * spread[sl, None]
            dlogits[rows, s_sl] = 0
            dlogits[rows, p_sl] = prob[sl][rows, p_sl]
        else:
            dlogits = prob[sl].clone()
        dlogits[rows, p_sl] -= partner_label[sl]
        dsim = dlogits.mul_(1.0 / settings.temperature)
        # D = ∂ℓ/∂ν · νφ/β, zero off C(i) because ν is zero on the self and partner columns
        # (and on known positives, whose ν does not depend on the threshold).
        # The denominator's part ν·e^{l-lse} is P itself: e^{l-lse} alone can overflow
        # where ν has underflowed to 0. Only the exact derivative has it.
        phi = 1 - nu
        dmask = torch.zeros_like(dsim)
        if settings.masks_denominator and exact:
            dmask += prob[sl] * phi
            dmask[rows, p_sl] = 0  # the partner is no candidate: φ there is not 1 - ν
        if settings.soft_labels:
            logits = (q[sl] @ k.T).mul_(1.0 / settings.temperature)
            logits.sub_(centre[sl, None]).mul_(spread[sl, None])
            dmask += logits.mul_(nu * phi)
        dmask.mul_(1.0 / settings.mask_temperature)
        dsim.sub_(dmask)
        if grad_thr is not None:
            grad_thr[sl] = dmask.sum(1) * g[sl]
        dsim.mul_(g[sl, None])
        torch.mm(dsim, k, out=grad_q[sl])
        grad_k.addmm_(dsim.T, q[sl])
    return grad_q, grad_k, None if grad_thr is None else grad_thr.to(thresholds.dtype)


def _hard_backward(
    q: Tensor, k: Tensor, grad_logits: Tensor, g: Tensor, settings: LossSettings
) -> tuple[Tensor, Tensor]:
    """dQ = G K and dK = Gᵀ Q with G = diag(g/τ) (P - y) from the stored block.

    The row scaling commutes with the products, so it is applied to the N×D operands and results instead of to
    the N×N block: dQ = diag(g/τ) (B K) and dK = Bᵀ (diag(g/τ) Q), and the block is only read, by the two products.
    """
    scale = (g * (1.0 / settings.temperature))[:, None]
    grad_q = torch.mm(grad_logits, k).mul_(scale)
    grad_k = torch.mm(grad_logits.T, q * scale)
    return grad_q, grad_k


def _is_soft(settings: LossSettings, thresholds: Tensor | None) -> bool:
    """Whether the soft-mask path runs: a soft mask needs a threshold to soften (labels alone are hard)."""
    return settings.mask == "soft" and settings.uses_threshold and thresholds is not None


class MaskedInfoNCEFunction(torch.autograd.Function):
    """Dense masked InfoNCE over row chunks, with the row statistics and one Nq×Nk block saved.

    Written in the ``setup_context`` form so that ``torch.func`` transforms accept it; the
    blocks it saves are extra (non-differentiable) outputs that `masked_info_nce_rows` drops.
    Under ``create_graph=True`` the backward differentiates `dense_rows` instead, so higher-order
    gradients are exact.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        q: Tensor,
        k: Tensor,
        thresholds: Tensor | None,
        partner: Tensor,
        self_index: Tensor,
        settings: LossSettings,
        row_labels: Tensor | None,
        column_labels: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        thr = None if thresholds is None else thresholds.to(q.dtype)
        if not settings.uses_threshold:
            thr = row_labels = column_labels = None
        if _is_soft(settings, thr):
            assert thr is not None
            return _soft_forward(q, k, thr, partner, self_index, settings, row_labels, column_labels)
        return _hard_forward(q, k, thr, partner, self_index, settings, row_labels, column_labels)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor | None, ...]) -> None:
        q, k, thresholds, partner, self_index, settings, row_labels, column_labels = inputs
        _, fn_count, block, nu_all, _, partner_logit, phi_logit_sum = output
        ctx.save_for_backward(
            q, k, thresholds, partner, self_index, row_labels, column_labels,
            block, nu_all, fn_count, partner_logit, phi_logit_sum,
        )  # fmt: skip
        ctx.settings = settings
        ctx.mark_non_differentiable(*(t for t in output[1:] if t is not None))
        # The saved blocks are outputs too: without this, every backward would allocate and zero an
        # Nq×Nk gradient for them that nothing reads.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor | None, *_unused: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (q, k, thresholds, partner, self_index, row_labels, column_labels, block, nu_all, fn_count, partner_logit,
         phi_logit_sum) = ctx.saved_tensors  # fmt: skip
        settings: LossSettings = ctx.settings
        if grad_rows is None:  # only the (non-differentiable) side outputs reached the backward
            return (None,) * 8
        if torch.is_grad_enabled():
            return _differentiable_backward(
                ctx, q, k, thresholds, partner, self_index, settings, row_labels, column_labels, grad_rows
            )
        g = grad_rows.to(q.dtype)
        grad_thr = None
        if _is_soft(settings, thresholds):
            grad_q, grad_k, grad_thr = _soft_backward(
                q, k, thresholds, partner, self_index, settings, block, nu_all, fn_count, partner_logit,
                phi_logit_sum, g,
            )  # fmt: skip
        else:
            grad_q, grad_k = _hard_backward(q, k, block, g, settings)
        return grad_q, grad_k, grad_thr, None, None, None, None, None


def dense_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None = None,
    column_labels: Tensor | None = None,
) -> Tensor:
    """The row losses of SPEC §3 in plain differentiable torch ops on the whole Nq×Nk block.

    Slower and hungrier than `MaskedInfoNCEFunction`; it exists so that gradients of gradients are
    exact (autograd differentiates it again) and as a second, independent spelling of the math.
    """
    n, n_cols = q.shape[0], k.shape[0]
    rows = torch.arange(n, device=q.device)
    sims = q @ k.T
    logits = sims / settings.temperature
    columns = torch.arange(n_cols, device=q.device)
    candidate = (columns[None, :] != self_index[:, None]) & (columns[None, :] != partner[:, None])
    partner_logit = logits[rows, partner]
    if not settings.uses_threshold:
        denom = logits.masked_fill(~candidate, float("-inf")).scatter(1, partner[:, None], partner_logit[:, None])
        return torch.logsumexp(denom, dim=1) - partner_logit
    known = None
    if row_labels is not None and column_labels is not None:
        known = known_positives(row_labels, column_labels) & candidate
    if thresholds is None:
        assert known is not None
        nu = (~known & candidate).to(q.dtype)
        log_nu = torch.where(nu > 0, 0.0, float("-inf")).to(q.dtype)
    elif settings.mask == "hard":
        below = (sims <= thresholds[:, None]) & candidate
        if known is not None:
            below &= ~known
        nu = below.to(q.dtype)
        log_nu = torch.where(below, 0.0, float("-inf")).to(q.dtype)
    else:
        # mask_gradient="labels": k is a constant of the loss and the denominator holds ν fixed.
        exact = settings.exact_mask_gradient
        x = ((thresholds if exact else thresholds.detach())[:, None] - sims) / settings.mask_temperature
        keep = candidate if known is None else candidate & ~known
        nu = torch.sigmoid(x) * keep
        log_nu = F.logsigmoid(x).masked_fill(~keep, float("-inf"))
        if not exact:
            log_nu = log_nu.detach()
    phi = (1 - nu) * candidate
    fn_count = phi.sum(1)
    if settings.masks_denominator:
        denom = (logits + log_nu).masked_fill(~candidate, float("-inf"))
    else:
        denom = logits.masked_fill(~candidate, float("-inf"))
    denom = denom.scatter(1, partner[:, None], partner_logit[:, None])
    lse = torch.logsumexp(denom, dim=1)
    phi_logit_sum = (phi * logits).sum(1)
    return row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)


def _differentiable_backward(
    ctx: Any,
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    grad_rows: Tensor,
) -> tuple[Tensor | None, ...]:
    """The backward under ``create_graph=True``: autograd through `dense_rows`, so that the returned
    gradients are themselves differentiable (w.r.t. the inputs and the upstream gradient)."""
    # Fresh nodes to differentiate by: k may be a view of q (one process scores its rows against
    # themselves), and autograd.grad by q itself would then add the path through k to q's gradient.
    soft = settings.mask == "soft" and settings.uses_threshold
    q_node, k_node = q.clone(), k.clone()
    thr_node = None if thresholds is None else (thresholds.clone() if soft else thresholds.detach())
    rows = dense_rows(q_node, k_node, thr_node, partner, self_index, settings, row_labels, column_labels)
    nodes = (q_node, k_node, thr_node)
    needs = ctx.needs_input_grad[:3]
    taken = [need and t is not None and t.requires_grad for t, need in zip(nodes, needs, strict=True)]
    wanted = [t for t, take in zip(nodes, taken, strict=True) if take and t is not None]
    grads = iter(torch.autograd.grad(rows, wanted, grad_outputs=grad_rows, create_graph=True, allow_unused=True))
    out = [next(grads) if take else None for take in taken]
    if ctx.needs_input_grad[2] and thresholds is not None and out[2] is None:
        out[2] = torch.zeros_like(thresholds)
    return (*out, None, None, None, None, None)


def masked_info_nce_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None = None,
    column_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row loss and false-negative count F (no gradient) on the reference path.

    Inputs are already validated and in the compute dtype (float32 or float64); ``q`` and ``k``
    already normalised for cosine similarity. ``thresholds`` is ``(Nq,)``, or None for ``keep`` and
    for labels alone. ``row_labels`` `(Nq,)` and ``column_labels`` `(Nk,)` (int64, negative =
    unknown) mark known positives (SPEC §8); both or neither.
    """
    out = MaskedInfoNCEFunction.apply(q, k, thresholds, partner, self_index, settings, row_labels, column_labels)
    return out[0], out[1]
