"""Argument checks run once, at the public boundary (SPEC §6).

Each error names the argument, the value it got and what would be accepted, so a user can fix
the call without reading the source.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from numpy import bool_ as np_bool
from torch import Tensor


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


# Smallest temperature accepted: 1/τ <= 1e30 keeps cosine logits, the loss and its gradients far
# inside float32's range (3.4e38); below about 6e-39 the loss itself no longer fits in float32.
MIN_TEMPERATURE = 1e-30


def check_positive(name: str, value: float, minimum: float = 0.0) -> float:
    value = _as_float(name, value)
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if value < minimum:
        raise ValueError(
            f"{name}={value!r} is below {minimum:g}: 1/{name} would overflow float32 arithmetic "
            "(logits s/τ and the loss beyond 3.4e38); use a larger value"
        )
    return value


def check_unit_closed(name: str, value: float) -> float:
    value = _as_float(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return value


def check_unit_open(name: str, value: float) -> float:
    value = _as_float(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return value


def check_non_negative(name: str, value: float) -> float:
    value = _as_float(name, value)
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def is_real(value: object) -> bool:
    """A real number of any kind (Python, NumPy or a 0-d-free scalar type), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool))


def _as_float(name: str, value: object) -> float:
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


def check_count(name: str, value: object, minimum: int) -> int:
    """An integer (Python or NumPy, not a bool) >= `minimum`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np_bool)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_embeddings(z1: object, z2: object, min_batch: int = 2, check_finite: bool = True) -> tuple[Tensor, Tensor]:
    """Two views `(B, D)` of B >= `min_batch` sequences: same shape, device and floating dtype, finite.

    Under distributed gathering a rank may hold a single sequence (`min_batch=1`): its negatives
    come from the other ranks. `check_finite=False` skips the one check that reads a value back
    from the device.
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {z.dtype}")
        if z.dim() != 2:
            raise ValueError(f"{name} must have shape (B, D), got {tuple(z.shape)}")
    assert isinstance(z1, Tensor) and isinstance(z2, Tensor)
    if z1.shape != z2.shape:
        raise ValueError(
            "z1 and z2 must have the same shape (row b of z1 pairs with row b of z2), "
            f"got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.device != z2.device:
        raise ValueError(f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    if z1.dtype != z2.dtype:
        raise TypeError(f"z1 and z2 must have the same dtype, got {z1.dtype} and {z2.dtype}")
    if z1.shape[0] < min_batch:
        raise ValueError(f"z1 and z2 need B >= {min_batch} rows (sequences) to have any negatives, got B={z1.shape[0]}")
    if z1.shape[1] < 1:
        raise ValueError("z1 and z2 need at least one feature column (D >= 1)")
    # Under torch.compile the check would split the graph (it reads a value): compiled code skips it.
    check_finite = check_finite and not is_compiling()
    for name, z in (("z1", z1), ("z2", z2)) if check_finite else ():
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{name} holds NaN or infinite values; the loss of such embeddings is undefined")
    return z1, z2


def thresholds_per_row(threshold: object, batch: int, like: Tensor, check_nan: bool = True) -> Tensor:
    """Expand a float, 0-d, `(B,)` or `(N,)` threshold to one value per row of Z = cat(z1, z2).

    A `(B,)` threshold is shared by both views of a sequence: row i uses k[i mod B].
    `check_nan=False` skips the NaN check of a tensor threshold (a device read).
    """
    n = 2 * batch
    if isinstance(threshold, bool) or threshold is None:
        raise TypeError(f"threshold must be a float or a tensor of shape (), ({batch},) or ({n},), got {threshold!r}")
    if is_real(threshold):
        if math.isnan(float(threshold)):  # type: ignore[arg-type]
            raise ValueError("threshold is NaN")
        return torch.full((n,), float(threshold), dtype=like.dtype, device=like.device)  # type: ignore[arg-type]
    if not isinstance(threshold, Tensor):
        raise TypeError(f"threshold must be a float or a tensor, got {type(threshold).__name__}")
    if not threshold.is_floating_point():
        raise TypeError(f"threshold must have a floating dtype, got {threshold.dtype}")
    if threshold.device != like.device:
        raise ValueError(f"threshold is on {threshold.device} but the embeddings are on {like.device}")
    if check_nan and bool(torch.isnan(threshold).any()):
        raise ValueError("threshold holds NaN values")
    if threshold.dim() == 0:
        return threshold.to(like.dtype).expand(n)
    if threshold.shape == (batch,):
        return threshold.to(like.dtype).repeat(2)
    if threshold.shape == (n,):
        return threshold.to(like.dtype)
    raise ValueError(
        f"threshold must have shape (), ({batch},) (one per sequence) or ({n},) (one per row of cat(z1, z2)), "
        f"got {tuple(threshold.shape)}"
    )


_LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_labels(labels: object, batch: int, device: torch.device) -> Tensor:
    """Known-positive labels: an integer `(B,)` tensor on the embeddings' device, as int64 (SPEC §8)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor of shape ({batch},), got {type(labels).__name__}")
    if labels.dtype not in _LABEL_DTYPES:
        raise TypeError(
            f"labels must have an integer dtype (one class or target id per sequence, negative = unknown), "
            f"got {labels.dtype}; convert with labels.long()"
        )
    if labels.shape != (batch,):
        raise ValueError(
            f"labels must have shape ({batch},): one label per sequence, shared by both views, "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != device:
        raise ValueError(f"labels are on {labels.device} but the embeddings are on {device}")
    return labels.long()


def is_compiling() -> bool:
    """Whether torch.compile is tracing the caller (torch >= 2.3 names it torch.compiler.is_compiling)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every narrower float accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
