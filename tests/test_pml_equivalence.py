"""`keep` is NT-Xent: it equals pytorch-metric-learning's `NTXentLoss` on the same inputs.

pml's setup: embeddings cat(z1, z2), labels arange(B) twice, temperature τ, cosine similarity.
For anchor i its only positive is the other view p(i) (pml drops the diagonal from the positive
pairs) and its negatives are every row with a different label, i.e. C(i); each positive pair
gives -log(e^{l_ip} / (e^{l_ip} + Σ_{C(i)} e^{l_ij})) = ℓ_i of `keep`. pml's default reducer is
`MeanReducer`, the mean over its N positive pairs — our `mean` over the N rows. (pml adds a tiny
`small_val` inside the log, 2e-308 in float64, so the comparison runs in float64.)
"""

from __future__ import annotations

import pytest
import torch

from adaptive_contrastive.functional import adaptive_info_nce

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def _pml(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    b = z1.shape[0]
    labels = torch.arange(b).repeat(2)
    return pml_losses.NTXentLoss(temperature=tau)(torch.cat([z1, z2]), labels)


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("b, d", [(2, 3), (5, 8), (16, 4)])
def test_keep_equals_ntxent(tau: float, b: int, d: int) -> None:
    z1 = torch.randn(b, d, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(b, d, dtype=torch.float64)
    ours = adaptive_info_nce(z1, z2, None, temperature=tau, false_negatives="keep", similarity="cos")
    theirs = _pml(z1, z2, tau)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def test_keep_gradients_equal_ntxent() -> None:
    z1 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    adaptive_info_nce(z1, z2, None, temperature=0.2, false_negatives="keep").backward()
    g1, g2 = z1.grad.clone(), z2.grad.clone()
    z1.grad = z2.grad = None
    _pml(z1, z2, 0.2).backward()
    torch.testing.assert_close(g1, z1.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(g2, z2.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
def test_modes_equal_ntxent_when_nothing_is_suspected(mode: str) -> None:
    """With k above every similarity no candidate is a suspected false negative: every mode is NT-Xent."""
    z1 = torch.randn(6, 4, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(6, 4, dtype=torch.float64)
    ours = adaptive_info_nce(z1, z2, 1.0, temperature=0.3, false_negatives=mode)
    torch.testing.assert_close(ours, _pml(z1, z2, 0.3), atol=1e-10, rtol=1e-10)


def test_float32_keep_equals_ntxent() -> None:
    z1 = torch.randn(8, 6)
    z2 = z1 + 0.5 * torch.randn(8, 6)
    ours = adaptive_info_nce(z1, z2, None, temperature=0.5, false_negatives="keep")
    torch.testing.assert_close(ours, _pml(z1, z2, 0.5), atol=1e-5, rtol=1e-5)
