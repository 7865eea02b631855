"""`AdaptiveInfoNCE` (SPEC §4–5): warmup, the k̄_stat target (epoch mean / EMA), calibration,
L_reg and reg_weight, thresholds "learn" / None / float / custom module, gradient routing,
`.last` diagnostics, reductions, dtypes and an exact checkpoint round trip."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from _oracle import oracle_false_negative_counts, oracle_rows
from torch import nn

from adaptive_contrastive import AdaptiveInfoNCE, Diagnostics, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce, k_stat

D = 8


def views(b: int = 6, d: int = D, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = torch.randn(b, d, dtype=torch.float64)
    z1[1] = z1[0] + 0.2 * torch.randn(d, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(b, d, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def keep_mean(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return adaptive_info_nce(z1, z2, None, false_negatives="keep", temperature=temperature)


def with_target(loss_fn: AdaptiveInfoNCE, n_steps: int = 2) -> list[float]:
    """Run one training epoch (the warmup when warmup_epochs=1) and end it; returns its k_stats."""
    stats = []
    for _ in range(n_steps):
        z1, z2 = views()
        loss_fn(z1, z2)
        stats.append(float(k_stat(z1, z2, quantile=loss_fn.quantile, similarity=loss_fn.similarity)))
    loss_fn.end_epoch()
    return stats


# ---------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------


def test_default_builds_a_set_threshold_net() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D)
    assert isinstance(loss_fn.threshold_net, ThresholdNet)
    assert loss_fn.threshold_net.arch == "set"
    assert loss_fn.threshold_net.dim == D
    assert loss_fn.settings.false_negatives == "attract" and loss_fn.settings.mask == "hard"
    assert loss_fn.quantile == 0.9 and loss_fn.reg_weight == 0.1 and loss_fn.warmup_epochs == 1
    names = dict(loss_fn.named_buffers())
    assert {"k_bar", "k_sum", "k_count", "epochs_done"} <= set(names)
    assert math.isnan(float(loss_fn.k_bar))
    assert loss_fn.epoch == 0


def test_learn_needs_dim() -> None:
    with pytest.raises(ValueError, match="dim"):
        AdaptiveInfoNCE(threshold="learn")


def test_scalar_loss_and_backward() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D)
    z1, z2 = views(dtype=torch.float32)
    z1.requires_grad_(True)
    loss = loss_fn(z1, z2)
    assert loss.shape == () and loss.dtype == torch.float32
    loss.backward()
    assert z1.grad is not None and bool(torch.isfinite(z1.grad).all())


# ---------------------------------------------------------------------------------------------
# warmup
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threshold, warmup, update",
    [
        ("learn", 1, "epoch"),
        ("learn", 2, "epoch"),
        ("learn", 1, "ema"),
        (None, 1, "epoch"),
        (0.2, 1, "epoch"),
    ],
)
def test_warmup_behaves_as_keep(threshold: object, warmup: int, update: str) -> None:
    """SPEC §4: during the first warmup_epochs there is no k̄_stat yet and the loss is `keep`
    (L_reg = 0); afterwards the configured mode runs."""
    kw = {"dim": D} if threshold == "learn" else {}
    loss_fn = AdaptiveInfoNCE(
        threshold=threshold,
        warmup_epochs=warmup,
        update=update,
        temperature=0.5,
        false_negatives="drop",
        reg_weight=1.0,
        **kw,
    )
    for epoch in range(warmup):
        for _ in range(3):
            z1, z2 = views()
            loss = loss_fn(z1, z2)
            assert loss_fn.last is not None
            assert loss_fn.last.mode == "keep"
            assert loss_fn.last.epoch == epoch + 1  # counted from 1, as a training loop counts
            assert float(loss_fn.last.loss_reg) == 0.0
            assert float(loss_fn.last.false_negative_fraction) == 0.0
            torch.testing.assert_close(loss, keep_mean(z1, z2, 0.5), atol=1e-12, rtol=1e-12)
        loss_fn.end_epoch()
    z1, z2 = views()
    loss_fn(z1, z2)
    assert loss_fn.last.mode == "drop"


def test_warmup_zero_runs_the_mode_from_the_start() -> None:
    """warmup_epochs=0 (the authors' code): the mode runs at once, with L_reg = 0 until a target exists."""
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=0, reg_weight=1.0)
    z1, z2 = views()
    loss = loss_fn(z1, z2)
    assert loss_fn.last.mode == "attract"
    assert float(loss_fn.last.loss_reg) == 0.0
    k = loss_fn.last.k_learn
    torch.testing.assert_close(loss, adaptive_info_nce(z1, z2, k.double()), atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# k̄_stat: epoch mean, EMA, train/eval
# ---------------------------------------------------------------------------------------------


def test_epoch_mean_target() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=1, quantile=0.8)
    epoch0 = []
    for _ in range(3):
        z1, z2 = views()
        loss_fn(z1, z2)
        epoch0.append(float(k_stat(z1, z2, quantile=0.8)))
        assert float(loss_fn.last.k_stat) == pytest.approx(epoch0[-1], abs=1e-6)
        assert math.isnan(float(loss_fn.last.k_bar))
    loss_fn.eval()  # evaluation batches are not recorded
    loss_fn(*views())
    loss_fn.train()
    loss_fn.end_epoch()
    assert loss_fn.epoch == 1
    assert float(loss_fn.k_bar) == pytest.approx(sum(epoch0) / 3, abs=1e-6)

    epoch1 = []
    for _ in range(2):
        z1, z2 = views()
        loss_fn(z1, z2)
        epoch1.append(float(k_stat(z1, z2, quantile=0.8)))
        # the target during epoch 1 is the mean of epoch 0, not yet touched by epoch 1's batches
        assert float(loss_fn.last.k_bar) == pytest.approx(sum(epoch0) / 3, abs=1e-6)
    loss_fn.end_epoch()
    assert float(loss_fn.k_bar) == pytest.approx(sum(epoch1) / 2, abs=1e-6)  # previous epoch only
    assert loss_fn.epoch == 2


def test_eval_mode_records_nothing() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D)
    loss_fn.eval()
    for _ in range(3):
        loss_fn(*views())
    assert int(loss_fn.k_count) == 0 and float(loss_fn.k_sum) == 0.0
    loss_fn.end_epoch()
    assert math.isnan(float(loss_fn.k_bar))


def test_ema_target() -> None:
    m = 0.75
    loss_fn = AdaptiveInfoNCE(dim=D, update="ema", momentum=m, warmup_epochs=0)
    expected = None
    for _ in range(4):
        z1, z2 = views()
        loss_fn(z1, z2)
        s = float(k_stat(z1, z2))
        expected = s if expected is None else m * expected + (1 - m) * s
        assert float(loss_fn.k_bar) == pytest.approx(expected, abs=1e-6)
    loss_fn.eval()
    loss_fn(*views())
    assert float(loss_fn.k_bar) == pytest.approx(expected, abs=1e-6)  # eval: untouched
    loss_fn.train()
    loss_fn.end_epoch()
    assert float(loss_fn.k_bar) == pytest.approx(expected, abs=1e-6)  # end_epoch does not reset an EMA
    assert loss_fn.epoch == 1


# ---------------------------------------------------------------------------------------------
# calibration of the ThresholdNet at its first use
# ---------------------------------------------------------------------------------------------


def test_first_use_after_warmup_calibrates_k_learn_to_k_bar() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=1)
    with_target(loss_fn, 3)
    z1, z2 = views()
    loss_fn(z1, z2)
    k_bar = float(loss_fn.k_bar)
    assert loss_fn.last.k_learn is not None
    torch.testing.assert_close(
        loss_fn.last.k_learn.double(), torch.full((6,), k_bar, dtype=torch.float64), atol=0.02, rtol=0
    )


def test_without_target_first_use_calibrates_to_the_batch_k_stat() -> None:
    """warmup_epochs=0: no k̄_stat in the first epoch, so k_learn starts at the batch's own k_stat
    instead of the untrained network's k ≈ 0 (which would flag most candidates)."""
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=0)
    z1, z2 = views()
    loss_fn(z1, z2)
    k_stat = float(loss_fn.last.k_stat)
    assert not loss_fn.has_target
    assert loss_fn.last.k_learn is not None
    torch.testing.assert_close(
        loss_fn.last.k_learn.double(), torch.full((6,), k_stat, dtype=torch.float64), atol=0.02, rtol=0
    )


def test_calibration_happens_once() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=1)
    with_target(loss_fn)
    loss_fn(*views())  # the first use of k_learn calibrates it
    net = loss_fn.threshold_net
    with torch.no_grad():
        net.head.bias.fill_(0.123)  # as if training had moved it
    with_target(loss_fn)
    assert float(net.head.bias.detach()) == pytest.approx(0.123)


# ---------------------------------------------------------------------------------------------
# thresholds: learn / None / float / custom module
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
def test_threshold_none_uses_k_bar(mode: str) -> None:
    loss_fn = AdaptiveInfoNCE(threshold=None, false_negatives=mode, temperature=0.3)
    with_target(loss_fn)
    k_bar = float(loss_fn.k_bar)
    z1, z2 = views()
    loss = loss_fn(z1, z2)
    assert loss_fn.last.mode == mode
    torch.testing.assert_close(
        loss, adaptive_info_nce(z1, z2, k_bar, false_negatives=mode, temperature=0.3), atol=1e-12, rtol=1e-12
    )
    torch.testing.assert_close(loss_fn.last.k.double(), torch.full((12,), k_bar, dtype=torch.float64))
    assert loss_fn.last.k_learn is None
    assert float(loss_fn.last.loss_reg) == 0.0


def test_threshold_none_without_target_is_keep() -> None:
    loss_fn = AdaptiveInfoNCE(threshold=None, warmup_epochs=0)
    z1, z2 = views()
    torch.testing.assert_close(loss_fn(z1, z2), keep_mean(z1, z2), atol=1e-12, rtol=1e-12)
    assert loss_fn.last.mode == "keep"


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_float_threshold(mode: str, mask: str) -> None:
    loss_fn = AdaptiveInfoNCE(threshold=0.25, warmup_epochs=0, false_negatives=mode, mask=mask, temperature=0.4)
    z1, z2 = views()
    loss = loss_fn(z1, z2)
    want = oracle_rows(z1, z2, 0.25, false_negatives=mode, mask=mask, temperature=0.4).mean()
    torch.testing.assert_close(loss, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(loss_fn.last.k.double(), torch.full((12,), 0.25, dtype=torch.float64))
    assert loss_fn.last.k_learn is None
    assert float(loss_fn.last.loss_reg) == 0.0


class ConstantThreshold(nn.Module):
    """A custom threshold module: one learnable value per sequence position."""

    def __init__(self, b: int) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.linspace(-0.2, 0.6, b))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.k[: z.shape[0]] + 0 * z.sum(1)


def test_custom_threshold_module() -> None:
    net = ConstantThreshold(6)
    loss_fn = AdaptiveInfoNCE(threshold=net, warmup_epochs=0)
    z1, z2 = views()
    loss = loss_fn(z1, z2)
    torch.testing.assert_close(loss, adaptive_info_nce(z1, z2, net.k.detach().double()), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(loss_fn.last.k.double(), net.k.detach().double().repeat(2))


def test_custom_threshold_module_wrong_output_shape() -> None:
    class Bad(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z.sum(1, keepdim=True)  # (B, 1)

    loss_fn = AdaptiveInfoNCE(threshold=Bad(), warmup_epochs=0)
    with pytest.raises(ValueError, match=r"\(B, D\) to \(B,\)"):
        loss_fn(*views())


# ---------------------------------------------------------------------------------------------
# L_reg, reg_weight and where gradients go
# ---------------------------------------------------------------------------------------------


def test_l_reg_is_mean_squared_deviation_from_k_bar() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, reg_weight=0.3)
    with_target(loss_fn)
    with torch.no_grad():
        loss_fn.threshold_net.head.weight.normal_(std=0.5)  # k_learn spread around k̄
    z1, z2 = views()
    loss = loss_fn(z1, z2)
    last = loss_fn.last
    k_learn = last.k_learn.double()
    l_reg = ((k_learn - float(loss_fn.k_bar)) ** 2).mean()
    assert float(l_reg) > 1e-4
    assert float(last.loss_reg) == pytest.approx(float(l_reg), rel=1e-6)
    l_learn = adaptive_info_nce(z1, z2, k_learn)
    assert float(last.loss_learn) == pytest.approx(float(l_learn), rel=1e-10)
    assert float(loss.detach()) == pytest.approx(float(l_learn + 0.3 * l_reg), rel=1e-6)


def test_reg_weight_scales_l_reg() -> None:
    a = AdaptiveInfoNCE(dim=D, reg_weight=0.1)
    with_target(a)
    with torch.no_grad():
        a.threshold_net.head.weight.normal_(std=0.5)
    b = AdaptiveInfoNCE(dim=D, reg_weight=0.7)
    b.load_state_dict(a.state_dict())
    z1, z2 = views()
    la, lb = a(z1, z2), b(z1, z2)
    torch.testing.assert_close(a.last.loss_learn, b.last.loss_learn)
    torch.testing.assert_close(a.last.loss_reg, b.last.loss_reg)
    assert float(a.last.loss_reg) > 1e-4
    assert float((lb - la).detach()) == pytest.approx(0.6 * float(a.last.loss_reg), rel=1e-6)
    c = AdaptiveInfoNCE(dim=D, reg_weight=0.0)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c(z1, z2), a.last.loss_learn)


def test_hard_mask_threshold_net_trained_by_l_reg_only() -> None:
    """Hard mask: k gets no gradient from L_learn and the ThresholdNet sees detached embeddings,
    so its parameter gradients are exactly λ ∇L_reg and the embeddings' gradients are those of
    L_learn with k fixed."""
    loss_fn = AdaptiveInfoNCE(dim=D, reg_weight=0.4)
    with_target(loss_fn)
    net = loss_fn.threshold_net
    z1, z2 = views()
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss_fn(z1, z2).backward()
    got = [p.grad.clone() for p in net.parameters()]

    net.zero_grad()
    k = net(z1.detach())
    (0.4 * ((k - loss_fn.k_bar.float()) ** 2).mean()).backward()
    for g, p in zip(got, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-7, rtol=1e-5)

    a1, a2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    adaptive_info_nce(a1, a2, k.detach().double()).backward()
    torch.testing.assert_close(z1.grad, a1.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(z2.grad, a2.grad, atol=1e-12, rtol=1e-10)


def test_hard_mask_threshold_net_has_no_gradient_before_a_target() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=0)
    z1, _ = views()
    z1.requires_grad_(True)
    loss_fn(z1, z1.detach() + 0.1).backward()
    for p in loss_fn.threshold_net.parameters():
        assert p.grad is None or bool((p.grad == 0).all())


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
@pytest.mark.parametrize("mask_gradient", ["labels", "full"])
def test_soft_mask_threshold_net_gradient(mode: str, mask_gradient: str) -> None:
    """The soft mask's exact derivative trains the ThresholdNet through the loss too; the default "labels"
    leaves it to L_reg, as the hard mask does. Either way g's input is detached: no path through g to z."""
    kw = dict(mask="soft", false_negatives=mode, temperature=0.5, mask_gradient=mask_gradient)
    loss_fn = AdaptiveInfoNCE(dim=D, reg_weight=0.2, **kw)
    with_target(loss_fn)
    with torch.no_grad():
        loss_fn.threshold_net.head.weight.normal_(std=0.3)
    net = loss_fn.threshold_net
    z1, z2 = views()
    z1.requires_grad_(True)
    loss_fn(z1, z2).backward()
    got = [p.grad.clone() for p in net.parameters()]
    got_z = z1.grad.clone()

    net.zero_grad()
    a1 = z1.detach().clone().requires_grad_(True)
    k = net(a1.detach())
    through_loss = k if mask_gradient == "full" else k.detach()
    manual = adaptive_info_nce(a1, z2, through_loss, **kw)
    manual = manual + 0.2 * ((k.double() - loss_fn.k_bar) ** 2).mean()
    manual.backward()
    assert sum(float(g.abs().sum()) for g in got) > 0
    for g, p in zip(got, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(got_z, a1.grad, atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# collapse warning
# ---------------------------------------------------------------------------------------------


def run_epoch(loss_fn: AdaptiveInfoNCE, thresholds: list[float]) -> list[warnings.WarningMessage]:
    """One epoch, one step per threshold (set on the module as its fixed threshold); returns what
    `end_epoch` warned."""
    for k in thresholds:
        loss_fn.fixed_threshold = k
        loss_fn(*views(b=8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss_fn.end_epoch()
    return caught


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_warns_when_most_candidates_are_flagged_for_a_whole_epoch(mode: str, mask: str) -> None:
    loss_fn = AdaptiveInfoNCE(threshold=-2.0, false_negatives=mode, mask=mask, warmup_epochs=0)
    caught = run_epoch(loss_fn, [-2.0, -2.0, -2.0])  # k below every similarity: all flagged
    assert len(caught) == 1 and issubclass(caught[0].category, UserWarning)
    message = str(caught[0].message)
    assert "epoch 1" in message and "50%" in message and "3 training steps" in message and repr(mode) in message
    assert caught[0].filename == __file__  # attributed to the caller of end_epoch
    # one step of the next epoch below the share: no warning for that epoch; an epoch without steps: none
    assert run_epoch(loss_fn, [-2.0, 2.0, -2.0]) == []
    assert run_epoch(loss_fn, []) == []


def test_no_collapse_warning_below_the_share_in_eval_or_when_disabled() -> None:
    assert run_epoch(AdaptiveInfoNCE(threshold=2.0, warmup_epochs=0), [2.0, 2.0]) == []  # nothing flagged
    disabled = AdaptiveInfoNCE(threshold=-2.0, warmup_epochs=0, collapse_share=None)
    assert run_epoch(disabled, [-2.0, -2.0]) == []
    evaluating = AdaptiveInfoNCE(threshold=-2.0, warmup_epochs=0).eval()
    assert run_epoch(evaluating, [-2.0, -2.0]) == []
    # the share is configurable, and counts suspects only (known positives are no collapse)
    caught = run_epoch(AdaptiveInfoNCE(threshold=0.0, warmup_epochs=0, collapse_share=0.01), [-2.0])
    assert len(caught) == 1 and "1%" in str(caught[0].message)
    labelled = AdaptiveInfoNCE(threshold=2.0, warmup_epochs=0)
    for _ in range(2):
        labelled(*views(b=8), labels=torch.zeros(8, dtype=torch.int64))  # every candidate a known positive
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labelled.end_epoch()
    assert caught == []


def test_collapse_warning_reads_the_device_only_in_end_epoch() -> None:
    """The forward adds no device read for the warning (counted as aten._local_scalar_dense calls)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is torch.ops.aten._local_scalar_dense.default:
                self.reads += 1
            return func(*args, **(kwargs or {}))

    z1, z2 = views(b=8)
    counts = {}
    for share in (0.5, None):
        loss_fn = AdaptiveInfoNCE(threshold=-2.0, warmup_epochs=0, collapse_share=share)
        loss_fn(z1, z2)
        with CountReads() as counter:
            loss_fn(z1, z2)
        counts[share] = counter.reads
    assert counts[0.5] == counts[None]


# ---------------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", ["learn", 0.1])
def test_diagnostics(threshold: object) -> None:
    loss_fn = AdaptiveInfoNCE(dim=D, threshold=threshold, quantile=0.7, temperature=0.5)
    with_target(loss_fn)
    if threshold == "learn":
        with torch.no_grad():
            loss_fn.threshold_net.head.weight.normal_(std=0.3)  # distinct k per row
    b = 6
    z1, z2 = views(b)
    z1.requires_grad_(True)
    loss = loss_fn(z1, z2)
    last = loss_fn.last
    assert isinstance(last, Diagnostics)
    assert last.mode == "attract" and last.epoch == 2  # the second epoch, counted from 1
    assert last.k.shape == (2 * b,)
    if threshold == "learn":
        assert last.k_learn.shape == (b,)
        torch.testing.assert_close(last.k.double(), last.k_learn.double().repeat(2))
        k_rows = last.k_learn.double()
    else:
        assert last.k_learn is None
        k_rows = torch.full((b,), 0.1, dtype=torch.float64)
    assert float(last.k_stat) == pytest.approx(float(k_stat(z1.detach(), z2, quantile=0.7)), abs=1e-6)
    assert float(last.k_bar) == pytest.approx(float(loss_fn.k_bar))
    counts = oracle_false_negative_counts(z1.detach(), z2, k_rows)
    assert sum(counts) > 0, "degenerate draw: no suspected false negatives"
    fraction = sum(counts) / (2 * b) / (2 * b - 2)
    assert float(last.false_negative_fraction) == pytest.approx(fraction, abs=1e-9)
    want_learn = adaptive_info_nce(z1.detach(), z2, k_rows, temperature=0.5)
    assert float(last.loss_learn) == pytest.approx(float(want_learn), rel=1e-9)
    want_reg = ((k_rows - float(loss_fn.k_bar)) ** 2).mean() if threshold == "learn" else torch.tensor(0.0)
    assert float(last.loss_reg) == pytest.approx(float(want_reg), rel=1e-5, abs=1e-12)
    assert float(loss.detach()) == pytest.approx(float(want_learn + 0.1 * want_reg), rel=1e-6)
    for t in (last.k, last.k_stat, last.k_bar, last.false_negative_fraction, last.loss_learn, last.loss_reg):
        assert isinstance(t, torch.Tensor) and not t.requires_grad


# ---------------------------------------------------------------------------------------------
# reductions and dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_reductions_add_lambda_l_reg(reduction: str) -> None:
    ref = AdaptiveInfoNCE(dim=D, reg_weight=0.5)
    with_target(ref)
    with torch.no_grad():
        ref.threshold_net.head.weight.normal_(std=0.3)
    loss_fn = AdaptiveInfoNCE(dim=D, reg_weight=0.5, reduction=reduction)
    loss_fn.load_state_dict(ref.state_dict())
    z1, z2 = views()
    out = loss_fn(z1, z2)
    k = loss_fn.last.k_learn.double()
    l_reg = float(loss_fn.last.loss_reg)
    assert l_reg > 1e-5
    rows = adaptive_info_nce(z1, z2, k, reduction="none")
    want = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction] + 0.5 * l_reg
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, atol=1e-7, rtol=1e-7)
    if reduction == "none":
        torch.testing.assert_close(out.mean(), ref(z1, z2), atol=1e-7, rtol=1e-7)


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [
        (torch.float64, 1e-10, 1e-10),
        (torch.float32, 1e-5, 1e-5),
        (torch.float16, 1e-5, 1e-5),
        (torch.bfloat16, 1e-5, 1e-5),
    ],
    ids=["float64", "float32", "float16", "bfloat16"],
)
def test_module_dtypes(dtype: torch.dtype, atol: float, rtol: float) -> None:
    """Loss in float32 for half inputs (float64 for float64), equal to the float64 oracle on the
    same rounded inputs with the module's thresholds."""
    loss_fn = AdaptiveInfoNCE(dim=D, temperature=0.2)
    with_target(loss_fn)
    z1, z2 = views(dtype=dtype)
    z1.requires_grad_(True)
    loss = loss_fn(z1, z2)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = oracle_rows(z1.detach().double(), z2.double(), loss_fn.last.k.double(), temperature=0.2).mean()
    want = want + 0.1 * ((loss_fn.last.k_learn.double() - loss_fn.k_bar) ** 2).mean()
    torch.testing.assert_close(loss.double(), want, atol=atol, rtol=rtol)
    loss.backward()
    assert z1.grad.dtype == dtype and bool(torch.isfinite(z1.grad).all())


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def _training_run(
    model: nn.Module, loss_fn: AdaptiveInfoNCE, opt: torch.optim.Optimizer, batches, steps
) -> list[float]:  # noqa: ANN001
    losses = []
    for i in steps:
        x1, x2 = batches[i]
        opt.zero_grad()
        loss = loss_fn(model(x1), model(x2))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_state_dict_round_trip_resumes_exactly(mask: str) -> None:
    d_in = 5
    batches = [(torch.randn(8, d_in), torch.randn(8, d_in)) for _ in range(9)]

    def build(seed: int) -> tuple[nn.Module, AdaptiveInfoNCE, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = nn.Linear(d_in, D)
        loss_fn = AdaptiveInfoNCE(dim=D, mask=mask, temperature=0.5)
        opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-2)
        return model, loss_fn, opt

    model, loss_fn, opt = build(0)
    _training_run(model, loss_fn, opt, batches, range(0, 3))  # warmup epoch
    loss_fn.end_epoch()
    _training_run(model, loss_fn, opt, batches, range(3, 5))  # mid-epoch 1: k_sum/k_count are partial
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "loss": loss_fn.state_dict(), "opt": opt.state_dict()}, buffer)
    assert {"k_bar", "k_sum", "k_count", "epochs_done"} <= set(loss_fn.state_dict())
    reference = _training_run(model, loss_fn, opt, batches, range(5, 7))
    loss_fn.end_epoch()
    reference += _training_run(model, loss_fn, opt, batches, range(7, 9))
    reference_k_bar = float(loss_fn.k_bar)

    model2, loss_fn2, opt2 = build(1)  # different initial weights, then overwritten
    buffer.seek(0)
    state = torch.load(buffer)
    model2.load_state_dict(state["model"])
    loss_fn2.load_state_dict(state["loss"])
    opt2.load_state_dict(state["opt"])
    assert loss_fn2.epoch == 1 and loss_fn2.has_target
    resumed = _training_run(model2, loss_fn2, opt2, batches, range(5, 7))
    loss_fn2.end_epoch()
    resumed += _training_run(model2, loss_fn2, opt2, batches, range(7, 9))
    assert resumed == reference
    assert float(loss_fn2.k_bar) == reference_k_bar
    assert loss_fn2.last.mode == "attract"


def test_attract_with_dot_similarity_warns_that_it_is_unbounded() -> None:
    with pytest.warns(UserWarning, match="unbounded below"):
        AdaptiveInfoNCE(8, similarity="dot", false_negatives="attract")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for similarity, mode in [("cos", "attract"), ("dot", "relabel"), ("dot", "drop"), ("dot", "keep")]:
            AdaptiveInfoNCE(8, similarity=similarity, false_negatives=mode)


def test_attract_with_dot_similarity_is_unbounded_below() -> None:
    """Why it warns: growing a flagged false negative's embedding drives the row's attract loss to -inf
    (the candidate left the denominator but stays a weighted positive); relabel and drop stay bounded below."""
    torch.manual_seed(0)
    z1 = torch.randn(8, 4, dtype=torch.float64)
    z2 = z1 + 0.1 * torch.randn_like(z1)
    z1[1], z2[1] = z1[0], z2[0]  # sequence 1 repeats sequence 0: a false negative of row 0
    threshold = 0.9 * float(z1[0] @ z2[0])
    row0: dict[str, list[float]] = {}
    for mode in ("attract", "relabel", "drop"):
        row0[mode] = []
        for scale in (1.0, 4.0, 16.0, 64.0):
            a, b = z1.clone(), z2.clone()
            a[1] *= scale
            b[1] *= scale
            rows = adaptive_info_nce(a, b, threshold, similarity="dot", false_negatives=mode, reduction="none")
            row0[mode].append(float(rows[0]))
    attract = row0["attract"]
    assert all(later < earlier for earlier, later in zip(attract[:-1], attract[1:], strict=True)) and attract[-1] < -100
    assert min(row0["relabel"]) >= 0 and min(row0["drop"]) >= 0
