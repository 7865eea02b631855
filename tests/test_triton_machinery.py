"""The Triton backend inside PyTorch's machinery: custom operators, torch.compile, and clear errors
where it cannot go (gradients of gradients, torch.func). Interpreted on CPU without CUDA."""

from __future__ import annotations

import pytest
import torch
from _interpreted import ON_CUDA, load_kernel_module, run_interpreted_quickly

kernel_module = load_kernel_module()

from adaptive_contrastive import AdaptiveInfoNCE  # noqa: E402
from adaptive_contrastive.functional import adaptive_info_nce  # noqa: E402
from adaptive_contrastive.kernels import op  # noqa: E402

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
B, D = 16, 8

pytestmark = pytest.mark.skipif(not op.AVAILABLE, reason="torch.library.custom_op needs torch >= 2.4")


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    run_interpreted_quickly(monkeypatch)


def views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(B, D, generator=g)
    return z1.to(DEVICE).requires_grad_(True), (z1 + 0.4 * torch.randn(B, D, generator=g)).to(DEVICE).requires_grad_(
        True
    )


def trained() -> AdaptiveInfoNCE:
    torch.manual_seed(0)
    loss_fn = AdaptiveInfoNCE(dim=D, backend="triton", temperature=0.3).to(DEVICE)
    z1, z2 = views()
    loss_fn(z1, z2)
    loss_fn.end_epoch()
    loss_fn(z1, z2)
    return loss_fn


@pytest.mark.parametrize("mask_gradient", ["labels", "full"])
def test_the_kernels_are_registered_custom_operators(mask_gradient: str) -> None:
    """opcheck: schema, fake (shape) functions and the autograd registration agree with the kernels."""
    z1, z2 = views()
    z = torch.cat([z1, z2]).detach().requires_grad_(True)
    n = z.shape[0]
    index = torch.arange(n, device=DEVICE)
    partner, self_index = (index + B) % n, index
    thresholds = torch.full((n,), 0.1, device=DEVICE, requires_grad=True)
    labels = (index % B) // 3
    args = (z, z.detach().clone().requires_grad_(True), thresholds, partner, self_index, labels, labels.clone())
    scalars = (0.3, "attract", 0.5, "soft", 0.1, mask_gradient)
    torch.library.opcheck(
        torch.ops.adaptive_contrastive.masked_info_nce.default,
        (*args, *scalars),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@pytest.mark.parametrize("labelled", [False, True], ids=["no-labels", "labels"])
def test_module_on_triton_compiles_without_graph_breaks(labelled: bool) -> None:
    import torch._dynamo  # not at collection: it imports Triton (see _interpreted.load_kernel_module)

    torch._dynamo.reset()
    loss_fn = trained()
    z1, z2 = views()
    labels = (torch.arange(B, device=DEVICE) // 4) if labelled else None
    explanation = torch._dynamo.explain(loss_fn)(z1, z2, labels)
    assert explanation.graph_break_count == 0, [str(r.reason)[:300] for r in explanation.break_reasons]


def test_compiled_triton_loss_equals_eager() -> None:
    eager, compiled_module = trained(), trained()
    compiled = torch.compile(compiled_module, backend="aot_eager")
    for step in range(2):
        z1, z2 = views()
        a, b = eager(z1, z2), compiled(z1, z2)
        torch.testing.assert_close(b, a)
        for x, y in zip(torch.autograd.grad(a, [z1, z2]), torch.autograd.grad(b, [z1, z2]), strict=True):
            torch.testing.assert_close(y, x)
        if step == 0:
            eager.end_epoch()
            compiled_module.end_epoch()


def test_compiled_soft_mask_equals_eager() -> None:
    """The soft mask's default gradient through torch.compile: the threshold gets none (its empty
    gradient travels through the operators' shape functions), and the rest equals eager mode."""

    def loss(z1: torch.Tensor, z2: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return adaptive_info_nce(z1, z2, k, mask="soft", backend="triton")

    z1, z2 = views()
    k = torch.full((B,), 0.2, device=DEVICE, requires_grad=True)
    eager = loss(z1, z2, k)
    eager_grads = torch.autograd.grad(eager, [z1, z2, k], allow_unused=True)
    compiled = torch.compile(loss, backend="aot_eager")(z1, z2, k)
    compiled_grads = torch.autograd.grad(compiled, [z1, z2, k], allow_unused=True)
    torch.testing.assert_close(compiled, eager)
    assert eager_grads[2] is None
    for x, y in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(y, x)


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_gradients_of_gradients_are_a_clear_error(mask: str) -> None:
    """Never a silently wrong or missing second-order gradient: a RuntimeError that names the fix."""
    z1, z2 = views()
    k = torch.full((B,), 0.2, device=DEVICE, requires_grad=True)
    loss = adaptive_info_nce(z1, z2, k, mask=mask, backend="triton")
    with pytest.raises(RuntimeError, match='first-order gradients only.*backend="reference"'):
        torch.autograd.grad(loss, [z1, z2], create_graph=True)
    # a plain backward of the same loss still works
    loss = adaptive_info_nce(z1, z2, k, mask=mask, backend="triton")
    grads = torch.autograd.grad(loss, [z1, z2])
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_torch_func_is_a_clear_error() -> None:
    z1, z2 = (t.detach() for t in views())
    with pytest.raises(RuntimeError, match='torch.func transforms.*backend="reference"'):
        torch.func.grad(lambda a: adaptive_info_nce(a, z2, 0.2, backend="triton"))(z1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_module_sends_half_rows_to_the_16_bit_kernels(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module keeps 16-bit rows 16-bit for the Triton backend (and its thresholds float32): the
    kernels receive the input dtype, and the loss matches the reference backend's float32 computation
    within the 16-bit rounding of the normalised rows."""
    seen: list[torch.dtype] = []
    original = op.masked_info_nce

    def spy(q: torch.Tensor, k: torch.Tensor, thresholds: torch.Tensor | None, *args: object) -> object:
        seen.append(q.dtype)
        assert thresholds is None or thresholds.dtype == torch.float32
        return original(q, k, thresholds, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(op, "masked_info_nce", spy)
    z1, z2 = (t.detach().to(dtype) for t in views())
    losses = {}
    for backend in ("triton", "reference"):
        torch.manual_seed(0)
        loss_fn = AdaptiveInfoNCE(dim=D, backend=backend, temperature=0.3, warmup_epochs=0).to(DEVICE)
        losses[backend] = loss_fn(z1, z2)
    assert seen == [dtype]
    assert losses["triton"].dtype == torch.float32
    torch.testing.assert_close(losses["triton"], losses["reference"], atol=2e-2, rtol=2e-2)
