"""Regressions of the library rows of the reliability review: each test failed before its fix.

Rows: 3 (module state under dtype casts), 5 (max_pairs), 6 (tiny temperatures), 10 (eval-mode
calibration, NumPy scalars, ThresholdNet arguments, metrics on empty or NaN input). Row 4 (higher-
order gradients) is in test_machinery.py, row 11 (ranks that disagree) in test_distributed.py.
Also the host-side state mirrors that keep `forward` free of device reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce, k_stat
from adaptive_contrastive.metrics import alignment, uniformity

D = 8


def views(b: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, D, generator=g)
    return z1, z1 + 0.5 * torch.randn(b, D, generator=g)


# ------------------------------------------------------------------------- row 3: casts keep the state


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double"])
def test_running_statistics_keep_their_precision_when_the_module_is_cast(cast: str) -> None:
    """Casting the module casts the ThresholdNet, never k̄_stat's running sums: after many steps
    the target is the float64 mean of the recorded k_stat values, as in an uncast module."""
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=1)
    loss_fn = loss_fn.half() if cast == "half" else loss_fn.to(getattr(torch, cast))
    assert loss_fn.k_bar.dtype == loss_fn.k_sum.dtype == torch.float64
    assert loss_fn.k_count.dtype == loss_fn.epochs_done.dtype == loss_fn.sample_step.dtype == torch.int64
    assert loss_fn.calibrated.dtype == torch.bool
    recorded = []
    for step in range(60):  # cast to half precision, a sum of about 12 would move in steps of 1/16 to 1/128
        z1, z2 = views(b=6, seed=step)
        loss_fn(z1, z2)
        assert loss_fn.last is not None
        recorded.append(float(loss_fn.last.k_stat))
    loss_fn.end_epoch()
    want = float(np.mean(np.asarray(recorded, dtype=np.float64)))
    assert float(loss_fn.k_bar) == pytest.approx(want, abs=1e-6)


def test_moving_the_module_keeps_the_statistics_values() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D)
    loss_fn.k_bar.fill_(0.123456789012345)
    moved = loss_fn.to("cpu", torch.float16)
    assert float(moved.k_bar) == 0.123456789012345


# -------------------------------------------------------------------------------------- row 5: max_pairs


@pytest.mark.parametrize("bad", [0, 1, 3, -5, None, 2.5, True, "64"])
def test_bad_max_pairs_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match="max_pairs must be an int >= 4"):
        AdaptiveInfoNCE(dim=D, max_pairs=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pairs must be an int >= 4"):
        k_stat(*views(), max_pairs=bad)  # type: ignore[arg-type]


def test_smallest_max_pairs_always_works() -> None:
    """The sample is a grid over disjoint sequences, so it never consists of excluded pairs only."""
    for seed in range(40):
        value = k_stat(*views(b=32, seed=seed), max_pairs=4, seed=seed)
        assert bool(torch.isfinite(value))
    loss_fn = AdaptiveInfoNCE(dim=D, max_pairs=4, warmup_epochs=0)
    for seed in range(40):
        assert bool(torch.isfinite(loss_fn(*views(b=32, seed=seed))))


def test_sampled_k_stat_is_fixed_by_its_seed() -> None:
    z1, z2 = views(b=64)
    a = k_stat(z1, z2, max_pairs=100, seed=7)
    assert float(k_stat(z1, z2, max_pairs=100, seed=7)) == float(a)
    assert len({float(k_stat(z1, z2, max_pairs=100, seed=s)) for s in range(8)}) > 1


# ------------------------------------------------------------------------------ row 6: tiny temperature


@pytest.mark.parametrize("mode", ["keep", "drop", "attract", "relabel"])
@pytest.mark.parametrize("mask", ["hard", "soft"])
def test_smallest_accepted_temperature_gives_finite_loss_and_gradients(mode: str, mask: str) -> None:
    z1, z2 = (t.requires_grad_(True) for t in views())
    loss = adaptive_info_nce(z1, z2, 0.2, temperature=1e-30, false_negatives=mode, mask=mask)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert z1.grad is not None and bool(torch.isfinite(z1.grad).all()) and bool(torch.isfinite(z2.grad).all())


@pytest.mark.parametrize("tau", [1e-31, 1e-38, 1e-40, 1e-45])
def test_temperature_whose_inverse_overflows_is_refused(tau: float) -> None:
    with pytest.raises(ValueError, match="temperature=.* is below 1e-30"):
        adaptive_info_nce(*views(), 0.2, temperature=tau)
    with pytest.raises(ValueError, match="temperature=.* is below 1e-30"):
        AdaptiveInfoNCE(dim=D, temperature=tau)
    with pytest.raises(ValueError, match="mask_temperature=.* is below 1e-30"):
        adaptive_info_nce(*views(), 0.2, mask="soft", mask_temperature=tau)


# ------------------------------------------------------------------------------------------- row 10


def test_first_forward_in_eval_mode_does_not_calibrate_or_record() -> None:
    """Evaluation batches must not set the learned threshold's starting point nor the target."""
    loss_fn = AdaptiveInfoNCE(dim=D, warmup_epochs=0).eval()
    bias = loss_fn.threshold_net.head.bias.detach().clone()  # type: ignore[union-attr]
    loss_fn(*views())
    assert not bool(loss_fn.calibrated)
    torch.testing.assert_close(loss_fn.threshold_net.head.bias, bias)  # type: ignore[union-attr]
    assert int(loss_fn.k_count) == 0 and int(loss_fn.sample_step) == 0
    loss_fn.train()
    loss_fn(*views())
    assert bool(loss_fn.calibrated) and int(loss_fn.k_count) == 1


@pytest.mark.parametrize("scalar", [np.float32(0.3), np.float64(0.3), np.float16(0.3), 0.3])
def test_numpy_scalars_are_numbers(scalar: object) -> None:
    z1, z2 = views()
    want = adaptive_info_nce(z1, z2, float(scalar), temperature=float(scalar))  # type: ignore[arg-type]
    got = adaptive_info_nce(z1, z2, scalar, temperature=scalar, positive_weight=np.float32(0.5))  # type: ignore[arg-type]
    torch.testing.assert_close(got, want)
    AdaptiveInfoNCE(dim=np.int64(D), temperature=scalar, quantile=np.float32(0.9), max_pairs=np.int32(64))  # type: ignore[arg-type]


def test_numpy_bool_is_not_a_number() -> None:
    with pytest.raises(TypeError, match="temperature must be a real number"):
        adaptive_info_nce(*views(), 0.2, temperature=np.bool_(True))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden=-3), "hidden must be a positive int"),
        (dict(hidden=2.5), "hidden must be a positive int"),
        (dict(arch="flat", batch_size=2.5), "pass batch_size=B"),
        (dict(arch="authors", batch_size=None), "pass batch_size=B"),
        (dict(arch="authors", batch_size=1), "pass batch_size=B"),
    ],
)
def test_threshold_net_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ThresholdNet(D, **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda: alignment(torch.empty(0, 3), torch.empty(0, 3)),
        lambda: alignment(torch.full((2, 3), float("nan")), torch.ones(2, 3)),
        lambda: uniformity(torch.empty(2, 0)),
        lambda: uniformity(torch.tensor([[1.0, float("inf")], [0.0, 1.0]])),
    ],
    ids=["alignment-empty", "alignment-nan", "uniformity-empty", "uniformity-inf"],
)
def test_metrics_refuse_empty_or_non_finite_input(call: object) -> None:
    with pytest.raises(ValueError, match="empty|NaN or infinite"):
        call()  # type: ignore[operator]


# ------------------------------------------------------------------------------ host-side state mirrors


def test_state_mirrors_follow_load_state_dict() -> None:
    """`epoch`, `has_target` and the calibration are read on the host; a checkpoint restores them."""
    trained = AdaptiveInfoNCE(dim=D, warmup_epochs=1)
    for _ in range(2):
        trained(*views())
        trained.end_epoch()
    trained(*views())
    fresh = AdaptiveInfoNCE(dim=D, warmup_epochs=1)
    assert fresh.epoch == 0 and not fresh.has_target
    fresh.load_state_dict(trained.state_dict())
    assert fresh.epoch == 2 and fresh.has_target and fresh._calibrated
    z1, z2 = views(seed=5)
    torch.testing.assert_close(fresh(z1, z2), trained(z1, z2))


def test_checkpoint_without_sample_step_still_loads() -> None:
    """State dicts written before the k_stat sample had a step counter resume at step 0."""
    state = AdaptiveInfoNCE(dim=D).state_dict()
    del state["sample_step"]
    loaded = AdaptiveInfoNCE(dim=D)
    loaded.load_state_dict(state)
    assert int(loaded.sample_step) == 0


def test_same_steps_draw_the_same_k_stat_sample() -> None:
    """The k_stat sample follows the module's step counter, not torch's global generator."""
    a = AdaptiveInfoNCE(dim=D, max_pairs=64)
    b = AdaptiveInfoNCE(dim=D, max_pairs=64)
    for step in range(5):
        z1, z2 = views(b=40, seed=step)
        torch.manual_seed(step)
        a(z1, z2)
        torch.manual_seed(1000 + step)  # a different global stream changes nothing
        b(z1, z2)
        assert a.last is not None and b.last is not None
        assert float(a.last.k_stat) == float(b.last.k_stat)
    assert int(a.sample_step) == 5
