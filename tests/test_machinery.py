"""The loss inside PyTorch's machinery: torch.compile, torch.func, autocast, higher-order gradients.

On CPU a device→host read inside `forward` shows up as a graph break under torch.compile
(``.item()``, ``bool()`` and ``float()`` of a tensor split the graph), so counting graph breaks is
how these tests hold the module to "no sync in the hot path"; the GPU script checks the same
with ``torch.cuda.set_sync_debug_mode("error")``.

Nothing here imports torch._dynamo at collection time (see `graph_breaks`).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from adaptive_contrastive import AdaptiveInfoNCE
from adaptive_contrastive.functional import adaptive_info_nce

D = 16
B = 24


def trained_module(**kwargs: object) -> AdaptiveInfoNCE:
    """A module past its warm-up, with a target k̄_stat and a calibrated ThresholdNet: the state in
    which nearly every training step runs."""
    torch.manual_seed(0)
    loss_fn = AdaptiveInfoNCE(dim=D, temperature=0.2, backend="reference", **kwargs)  # type: ignore[arg-type]
    z1, z2 = views()
    loss_fn(z1, z2)
    loss_fn.end_epoch()
    loss_fn(z1, z2)  # first adaptive call: calibrates the ThresholdNet
    return loss_fn


def views(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(B, D, generator=g)
    return z1.requires_grad_(True), (z1.detach() + 0.3 * torch.randn(B, D, generator=g)).requires_grad_(True)


def graph_breaks(fn: object, *args: object) -> tuple[int, list[str]]:
    # Imported here, not at collection: torch._dynamo imports Triton, and Triton must first be
    # imported by test_triton_kernel.py under TRITON_INTERPRET=1 (it fixes its mode at import).
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [str(reason.reason)[:200] for reason in explanation.break_reasons]


# --------------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("labelled", [False, True], ids=["no-labels", "labels"])
def test_module_compiles_without_graph_breaks(labelled: bool) -> None:
    loss_fn = trained_module()
    z1, z2 = views(2)
    labels = (torch.arange(B) // 3) if labelled else None
    count, reasons = graph_breaks(loss_fn, z1, z2, labels)
    assert count == 0, reasons


def test_model_step_compiles_with_at_most_one_graph_break() -> None:
    loss_fn = trained_module()
    encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, D))

    def step(x: torch.Tensor) -> torch.Tensor:
        z1, z2 = encoder(x), encoder(x + 0.1 * torch.randn_like(x))
        return loss_fn(z1, z2)

    count, reasons = graph_breaks(step, torch.randn(B, 8))
    assert count <= 1, reasons


def test_compiled_module_equals_eager_over_an_epoch_boundary() -> None:
    """Loss, gradients (embeddings and ThresholdNet) and the running state agree step by step,
    across `end_epoch` (the target moves, the compiled code must follow)."""
    eager, compiled_module = trained_module(), trained_module()
    compiled = torch.compile(compiled_module, backend="aot_eager")
    for step in range(4):
        z1, z2 = views(10 + step)
        labels = torch.arange(B) % 5 if step % 2 else None
        a = eager(z1, z2, labels)
        inputs = [z1, z2, *eager.parameters()]
        grads_a = torch.autograd.grad(a, inputs, allow_unused=True, materialize_grads=True)
        b = compiled(z1, z2, labels)
        inputs_b = [z1, z2, *compiled_module.parameters()]
        grads_b = torch.autograd.grad(b, inputs_b, allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(b, a)
        for ga, gb in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(gb, ga)
        if step == 1:
            eager.end_epoch()
            compiled_module.end_epoch()
        torch.testing.assert_close(compiled_module.k_bar, eager.k_bar)
        torch.testing.assert_close(compiled_module.sample_step, eager.sample_step)
    assert compiled_module.epoch == eager.epoch == 2


def test_compiled_module_does_not_recompile_once_its_state_settles() -> None:
    """torch.compile specialises on every host value the forward reads: a counter read there (steps or
    epochs) would recompile the module at each new value and, past the recompile limit, leave it
    silently running eager. Only the warm-up, the target's arrival and the calibration may compile
    a new graph, and they all happen in the first two epochs."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    loss_fn = AdaptiveInfoNCE(dim=D, temperature=0.2, backend="reference", warmup_epochs=1)
    compiled = torch.compile(loss_fn, backend="aot_eager")

    def epoch(first_seed: int) -> None:
        for step in range(3):
            z1, z2 = views(first_seed + step)
            compiled(z1, z2, torch.arange(B) % 5 if step == 2 else None).backward()
        loss_fn.end_epoch()

    epoch(100)  # warm-up
    epoch(200)  # the target exists and the ThresholdNet calibrates
    with torch._dynamo.config.patch(error_on_recompile=True):
        for e in range(3):
            epoch(300 + 10 * e)
    assert loss_fn.epoch == 5
    last = loss_fn.last
    assert last is not None and last.epoch == 5 and last.mode == "attract"
    loss_fn.end_epoch()
    assert loss_fn.last is not None and loss_fn.last.epoch == 5  # the call still belongs to epoch 5


@pytest.mark.slow
def test_inductor_compiles_a_training_step() -> None:
    """The default backend (Inductor, generating C++ on CPU) runs a full step and matches eager."""
    eager, compiled_module = trained_module(), trained_module()
    compiled = torch.compile(compiled_module)
    z1, z2 = views(3)
    a, b = eager(z1, z2), compiled(z1, z2)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(a, [z1, z2])
    gb = torch.autograd.grad(b, [z1, z2])
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ torch.func

MODES = ("keep", "drop", "attract", "relabel")


@pytest.mark.parametrize("mode, mask", list(itertools.product(MODES, ("hard", "soft"))))
def test_torch_func_grad_equals_autograd(mode: str, mask: str) -> None:
    z1, z2 = (t.detach().double() for t in views())
    labels = None if mode == "keep" else torch.arange(B) % 7
    k = torch.full((B,), 0.3, dtype=torch.float64)

    def loss(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kw = dict(false_negatives=mode, mask=mask, temperature=0.5, mask_temperature=0.2, labels=labels)
        return adaptive_info_nce(a, b, t, backend="reference", **kw)  # type: ignore[arg-type]

    got = torch.func.grad(loss, argnums=(0, 1, 2))(z1, z2, k)
    a, b, t = (x.clone().requires_grad_(True) for x in (z1, z2, k))
    want = torch.autograd.grad(loss(a, b, t), [a, b, t], allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------------------------- higher-order grads


@pytest.mark.parametrize(
    "mode, mask, similarity, labelled",
    [
        ("keep", "hard", "cos", False),
        ("drop", "hard", "dot", True),
        ("attract", "hard", "cos", False),
        ("attract", "soft", "cos", True),
        ("relabel", "soft", "dot", False),
        ("drop", "soft", "cos", False),
    ],
)
def test_second_order_gradients_are_exact(mode: str, mask: str, similarity: str, labelled: bool) -> None:
    """gradgradcheck in float64 on the reference backend, the soft mask's threshold included (its exact
    derivative, mask_gradient="full": the default "labels" is by design not the derivative of the loss)."""
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(5, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    k = torch.full((5,), 0.2, dtype=torch.float64, requires_grad=mask == "soft")
    labels = torch.tensor([0, 1, 0, -1, 1]) if labelled else None

    def loss(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return adaptive_info_nce(
            a, b, t, false_negatives=mode, mask=mask, similarity=similarity, temperature=0.5,
            mask_temperature=0.3, labels=labels, backend="reference", reduction="none", mask_gradient="full",
        )  # fmt: skip

    assert gradcheck(loss, (z1, z2, k))
    assert gradgradcheck(loss, (z1, z2, k))


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
def test_soft_mask_label_gradient_is_the_same_under_create_graph(mode: str) -> None:
    """mask_gradient="labels" is not a derivative of the loss, so no gradcheck: the differentiable backward
    taken under create_graph must give the fused backward's first-order gradients, and no gradient to k."""
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = (z1.detach() + 0.5 * torch.randn(6, 4, dtype=torch.float64, generator=g)).requires_grad_(True)
    k = torch.full((6,), 0.1, dtype=torch.float64, requires_grad=True)
    loss = adaptive_info_nce(
        z1, z2, k, false_negatives=mode, mask="soft", mask_temperature=0.2, temperature=0.5, backend="reference"
    )
    plain = torch.autograd.grad(loss, [z1, z2], retain_graph=True)
    graph = torch.autograd.grad(loss, [z1, z2], create_graph=True)
    for p, q in zip(plain, graph, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert torch.autograd.grad(loss, k, allow_unused=True, materialize_grads=True)[0].abs().max() == 0


def test_create_graph_first_order_equals_plain_backward() -> None:
    """The differentiable backward (taken under create_graph) gives the same first-order gradient;
    the two views share one block of columns, which must not be counted twice."""
    z1, z2 = (t.detach().double().requires_grad_(True) for t in views())
    loss = adaptive_info_nce(z1, z2, 0.3, temperature=0.5, backend="reference")
    plain = torch.autograd.grad(loss, [z1, z2], retain_graph=True)
    graph = torch.autograd.grad(loss, [z1, z2], create_graph=True)
    for p, q in zip(plain, graph, strict=True):
        torch.testing.assert_close(q, p, atol=1e-13, rtol=1e-12)


# -------------------------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("mode", MODES)
def test_cpu_bfloat16_autocast_accumulates_in_float32(mode: str) -> None:
    """Inside torch.autocast(cpu, bfloat16) the encoder's outputs are bfloat16; the loss comes back
    float32 and equals the float32 loss of those very bfloat16 values to float32 round-off (2e-6
    relative): autocast does not push the loss's own products down to bfloat16."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(8, D)
    x = torch.randn(B, 8)
    kw = dict(false_negatives=mode, temperature=0.2, backend="reference")
    threshold = None if mode == "keep" else 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = encoder(x), encoder(x + 0.1)
        assert z1.dtype == torch.bfloat16
        loss = adaptive_info_nce(z1, z2, threshold, **kw)  # type: ignore[arg-type]
    assert loss.dtype == torch.float32
    want = adaptive_info_nce(z1.detach().float(), z2.detach().float(), threshold, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(loss.detach(), want, rtol=2e-6, atol=2e-6)
    loss.backward()
    assert encoder.weight.grad is not None and bool(torch.isfinite(encoder.weight.grad).all())


def test_module_under_autocast_matches_float32() -> None:
    eager = trained_module()
    z1, z2 = views()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = eager(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    again = trained_module()
    torch.testing.assert_close(loss, again(z1.bfloat16().float(), z2.bfloat16().float()), rtol=2e-6, atol=2e-6)
