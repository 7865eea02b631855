"""Hypothesis-generated adversarial inputs against the float64 oracle.

Inputs are chosen so that every similarity is exactly representable: small-integer vectors with
dot similarity, and axis-aligned vectors (c·e_a, c ≠ 0, or zero) with cos similarity. Thresholds
are then drawn from the similarities themselves, so ties s_ij == k_i are common and the hard-mask
rule "s <= k is a true negative" is exercised. Duplicate rows, zero vectors, B = 2, all or no
candidates suspected and τ from 0.01 to 100 are all in the search space.
"""

from __future__ import annotations

import math

import torch
from _oracle import oracle_rows
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from adaptive_contrastive.functional import adaptive_info_nce

MODES = ("keep", "drop", "attract", "relabel")
MASKS = ("hard", "soft")
# The masks of the oracle comparisons: "soft-full" is the soft mask's exact derivative (mask_gradient="full"),
# the only one that gives the threshold a gradient.
MASK_VARIANTS = ("hard", "soft", "soft-full")

temperatures = st.one_of(
    st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    st.floats(min_value=0.01, max_value=100.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def integer_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(z1, z2) of small integers, with forced duplicate and zero rows among the draws."""
    b = draw(st.integers(2, 4))
    d = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=2 * b, max_size=2 * b))
    for src, dst in draw(st.lists(st.tuples(st.integers(0, 2 * b - 1), st.integers(0, 2 * b - 1)), max_size=3)):
        rows[dst] = list(rows[src])
    for idx in draw(st.lists(st.integers(0, 2 * b - 1), max_size=2)):
        rows[idx] = [0] * d
    z = torch.tensor(rows, dtype=torch.float64)
    return z[:b].clone(), z[b:].clone()


@st.composite
def axis_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(z1, z2) whose rows are c·e_a (c in ±1..±3) or zero: cos similarities are exactly -1, 0 or 1."""
    b = draw(st.integers(2, 4))
    d = draw(st.integers(1, 3))
    z = torch.zeros(2 * b, d, dtype=torch.float64)
    for i in range(2 * b):
        axis = draw(st.integers(0, d - 1))
        z[i, axis] = draw(st.sampled_from([-3, -2, -1, 0, 1, 2, 3]))
    return z[:b].clone(), z[b:].clone()


def _exact_similarities(z1: torch.Tensor, z2: torch.Tensor, similarity: str) -> torch.Tensor:
    z = torch.cat([z1, z2])
    if similarity == "cos":
        norms = z.norm(dim=1, keepdim=True)
        z = z / norms.clamp_min(1e-8)
    return z @ z.T


@st.composite
def thresholds_from(draw: st.DrawFn, sims: torch.Tensor, b: int, offset: float = 0.0) -> float | torch.Tensor:
    """A float / 0-d / (B,) / (N,) threshold whose values are exact similarities of the batch or
    lie outside their range (no candidate suspected / all suspected), plus `offset`.

    The soft mask is drawn with offset 0.1: at an exact tie two candidates with s = k ± δ have
    φ summing to exactly 1, i.e. F_i = 1 sits on the kink of max(F, 1), where the gradient is
    not defined (the library and the oracle pick different one-sided derivatives there)."""
    values = sorted(set(sims.flatten().tolist()))
    pool = [v + offset for v in values + [values[0] - 1.0, values[-1] + 1.0, (values[0] + values[-1]) / 2]]
    kind = draw(st.sampled_from(["float", "0d", "B", "N"]))
    if kind == "float":
        return float(draw(st.sampled_from(pool)))
    if kind == "0d":
        return torch.tensor(draw(st.sampled_from(pool)), dtype=torch.float64)
    size = b if kind == "B" else 2 * b
    return torch.tensor(draw(st.lists(st.sampled_from(pool), min_size=size, max_size=size)), dtype=torch.float64)


def _check_against_oracle(
    z1: torch.Tensor,
    z2: torch.Tensor,
    k: float | torch.Tensor,
    similarity: str,
    mode: str,
    mask: str,
    tau: float,
    alpha: float,
    dtype: torch.dtype,
    check_grads: bool,
) -> None:
    mask, _, exact = mask.partition("-")
    kw = dict(
        temperature=tau,
        similarity=similarity,
        false_negatives=mode,
        positive_weight=alpha,
        mask=mask,
        mask_temperature=0.25,
        mask_gradient="full" if exact else "labels",
    )
    soft_k = isinstance(k, torch.Tensor) and mask == "soft" and bool(exact) and mode != "keep" and check_grads
    z1, z2 = z1.detach(), z2.detach()
    a1 = z1.to(dtype).clone().requires_grad_(check_grads)
    a2 = z2.to(dtype).clone().requires_grad_(check_grads)
    ka = k.detach().clone().requires_grad_(soft_k) if isinstance(k, torch.Tensor) else k
    rows = adaptive_info_nce(a1, a2, ka, reduction="none", **kw)

    o1 = z1.clone().requires_grad_(check_grads)
    o2 = z2.clone().requires_grad_(check_grads)
    ko = k.detach().clone().requires_grad_(soft_k) if isinstance(k, torch.Tensor) else k
    want = oracle_rows(o1, o2, ko, **kw)

    # logits reach max|s|/τ; float32 keeps ~7 digits of each of them
    scale = 1.0 + float(_exact_similarities(z1, z2, similarity).abs().max()) / tau
    eps = 1e-12 if dtype == torch.float64 else 2e-6
    assert bool(torch.isfinite(rows).all()), rows
    torch.testing.assert_close(rows.double(), want, atol=eps * scale * 8, rtol=eps * 8)

    if not check_grads:
        return
    g = torch.linspace(0.5, -1.5, rows.shape[0], dtype=torch.float64)
    rows.backward(g.to(rows.dtype))
    want.backward(g)
    pairs = [(a1.grad, o1.grad), (a2.grad, o2.grad)] + ([(ka.grad, ko.grad)] if soft_k else [])
    for got, ref in pairs:
        assert got is not None and bool(torch.isfinite(got).all()), got
        torch.testing.assert_close(got.double(), ref, atol=eps * scale * 8 / tau + eps, rtol=eps * 64)


@given(
    batch=integer_batches(),
    data=st.data(),
    mode=st.sampled_from(MODES),
    mask=st.sampled_from(MASK_VARIANTS),
    tau=temperatures,
    alpha=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
@example(
    batch=(torch.tensor([[1.0], [2.0]], dtype=torch.float64), torch.tensor([[3.0], [4.0]], dtype=torch.float64)),
    data=None,
    mode="drop",
    mask="hard",
    tau=1.0,
    alpha=0.5,
    dtype=torch.float64,
).via("B = 2, threshold equal to a similarity")
@example(
    batch=(torch.tensor([[0.0], [0.0]], dtype=torch.float64), torch.tensor([[0.0], [3.0]], dtype=torch.float64)),
    data=None,
    mode="drop",
    mask="soft",
    tau=0.01,
    alpha=0.5,
    dtype=torch.float64,
).via("self logit 900 far above the row's log-sum-exp (found by hypothesis)")
@settings(max_examples=150)
def test_integer_dot_matches_oracle(batch, data, mode, mask, tau, alpha, dtype) -> None:  # noqa: ANN001
    z1, z2 = batch
    sims = _exact_similarities(z1, z2, "dot")
    offset = 0.0 if mask == "hard" else 0.1
    k = 6.0 if data is None else data.draw(thresholds_from(sims, z1.shape[0], offset))  # 6 = s between rows 1, 2
    _check_against_oracle(z1, z2, k, "dot", mode, mask, tau, alpha, dtype, check_grads=True)


@given(
    batch=axis_batches(),
    data=st.data(),
    mode=st.sampled_from(MODES),
    mask=st.sampled_from(MASK_VARIANTS),
    tau=temperatures,
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
)
def test_axis_aligned_cos_matches_oracle(batch, data, mode, mask, tau, dtype) -> None:  # noqa: ANN001
    z1, z2 = batch
    sims = _exact_similarities(z1, z2, "cos")
    k = data.draw(thresholds_from(sims, z1.shape[0], 0.0 if mask == "hard" else 0.1))
    has_zero_row = bool((torch.cat([z1, z2]).abs().sum(1) == 0).any())
    # The oracle's gradient at a zero vector is 0·∞ (its norm's derivative); compare values only
    # there, and gradients in float64/float32 elsewhere (half gradients are rounded to 3 digits).
    check = not has_zero_row and dtype in (torch.float64, torch.float32)
    _check_against_oracle(z1, z2, k, "cos", mode, mask, tau, 0.5, dtype, check_grads=check)
    if has_zero_row and dtype != torch.float16:
        # A zero row's exact gradient is 1/1e-8 times the gradient w.r.t. ẑ (SPEC §1's max(‖z‖, 1e-8)):
        # finite in float32/float64/bfloat16, but beyond float16's range (65504), so not checked there.
        a1, a2 = z1.to(dtype).clone().requires_grad_(True), z2.to(dtype).clone().requires_grad_(True)
        mask_only, _, exact = mask.partition("-")
        kw = dict(mask=mask_only, mask_gradient="full" if exact else "labels")
        adaptive_info_nce(a1, a2, k, temperature=tau, false_negatives=mode, **kw).backward()
        assert bool(torch.isfinite(a1.grad).all()) and bool(torch.isfinite(a2.grad).all())


finite_floats = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def float_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    b = draw(st.integers(2, 5))
    d = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(finite_floats, min_size=d, max_size=d), min_size=2 * b, max_size=2 * b))
    z = torch.tensor(rows, dtype=torch.float64)
    return z[:b].clone(), z[b:].clone()


def _candidate_logits(
    z1: torch.Tensor, z2: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partner logits (N,), candidate logits (N, N-2) and self-excluded all-logits for closed forms."""
    b = z1.shape[0]
    n = 2 * b
    s = _exact_similarities(z1, z2, "dot")
    l_p = torch.stack([s[i, (i + b) % n] for i in range(n)]) / tau
    cand = torch.stack([torch.stack([s[i, j] for j in range(n) if j not in (i, (i + b) % n)]) for i in range(n)]) / tau
    return l_p, cand, s


@given(batch=float_batches(), tau=temperatures, alpha=st.floats(0.0, 1.0))
def test_all_candidates_suspected_closed_forms(batch, tau, alpha) -> None:  # noqa: ANN001
    """k below every similarity (hard mask): F_i = N - 2 for every row, so
    drop: ℓ = 0;  attract: ℓ = (1-α)(l_p - mean_C l_j);  relabel: ℓ = lse_{j≠i} l_j - α l_p - (1-α) mean_C l_j."""
    z1, z2 = batch
    l_p, cand, s = _candidate_logits(z1, z2, tau)
    k = float(s.min()) - 1.0
    kw = dict(temperature=tau, similarity="dot", positive_weight=alpha, reduction="none")
    drop = adaptive_info_nce(z1, z2, k, false_negatives="drop", **kw)
    attract = adaptive_info_nce(z1, z2, k, false_negatives="attract", **kw)
    relabel = adaptive_info_nce(z1, z2, k, false_negatives="relabel", **kw)
    scale = 1.0 + float(s.abs().max()) / tau
    tol = dict(atol=1e-12 * scale, rtol=1e-10)
    torch.testing.assert_close(drop, torch.zeros_like(drop), **tol)
    torch.testing.assert_close(attract, (1 - alpha) * (l_p - cand.mean(1)), **tol)
    lse = torch.logsumexp(torch.cat([l_p[:, None], cand], 1), 1)
    torch.testing.assert_close(relabel, lse - alpha * l_p - (1 - alpha) * cand.mean(1), **tol)


@given(batch=float_batches(), tau=temperatures, mode=st.sampled_from(MODES[1:]), mask=st.sampled_from(MASKS))
def test_no_candidate_suspected_equals_keep(batch, tau, mode, mask) -> None:  # noqa: ANN001
    """k >= every similarity (hard), or far above it (soft: ν ≈ 1): every mode is plain InfoNCE."""
    z1, z2 = batch
    s = _exact_similarities(z1, z2, "dot")
    k = float(s.max()) + (0.0 if mask == "hard" else 100.0)
    kw = dict(temperature=tau, similarity="dot", reduction="none", mask=mask, mask_temperature=0.5)
    got = adaptive_info_nce(z1, z2, k, false_negatives=mode, **kw)
    keep = adaptive_info_nce(z1, z2, None, false_negatives="keep", **kw)
    scale = 1.0 + float(s.abs().max()) / tau
    torch.testing.assert_close(got, keep, atol=1e-12 * scale, rtol=1e-10)


@given(batch=integer_batches(), tau=temperatures, mode=st.sampled_from(MODES), mask=st.sampled_from(MASKS))
def test_identical_views_duplicate_rows(batch, tau, mode, mask) -> None:  # noqa: ANN001
    """z2 = z1 (every partner is an exact duplicate): matches the oracle and stays finite."""
    z1, _ = batch
    assume(bool(z1.abs().sum() > 0))
    sims = _exact_similarities(z1, z1, "dot")
    k = float(sims.median()) + (0.1 if mask == "soft" else 0.0)  # soft: off the F = 1 kink, see thresholds_from
    _check_against_oracle(z1, z1.clone(), k, "dot", mode, mask, tau, 0.5, torch.float64, check_grads=True)


@given(tau=temperatures, mode=st.sampled_from(MODES), mask=st.sampled_from(MASKS), b=st.integers(2, 4))
def test_all_rows_identical_cos(tau, mode, mask, b) -> None:  # noqa: ANN001
    """Every row the same direction: all similarities are 1; with k = 1 nothing is suspected
    (1 <= 1) and every row's loss is log(N - 1) for every mode."""
    z = torch.zeros(b, 3, dtype=torch.float64)
    z[:, 0] = 1.0  # normalises exactly, so every s_ij is exactly 1
    rows = adaptive_info_nce(z, 2 * z, 1.0, temperature=tau, false_negatives=mode, mask="hard", reduction="none")
    torch.testing.assert_close(rows, torch.full_like(rows, math.log(2 * b - 1)), atol=1e-9, rtol=1e-9)
    rows_soft = adaptive_info_nce(z, 2 * z, 1.0, temperature=tau, false_negatives=mode, mask=mask, reduction="none")
    assert bool(torch.isfinite(rows_soft).all())
