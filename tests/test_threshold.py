"""SimThres (SPEC §4): k_stat, its sampled estimate, and the ThresholdNet architectures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _oracle import oracle_candidate_similarities

from adaptive_contrastive import ThresholdNet
from adaptive_contrastive.functional import k_stat
from adaptive_contrastive.threshold import DEFAULT_MAX_PAIRS

# ---------------------------------------------------------------------------------------------
# k_stat, exact: hand-built candidate sets (dot similarity, D = 1, so s_ij = z_i z_j)
# ---------------------------------------------------------------------------------------------

# B = 2: Z = [1, 2, 3, 4], p(0)=2, p(1)=3. Candidates: row 0 → {1, 3}, row 1 → {0, 2},
# row 2 → {1, 3}, row 3 → {0, 2}: the unordered pairs {0,1}, {0,3}, {1,2}, {2,3}, each twice,
# s = 2, 4, 6, 12 → the multiset [2, 2, 4, 4, 6, 6, 12, 12]. (Self pairs 1, 4, 9, 16 and the
# partner pairs 3, 8 must not appear.)
B2_CANDIDATES = [2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 12.0, 12.0]
# B = 3: Z = [1..6], partners (0,3), (1,4), (2,5) excluded: 12 unordered pairs, each twice.
B3_CANDIDATES = sorted(2 * [2.0, 3.0, 5.0, 6.0, 6.0, 8.0, 12.0, 12.0, 15.0, 20.0, 24.0, 30.0])


@pytest.mark.parametrize(
    "quantile, expected",
    [
        (0.5, 5.0),  # position 3.5 of 8 → halfway between 4 and 6
        (0.25, 3.5),  # position 1.75 → 2 + 0.75·(4 - 2)
        (0.9, 12.0),  # position 6.3 → between 12 and 12
        (0.1, 2.0),
    ],
)
def test_k_stat_b2_by_hand(quantile: float, expected: float) -> None:
    z1 = torch.tensor([[1.0], [2.0]])
    z2 = torch.tensor([[3.0], [4.0]])
    got = k_stat(z1, z2, quantile=quantile, similarity="dot")
    assert float(got) == pytest.approx(expected, abs=1e-6)
    assert float(got) == pytest.approx(float(torch.quantile(torch.tensor(B2_CANDIDATES), quantile)), abs=1e-6)


@pytest.mark.parametrize(
    "quantile, expected",
    [
        (0.5, 10.0),  # position 11.5 of 24 → between 8 and 12
        (0.9, 24.0),  # position 20.7 → between 24 and 24
        (0.95, 29.1),  # position 21.85 → 24 + 0.85·6
        (0.1, 3.0),  # position 2.3 → between 3 and 3
    ],
)
def test_k_stat_b3_by_hand(quantile: float, expected: float) -> None:
    z1 = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    z2 = torch.tensor([[4.0], [5.0], [6.0]], dtype=torch.float64)
    got = k_stat(z1, z2, quantile=quantile, similarity="dot")  # a float32 0-d tensor
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(got) == pytest.approx(float(torch.quantile(torch.tensor(B3_CANDIDATES), quantile)), rel=1e-6)


@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("quantile", [0.05, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("b", [2, 5, 16])
def test_k_stat_exact_matches_torch_quantile(similarity: str, quantile: float, b: int) -> None:
    z1 = torch.randn(b, 3, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(b, 3, dtype=torch.float64)
    candidates = torch.tensor(oracle_candidate_similarities(z1, z2, similarity), dtype=torch.float64)
    assert candidates.numel() == 2 * b * (2 * b - 2)
    got = k_stat(z1, z2, quantile=quantile, similarity=similarity)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert float(got) == pytest.approx(float(torch.quantile(candidates, quantile)), rel=1e-6, abs=1e-6)


def test_k_stat_default_quantile_is_0_9_and_has_no_gradient() -> None:
    z1 = torch.randn(6, 4, requires_grad=True)
    z2 = torch.randn(6, 4, requires_grad=True)
    got = k_stat(z1, z2)
    assert not got.requires_grad
    assert float(got) == pytest.approx(float(k_stat(z1, z2, quantile=0.9, similarity="cos")))
    candidates = torch.tensor(oracle_candidate_similarities(z1.detach(), z2.detach(), "cos"))
    assert float(got) == pytest.approx(float(torch.quantile(candidates, 0.9)), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_k_stat_half_inputs(dtype: torch.dtype) -> None:
    z1 = torch.randn(5, 4).to(dtype)
    z2 = torch.randn(5, 4).to(dtype)
    candidates = torch.tensor(oracle_candidate_similarities(z1, z2, "cos"))
    got = k_stat(z1, z2, quantile=0.7)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(torch.quantile(candidates, 0.7)), abs=1e-5)


@pytest.mark.parametrize("max_pairs", [10_000, DEFAULT_MAX_PAIRS])
def test_k_stat_excludes_self_and_partner_exact_and_sampled(max_pairs: int) -> None:
    """One-hot rows e_b in both views: every candidate similarity is 0 while self and partner
    similarities are 1 (2 of every N = 128 pairs of a row, 1.6%). The 0.999-quantile over the
    candidates is therefore exactly 0; it would be 1 if self or partner pairs leaked in. With
    max_pairs = 10,000 < N(N-2) = 16,128 the sampled path runs, with the default the exact one."""
    b = 64
    eye = torch.eye(b)
    got = k_stat(eye, eye.clone(), quantile=0.999, similarity="cos", max_pairs=max_pairs)
    assert float(got) == 0.0


def test_k_stat_sampled_path_is_used_beyond_max_pairs() -> None:
    """Beyond max_pairs the estimate comes from a random sample: different RNG states give
    (slightly) different values, all close to the exact one; within max_pairs it is exact."""
    b = 40  # N(N-2) = 6,240
    z1 = torch.randn(b, 8)
    z2 = z1 + torch.randn(b, 8)
    exact = float(k_stat(z1, z2, quantile=0.5))
    assert float(k_stat(z1, z2, quantile=0.5, max_pairs=6_240)) == pytest.approx(exact, abs=1e-7)
    estimates = set()
    for seed in range(5):
        torch.manual_seed(seed)
        estimates.add(float(k_stat(z1, z2, quantile=0.5, max_pairs=1_000)))
    assert len(estimates) > 1
    assert all(abs(e - exact) < 0.15 for e in estimates)


def test_k_stat_sampled_estimate_error_large_batch() -> None:
    """B = 1024 (N(N-2) ≈ 4.2M > max_pairs): the sampled q = 0.9 quantile lies where the exact
    candidate CDF is within a few standard errors of q.

    Sampling theory: the library draws a grid of n_r = √max_pairs rows × n_c = √max_pairs columns.
    The empirical CDF at a fixed k over such a crossed design has variance about
    σ_R²/n_r + σ_C²/n_c + q(1-q)/(n_r n_c), where σ_R² (= σ_C², S is symmetric) is the variance
    over rows of each row's own CDF at k — computed here from the exact matrix. (Sampling without
    replacement only lowers it.) The rows get a shared direction with random weight, so that σ_R
    is large and a grid with too few rows (or columns) would show. Over 8 independent draws we
    require every error within 6 standard errors and their RMS within 3 (false-alarm rate < 1e-8)."""
    b, d, q = 1024, 32, 0.9
    common = torch.randn(d)
    z1 = torch.rand(b, 1) * 2 * common + torch.randn(b, d)
    z2 = z1 + 0.8 * torch.randn(b, d)
    n = 2 * b
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    s = z @ z.T
    idx = torch.arange(n)
    candidate = torch.ones(n, n, dtype=torch.bool)
    candidate[idx, idx] = False
    candidate[idx, (idx + b) % n] = False
    values = s[candidate]
    assert values.numel() == n * (n - 2) > DEFAULT_MAX_PAIRS
    exact = float(torch.quantile(values.float(), q))

    row_cdf = ((s <= exact) & candidate).sum(1).double() / (n - 2)
    side = math.isqrt(DEFAULT_MAX_PAIRS)
    se = math.sqrt(2 * float(row_cdf.var()) / side + q * (1 - q) / DEFAULT_MAX_PAIRS)

    errors = []
    for seed in range(8):
        torch.manual_seed(seed)
        estimate = float(k_stat(z1, z2, quantile=q))
        errors.append(float((values <= estimate).double().mean()) - q)
    rms = math.sqrt(sum(e * e for e in errors) / len(errors))
    assert max(abs(e) for e in errors) <= 6 * se, (errors, se)
    assert rms <= 3 * se, (rms, se)
    assert len(set(errors)) > 1, "beyond max_pairs the estimate must come from a random sample"


# ---------------------------------------------------------------------------------------------
# ThresholdNet, arch="set"
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_set_permutation_equivariant(similarity: str) -> None:
    g = ThresholdNet(6, similarity=similarity)
    with torch.no_grad():
        g.head.weight.normal_()  # a non-trivial head, so that the output depends on the input
    x = torch.randn(11, 6)
    perm = torch.randperm(11)
    out = g(x)
    assert out.shape == (11,)
    assert float(out.detach().std()) > 1e-3
    torch.testing.assert_close(g(x[perm]), out[perm], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("b", [3, 300])
def test_set_any_batch_size(b: int) -> None:
    g = ThresholdNet(8)
    out = g(torch.randn(b, 8))
    assert out.shape == (b,)
    assert bool(torch.isfinite(out).all())


def test_set_row_depends_on_the_batch_only_through_its_statistics() -> None:
    """Duplicating the batch keeps its mean and second moment, so each row's output is unchanged;
    scoring a subset of rows against the full batch (``batch=``) gives those rows' outputs."""
    g = ThresholdNet(5)
    with torch.no_grad():
        g.head.weight.normal_()
    x = torch.randn(7, 5)
    out = g(x)
    torch.testing.assert_close(g(torch.cat([x, x]))[:7], out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g(x[:3], x), out[:3], atol=1e-6, rtol=1e-5)
    # a different batch changes the statistics, hence the outputs
    assert not torch.allclose(g(torch.cat([x[:3], torch.randn(4, 5)]))[:3], out[:3], atol=1e-4)


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_set_features_match_direct_statistics(similarity: str) -> None:
    """Features [ẑ_i, mean_j ẑ_j, μ_i, σ_i]: μ_i, σ_i are the mean and (population) standard
    deviation over j of s_ij, j running over the whole batch (self included), as the O(B·D²)
    moment formula gives — checked here against the explicit B×B matrix."""
    g = ThresholdNet(4, similarity=similarity)
    x = torch.randn(9, 4, dtype=torch.float64)
    feats = g.set_features(x)
    u = F.normalize(x, dim=1) if similarity == "cos" else x
    s = u @ u.T
    assert feats.shape == (9, 2 * 4 + 2)
    torch.testing.assert_close(feats[:, :4], u)
    torch.testing.assert_close(feats[:, 4:8], u.mean(0).expand(9, 4))
    torch.testing.assert_close(feats[:, 8], s.mean(1))
    torch.testing.assert_close(feats[:, 9], s.std(1, correction=0), atol=1e-6, rtol=1e-6)


def test_cos_output_in_open_unit_interval_dot_unbounded() -> None:
    x = torch.randn(6, 4) / 2
    g_cos = ThresholdNet(4, similarity="cos")
    g_cos.calibrate(5.0)  # far outside (-1, 1): the squashed output must stay inside
    out = g_cos(x)
    assert bool((out < 1).all()) and bool((out > -1).all())
    g_dot = ThresholdNet(4, similarity="dot")
    g_dot.calibrate(5.0)
    torch.testing.assert_close(g_dot(x), torch.full((6,), 5.0), atol=0.05, rtol=0)


@pytest.mark.parametrize("similarity, k", [("cos", 0.37), ("cos", -0.6), ("dot", 2.5)])
@pytest.mark.parametrize("arch", ["set", "flat"])
def test_calibrate_sets_the_starting_threshold(similarity: str, k: float, arch: str) -> None:
    g = ThresholdNet(8, similarity=similarity, arch=arch, batch_size=10 if arch == "flat" else None)
    x = torch.randn(10, 8) / math.sqrt(8)
    g.calibrate(k)
    torch.testing.assert_close(g(x), torch.full((10,), k), atol=0.02, rtol=0)


# ---------------------------------------------------------------------------------------------
# ThresholdNet, arch="flat"
# ---------------------------------------------------------------------------------------------


def test_flat_fixed_batch_size() -> None:
    g = ThresholdNet(4, arch="flat", batch_size=6)
    out = g(torch.randn(6, 4))
    assert out.shape == (6,)
    with pytest.raises(ValueError, match="batch_size"):
        g(torch.randn(5, 4))
    with pytest.raises(ValueError, match="batch_size"):
        g(torch.randn(7, 4))


def test_flat_needs_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ThresholdNet(4, arch="flat")


def test_flat_sees_the_whole_batch() -> None:
    """The paper's literal g: row i's output depends on every row of the flattened batch."""
    g = ThresholdNet(3, arch="flat", batch_size=4)
    with torch.no_grad():
        g.head.weight.normal_()
    x = torch.randn(4, 3)
    y = x.clone()
    y[3] += 1.0
    assert not torch.allclose(g(x)[0], g(y)[0])


def test_unknown_arch_is_rejected() -> None:
    with pytest.raises(ValueError, match="arch"):
        ThresholdNet(4, arch="deep")


def test_wrong_width_is_rejected() -> None:
    g = ThresholdNet(4)
    with pytest.raises(ValueError, match="ThresholdNet expects z of shape"):
        g(torch.randn(5, 3))
