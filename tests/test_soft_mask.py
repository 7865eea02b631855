"""The soft mask does not collapse: trained on synthetic clustered data, its learned threshold flags about as
many candidates as the hard mask's and finds the same-cluster ones at least as precisely.

A small encoder and a ThresholdNet are trained with `AdaptiveInfoNCE` on two noisy views of points drawn around
16 cluster centres (two points of one cluster are false negatives of each other), one warm-up epoch and then the
adaptive loss. The share of flagged candidates and the precision of the flags against the clusters are measured
over the last epochs. With the soft mask's exact derivative (``mask_gradient="full"``) the threshold collapses:
every candidate is flagged in ``drop`` and ``attract``, none in ``relabel``.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet

MODES = ("drop", "attract", "relabel")
CLUSTERS, DIM, BATCH = 16, 16, 64


@functools.cache
def flagged_share_and_precision(mode: str, mask: str, mask_gradient: str = "labels") -> tuple[float, float]:
    """Train for 5 epochs of 20 steps (the first one the warm-up); returns the mean share of candidates the
    threshold flags (the loss's own `suspected_fraction`) and the precision of s_ij > k_i against the clusters,
    both over the last two epochs."""
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(CLUSTERS, DIM, generator=generator), dim=-1)
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, DIM))
    loss_fn = AdaptiveInfoNCE(threshold=ThresholdNet(DIM), false_negatives=mode, mask=mask, mask_gradient=mask_gradient)
    optimizer = torch.optim.Adam([*encoder.parameters(), *loss_fn.parameters()], lr=1e-2)
    n = 2 * BATCH
    index = torch.arange(n)
    candidate = (index[None] != index[:, None]) & (index[None] != ((index + BATCH) % n)[:, None])
    shares, hits, flags = [], 0.0, 0.0
    for epoch in range(5):
        for _ in range(20):
            cluster = torch.randint(CLUSTERS, (BATCH,), generator=generator)
            x = centres[cluster] + 0.9 * torch.randn(BATCH, DIM, generator=generator) / DIM**0.5
            z1 = encoder(x + 0.3 * torch.randn(BATCH, DIM, generator=generator) / DIM**0.5)
            z2 = encoder(x + 0.3 * torch.randn(BATCH, DIM, generator=generator) / DIM**0.5)
            loss = loss_fn(z1, z2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch >= 3:
                last = loss_fn.last
                assert last is not None
                u = F.normalize(torch.cat([z1, z2]).detach(), dim=-1)
                flagged = (u @ u.T > last.k[:, None]) & candidate
                same = (cluster.repeat(2)[None] == cluster.repeat(2)[:, None]) & candidate
                shares.append(float(last.suspected_fraction))
                hits += float((flagged & same).sum())
                flags += float(flagged.sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the collapse warning of the exact derivative
            loss_fn.end_epoch()
    return sum(shares) / len(shares), hits / max(flags, 1.0)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Tiny matrices gain nothing from threads, and spinning threads are slow on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", MODES)
def test_soft_mask_flags_like_the_hard_mask(mode: str) -> None:
    """Flagged share within 0.5×–2× of the hard mask's, precision at least the hard mask's (to 0.01: in
    ``drop`` the two masks train alike, their precisions differ in the third decimal)."""
    hard_share, hard_precision = flagged_share_and_precision(mode, "hard")
    soft_share, soft_precision = flagged_share_and_precision(mode, "soft")
    assert 0.05 < hard_share < 0.3, "the hard mask flags about the top 10% (k̄ is the 0.9 quantile)"
    assert 0.5 * hard_share <= soft_share <= 2.0 * hard_share, (soft_share, hard_share)
    assert soft_precision >= hard_precision - 0.01, (soft_precision, hard_precision)


@pytest.mark.parametrize("mode", MODES)
def test_exact_soft_mask_derivative_collapses(mode: str) -> None:
    """Why the default is not the exact derivative: its threshold flags everything (drop, attract: the softmax
    denominator rewards every flag) or almost nothing (relabel: the labels alone push k up)."""
    hard_share, _ = flagged_share_and_precision(mode, "hard")
    share, _ = flagged_share_and_precision(mode, "soft", "full")
    if mode == "relabel":
        assert share < 0.1 * hard_share
    else:
        assert share > 0.95
