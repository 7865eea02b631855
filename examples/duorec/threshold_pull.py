"""The soft mask's pull on the threshold, split into its parts (the measurement behind the soft mask's design).

With the soft mask ν_ij = sigmoid((k_i − s_ij)/β), φ_ij = 1 − ν_ij, the row loss ℓ_i depends on k_i through ν, and

    ∂ℓ_i/∂k_i = Σ_{j∈C(i)} ∂ℓ_i/∂ν_ij · ν_ij φ_ij / β = den_i + lab_i,

    den_i = Σ_C P_ij φ_ij / β                      (drop, attract: the softmax denominator; always >= 0)
    lab_i = Σ_C σ_i (l_ij − c_i) ν_ij φ_ij / β     (attract, relabel: the soft labels)

with P_ij = ν_ij e^{l_ij − lse_i} the softmax over the masked denominator, σ_i = (1−α)/max(F_i, 1) the label of
each suspected false negative, and c_i = l_ip + [F_i > 1]·Σ_C φ_ij (l_ij − l_ip)/F_i (the mean flagged logit when
F_i > 1, the partner's logit otherwise). A positive pull lowers k under gradient descent (more candidates flagged).

L_reg = mean_b (k_b − k̄)² pulls sequence b by 2λ(k_b − k̄)/B, and the mean loss over the N = 2B rows by
(∂ℓ_b/∂k + ∂ℓ_{b+B}/∂k)/N; multiplied by B both are per-row quantities: the loss's pull is the mean of the two
rows' den + lab, L_reg's is 2λ(k_b − k̄). A row's threshold settles where they cancel: k − k̄ = −(den + lab)/(2λ).

Plain float64 torch on the whole N×N block; independent of the library's backends, which it is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PullTerms:
    """Per-row parts of ∂ℓ_i/∂k_i under the soft mask, all `(N,)` float64.

    Attributes:
        denominator: den_i (0 for ``relabel``).
        labels: lab_i (0 for ``drop``).
        share: F_i / |C(i)|, the soft share of flagged candidates.
        hard_share: the share of candidates with s_ij > k_i (what the hard mask flags at the same k).
    """

    denominator: Tensor
    labels: Tensor
    share: Tensor
    hard_share: Tensor

    @property
    def total(self) -> Tensor:
        return self.denominator + self.labels


def candidate_mask(n: int, device: torch.device | None = None) -> Tensor:
    """`(N, N)` True where j ∈ C(i): neither i nor its partner (i + N/2) mod N."""
    index = torch.arange(n, device=device)
    return (index[None, :] != index[:, None]) & (index[None, :] != ((index + n // 2) % n)[:, None])


def pull_terms(
    u: Tensor,
    k: Tensor,
    mode: str,
    *,
    temperature: float = 1.0,
    mask_temperature: float = 0.05,
    positive_weight: float = 0.5,
    known: Tensor | None = None,
) -> PullTerms:
    """The parts of ∂ℓ_i/∂k_i for rows `u` `(N, D)` (already normalised for cosine) and thresholds `k` `(N,)`.

    `known` `(N, N)` bool marks known positives (always flagged, no threshold gradient), or None.
    """
    u = u.double()
    k = k.double().expand(u.shape[0])
    n = u.shape[0]
    rows = torch.arange(n, device=u.device)
    partner = (rows + n // 2) % n
    cand = candidate_mask(n, u.device)
    s = u @ u.T
    logits = s / temperature
    free = cand if known is None else cand & ~known
    nu = torch.sigmoid((k[:, None] - s) / mask_temperature) * free
    phi = (1 - nu) * cand
    fn_count = phi.sum(1)
    partner_logit = logits[rows, partner]
    if mode in ("drop", "attract"):
        log_w = torch.where(free, torch.nn.functional.logsigmoid((k[:, None] - s) / mask_temperature), -torch.inf)
    else:
        log_w = torch.where(cand, 0.0, -torch.inf).double()
    denom = (logits + log_w).scatter(1, partner[:, None], partner_logit[:, None])
    prob = torch.softmax(denom, dim=1)
    slope = nu * phi / mask_temperature  # ∂ν/∂k
    zero = torch.zeros(n, dtype=torch.float64, device=u.device)
    den = (prob * (1 - nu) * free).sum(1) / mask_temperature if mode in ("drop", "attract") else zero
    if mode in ("attract", "relabel"):
        spread = (1 - positive_weight) / fn_count.clamp_min(1)
        flagged_mean = ((phi * logits).sum(1) - fn_count * partner_logit) / fn_count.clamp_min(1)
        centre = partner_logit + torch.where(fn_count > 1, flagged_mean, 0.0)
        lab = (spread[:, None] * (logits - centre[:, None]) * slope).sum(1)
    else:
        lab = zero
    count = cand.sum(1).double()
    hard = ((s > k[:, None]) & cand) | (cand & known if known is not None else False)
    return PullTerms(den, lab, fn_count / count, hard.sum(1) / count)


def regulariser_pull(k: Tensor, k_bar: float, reg_weight: float) -> Tensor:
    """2λ(k − k̄): L_reg's pull on each row's threshold, in the same per-row units as `PullTerms`."""
    return 2 * reg_weight * (k.double() - k_bar)


def oracle_thresholds(u: Tensor, intents: Tensor) -> Tensor:
    """Each row's best threshold `(N,)` against the true intents: the cut of its candidates, sorted by similarity,
    that maximises the F1 score of "flagged" against "same intent" (midway between the last flagged and the first
    unflagged similarity). A row without a same-intent candidate is best served by flagging nothing: its
    threshold sits just above its largest similarity."""
    u = u.double()
    n = u.shape[0]
    cand = candidate_mask(n, u.device)
    s = (u @ u.T).masked_fill(~cand, -torch.inf)
    same = (intents[:, None] == intents[None, :]) & cand
    order = s.argsort(dim=1, descending=True)[:, : n - 2]
    sorted_s = s.gather(1, order)
    hits = same.gather(1, order).double().cumsum(1)
    flagged = torch.arange(1, n - 1, dtype=torch.float64, device=u.device)
    true_count = same.sum(1, keepdim=True).double()
    f1 = 2 * hits / (flagged[None, :] + true_count)
    best = f1.argmax(1)
    rows = torch.arange(n, device=u.device)
    below = torch.where(best + 1 < n - 2, sorted_s[rows, (best + 1).clamp_max(n - 3)], sorted_s[rows, best] - 0.01)
    cut = (sorted_s[rows, best] + below) / 2
    return torch.where(true_count.squeeze(1) > 0, cut, sorted_s[:, 0] + 0.01)
