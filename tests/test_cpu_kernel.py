"""The compiled CPU kernel (adaptive_contrastive/cpu) against the reference backend's PyTorch ops, and its build."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_contrastive import cpu
from adaptive_contrastive.cpu import build
from adaptive_contrastive.functional import adaptive_info_nce
from adaptive_contrastive.reference import LossSettings, masked_info_nce_rows

pytestmark = pytest.mark.skipif(
    cpu.unavailable_reason() is not None, reason=f"no CPU kernel: {cpu.unavailable_reason()}"
)

MODES = ("keep", "drop", "attract", "relabel")


def loss_and_grads(monkeypatch: pytest.MonkeyPatch, kernel: bool, z1: torch.Tensor, z2: torch.Tensor, **kwargs):
    """Per-row losses and the gradients of their weighted sum, with or without the kernel."""
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CPU_KERNEL", "1" if kernel else "0")
    assert cpu.usable(z1.detach()) == kernel
    a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()
    rows = adaptive_info_nce(a, b, reduction="none", backend="reference", **kwargs)
    weights = torch.linspace(0.5, 1.5, rows.shape[0], dtype=rows.dtype)
    grads = torch.autograd.grad((rows * weights).sum(), (a, b))
    return (rows.detach(), *grads)


def assert_kernel_matches(monkeypatch: pytest.MonkeyPatch, z1: torch.Tensor, z2: torch.Tensor, **kwargs) -> None:
    with_kernel = loss_and_grads(monkeypatch, True, z1, z2, **kwargs)
    with_ops = loss_and_grads(monkeypatch, False, z1, z2, **kwargs)
    for got, expected, name in zip(with_kernel, with_ops, ("rows", "grad z1", "grad z2"), strict=True):
        scale = expected.abs().max().clamp_min(1.0)
        assert torch.allclose(got, expected, rtol=0, atol=2e-5 * float(scale)), (
            f"{name}: {float((got - expected).abs().max()):.2e} apart"
        )


def views(batch: int, dim: int, seed: int, noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=g)
    return z1, z1 + noise * torch.randn(batch, dim, generator=g)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("similarity", ["cos", "dot"])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_kernel_matches_pytorch_ops(monkeypatch: pytest.MonkeyPatch, mode: str, similarity: str, temperature: float):
    # 37 sequences: 74 columns, not a multiple of the kernel's 16 lanes, so every row has a tail.
    z1, z2 = views(37, 8, seed=1)
    threshold = None if mode == "keep" else torch.linspace(-0.2, 0.6, 37) * (3.0 if similarity == "dot" else 1.0)
    assert_kernel_matches(
        monkeypatch, z1, z2, threshold=threshold, false_negatives=mode, similarity=similarity, temperature=temperature
    )


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
@pytest.mark.parametrize("with_threshold", [True, False])
def test_kernel_matches_pytorch_ops_with_labels(monkeypatch: pytest.MonkeyPatch, mode: str, with_threshold: bool):
    z1, z2 = views(50, 8, seed=2)
    labels = torch.randint(-1, 9, (50,), generator=torch.Generator().manual_seed(3))
    threshold = torch.full((50,), 0.3) if with_threshold else None
    assert_kernel_matches(monkeypatch, z1, z2, threshold=threshold, labels=labels, false_negatives=mode)


def test_kernel_matches_the_float64_reference():
    """Not only the float32 ops: the kernel is as close to float64 as they are."""
    z1, z2 = views(64, 16, seed=4)
    threshold = torch.full((64,), 0.2)
    exact = adaptive_info_nce(z1.double(), z2.double(), threshold.double(), reduction="none", backend="reference")
    assert cpu.usable(z1)
    got = adaptive_info_nce(z1, z2, threshold, reduction="none", backend="reference")
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(2, 40),
    mode=st.sampled_from(MODES),
    case=st.sampled_from(["ties", "all above", "all below", "duplicates", "random"]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_pytorch_ops_on_adversarial_rows(batch: int, mode: str, case: str, seed: int):
    """Thresholds equal to similarities, rows whose every candidate is (or none is) a suspected false negative,
    repeated embeddings; the kernel must take the same side of every comparison as the PyTorch ops."""
    z1, z2 = views(batch, 4, seed, noise=0.3)
    if case == "duplicates":
        z1[1::2] = z1[0]
        z2[1::2] = z1[0]
    unit = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sims = unit[:batch] @ unit.T
    threshold = {
        "ties": sims[torch.arange(batch), (torch.arange(batch) + 1) % (2 * batch)],
        "all above": torch.full((batch,), -1.5),
        "all below": torch.full((batch,), 1.5),
        "duplicates": torch.full((batch,), 0.5),
        "random": torch.rand(batch, generator=torch.Generator().manual_seed(seed)) * 2 - 1,
    }[case]
    monkeypatch = pytest.MonkeyPatch()
    try:
        assert_kernel_matches(
            monkeypatch, z1, z2, threshold=None if mode == "keep" else threshold, false_negatives=mode
        )
    finally:
        monkeypatch.undo()


def test_rows_split_over_threads_give_the_same_result(monkeypatch: pytest.MonkeyPatch):
    q = torch.nn.functional.normalize(torch.randn(600, 16, generator=torch.Generator().manual_seed(5)), dim=1)
    partner = (torch.arange(600) + 300) % 600
    thresholds = torch.full((600,), 0.1)
    config = LossSettings(0.1, "attract", 0.5, "hard", 0.05)
    assert cpu.usable(q)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = masked_info_nce_rows(q, q, thresholds, partner, torch.arange(600), config)
        torch.set_num_threads(4)
        several = masked_info_nce_rows(q, q, thresholds, partner, torch.arange(600), config)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(one, several, strict=True))


def test_the_environment_variable_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CPU_KERNEL", "0")
    assert cpu.unavailable_reason() == "disabled by ADAPTIVE_CONTRASTIVE_CPU_KERNEL"
    assert not cpu.usable(torch.zeros(2, 2))


def test_only_eager_float32_cpu_blocks_use_the_kernel():
    assert cpu.usable(torch.zeros(2, 2))
    assert not cpu.usable(torch.zeros(2, 2, dtype=torch.float64))
    assert not cpu.usable(torch.zeros(2, 2, dtype=torch.bfloat16))


def test_without_a_compiler_the_loss_warns_once_and_uses_pytorch_ops(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    for name, value in (("_loaded", False), ("_function", None), ("_reason", None)):
        monkeypatch.setattr(cpu, name, value)
    z1, z2 = views(8, 4, seed=6)
    with pytest.warns(RuntimeWarning, match="compiled CPU kernel is unavailable"):
        got = adaptive_info_nce(z1, z2, torch.full((8,), 0.2), backend="reference")
    assert "no-such-compiler" in (cpu.unavailable_reason() or "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = adaptive_info_nce(z1, z2, torch.full((8,), 0.2), backend="reference")
    assert torch.equal(got, again)
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CPU_KERNEL", "0")
    assert torch.equal(got, adaptive_info_nce(z1, z2, torch.full((8,), 0.2), backend="reference"))


def test_the_build_is_cached_per_source_and_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CACHE", str(tmp_path))
    first = build.shared_library()
    built = first.stat().st_mtime_ns
    assert build.shared_library() == first and first.stat().st_mtime_ns == built  # found, not rebuilt
    assert first.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left
    monkeypatch.setattr(build, "_cpu_description", lambda: "another machine")
    assert build.shared_library() != first


def test_a_failing_compiler_reports_its_error(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_CACHE", str(tmp_path))
    broken = tmp_path / "hard_rows.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(build, "SOURCE", broken)
    with pytest.raises(build.BuildError, match="failed to compile hard_rows.c"):
        build.shared_library()
    assert [p.name for p in tmp_path.iterdir()] == ["hard_rows.c"]  # the temporary output is gone


def test_the_kernels_exponential_is_within_a_few_ulp():
    """The kernel's 2^x polynomial against float64, through a keep row whose softmax weights are 2^x exactly up to
    one common factor: column 2 sits at the row's maximum (2^0 = 1), so P_j / P_2 = 2^{x_j}."""
    n = 4099
    s = torch.zeros(1, n)
    s[0, 3:] = torch.linspace(-40.0, 0.0, n - 3)  # x down to -82: the weights stay clear of subnormals
    s[0, 0] = 5.0  # the row's own column: outside the softmax whatever its value
    temperature = 0.7
    grad, lse, partner_logit, count, phi_sum = torch.empty(1, n), *(torch.empty(1) for _ in range(4))
    assert cpu.usable(s)
    cpu.hard_rows(
        s, None, None, None, torch.tensor([1]), torch.tensor([0]), temperature, 0, 0.0, grad, lse, partner_logit,
        count, phi_sum,
    )  # fmt: skip
    scale = torch.tensor(1.4426950408889634, dtype=torch.float32) * torch.tensor(1.0 / temperature)
    x = (s[0, 3:] - 0.0) * scale  # the kernel's own float32 exponents
    ratio = grad[0, 3:].double() / grad[0, 2].double()
    error = (ratio / torch.exp2(x.double()) - 1).abs()
    assert float(error.max()) < 4e-7, f"2^x off by {float(error.max()):.2e} relative"
    assert grad[0, 0] == 0  # the self column


def test_the_gradient_block_holds_no_subnormal_numbers():
    """At a small temperature most softmax weights underflow: the loop writes exact zeros, not subnormals, which
    would slow down the backward's matrix products several-fold."""
    from adaptive_contrastive.reference import MaskedInfoNCEFunction

    q = torch.nn.functional.normalize(torch.randn(256, 16, generator=torch.Generator().manual_seed(7)), dim=1)
    partner = (torch.arange(256) + 128) % 256
    config = LossSettings(0.003, "attract", 0.5, "hard", 0.05)
    assert cpu.usable(q)
    thresholds = torch.full((256,), 0.2)
    block = MaskedInfoNCEFunction.apply(q, q, thresholds, partner, torch.arange(256), config, None, None)[2]
    subnormal = (block != 0) & (block.abs() < torch.finfo(torch.float32).tiny)
    assert not bool(subnormal.any()), f"{int(subnormal.sum())} subnormal entries"
    assert int((block == 0).sum()) > block.numel() // 2  # most weights did underflow: the regime where it matters
