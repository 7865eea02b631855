"""Alignment and uniformity of embeddings (Wang & Isola 2020; paper §2.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._modes import NORM_EPS


def _check_rows(name: str, z: Tensor) -> None:
    """Metrics of no rows, or of NaN/inf rows, would be NaN or silently wrong: refuse them."""
    if z.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(z.shape)}); the metric needs at least one row of D >= 1")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} holds NaN or infinite values; the metric of such embeddings is undefined")


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """Mean ‖ẑ1 - ẑ2‖^α over positive pairs; lower means positives sit closer.

    Example:
        >>> z = torch.randn(5, 3)
        >>> float(alignment(z, 2 * z))
        0.0
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must share one (B, D) shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_rows("z1", z1)
    _check_rows("z2", z2)
    u1 = F.normalize(z1.float(), dim=-1, eps=NORM_EPS)
    u2 = F.normalize(z2.float(), dim=-1, eps=NORM_EPS)
    return (u1 - u2).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """log mean_{i≠j} exp(-t ‖ẑ_i - ẑ_j‖²); lower means the embeddings spread over the sphere.

    Example:
        >>> round(float(uniformity(torch.eye(2))), 4)
        -4.0
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"z must have shape (B, D) with B >= 2, got {tuple(z.shape)}")
    _check_rows("z", z)
    u = F.normalize(z.float(), dim=-1, eps=NORM_EPS)
    sq = torch.pdist(u).square()  # the B(B-1)/2 pairs i < j; the mean over i ≠ j is the same
    return torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel())))
