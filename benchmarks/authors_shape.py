"""A baseline with the shape of the AdaptiveRec authors' released training step.

Written for this benchmark from the paper's description of that code, not copied from it: what
matters is where the time goes, and the released code spends it in three places kept here:

- cosine similarity by broadcasting, ``cosine_similarity(z[:, None], z[None], dim=2)``, which
  materialises an N×N×D tensor;
- k_stat as a percentile taken from a full sort of all N(N-2) candidate similarities every step;
- soft labels built by a Python loop over the N rows (α on the partner, the rest spread over the
  suspected false negatives; the authors leave 0.5 of the mass unassigned when there are none).

The loss itself is the ``relabel`` mode of SPEC §3 (soft targets, false negatives stay in the
softmax), so it is comparable in what it computes, not in how.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _candidate_mask(batch: int) -> Tensor:
    n = 2 * batch
    mask = torch.ones((n, n), dtype=torch.bool)
    mask.fill_diagonal_(False)
    for i in range(batch):
        mask[i, batch + i] = False
        mask[batch + i, i] = False
    return mask


def authors_shape_loss(
    z1: Tensor, z2: Tensor, threshold: float, temperature: float = 0.1, alpha: float = 0.5, quantile: float = 0.9
) -> tuple[Tensor, Tensor]:
    """(loss, k_stat) computed the way the released code does it; see the module docstring."""
    batch = z1.shape[0]
    n = 2 * batch
    z = torch.cat([z1, z2])
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    positives = torch.cat([torch.diag(sim, batch), torch.diag(sim, -batch)]).reshape(n, 1)
    negatives = sim[_candidate_mask(batch).to(z.device)].reshape(n, -1)

    flat = negatives.detach().flatten().sort().values
    k_stat = flat[int(quantile * (flat.numel() - 1))]

    labels = torch.zeros(n, negatives.shape[1] + 1, device=z.device)
    for i in range(n):
        suspected = (negatives[i].detach() > threshold).nonzero().flatten()
        labels[i, 0] = alpha
        if suspected.numel() > 0:
            labels[i, 1 + suspected] = (1 - alpha) / suspected.numel()

    logits = torch.cat([positives, negatives], dim=1) / temperature
    loss = -(labels * F.log_softmax(logits, dim=1)).sum(1).mean()
    return loss, k_stat
