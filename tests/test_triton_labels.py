"""Known positives (`labels`, SPEC §8) on the fused Triton kernels (interpreted without CUDA).

Every mode × mask × label pattern, with and without a threshold, against the independent float64
oracle of tests/_oracle.py and against the reference backend, rows and gradients; batches large
enough that most column tiles take the kernels' fast path (labels compared there without the
self/partner checks) against the reference; a few hypothesis cases against the oracle.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _interpreted import ON_CUDA, load_kernel_module, run_interpreted_quickly
from _oracle import oracle_candidate_similarities, oracle_rows
from hypothesis import given, settings
from hypothesis import strategies as st

kernel_module = load_kernel_module()

from adaptive_contrastive.functional import adaptive_info_nce  # noqa: E402

MODES = ("drop", "attract", "relabel")
MASKS = ("hard", "soft")
PATTERNS = ("distinct", "equal", "groups", "unknowns")
B = 6


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    run_interpreted_quickly(monkeypatch)
    monkeypatch.delenv("ADAPTIVE_CONTRASTIVE_FP32_PRECISION", raising=False)
    previous = kernel_module.set_fp32_precision(None)  # the default, 3xTF32 (emulated here)
    yield
    kernel_module.set_fp32_precision(previous)


DEVICE = torch.device("cuda" if ON_CUDA else "cpu")


def label_pattern(name: str, b: int = B) -> torch.Tensor:
    """All distinct, all equal, pairs, and pairs with unknown (negative) labels."""
    patterns = {
        "distinct": torch.arange(b),
        "equal": torch.full((b,), 7),
        "groups": torch.arange(b) // 2,
        "unknowns": torch.tensor([0, -1, 0, 1, -1, 1, 2, -3] * (b // 8 + 1))[:b],
    }
    return patterns[name].to(DEVICE)


def views(b: int = B, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(b, d, dtype=torch.float64)
    z1[1] = z1[0] + 0.2 * torch.randn(d, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(b, d, dtype=torch.float64)
    return z1, z2


def per_row_threshold(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    sims = torch.tensor(oracle_candidate_similarities(z1, z2), dtype=torch.float64)
    return float(torch.quantile(sims, 0.7)) + 0.1 * torch.randn(2 * z1.shape[0], dtype=torch.float64)


def losses_and_grads(fn, z1, z2, k, labels, dtype, **kw):  # noqa: ANN001, ANN003, ANN201
    """Row losses and the gradients (z1, z2, and k when it gets one) of Σ upstream·rows."""
    a1 = z1.detach().to(DEVICE, dtype).requires_grad_()
    a2 = z2.detach().to(DEVICE, dtype).requires_grad_()
    ka = None if k is None else k.detach().to(DEVICE, dtype).requires_grad_(kw["mask"] == "soft")
    rows = fn(a1, a2, ka, labels=labels, **kw)
    upstream = torch.linspace(-1.0, 2.0, rows.shape[0], dtype=rows.dtype, device=rows.device)
    (rows * upstream).sum().backward()
    grad_k = None if ka is None or not ka.requires_grad else ka.grad
    return rows.detach().double().cpu(), a1.grad.double().cpu(), a2.grad.double().cpu(), grad_k


def triton_rows(z1, z2, k, labels, **kw):  # noqa: ANN001, ANN003, ANN201
    return adaptive_info_nce(z1, z2, k, labels=labels, reduction="none", backend="triton", **kw)


def reference_rows(z1, z2, k, labels, **kw):  # noqa: ANN001, ANN003, ANN201
    return adaptive_info_nce(z1, z2, k, labels=labels, reduction="none", backend="reference", **kw)


def oracle(z1, z2, k, labels, **kw):  # noqa: ANN001, ANN003, ANN201
    return oracle_rows(z1.cpu(), z2.cpu(), None if k is None else k.cpu(), labels=labels.cpu(), **kw)


def assert_same(got, want, scale: float, what: str) -> None:  # noqa: ANN001
    """float32 kernels against a float64 result: round-off relative to the logits' scale."""
    for name, g, w in zip(("rows", "dz1", "dz2", "dk"), got, want, strict=True):
        if w is None:
            continue
        assert g is not None, (what, name)
        message = f"{what} {name}"
        torch.testing.assert_close(
            g.double().cpu(), w.double().cpu(), atol=3e-6 * scale, rtol=3e-5, msg=lambda m, s=message: f"{s}: {m}"
        )


@pytest.mark.parametrize(
    ("mode", "mask", "pattern", "with_threshold"),
    [(m, k, p, t) for m, k, p, t in itertools.product(MODES, MASKS, PATTERNS, (True, False)) if t or k == "hard"],
)
def test_labels_match_oracle_and_reference(mode: str, mask: str, pattern: str, with_threshold: bool) -> None:
    z1, z2 = views()
    labels = label_pattern(pattern)
    k = per_row_threshold(z1, z2) if with_threshold else None
    kw = dict(temperature=0.4, false_negatives=mode, mask=mask, mask_temperature=0.1)
    got = losses_and_grads(triton_rows, z1, z2, k, labels, torch.float32, **kw)
    want_oracle = losses_and_grads(oracle, z1, z2, k, labels, torch.float64, **kw)
    want_reference = losses_and_grads(reference_rows, z1, z2, k, labels, torch.float64, **kw)
    # The soft mask's default gradient ("labels") gives the threshold none, on every backend.
    assert got[3] is None and want_reference[3] is None and want_oracle[3] is None
    scale = 1.0 + 1.0 / kw["temperature"]  # cosine logits are at most 1/τ
    assert_same(got, want_oracle, scale, "oracle")
    assert_same(got, want_reference, scale, "reference")


@pytest.mark.parametrize(
    ("mask", "with_threshold", "pattern"),
    [("hard", True, "groups"), ("soft", True, "unknowns"), ("hard", False, "groups")],
)
def test_labels_on_fast_tiles(mask: str, with_threshold: bool, pattern: str) -> None:
    # 64 rows: two of the four 16-wide column tiles of each row block hold neither a self nor a
    # partner column, so the label compare runs in the kernels' fast loops too.
    b = 32
    z1, z2 = views(b, 6)
    labels = label_pattern(pattern, b)
    k = per_row_threshold(z1, z2) if with_threshold else None
    kw = dict(temperature=0.3, false_negatives="attract", mask=mask, mask_temperature=0.2)
    got = losses_and_grads(triton_rows, z1, z2, k, labels, torch.float32, **kw)
    want = losses_and_grads(reference_rows, z1, z2, k, labels, torch.float64, **kw)
    assert_same(got, want, 1.0 + 1.0 / kw["temperature"], "reference")


def test_labels_any_integer_range() -> None:
    # Labels are int64 of any size: the kernels compare dense int32 ranks of them.
    z1, z2 = views()
    base = label_pattern("groups")
    shifted = torch.where(base >= 0, base * 2**40 + 2**62, base)
    kw = dict(temperature=0.4, false_negatives="attract", mask="hard")
    small = triton_rows(z1.float().to(DEVICE), z2.float().to(DEVICE), None, base, **kw)
    large = triton_rows(z1.float().to(DEVICE), z2.float().to(DEVICE), None, shifted, **kw)
    torch.testing.assert_close(small, large, atol=0, rtol=0)
    rows, cols = kernel_module.dense_label_ids(torch.tensor([5, -1, 2**62]), torch.tensor([2**62, 5, -7, 9]))
    assert rows.dtype == cols.dtype == torch.int32
    assert rows[0] == cols[1] and rows[2] == cols[0] and rows[1] == -2 and cols[2] == -1


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(2, 5),
    alphabet=st.integers(1, 3),
    data=st.data(),
    mode=st.sampled_from(MODES),
    mask=st.sampled_from(MASKS),
    mask_gradient=st.sampled_from(("labels", "full")),
    with_threshold=st.booleans(),
)
def test_labels_hypothesis(
    b: int,
    alphabet: int,
    data,  # noqa: ANN001
    mode: str,
    mask: str,
    mask_gradient: str,
    with_threshold: bool,
) -> None:
    labels = torch.tensor(data.draw(st.lists(st.integers(-1, alphabet - 1), min_size=b, max_size=b)), device=DEVICE)
    z1, z2 = views(b, 3)
    k = per_row_threshold(z1, z2) if with_threshold else None
    kw = dict(temperature=0.5, false_negatives=mode, mask=mask, mask_temperature=0.25, mask_gradient=mask_gradient)
    got = losses_and_grads(triton_rows, z1, z2, k, labels, torch.float32, **kw)
    want = losses_and_grads(oracle, z1, z2, k, labels, torch.float64, **kw)
    if got[3] is not None and want[3] is None:
        want = (*want[:3], torch.zeros_like(got[3]))  # the threshold is unused: every candidate known
    assert_same(got, want, 3.0, "oracle")
