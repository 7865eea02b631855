"""Reference PyTorch backend: the masked InfoNCE of SPEC §2–3 on dense similarity blocks.

Rows-against-columns form shared with the Triton kernel: queries ``q`` (Nq×D) are scored
against candidates ``k`` (Nk×D); row i has a partner column ``partner[i]`` (its positive) and a
``self_index[i]`` column that is left out, and a threshold ``thresholds[i]`` in similarity units.
The single-process loss is ``q = k = Z``; the distributed one is local rows against all gathered
columns.

Forward, for row i with s_j = q_i·k_j and l_j = s_j/τ, over candidates C(i) (all columns but
self and partner):

    ν_j = [s_j <= k_i]  (hard)  or  sigmoid((k_i - s_j)/β)  (soft);   φ_j = 1 - ν_j;  F = Σ_C φ_j
    w_j = ν_j for drop/attract, 1 for keep/relabel;  w_partner = 1
    lse = log Σ_j w_j e^{l_j}
    y_j = (1-α) φ_j / max(F, 1) for attract/relabel (0 otherwise);  y_partner = 1 - Σ_C y_j
    ℓ   = lse - Σ_j y_j l_j

Backward (recomputing the blocks, like flash attention), with P_j = w_j e^{l_j - lse}:

    ∂ℓ/∂s_j = (P_j - y_j)/τ - D_j,   ∂ℓ/∂k_i = Σ_C D_j,
    D_j = ∂ℓ/∂ν_j · ν_j φ_j / β   (soft mask only; 0 for the hard mask)
    ∂ℓ/∂ν_j = [drop/attract] e^{l_j - lse} + [attract/relabel] (1-α)/max(F,1) · (l_j - l_p - [F>1] A/F)
    A = Σ_C φ_j (l_j - l_p)

and dQ = G K, dK = Gᵀ Q with G_ij = g_i ∂ℓ_i/∂s_ij. Rows are processed in chunks so that the
temporaries of one chunk stay in cache; peak extra memory is O(chunk·Nk), never several N×N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._modes import DENOMINATOR_MASKED, SOFT_LABELLED

# Elements per dense block: 2^20 float32 values (4 MiB) keep a block in a CPU's cache.
_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class LossSettings:
    """The scalar settings of one call, shared by the reference and Triton backends."""

    temperature: float
    false_negatives: str
    positive_weight: float
    mask: str
    mask_temperature: float

    @property
    def masks_denominator(self) -> bool:
        return self.false_negatives in DENOMINATOR_MASKED

    @property
    def soft_labels(self) -> bool:
        return self.false_negatives in SOFT_LABELLED

    @property
    def uses_threshold(self) -> bool:
        return self.false_negatives != "keep"


def _row_chunk(num_rows: int, num_cols: int) -> int:
    return max(1, min(num_rows, _BLOCK_ELEMENTS // max(num_cols, 1)))


def _negative_weights(s: Tensor, thr: Tensor, settings: LossSettings) -> Tensor:
    """ν for one block: bool for the hard mask, float in (0, 1) for the soft one."""
    if settings.mask == "hard":
        return s <= thr[:, None]
    return torch.sigmoid((thr[:, None] - s) / settings.mask_temperature)


def _block(
    q: Tensor,
    k: Tensor,
    partner: Tensor,
    self_index: Tensor,
    thr: Tensor | None,
    settings: LossSettings,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Logits of a row block and its masks.

    Returns (l, ν, w-masked logits for the log-sum-exp, local row index). ν has its self and
    partner columns zeroed, so it and φ = 1 - ν restricted to C(i) come out of it directly.
    """
    rows = torch.arange(q.shape[0], device=q.device)
    s = q @ k.T
    nu: Tensor | None = None
    if settings.uses_threshold:
        assert thr is not None
        nu = _negative_weights(s, thr, settings)
        nu[rows, self_index] = 0
        nu[rows, partner] = 0
    logits = s.mul_(1.0 / settings.temperature)
    if settings.masks_denominator:
        assert nu is not None
        if nu.dtype == torch.bool:
            in_denominator = nu.clone()
            in_denominator[rows, partner] = True
            denom_logits = logits.masked_fill(~in_denominator, float("-inf"))
        else:
            weights = nu.clone()
            weights[rows, partner] = 1
            denom_logits = logits + weights.log()
    else:
        denom_logits = logits.clone()
        denom_logits[rows, self_index] = float("-inf")
    return logits, nu, denom_logits, rows


def _candidate_phi(nu: Tensor, rows: Tensor, partner: Tensor, self_index: Tensor, dtype: torch.dtype) -> Tensor:
    """φ = 1 - ν on C(i), zero on the self and partner columns."""
    phi = (~nu).to(dtype) if nu.dtype == torch.bool else 1 - nu
    phi[rows, self_index] = 0
    phi[rows, partner] = 0
    return phi


def _forward_stats(
    q: Tensor, k: Tensor, partner: Tensor, self_index: Tensor, thr: Tensor | None, settings: LossSettings
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row lse, partner logit l_p, F and Σ_C φ_j l_j, chunk by chunk."""
    n = q.shape[0]
    lse = q.new_empty(n)
    partner_logit = q.new_empty(n)
    fn_count = q.new_zeros(n)
    phi_logit_sum = q.new_zeros(n)
    step = _row_chunk(n, k.shape[0])
    for start in range(0, n, step):
        stop = min(n, start + step)
        sl = slice(start, stop)
        t_sl = None if thr is None else thr[sl]
        logits, nu, denom_logits, rows = _block(q[sl], k, partner[sl], self_index[sl], t_sl, settings)
        lse[sl] = torch.logsumexp(denom_logits, dim=1)
        partner_logit[sl] = logits[rows, partner[sl]]
        if nu is not None:
            phi = _candidate_phi(nu, rows, partner[sl], self_index[sl], logits.dtype)
            fn_count[sl] = phi.sum(1)
            if settings.soft_labels:
                phi_logit_sum[sl] = (phi * logits).sum(1)
    return lse, partner_logit, fn_count, phi_logit_sum


def _row_loss(
    lse: Tensor, partner_logit: Tensor, fn_count: Tensor, phi_logit_sum: Tensor, settings: LossSettings
) -> Tensor:
    if not settings.soft_labels:
        return lse - partner_logit
    spread = (1.0 - settings.positive_weight) / fn_count.clamp_min(1.0)
    partner_label = 1.0 - spread * fn_count
    return lse - partner_label * partner_logit - spread * phi_logit_sum


class MaskedInfoNCEFunction(torch.autograd.Function):
    """Dense, row-chunked masked InfoNCE; saves only per-row statistics and recomputes blocks."""

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
        thr = None if thresholds is None else thresholds.to(q.dtype)
        lse, partner_logit, fn_count, phi_logit_sum = _forward_stats(q, k, partner, self_index, thr, settings)
        rows_loss = _row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings)
        ctx.save_for_backward(q, k, thresholds, partner, self_index, lse, partner_logit, fn_count, phi_logit_sum)
        ctx.settings = settings
        ctx.mark_non_differentiable(fn_count)
        return rows_loss, fn_count

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor, _grad_count: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, thresholds, partner, self_index, lse, partner_logit, fn_count, phi_logit_sum = ctx.saved_tensors
        settings: LossSettings = ctx.settings
        thr = None if thresholds is None else thresholds.to(q.dtype)
        grad_q = torch.zeros_like(q)
        grad_k = torch.zeros_like(k)
        soft = settings.mask == "soft" and settings.uses_threshold
        grad_thr = torch.zeros_like(q[:, 0]) if soft else None
        spread = (1.0 - settings.positive_weight) / fn_count.clamp_min(1.0)
        partner_label = 1.0 - spread * fn_count if settings.soft_labels else torch.ones_like(fn_count)
        # [F>1]·A/F from SPEC's max(F, 1): the label spread only moves with F above 1.
        label_centre = torch.where(
            fn_count > 1, (phi_logit_sum - fn_count * partner_logit) / fn_count.clamp_min(1.0), 0.0
        )
        g = grad_rows.to(q.dtype)
        n = q.shape[0]
        step = _row_chunk(n, k.shape[0])
        for start in range(0, n, step):
            stop = min(n, start + step)
            sl = slice(start, stop)
            t_sl = None if thr is None else thr[sl]
            p_sl, s_sl = partner[sl], self_index[sl]
            logits, nu, denom_logits, rows = _block(q[sl], k, p_sl, s_sl, t_sl, settings)
            prob = denom_logits.sub_(lse[sl, None]).exp_()  # P_j = w_j e^{l_j - lse}
            dlogits = prob
            dlogits[rows, p_sl] -= partner_label[sl]
            phi = None
            if nu is not None and settings.soft_labels:
                phi = _candidate_phi(nu, rows, p_sl, s_sl, logits.dtype)
                dlogits.sub_(phi * spread[sl, None])
            dsim = dlogits.mul_(1.0 / settings.temperature)
            if soft:
                assert nu is not None and grad_thr is not None
                if phi is None:
                    phi = _candidate_phi(nu, rows, p_sl, s_sl, logits.dtype)
                dnu = torch.zeros_like(logits)
                if settings.masks_denominator:
                    dnu += (logits - lse[sl, None]).exp_()
                if settings.soft_labels:
                    dnu += (logits - partner_logit[sl, None] - label_centre[sl, None]) * spread[sl, None]
                # ν φ / β, zero off C(i) because φ is.
                dmask = dnu.mul_(nu * phi).mul_(1.0 / settings.mask_temperature)
                dsim.sub_(dmask)
                grad_thr[sl] = dmask.sum(1) * g[sl]
            dsim.mul_(g[sl, None])
            grad_q[sl] = dsim @ k
            grad_k.addmm_(dsim.T, q[sl])
        if grad_thr is not None and thresholds is not None:
            grad_thr = grad_thr.to(thresholds.dtype)
        return grad_q, grad_k, grad_thr, None, None, None


def masked_info_nce_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
) -> tuple[Tensor, Tensor]:
    """Per-row loss and suspected-false-negative count F (no gradient) on the reference path.

    Inputs are already validated and in the compute dtype (float32 or float64); ``q`` and ``k``
    already normalised for cosine similarity. ``thresholds`` is ``(Nq,)`` or None for ``keep``.
    """
    return MaskedInfoNCEFunction.apply(q, k, thresholds, partner, self_index, settings)  # type: ignore[no-any-return]
