"""`adaptive_info_nce` against the independent row-by-row float64 oracle of tests/_oracle.py.

Covers every mode of SPEC §3 (keep, drop, attract, relabel), hard and soft masks (§2), cos and
dot similarity (§1), thresholds as float / 0-d / (B,) / (N,), reductions mean / sum / none and
input dtypes float16 / bfloat16 / float32 / float64: loss values and gradients (autograd through
the oracle), including the threshold's gradient under the soft mask's exact derivative
(``mask_gradient="full"``) and its absence under the default ``"labels"``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _oracle import oracle_candidate_similarities, oracle_loss, oracle_reduce, oracle_rows

from adaptive_contrastive.functional import adaptive_info_nce

MODES = ("keep", "drop", "attract", "relabel")
THRESHOLD_MODES = ("drop", "attract", "relabel")
MASKS = ("hard", "soft")
# (mask, mask_gradient): the hard mask, and the soft mask under both of its derivatives.
MASK_GRADIENTS = (("hard", "labels"), ("soft", "labels"), ("soft", "full"))
SIMILARITIES = ("cos", "dot")
THRESHOLD_KINDS = ("float", "0d", "B", "N")
REDUCTIONS = ("mean", "sum", "none")

# (dtype, atol, rtol) for gradients. Half inputs are compared with the oracle evaluated on the
# same half-rounded values, so the only error is float32 accumulation plus the final rounding of
# the gradient to the input dtype (fp16: 2^-11 relative, bf16: 2^-8 relative).
DTYPE_TOLERANCES = [
    pytest.param(torch.float64, 1e-10, 1e-9, id="float64"),
    pytest.param(torch.float32, 2e-5, 1e-4, id="float32"),
    pytest.param(torch.float16, 2e-4, 2e-3, id="float16"),
    pytest.param(torch.bfloat16, 2e-3, 1.6e-2, id="bfloat16"),
]
# The loss itself is float32 (float64 for float64 inputs) whatever the input dtype: with inputs
# that are exact in the input dtype it must match the oracle to float32 round-off.
LOSS_TOLERANCE = {torch.float64: (1e-10, 1e-10)}
LOSS_TOLERANCE_F32 = (2e-5, 2e-5)


def make_views(b: int, d: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated views, with one near-duplicate sequence so that false negatives occur."""
    z1 = torch.randn(b, d, dtype=torch.float64)
    z1[1] = z1[0] + 0.2 * torch.randn(d, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(b, d, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def make_threshold(kind: str, z1: torch.Tensor, z2: torch.Tensor, similarity: str) -> float | torch.Tensor:
    """A threshold near the 75th percentile of the candidate similarities, so that some rows
    have suspected false negatives and some have none; per-row kinds jitter it."""
    sims = torch.tensor(oracle_candidate_similarities(z1, z2, similarity), dtype=torch.float64)
    base = float(torch.quantile(sims, 0.75))
    spread = float(sims.std()) * 0.5
    b = z1.shape[0]
    if kind == "float":
        return base
    if kind == "0d":
        return torch.tensor(base, dtype=torch.float64)
    if kind == "B":
        return base + spread * torch.randn(b, dtype=torch.float64)
    if kind == "N":
        return base + spread * torch.randn(2 * b, dtype=torch.float64)
    raise AssertionError(kind)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


@pytest.mark.parametrize(
    "mode, mask_and_gradient, similarity, kind",
    list(itertools.product(MODES, MASK_GRADIENTS, SIMILARITIES, THRESHOLD_KINDS)),
)
def test_rows_and_gradients_match_oracle(
    mode: str, mask_and_gradient: tuple[str, str], similarity: str, kind: str
) -> None:
    """Row losses, and gradients for a non-unit upstream gradient, equal the oracle in float64."""
    b, d = 5, 6
    mask, mask_gradient = mask_and_gradient
    z1, z2 = make_views(b, d)
    k = make_threshold(kind, z1, z2, similarity)
    kw = dict(
        temperature=0.3,
        similarity=similarity,
        false_negatives=mode,
        mask=mask,
        mask_temperature=0.1,
        mask_gradient=mask_gradient,
    )
    soft_k = isinstance(k, torch.Tensor) and mask == "soft" and mask_gradient == "full"

    a1, a2 = leaf(z1), leaf(z2)
    ka = leaf(k) if isinstance(k, torch.Tensor) else k
    rows = adaptive_info_nce(a1, a2, ka, reduction="none", backend="reference", **kw)
    o1, o2 = leaf(z1), leaf(z2)
    ko = leaf(k) if isinstance(k, torch.Tensor) else k
    expected = oracle_rows(o1, o2, ko, **kw)

    assert rows.shape == (2 * b,)
    assert rows.dtype == torch.float64
    torch.testing.assert_close(rows, expected, atol=1e-10, rtol=1e-10)

    upstream = torch.rand(2 * b, dtype=torch.float64) * 3 - 1  # not all ones, some negative
    rows.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(a1.grad, o1.grad, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a2.grad, o2.grad, atol=1e-10, rtol=1e-9)
    if soft_k and mode != "keep":
        assert ka.grad is not None
        assert bool(ka.grad.abs().sum() > 0), "the soft mask must give k a gradient"
        torch.testing.assert_close(ka.grad, ko.grad, atol=1e-10, rtol=1e-9)
    elif isinstance(ka, torch.Tensor):
        # hard mask, soft mask differentiated through its labels (and keep): k gets no gradient from the loss
        assert ka.grad is None or bool((ka.grad == 0).all())


@pytest.mark.parametrize("mode, reduction", list(itertools.product(MODES, REDUCTIONS)))
@pytest.mark.parametrize("mask", MASKS)
def test_reductions_match_oracle(mode: str, reduction: str, mask: str) -> None:
    b, d = 4, 3
    z1, z2 = make_views(b, d)
    k = make_threshold("N", z1, z2, "cos")
    kw = dict(temperature=0.5, false_negatives=mode, mask=mask)
    a1, a2, o1, o2 = leaf(z1), leaf(z2), leaf(z1), leaf(z2)
    got = adaptive_info_nce(a1, a2, k, reduction=reduction, **kw)
    want = oracle_loss(o1, o2, k, reduction=reduction, **kw)
    assert got.shape == ((2 * b,) if reduction == "none" else ())
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    upstream = torch.full_like(got, 0.7) if reduction == "none" else torch.tensor(-2.5, dtype=torch.float64)
    got.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(a1.grad, o1.grad, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a2.grad, o2.grad, atol=1e-10, rtol=1e-9)


def test_mean_and_sum_are_consistent_with_rows() -> None:
    z1, z2 = make_views(6, 4)
    rows = adaptive_info_nce(z1, z2, 0.3, reduction="none")
    torch.testing.assert_close(adaptive_info_nce(z1, z2, 0.3, reduction="sum"), rows.sum())
    torch.testing.assert_close(adaptive_info_nce(z1, z2, 0.3, reduction="mean"), rows.mean())
    torch.testing.assert_close(adaptive_info_nce(z1, z2, 0.3), rows.mean())  # mean is the default


@pytest.mark.parametrize("dtype, atol, rtol", DTYPE_TOLERANCES)
@pytest.mark.parametrize("mode, mask", list(itertools.product(MODES, MASKS)))
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_dtypes_match_oracle(
    dtype: torch.dtype, atol: float, rtol: float, mode: str, mask: str, similarity: str
) -> None:
    """Every input dtype: the loss is float32 (float64 for float64) and matches the float64 oracle
    on the same (rounded) inputs to float32 accuracy — half inputs are accumulated in float32."""
    b, d = 6, 5
    z1, z2 = make_views(b, d, dtype)
    k = make_threshold("B", z1, z2, similarity)  # float64 thresholds, any dtype is accepted
    kw = dict(temperature=0.2, similarity=similarity, false_negatives=mode, mask=mask)
    a1, a2 = leaf(z1), leaf(z2)
    rows = adaptive_info_nce(a1, a2, k, reduction="none", **kw)
    assert rows.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    o1, o2 = leaf(z1.double()), leaf(z2.double())
    want = oracle_rows(o1, o2, k, **kw)
    loss_atol, loss_rtol = LOSS_TOLERANCE.get(dtype, LOSS_TOLERANCE_F32)
    torch.testing.assert_close(rows.double(), want, atol=loss_atol, rtol=loss_rtol)

    upstream = torch.linspace(-1.0, 2.0, 2 * b, dtype=torch.float64)
    rows.backward(upstream.to(rows.dtype))
    want.backward(upstream)
    assert a1.grad is not None and a1.grad.dtype == dtype
    torch.testing.assert_close(a1.grad.double(), o1.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(a2.grad.double(), o2.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_output_dtype(dtype: torch.dtype, reduction: str) -> None:
    z1, z2 = make_views(3, 4, dtype)
    out = adaptive_info_nce(z1, z2, 0.5, reduction=reduction)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("b, d", [(2, 1), (3, 7), (7, 3), (9, 1)])
@pytest.mark.parametrize("mode", MODES)
def test_odd_shapes_match_oracle(b: int, d: int, mode: str) -> None:
    z1, z2 = make_views(b, d)
    k = make_threshold("N", z1, z2, "dot")
    got = adaptive_info_nce(z1, z2, k, similarity="dot", false_negatives=mode, reduction="none", temperature=0.7)
    want = oracle_rows(z1, z2, k, similarity="dot", false_negatives=mode, temperature=0.7)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("mode", ["attract", "relabel"])
@pytest.mark.parametrize("mask", MASKS)
def test_positive_weight_matches_oracle(alpha: float, mode: str, mask: str) -> None:
    z1, z2 = make_views(4, 3)
    k = make_threshold("B", z1, z2, "cos")
    kw = dict(false_negatives=mode, mask=mask, positive_weight=alpha, temperature=0.4)
    got = adaptive_info_nce(z1, z2, k, reduction="none", **kw)
    torch.testing.assert_close(got, oracle_rows(z1, z2, k, **kw), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.01, 0.3, 5.0])
@pytest.mark.parametrize("mode", THRESHOLD_MODES)
def test_mask_temperature_matches_oracle(beta: float, mode: str) -> None:
    z1, z2 = make_views(4, 3)
    k = leaf(make_threshold("N", z1, z2, "cos"))
    ko = leaf(k)
    kw = dict(false_negatives=mode, mask="soft", mask_temperature=beta, mask_gradient="full")
    got = adaptive_info_nce(z1, z2, k, **kw)
    want = oracle_loss(z1, z2, ko, **kw)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    got.backward()
    want.backward()
    torch.testing.assert_close(k.grad, ko.grad, atol=1e-10, rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# Hand-computed values: B = 2, orthogonal unit rows, dot similarity, τ = 1.
# Z = [e1, e2, e1, e2]; row 0: partner row 2 (s = 1), candidates rows 1 and 3 (s = 0 each).
# ---------------------------------------------------------------------------------------------

E = math.e
KEEP_ROW = -1.0 + math.log(E + 2.0)


def _orthogonal_pairs(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.eye(2, dtype=dtype)
    return eye.clone(), eye.clone()


@pytest.mark.parametrize(
    "mode, threshold, expected_row",
    [
        ("keep", None, KEEP_ROW),
        # k = 0 equals every candidate's similarity: s <= k, so all are true negatives (F = 0)
        ("drop", 0.0, KEEP_ROW),
        ("attract", 0.0, KEEP_ROW),
        ("relabel", 0.0, KEEP_ROW),
        # k = -0.5: both candidates are suspected (F = 2)
        ("drop", -0.5, 0.0),  # -1 + log(e^1)
        ("attract", -0.5, 1.0 - 0.5),  # log(e) - α·1 - (1-α)/2·(0 + 0)
        ("relabel", -0.5, math.log(E + 2.0) - 0.5),  # log(e + 2) - α·1 - 0
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_hand_computed_b2(mode: str, threshold: float | None, expected_row: float, dtype: torch.dtype) -> None:
    z1, z2 = _orthogonal_pairs(dtype)
    rows = adaptive_info_nce(z1, z2, threshold, similarity="dot", false_negatives=mode, reduction="none")
    torch.testing.assert_close(rows, torch.full((4,), expected_row, dtype=dtype), atol=1e-6, rtol=1e-6)


def test_threshold_equal_to_similarity_is_a_negative() -> None:
    """SPEC §2, hard mask: s_ij <= k_i makes j a true negative. Row 0 of the example above with
    k_0 = 0 exactly keeps both candidates (loss of keep); a threshold one ulp below 0 suspects
    both (drop loss 0). Other rows use k = 1 (no suspects)."""
    z1, z2 = _orthogonal_pairs()
    at = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    below = torch.tensor([-math.ulp(0.0), 1.0, 1.0, 1.0], dtype=torch.float64)
    rows_at = adaptive_info_nce(z1, z2, at, similarity="dot", false_negatives="drop", reduction="none")
    rows_below = adaptive_info_nce(z1, z2, below, similarity="dot", false_negatives="drop", reduction="none")
    assert float(rows_at[0]) == pytest.approx(KEEP_ROW, abs=1e-12)
    assert float(rows_below[0]) == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(rows_at[1:], rows_below[1:])


def test_b_threshold_is_shared_by_both_views() -> None:
    """A (B,) threshold: row i uses k[i mod B] (k.repeat(2)), not k.repeat_interleave(2)."""
    z1, z2 = make_views(4, 3)
    k = torch.tensor([0.9, -0.9, 0.9, -0.9], dtype=torch.float64)
    got = adaptive_info_nce(z1, z2, k, reduction="none")
    torch.testing.assert_close(got, adaptive_info_nce(z1, z2, k.repeat(2), reduction="none"))
    assert not torch.allclose(got, adaptive_info_nce(z1, z2, k.repeat_interleave(2), reduction="none"))


def test_keep_ignores_the_threshold() -> None:
    z1, z2 = make_views(5, 4)
    ref = adaptive_info_nce(z1, z2, None, false_negatives="keep")
    for k in (-1.0, 0.2, torch.full((5,), 0.1, dtype=torch.float64)):
        torch.testing.assert_close(adaptive_info_nce(z1, z2, k, false_negatives="keep"), ref)


def test_default_mode_is_attract_hard_cos_tau1() -> None:
    z1, z2 = make_views(4, 5)
    want = oracle_reduce(oracle_rows(z1, z2, 0.2, false_negatives="attract", mask="hard", similarity="cos"), "mean")
    torch.testing.assert_close(adaptive_info_nce(z1, z2, 0.2), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", THRESHOLD_MODES)
def test_no_suspects_equals_keep(mode: str) -> None:
    """k above every similarity: no candidate is suspected and every mode is plain InfoNCE."""
    z1, z2 = make_views(5, 4)
    torch.testing.assert_close(
        adaptive_info_nce(z1, z2, 1.5, false_negatives=mode, reduction="none"),
        adaptive_info_nce(z1, z2, None, false_negatives="keep", reduction="none"),
    )
