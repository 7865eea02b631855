"""Known positives (`labels`, SPEC §8) on the reference backend, in the functional form and the module.

Row losses and gradients are held against the independent float64 oracle of tests/_oracle.py for
every mode × mask × label pattern, with and without a threshold; the module's bookkeeping (labels
alone, warm-up, diagnostics) and the bad-input errors are checked separately.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _oracle import oracle_candidate_similarities, oracle_rows
from hypothesis import given
from hypothesis import strategies as st

from adaptive_contrastive import AdaptiveInfoNCE
from adaptive_contrastive.functional import adaptive_info_nce
from adaptive_contrastive.reference import LossSettings, dense_rows, masked_info_nce_rows

MODES = ("drop", "attract", "relabel")
MASKS = ("hard", "soft")
# "soft-full": the soft mask's exact derivative (mask_gradient="full"), the only one that reaches the threshold.
MASK_VARIANTS = ("hard", "soft", "soft-full")
B = 6


def label_pattern(name: str, b: int = B) -> torch.Tensor:
    """The label patterns of the issue: all distinct, all equal, groups, and groups with unknowns."""
    patterns = {
        "distinct": torch.arange(b),
        "equal": torch.full((b,), 7),
        "groups": torch.arange(b) // 2,
        "unknowns": torch.tensor([0, -1, 0, 1, -1, 1, 2, -3][:b]),
    }
    return patterns[name]


PATTERNS = ("distinct", "equal", "groups", "unknowns")


def views(b: int = B, d: int = 5, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(b, d, dtype=torch.float64)
    z1[1] = z1[0] + 0.2 * torch.randn(d, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(b, d, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def per_row_threshold(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    sims = torch.tensor(oracle_candidate_similarities(z1, z2), dtype=torch.float64)
    return float(torch.quantile(sims, 0.7)) + 0.1 * torch.randn(2 * z1.shape[0], dtype=torch.float64)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


@pytest.mark.parametrize(
    "mode, mask, pattern, with_threshold",
    [
        (m, k, p, t)
        for m, k, p, t in itertools.product(MODES, MASK_VARIANTS, PATTERNS, (True, False))
        if t or k == "hard"
    ],
)
def test_labels_match_oracle(mode: str, mask: str, pattern: str, with_threshold: bool) -> None:
    """Rows and gradients (non-unit upstream; the threshold's too under the soft mask's exact derivative)
    equal the oracle."""
    z1, z2 = views()
    labels = label_pattern(pattern)
    k = per_row_threshold(z1, z2) if with_threshold else None
    mask, _, exact = mask.partition("-")
    gradient = "full" if exact else "labels"
    kw = dict(temperature=0.4, false_negatives=mode, mask=mask, mask_temperature=0.1, mask_gradient=gradient)
    a1, a2, o1, o2 = leaf(z1), leaf(z2), leaf(z1), leaf(z2)
    ka = leaf(k) if k is not None else None
    ko = leaf(k) if k is not None else None
    got = adaptive_info_nce(a1, a2, ka, labels=labels, reduction="none", backend="reference", **kw)
    want = oracle_rows(o1, o2, ko, labels=labels, **kw)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    upstream = torch.linspace(-1.0, 2.0, 2 * B, dtype=torch.float64)
    got.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(a1.grad, o1.grad, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(a2.grad, o2.grad, atol=1e-10, rtol=1e-9)
    if ka is not None and mask == "soft" and exact:
        # all-equal labels leave the threshold unused: the oracle then has no gradient for it at all
        want_k = ko.grad if ko.grad is not None else torch.zeros_like(ko)
        torch.testing.assert_close(ka.grad, want_k, atol=1e-10, rtol=1e-9)
    elif ka is not None:
        assert ka.grad is None, "only the soft mask's exact derivative reaches the threshold"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", MASKS)
def test_distinct_or_unknown_labels_change_nothing(mode: str, mask: str) -> None:
    """No two sequences share a known label: the loss is the unlabelled one."""
    z1, z2 = views()
    k = per_row_threshold(z1, z2)
    kw = dict(false_negatives=mode, mask=mask, reduction="none")
    plain = adaptive_info_nce(z1, z2, k, **kw)
    for labels in (torch.arange(B), torch.full((B,), -1), torch.tensor([-1, 0, -2, 1, -1, 2])):
        torch.testing.assert_close(adaptive_info_nce(z1, z2, k, labels=labels, **kw), plain, atol=0, rtol=0)


def test_labels_alone_equal_a_threshold_that_flags_exactly_them() -> None:
    """Without a threshold the known positives are the only false negatives: the same loss as a
    hard threshold below every known positive and above every other candidate (here built by hand)."""
    b = 4
    z1 = torch.eye(b, dtype=torch.float64)
    z1[1] = torch.tensor([0.9, 0.1, 0.0, 0.0], dtype=torch.float64)  # close to sequence 0
    z2 = z1.clone()
    labels = torch.tensor([3, 3, 5, 6])  # 0 and 1 known positives; 2, 3 alone
    got = adaptive_info_nce(z1, z2, None, labels=labels, false_negatives="drop", reduction="none", similarity="dot")
    # s(0, 1) = 0.9 and s(1, 0) = 0.9 are the largest candidate similarities, every other one is <= 0.1
    k = torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64)
    want = adaptive_info_nce(z1, z2, k, false_negatives="drop", reduction="none", similarity="dot")
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_known_positive_is_a_false_negative_even_below_the_threshold() -> None:
    """A known positive counts as a false negative even where s_ij <= k_i (SPEC §8, φ' = κ + (1-κ)φ)."""
    z1, z2 = views()
    labels = label_pattern("groups")
    high = adaptive_info_nce(z1, z2, 10.0, labels=labels, false_negatives="attract", reduction="none")
    alone = adaptive_info_nce(z1, z2, None, labels=labels, false_negatives="attract", reduction="none")
    torch.testing.assert_close(high, alone, atol=0, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_dense_rows_is_the_same_loss(mode: str, mask: str, pattern: str) -> None:
    """The plain-autograd spelling (used for gradients of gradients) agrees with the fused Function."""
    z1, z2 = views(dtype=torch.float64)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    n = z.shape[0]
    idx = torch.arange(n)
    partner, self_index = (idx + B) % n, idx
    labels = label_pattern(pattern).repeat(2)
    thr = per_row_threshold(z1, z2)
    settings = LossSettings(0.3, mode, 0.5, mask, 0.1)
    for t in (thr, None):
        got, _ = masked_info_nce_rows(z, z, t, partner, self_index, settings, labels, labels)
        want = dense_rows(z, z, t, partner, self_index, settings, labels, labels)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@given(
    b=st.integers(2, 5),
    d=st.integers(1, 4),
    mode=st.sampled_from(MODES),
    mask=st.sampled_from(MASKS),
    with_threshold=st.booleans(),
    seed=st.integers(0, 2**16),
    label_values=st.lists(st.integers(-2, 2), min_size=5, max_size=5),
)
def test_labels_hypothesis(
    b: int, d: int, mode: str, mask: str, with_threshold: bool, seed: int, label_values: list[int]
) -> None:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, dtype=torch.float64, generator=g)
    z2 = z1 + 0.5 * torch.randn(b, d, dtype=torch.float64, generator=g)
    labels = torch.tensor(label_values[:b])
    k = (0.3 * torch.randn(b, dtype=torch.float64, generator=g)) if with_threshold else None
    kw = dict(temperature=0.5, false_negatives=mode, mask=mask, mask_temperature=0.2)
    a1, a2, o1, o2 = leaf(z1), leaf(z2), leaf(z1), leaf(z2)
    got = adaptive_info_nce(a1, a2, k, labels=labels, reduction="sum", **kw)
    want = oracle_rows(o1, o2, k, labels=labels, **kw).sum()
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    got.backward()
    want.backward()
    torch.testing.assert_close(a1.grad, o1.grad, atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(a2.grad, o2.grad, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_half_inputs_with_labels_match_oracle(dtype: torch.dtype) -> None:
    z1, z2 = views(dtype=dtype)
    labels = label_pattern("unknowns")
    k = per_row_threshold(z1, z2)
    got = adaptive_info_nce(z1, z2, k, labels=labels, reduction="none")
    want = oracle_rows(z1.double(), z2.double(), k, labels=labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------------------------------ the module


def test_module_labels_alone() -> None:
    """threshold="labels": no threshold network, no warm-up, and exactly the known positives flagged."""
    loss_fn = AdaptiveInfoNCE(threshold="labels", false_negatives="drop", temperature=0.5)
    assert loss_fn.threshold_net is None
    z1, z2 = views()
    labels = label_pattern("groups")
    loss = loss_fn(z1, z2, labels=labels)
    want = adaptive_info_nce(z1, z2, None, labels=labels, false_negatives="drop", temperature=0.5)
    torch.testing.assert_close(loss, want)
    last = loss_fn.last
    assert last is not None and last.mode == "drop" and last.epoch == 1
    # three pairs of sequences share a label: each row has 2 known positives among its 2B - 2 candidates
    assert float(last.known_positive_fraction) == pytest.approx(2 / (2 * B - 2))
    assert float(last.false_negative_fraction) == pytest.approx(2 / (2 * B - 2))
    assert float(last.suspected_fraction) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="needs labels"):
        loss_fn(z1, z2)


def test_module_learned_threshold_adds_suspects_to_the_labels() -> None:
    loss_fn = AdaptiveInfoNCE(dim=5, warmup_epochs=0, temperature=0.5)
    z1, z2 = views()
    labels = label_pattern("unknowns")
    loss_fn(z1, z2, labels=labels)
    last = loss_fn.last
    assert last is not None
    assert last.known_positive_fraction is not None
    # κ share from the labels alone: rows of labels 0, 1 (two sequences each) have 2 known positives
    known_rows = sum(2 for v in labels.tolist() if v >= 0 and labels.tolist().count(v) == 2) * 2
    assert float(last.known_positive_fraction) == pytest.approx(known_rows / (2 * B) / (2 * B - 2))
    assert float(last.false_negative_fraction) >= float(last.known_positive_fraction)
    rows = adaptive_info_nce(z1, z2, last.k, labels=labels, temperature=0.5, reduction="none")
    torch.testing.assert_close(last.loss_learn, rows.mean())


def test_module_warmup_uses_labels_alone() -> None:
    """During warm-up there is no threshold yet; the known positives still count."""
    loss_fn = AdaptiveInfoNCE(dim=5, warmup_epochs=1, false_negatives="attract", temperature=0.5)
    z1, z2 = views()
    labels = label_pattern("groups")
    loss = loss_fn(z1, z2, labels=labels)
    want = adaptive_info_nce(z1, z2, None, labels=labels, false_negatives="attract", temperature=0.5)
    torch.testing.assert_close(loss, want)
    assert loss_fn.last is not None and loss_fn.last.mode == "attract"
    loss_fn(z1, z2)  # without labels the warm-up is plain InfoNCE
    assert loss_fn.last is not None and loss_fn.last.mode == "keep"


def test_module_keep_rejects_labels() -> None:
    loss_fn = AdaptiveInfoNCE(threshold=None, false_negatives="keep")
    z1, z2 = views()
    with pytest.raises(ValueError, match="takes no labels"):
        loss_fn(z1, z2, labels=torch.arange(B))
    with pytest.raises(ValueError, match='threshold="labels" needs a mode'):
        AdaptiveInfoNCE(threshold="labels", false_negatives="keep")


def test_module_labels_gradients_reach_the_threshold_net_under_soft_mask() -> None:
    loss_fn = AdaptiveInfoNCE(dim=5, warmup_epochs=0, mask="soft", mask_gradient="full", temperature=0.5)
    z1, z2 = views(dtype=torch.float32)
    loss_fn(z1, z2, labels=label_pattern("groups")).backward()
    grads = [p.grad for p in loss_fn.threshold_net.parameters()]  # type: ignore[union-attr]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (torch.arange(B + 1), ValueError, r"labels must have shape \(6,\)"),
        (torch.arange(B).reshape(2, 3), ValueError, r"labels must have shape"),
        (torch.arange(B).float(), TypeError, "integer dtype"),
        (torch.ones(B, dtype=torch.bool), TypeError, "integer dtype"),
        ([0, 1, 2, 3, 4, 5], TypeError, "torch.Tensor"),
        (torch.arange(B, device="meta"), ValueError, "labels are on meta"),
    ],
)
def test_bad_labels(labels: object, error: type[Exception], match: str) -> None:
    z1, z2 = views()
    with pytest.raises(error, match=match):
        adaptive_info_nce(z1, z2, 0.3, labels=labels)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        AdaptiveInfoNCE(dim=5, warmup_epochs=0)(z1, z2, labels=labels)  # type: ignore[arg-type]


def test_functional_keep_rejects_labels_and_other_modes_need_threshold_or_labels() -> None:
    z1, z2 = views()
    with pytest.raises(ValueError, match="takes no labels"):
        adaptive_info_nce(z1, z2, None, false_negatives="keep", labels=torch.arange(B))
    with pytest.raises(ValueError, match="needs a threshold"):
        adaptive_info_nce(z1, z2, None, false_negatives="drop")
