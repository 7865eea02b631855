"""Gradients of the reference backend's custom autograd Function.

`torch.autograd.gradcheck` in float64 for every mode, hard and soft masks (the soft mask's exact
derivative, ``mask_gradient="full"``, also w.r.t. the threshold k), cos and dot; an upstream gradient
other than 1; row chunking; and finiteness of the loss and its gradients for float16/bfloat16 inputs
at τ = 0.01, for both soft-mask derivatives (the default ``"labels"`` holds part of the mask fixed, so
finite differences do not apply to it: it is checked against the oracle's autograd instead).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _oracle import oracle_rows
from torch.autograd import gradcheck

import adaptive_contrastive.reference as reference
from adaptive_contrastive.functional import adaptive_info_nce

MODES = ("keep", "drop", "attract", "relabel")
THRESHOLD_MODES = ("drop", "attract", "relabel")
MASKS = ("hard", "soft")
# (mask, mask_gradient): the hard mask, and the soft mask under both of its derivatives.
MASK_VARIANTS = (("hard", "labels"), ("soft", "labels"), ("soft", "full"))
SIMILARITIES = ("cos", "dot")


def threshold_has_gradient(mode: str, mask: str, mask_gradient: str) -> bool:
    """Only the soft mask's exact derivative reaches the threshold."""
    return mode != "keep" and mask == "soft" and mask_gradient == "full"


def views(b: int, d: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(b, d, dtype=torch.float64)
    z1[1] = z1[0] + 0.3 * torch.randn(d, dtype=torch.float64)  # a likely false negative
    z2 = z1 + 0.5 * torch.randn(b, d, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def similarities(z1: torch.Tensor, z2: torch.Tensor, similarity: str) -> torch.Tensor:
    z = torch.cat([z1, z2]).double()
    if similarity == "cos":
        z = z / z.norm(dim=1, keepdim=True)
    return z @ z.T


def thresholds_with_margin(z1: torch.Tensor, z2: torch.Tensor, similarity: str) -> torch.Tensor:
    """(N,) thresholds halfway between two consecutive candidate similarities of each row, so the
    hard mask is constant under gradcheck's finite-difference perturbations."""
    b = z1.shape[0]
    n = 2 * b
    s = similarities(z1, z2, similarity)
    k = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        cand = torch.tensor([float(s[i, j]) for j in range(n) if j not in (i, (i + b) % n)], dtype=torch.float64)
        cand, _ = cand.sort()
        gaps = cand[1:] - cand[:-1]
        m = int(gaps.argmax()) + 1  # the widest gap: rows suspect different numbers of candidates
        k[i] = (cand[m - 1] + cand[m]) / 2
        assert float(cand[m] - cand[m - 1]) > 1e-4, "degenerate draw; margin too small for gradcheck"
    return k


@pytest.mark.parametrize("mode, mask, similarity", list(itertools.product(MODES, MASKS, SIMILARITIES)))
def test_gradcheck_embeddings(mode: str, mask: str, similarity: str) -> None:
    """gradcheck on reduction='none': the full Jacobian, i.e. every upstream gradient."""
    z1, z2 = views(3, 4)
    k = thresholds_with_margin(z1, z2, similarity)
    z1.requires_grad_(True)
    z2.requires_grad_(True)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return adaptive_info_nce(
            a,
            b,
            k,
            temperature=0.5,
            similarity=similarity,
            false_negatives=mode,
            mask=mask,
            mask_temperature=0.2,
            mask_gradient="full",
            reduction="none",
            backend="reference",
        )

    assert gradcheck(f, (z1, z2), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", THRESHOLD_MODES)
@pytest.mark.parametrize("kind", ["0d", "B", "N"])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_gradcheck_soft_mask_threshold(mode: str, kind: str, similarity: str) -> None:
    """Soft mask, exact derivative: the loss is differentiable in k (SPEC §2), checked jointly with the embeddings."""
    b = 3
    z1, z2 = views(b, 4)
    base = thresholds_with_margin(z1, z2, similarity)
    k = {"0d": base.mean(), "B": base[:b], "N": base}[kind].clone().requires_grad_(True)
    z1.requires_grad_(True)
    z2.requires_grad_(True)

    def f(a: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return adaptive_info_nce(
            a,
            c,
            t,
            temperature=0.5,
            similarity=similarity,
            false_negatives=mode,
            mask="soft",
            mask_temperature=0.3,
            mask_gradient="full",
            reduction="none",
        )

    assert gradcheck(f, (z1, z2, k), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", THRESHOLD_MODES)
def test_hard_mask_gives_threshold_no_gradient(mode: str) -> None:
    z1, z2 = views(4, 3)
    k = thresholds_with_margin(z1, z2, "cos").requires_grad_(True)
    z1.requires_grad_(True)
    loss = adaptive_info_nce(z1, z2, k, false_negatives=mode, mask="hard")
    loss.backward()
    assert z1.grad is not None and bool(z1.grad.abs().sum() > 0)
    assert k.grad is None or bool((k.grad == 0).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask, mask_gradient", MASK_VARIANTS)
def test_upstream_gradient_other_than_one(mode: str, mask: str, mask_gradient: str) -> None:
    """Scalar loss: backward(c) scales the gradient by c. Rows: backward(g) is Σ_i g_i ∇ℓ_i,
    with each ∇ℓ_i from its own one-hot backward, and equals the oracle's."""
    b = 4
    z1, z2 = views(b, 5)
    k = thresholds_with_margin(z1, z2, "cos").requires_grad_(threshold_has_gradient(mode, mask, mask_gradient))
    kw = dict(false_negatives=mode, mask=mask, temperature=0.3, mask_temperature=0.1, mask_gradient=mask_gradient)

    def grads(fn) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        kk = k.detach().clone().requires_grad_(k.requires_grad)
        fn(a1, a2, kk)
        out = (a1.grad, a2.grad)
        return out + ((kk.grad,) if kk.requires_grad else ())

    unit = grads(lambda a1, a2, kk: adaptive_info_nce(a1, a2, kk, **kw).backward())
    scaled = grads(
        lambda a1, a2, kk: adaptive_info_nce(a1, a2, kk, **kw).backward(torch.tensor(-3.25, dtype=torch.float64))
    )
    for u, s in zip(unit, scaled, strict=True):
        torch.testing.assert_close(s, -3.25 * u, atol=1e-12, rtol=1e-10)

    g = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0, -0.25, 1.5, 0.75], dtype=torch.float64)
    weighted = grads(lambda a1, a2, kk: adaptive_info_nce(a1, a2, kk, reduction="none", **kw).backward(g))
    by_row = [torch.zeros_like(t) for t in weighted]
    for i in range(2 * b):
        one_hot = torch.zeros(2 * b, dtype=torch.float64)
        one_hot[i] = 1.0
        gi = grads(lambda a1, a2, kk, oh=one_hot: adaptive_info_nce(a1, a2, kk, reduction="none", **kw).backward(oh))
        for acc, t in zip(by_row, gi, strict=True):
            acc += g[i] * t
    for w, r in zip(weighted, by_row, strict=True):
        torch.testing.assert_close(w, r, atol=1e-12, rtol=1e-10)

    o = grads(lambda a1, a2, kk: oracle_rows(a1, a2, kk, **kw).backward(g))
    for w, r in zip(weighted, o, strict=True):
        torch.testing.assert_close(w, r, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask, mask_gradient", MASK_VARIANTS)
def test_row_chunking_does_not_change_results(
    mode: str, mask: str, mask_gradient: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference path processes rows in chunks; odd chunk sizes give the same loss and gradients."""
    b = 13
    z1, z2 = views(b, 6)
    k = (0.2 + 0.2 * torch.randn(2 * b, dtype=torch.float64)).requires_grad_(
        threshold_has_gradient(mode, mask, mask_gradient)
    )
    kw = dict(false_negatives=mode, mask=mask, temperature=0.2, reduction="none", mask_gradient=mask_gradient)
    g = torch.randn(2 * b, dtype=torch.float64)

    def run() -> list[torch.Tensor]:
        a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        kk = k.detach().clone().requires_grad_(k.requires_grad)
        rows = adaptive_info_nce(a1, a2, kk, backend="reference", **kw)
        rows.backward(g)
        return [rows.detach(), a1.grad, a2.grad] + ([kk.grad] if kk.requires_grad else [])

    whole = run()
    monkeypatch.setattr(reference, "_BLOCK_ELEMENTS", 3 * 2 * b + 1)  # 3 rows per chunk, 26 rows
    chunked = run()
    for w, c in zip(whole, chunked, strict=True):
        torch.testing.assert_close(c, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("mode, mask, mask_gradient", [(m, *v) for m, v in itertools.product(MODES, MASK_VARIANTS)])
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_half_precision_tau_001_is_finite(
    dtype: torch.dtype, mode: str, mask: str, mask_gradient: str, similarity: str
) -> None:
    """τ = 0.01 in float16/bfloat16 (logits up to 100·‖z‖²): no NaN or inf in loss or gradients,
    and both still agree with the float64 oracle on the same rounded inputs."""
    b, d = 16, 8
    z1, z2 = views(b, d, dtype)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    soft_k = threshold_has_gradient(mode, mask, mask_gradient)
    k = torch.full((b,), 0.3 if similarity == "cos" else 2.0, dtype=dtype, requires_grad=soft_k)
    kw = dict(temperature=0.01, similarity=similarity, false_negatives=mode, mask=mask, mask_gradient=mask_gradient)
    rows = adaptive_info_nce(z1, z2, k, reduction="none", **kw)
    assert rows.dtype == torch.float32
    assert bool(torch.isfinite(rows).all()), rows
    rows.mean().backward()
    for t in (z1.grad, z2.grad):
        assert t is not None and t.dtype == dtype
        assert bool(torch.isfinite(t).all()), t
    if soft_k:
        assert k.grad is not None and bool(torch.isfinite(k.grad).all()), k.grad

    o1, o2 = z1.detach().double().requires_grad_(True), z2.detach().double().requires_grad_(True)
    want = oracle_rows(o1, o2, k.detach().double(), **kw)
    torch.testing.assert_close(rows.double(), want, atol=1e-3, rtol=1e-5)
    want.mean().backward()
    for got, ref in ((z1.grad, o1.grad), (z2.grad, o2.grad)):
        scale = float(ref.abs().max()) + 1e-3
        torch.testing.assert_close(got.double(), ref, atol=2e-2 * scale, rtol=2e-2)


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.bfloat16, torch.float32, torch.float64],
    ids=["float16", "bfloat16", "float32", "float64"],
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask, mask_gradient", MASK_VARIANTS)
def test_small_tau_dissimilar_partner_gradients_finite(
    dtype: torch.dtype, mode: str, mask: str, mask_gradient: str
) -> None:
    """Adversarial τ = 0.01 case: each row's partner is its antipode (s = -1) and both candidates
    are orthogonal (s = 0), so the left-out self logit 1/τ exceeds the row's log-sum-exp by ~100;
    anything computing e^{l - lse} on masked-out columns overflows. Loss and gradients must stay
    finite and equal the oracle's."""
    eye = torch.eye(2, dtype=torch.float64)
    z1, z2 = eye.to(dtype).clone().requires_grad_(True), (-eye).to(dtype).clone().requires_grad_(True)
    soft_k = threshold_has_gradient(mode, mask, mask_gradient)
    k = torch.tensor(0.5, dtype=torch.float64, requires_grad=soft_k)
    kw = dict(temperature=0.01, false_negatives=mode, mask=mask, mask_gradient=mask_gradient)
    loss = adaptive_info_nce(z1, z2, k, **kw)
    assert bool(torch.isfinite(loss))
    loss.backward()
    o1, o2 = eye.clone().requires_grad_(True), (-eye).clone().requires_grad_(True)
    ko = k.detach().clone().requires_grad_(soft_k)
    want = oracle_rows(o1, o2, ko, **kw).mean()
    want.backward()
    torch.testing.assert_close(loss.double(), want, atol=1e-4, rtol=1e-5)
    for got, ref in ((z1.grad, o1.grad), (z2.grad, o2.grad)) + (((k.grad, ko.grad),) if soft_k else ()):
        assert got is not None and bool(torch.isfinite(got).all()), got
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode", THRESHOLD_MODES)
@pytest.mark.parametrize("mask_gradient", ["labels", "full"])
def test_soft_mask_weight_underflow(dtype: torch.dtype, mode: str, mask_gradient: str) -> None:
    """Soft mask, dot similarity, τ = 0.01, β = 0.05: row 0 (z = 2) has its partner at s = 2 and a
    candidate at s = 6 with k = 0, so ν = sigmoid(-120) underflows in float32 while its term
    ν e^{l} = e^{600 - 120} still dominates e^{l_p} = e^{200}: the exact drop loss of row 0 is
    ≈ 280, not the 0 one gets by letting ν round to 0 (log ν must be formed as logsigmoid)."""
    z1 = torch.tensor([[2.0], [3.0]], dtype=dtype, requires_grad=True)
    z2 = torch.tensor([[1.0], [0.5]], dtype=dtype, requires_grad=True)
    kw = dict(
        temperature=0.01,
        similarity="dot",
        false_negatives=mode,
        mask="soft",
        mask_temperature=0.05,
        mask_gradient=mask_gradient,
    )
    rows = adaptive_info_nce(z1, z2, 0.0, reduction="none", **kw)
    o1 = z1.detach().double().requires_grad_(True)
    o2 = z2.detach().double().requires_grad_(True)
    want = oracle_rows(o1, o2, 0.0, **kw)
    torch.testing.assert_close(rows.double(), want, atol=1e-3, rtol=1e-5)
    rows.sum().backward()
    want.sum().backward()
    for got, ref in ((z1.grad, o1.grad), (z2.grad, o2.grad)):
        assert bool(torch.isfinite(got).all()), got
        torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-4)
