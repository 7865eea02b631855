"""SPEC §6: bad input raises a clear ValueError/TypeError naming the argument — one test per case,
for the functional API, `k_stat`, the Module and ThresholdNet."""

from __future__ import annotations

import math
import re

import pytest
import torch

from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce, k_stat

B, D = 4, 3


def ok() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, D), torch.randn(B, D)


def raises(exc: type[Exception], *names: str):  # noqa: ANN201
    """pytest.raises that also requires every name in `names` to appear in the message."""
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(n)})" for n in names)
    return pytest.raises(exc, match=pattern)


# --- embeddings ------------------------------------------------------------------------------


def test_mismatched_feature_dims() -> None:
    with raises(ValueError, "z1", "z2", "shape"):
        adaptive_info_nce(torch.randn(B, D), torch.randn(B, D + 1), 0.5)


def test_mismatched_batch_sizes() -> None:
    with raises(ValueError, "z1", "z2", "shape"):
        adaptive_info_nce(torch.randn(B, D), torch.randn(B + 1, D), 0.5)


def test_not_two_dimensional() -> None:
    with raises(ValueError, "z1", "(B, D)"):
        adaptive_info_nce(torch.randn(B * D), torch.randn(B * D), 0.5)


def test_not_a_tensor() -> None:
    with raises(TypeError, "z2"):
        adaptive_info_nce(torch.randn(B, D), [[0.0] * D] * B, 0.5)


def test_mismatched_devices() -> None:
    """CPU-only machines still have the "meta" device: a tensor with shape and dtype but no data.
    The check must fire before any data is read."""
    with raises(ValueError, "z1", "z2", "device"):
        adaptive_info_nce(torch.randn(B, D), torch.randn(B, D, device="meta"), 0.5)


def test_threshold_on_another_device() -> None:
    with raises(ValueError, "threshold", "meta"):
        adaptive_info_nce(*ok(), torch.zeros(B, device="meta"))


def test_mismatched_dtypes() -> None:
    with raises(TypeError, "z1", "z2", "dtype"):
        adaptive_info_nce(torch.randn(B, D), torch.randn(B, D, dtype=torch.float64), 0.5)


def test_batch_of_one() -> None:
    """B < 2 leaves no negatives. SPEC §6 asks the error to name the argument (z1/z2) as well."""
    with raises(ValueError, "B", "z1"):
        adaptive_info_nce(torch.randn(1, D), torch.randn(1, D), 0.5)


def test_empty_batch() -> None:
    with pytest.raises(ValueError, match="B"):
        adaptive_info_nce(torch.randn(0, D), torch.randn(0, D), 0.5)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_z1(dtype: torch.dtype) -> None:
    with raises(TypeError, "z1", "floating"):
        adaptive_info_nce(torch.ones(B, D, dtype=dtype), torch.ones(B, D, dtype=dtype), 0.5)


def test_non_floating_z2() -> None:
    with raises(TypeError, "z2", "floating"):
        adaptive_info_nce(torch.randn(B, D), torch.ones(B, D, dtype=torch.int64), 0.5)


def test_complex_embeddings() -> None:
    with raises(TypeError, "z1", "floating"):
        adaptive_info_nce(torch.randn(B, D, dtype=torch.complex64), torch.randn(B, D, dtype=torch.complex64), 0.5)


def test_nan_embedding() -> None:
    z1, z2 = ok()
    z1[2, 1] = float("nan")
    with raises(ValueError, "z1", "NaN"):
        adaptive_info_nce(z1, z2, 0.5)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_inf_embedding(value: float) -> None:
    z1, z2 = ok()
    z2[0, 0] = value
    with raises(ValueError, "z2", "infinite"):
        adaptive_info_nce(z1, z2, 0.5)


# --- scalar settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -1.0, -1e-9, math.nan, math.inf])
def test_bad_temperature(tau: float) -> None:
    with raises(ValueError, "temperature"):
        adaptive_info_nce(*ok(), 0.5, temperature=tau)


def test_temperature_of_wrong_type() -> None:
    with raises(TypeError, "temperature"):
        adaptive_info_nce(*ok(), 0.5, temperature="hot")


@pytest.mark.parametrize("alpha", [-0.1, 1.0001, math.nan])
def test_bad_positive_weight(alpha: float) -> None:
    with raises(ValueError, "positive_weight"):
        adaptive_info_nce(*ok(), 0.5, positive_weight=alpha)


@pytest.mark.parametrize("beta", [0.0, -0.5])
def test_bad_mask_temperature(beta: float) -> None:
    with raises(ValueError, "mask_temperature"):
        adaptive_info_nce(*ok(), 0.5, mask="soft", mask_temperature=beta)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_bad_quantile_k_stat(q: float) -> None:
    with raises(ValueError, "quantile"):
        k_stat(*ok(), quantile=q)


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_bad_quantile_module(q: float) -> None:
    with raises(ValueError, "quantile"):
        AdaptiveInfoNCE(dim=D, quantile=q)


def test_bad_max_pairs() -> None:
    with raises(ValueError, "max_pairs"):
        k_stat(*ok(), max_pairs=0)


# --- thresholds -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(B + 1,), (2 * B + 1,), (B, 1), (2, B), (1,)])
def test_threshold_of_wrong_shape(shape: tuple[int, ...]) -> None:
    with raises(ValueError, "threshold", "shape"):
        adaptive_info_nce(*ok(), torch.zeros(shape))


def test_threshold_nan_float() -> None:
    with raises(ValueError, "threshold", "NaN"):
        adaptive_info_nce(*ok(), math.nan)


@pytest.mark.parametrize("shape", [(), (B,), (2 * B,)])
def test_threshold_nan_tensor(shape: tuple[int, ...]) -> None:
    k = torch.zeros(shape)
    k.view(-1)[0] = math.nan
    with raises(ValueError, "threshold", "NaN"):
        adaptive_info_nce(*ok(), k)


def test_threshold_integer_tensor() -> None:
    with raises(TypeError, "threshold", "floating"):
        adaptive_info_nce(*ok(), torch.zeros(B, dtype=torch.int64))


def test_threshold_of_wrong_type() -> None:
    with raises(TypeError, "threshold"):
        adaptive_info_nce(*ok(), "0.5")


@pytest.mark.parametrize("mode", ["drop", "attract", "relabel"])
def test_missing_threshold(mode: str) -> None:
    with raises(ValueError, "threshold", mode):
        adaptive_info_nce(*ok(), None, false_negatives=mode)


def test_missing_threshold_is_fine_for_keep() -> None:
    out = adaptive_info_nce(*ok(), None, false_negatives="keep")
    assert out.shape == () and bool(torch.isfinite(out))


# --- names of modes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, value",
    [
        ("false_negatives", "ignore"),
        ("false_negatives", "Attract"),
        ("mask", "medium"),
        ("mask_gradient", "exact"),
        ("similarity", "l2"),
        ("reduction", "max"),
        ("backend", "cuda"),
    ],
)
def test_unknown_name_functional(argument: str, value: str) -> None:
    with raises(ValueError, argument, value):
        adaptive_info_nce(*ok(), 0.5, **{argument: value})


def test_unknown_similarity_k_stat() -> None:
    with raises(ValueError, "similarity", "euclid"):
        k_stat(*ok(), similarity="euclid")


@pytest.mark.parametrize(
    "argument, value",
    [
        ("false_negatives", "ignore"),
        ("mask", "medium"),
        ("mask_gradient", "none"),
        ("similarity", "l2"),
        ("reduction", "max"),
        ("backend", "cuda"),
        ("update", "weekly"),
    ],
)
def test_unknown_name_module(argument: str, value: str) -> None:
    with raises(ValueError, argument, value):
        AdaptiveInfoNCE(dim=D, **{argument: value})


def test_triton_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors without TRITON_INTERPRET=1: the Triton backend cannot run (whether or not Triton
    is installed) and must say so instead of falling back silently."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with raises(ValueError, "triton"):
        adaptive_info_nce(*ok(), 0.5, backend="triton")
    loss_fn = AdaptiveInfoNCE(dim=D, backend="triton")
    with raises(ValueError, "triton"):
        loss_fn(*ok())


def test_auto_backend_on_cpu_is_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z1, z2 = ok()
    torch.testing.assert_close(
        adaptive_info_nce(z1, z2, 0.3, backend="auto"), adaptive_info_nce(z1, z2, 0.3, backend="reference")
    )


# --- the Module and ThresholdNet ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"positive_weight": 2.0}, ValueError, "positive_weight"),
        ({"reg_weight": -0.1}, ValueError, "reg_weight"),
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs"),
        ({"warmup_epochs": 1.5}, ValueError, "warmup_epochs"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"mask_temperature": 0.0}, ValueError, "mask_temperature"),
        ({"collapse_share": 1.0}, ValueError, "collapse_share"),
        ({"collapse_share": "half"}, TypeError, "collapse_share"),
        ({"threshold": "auto"}, ValueError, "threshold"),
        ({"threshold": math.nan}, ValueError, "threshold"),
        ({"threshold": [0.1, 0.2]}, TypeError, "threshold"),
    ],
)
def test_bad_module_settings(kwargs: dict, exc: type[Exception], name: str) -> None:
    with raises(exc, name):
        AdaptiveInfoNCE(dim=D, **kwargs)


def test_module_checks_its_inputs() -> None:
    loss_fn = AdaptiveInfoNCE(dim=D)
    with raises(ValueError, "z1", "z2", "shape"):
        loss_fn(torch.randn(B, D), torch.randn(B + 1, D))
    z1, z2 = ok()
    z1[0, 0] = math.nan
    with raises(ValueError, "z1", "NaN"):
        loss_fn(z1, z2)
    assert int(loss_fn.k_count) == 0, "a rejected call must not record a k_stat"


def test_flat_threshold_net_wrong_batch_size() -> None:
    net = ThresholdNet(D, arch="flat", batch_size=B)
    with raises(ValueError, "batch_size", str(B)):
        net(torch.randn(B + 2, D))
    loss_fn = AdaptiveInfoNCE(threshold=net, warmup_epochs=0)
    with raises(ValueError, "batch_size"):
        loss_fn(torch.randn(B + 2, D), torch.randn(B + 2, D))
    assert loss_fn(*ok()).shape == ()  # the right batch size works


@pytest.mark.parametrize("dim", [0, -3, 2.5])
def test_threshold_net_bad_dim(dim: object) -> None:
    with raises(ValueError, "dim"):
        ThresholdNet(dim)  # type: ignore[arg-type]
