"""What the AdaptiveRec paper plots, measured during training.

- per batch (`EpochMeter`): the losses, k_stat and the ThresholdNet's k_learn (Fig. 4), the share of
  suspected false negatives and, when true intents are known (synthetic data), the precision and
  recall of the suspected false negatives against "same intent";
- per epoch, on a fixed probe batch (`probe`): the histogram of negative (candidate) similarities
  (Fig. 2), alignment and uniformity of the two views (Figs. 3 and 5).

All similarities are in the loss's units (cosine or dot), the units in which k is compared.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive_contrastive.functional import k_stat
from adaptive_contrastive.metrics import alignment, uniformity

HISTOGRAM_BINS = 60


def similarities(z1: Tensor, z2: Tensor, similarity: str) -> Tensor:
    """`(N, N)` similarities s_ij of Z = cat(z1, z2) (N = 2B), cosine or dot, as the loss computes them."""
    z = torch.cat([z1, z2]).float()
    if similarity == "cos":
        z = F.normalize(z, dim=-1, eps=1e-8)
    return z @ z.T


def candidate_mask(n: int, device: torch.device | None = None) -> Tensor:
    """`(N, N)` True where j is a candidate of row i: neither i itself nor its partner (i + N/2) mod N."""
    index = torch.arange(n, device=device)
    partner = (index + n // 2) % n
    return (index[None, :] != index[:, None]) & (index[None, :] != partner[:, None])


def false_negative_counts(sims: Tensor, k: Tensor, labels: Tensor, known: Tensor | None = None) -> dict[str, float]:
    """Counts behind the precision and recall of suspected false negatives.

    Args:
        sims: `(N, N)` similarities.
        k: `(N,)` threshold per row (the loss's ``last.k``, NaN where there is none); candidates with
            s_ij > k_i are suspected.
        labels: `(N,)` true intent of each row; a candidate with the row's intent is a true false negative.
        known: `(N,)` known-positive label of each row given to the loss (negative = unknown), or None:
            candidates sharing the row's known label are flagged too, as the loss flags them.

    Returns:
        ``suspected`` (|M⁺| summed over rows), ``true`` (same-intent candidates), ``hit`` (both) and
        ``candidates``.
    """
    candidates = candidate_mask(sims.shape[0], sims.device)
    suspected = sims > k[:, None]
    if known is not None:
        suspected |= (known[None, :] == known[:, None]) & (known >= 0)[:, None]
    suspected &= candidates
    same = (labels[None, :] == labels[:, None]) & candidates
    return {
        "suspected": float(suspected.sum()),
        "true": float(same.sum()),
        "hit": float((suspected & same).sum()),
        "candidates": float(candidates.sum()),
    }


class EpochMeter:
    """Averages per-batch values over an epoch and sums the false-negative counts."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.fn: dict[str, float] = defaultdict(float)

    def add(self, **values: float | None) -> None:
        """Add one batch's values; None and NaN (e.g. no k during warm-up) are skipped."""
        for name, value in values.items():
            if value is None or math.isnan(value):
                continue
            self.sums[name] += value
            self.counts[name] += 1

    def add_false_negatives(self, counts: dict[str, float]) -> None:
        for name, value in counts.items():
            self.fn[name] += value

    def summary(self) -> dict[str, float | None]:
        """Means of every value, plus ``fn_precision``, ``fn_recall`` and ``fn_base_rate`` (the precision of
        suspecting at random) when false-negative counts were added."""
        out: dict[str, float | None] = {name: self.sums[name] / self.counts[name] for name in self.sums}
        if self.fn:
            fn = self.fn
            out["fn_precision"] = fn["hit"] / fn["suspected"] if fn["suspected"] else None
            out["fn_recall"] = fn["hit"] / fn["true"] if fn["true"] else None
            out["fn_base_rate"] = fn["true"] / fn["candidates"] if fn["candidates"] else None
            out["fn_suspected_fraction"] = fn["suspected"] / fn["candidates"] if fn["candidates"] else None
        return out


def probe(z1: Tensor, z2: Tensor, similarity: str, quantile: float = 0.9) -> dict[str, object]:
    """Diagnostics of two views `(B, D)` of a fixed probe batch.

    Returns:
        ``hist_edges`` / ``hist_counts`` of the candidate similarities (cosine: 60 bins on [-1, 1];
        dot: 60 bins over the observed range), their ``k_stat`` (the `quantile`), ``alignment`` of the
        positive pairs and ``uniformity`` of all 2B rows.
    """
    z1, z2 = z1.detach().float(), z2.detach().float()
    sims = similarities(z1, z2, similarity)
    values = sims[candidate_mask(sims.shape[0], sims.device)]
    if similarity == "cos":
        low, high = -1.0, 1.0
    else:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1.0
    counts = torch.histc(values, bins=HISTOGRAM_BINS, min=low, max=high)
    edges = torch.linspace(low, high, HISTOGRAM_BINS + 1)
    return {
        "hist_edges": [round(float(e), 5) for e in edges],
        "hist_counts": [int(c) for c in counts],
        "k_stat": float(k_stat(z1, z2, quantile=quantile, similarity=similarity)),
        "alignment": float(alignment(z1, z2)),
        "uniformity": float(uniformity(torch.cat([z1, z2]))),
    }
