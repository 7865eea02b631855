"""SPEC §7: alignment and uniformity (Wang & Isola 2020) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_contrastive.metrics import alignment, uniformity

# ẑ1 = [e1, e2], ẑ2 = [e2, e2] (rows [0, 2] and [0, 3] normalise to e2):
# ‖ẑ1 - ẑ2‖ = [√2, 0].
Z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
Z2 = torch.tensor([[0.0, 1.0], [0.0, 3.0]])


@pytest.mark.parametrize(
    "alpha, expected",
    [
        (2.0, (2.0 + 0.0) / 2),  # mean ‖·‖²
        (1.0, math.sqrt(2.0) / 2),  # mean ‖·‖
        (3.0, 2.0**1.5 / 2),
    ],
)
def test_alignment_by_hand(alpha: float, expected: float) -> None:
    assert float(alignment(Z1, Z2, alpha=alpha)) == pytest.approx(expected, rel=1e-6)


def test_alignment_default_alpha_is_2() -> None:
    assert float(alignment(Z1, Z2)) == pytest.approx(1.0, rel=1e-6)


def test_alignment_is_scale_invariant_and_zero_for_equal_directions() -> None:
    z = torch.randn(7, 5)
    assert float(alignment(z, 3.0 * z)) == pytest.approx(0.0, abs=1e-6)
    # antipodal pairs: ‖ẑ - (-ẑ)‖ = 2 → mean 2^α
    assert float(alignment(z, -z, alpha=2)) == pytest.approx(4.0, rel=1e-5)


def test_uniformity_two_orthogonal_vectors() -> None:
    # ‖e1 - e2‖² = 2 → log exp(-t·2) = -2t
    assert float(uniformity(torch.eye(2))) == pytest.approx(-4.0, rel=1e-6)
    assert float(uniformity(torch.eye(2), t=0.5)) == pytest.approx(-1.0, rel=1e-6)


def test_uniformity_three_vectors_by_hand() -> None:
    """e1, e2, -e1 (scaled, so normalisation matters): squared distances of the pairs i ≠ j are
    (e1,e2) 2, (e1,-e1) 4, (e2,-e1) 2, each twice over ordered pairs → log((2e^{-2t} + e^{-4t})/3)."""
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-0.5, 0.0]])
    for t in (1.0, 2.0):
        expected = math.log((2 * math.exp(-2 * t) + math.exp(-4 * t)) / 3)
        assert float(uniformity(z, t=t)) == pytest.approx(expected, rel=1e-6)


def test_uniformity_matches_the_definition_over_ordered_pairs() -> None:
    z = torch.randn(9, 4, dtype=torch.float64)
    u = z / z.norm(dim=1, keepdim=True)
    terms = [math.exp(-2.0 * float(((u[i] - u[j]) ** 2).sum())) for i in range(9) for j in range(9) if i != j]
    assert float(uniformity(z)) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-5)


def test_uniformity_of_identical_rows_is_zero() -> None:
    assert float(uniformity(torch.ones(4, 3))) == pytest.approx(0.0, abs=1e-6)


def test_metrics_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="z1"):
        alignment(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="z"):
        uniformity(torch.randn(1, 3))
