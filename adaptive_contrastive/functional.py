"""Functional API: argument checks, backend dispatch and reduction (SPEC §3–6)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from ._checks import (
    check_choice,
    check_embeddings,
    check_positive,
    check_unit_closed,
    check_unit_open,
    compute_dtype,
    thresholds_per_row,
)
from ._modes import BACKENDS, FALSE_NEGATIVE_MODES, MASKS, NORM_EPS, REDUCTIONS, SIMILARITIES
from .reference import LossSettings, masked_info_nce_rows
from .threshold import DEFAULT_MAX_PAIRS, candidate_similarity_quantile

__all__ = ["adaptive_info_nce", "k_stat"]


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on `device`, or None when it can."""
    try:
        import triton
    except ImportError:
        return "Triton is not installed (pip install 'adaptive-contrastive[triton]')"
    if int(triton.__version__.split(".")[0]) < 3:
        return f"Triton {triton.__version__} is too old, the kernels need triton>=3.0"
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu":
        return None
    return f"Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got a {device.type} tensor"


def resolve_backend(backend: str, device: torch.device) -> str:
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_unavailable_reason(device) is None else "reference"
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise ValueError(f'backend="triton" cannot run here: {reason}; use backend="reference" or "auto"')
    return backend


def make_settings(
    temperature: float,
    false_negatives: str,
    positive_weight: float,
    mask: str,
    mask_temperature: float,
) -> LossSettings:
    return LossSettings(
        temperature=check_positive("temperature", temperature),
        false_negatives=check_choice("false_negatives", false_negatives, FALSE_NEGATIVE_MODES),
        positive_weight=check_unit_closed("positive_weight", positive_weight),
        mask=check_choice("mask", mask, MASKS),
        mask_temperature=check_positive("mask_temperature", mask_temperature),
    )


def embed(z: Tensor, similarity: str) -> Tensor:
    """Rows in the compute dtype, normalised for cosine similarity (ẑ = z / max(‖z‖, 1e-8))."""
    z = z.to(compute_dtype(z.dtype))
    return F.normalize(z, dim=-1, eps=NORM_EPS) if similarity == "cos" else z


def _score_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    backend: str,
) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        from .kernels import triton_masked_info_nce_rows

        return triton_masked_info_nce_rows(q, k, thresholds, partner, self_index, settings)
    return masked_info_nce_rows(q, k, thresholds, partner, self_index, settings)


@dataclass(frozen=True)
class CandidateLayout:
    """This process's rows of cat(z1, z2) and the columns they are scored against.

    Under distributed gathering the columns are every rank's rows, laid out as one process
    holding cat(all z1, all z2) would hold them; otherwise they are the local rows themselves.
    """

    rows: Tensor  # (2b, D) cat(u1, u2) of this process
    columns: Tensor  # (N, D) every candidate row, N = 2B over all ranks
    partner: Tensor  # (2b,) column of each row's positive
    self_index: Tensor  # (2b,) column of the row itself
    batch: int  # B, sequences over all ranks

    @property
    def global_rows(self) -> int:
        return 2 * self.batch


def candidate_layout(u1: Tensor, u2: Tensor, gather_distributed: bool = False) -> CandidateLayout:
    """Lay out embedded views `(b, D)` (see `embed`) for scoring; gathers across ranks if asked."""
    b = u1.shape[0]
    rows = torch.cat([u1, u2])
    if gather_distributed and distributed.world_size() > 1:
        all1, offset = distributed.gather_rows(u1)
        all2, _ = distributed.gather_rows(u2)
        total = all1.shape[0]
        columns = torch.cat([all1, all2])
    else:
        offset, total, columns = 0, b, rows
    own = torch.arange(b, device=u1.device) + offset
    return CandidateLayout(rows, columns, torch.cat([own + total, own]), torch.cat([own, own + total]), total)


def scored_rows(
    layout: CandidateLayout, thresholds: Tensor | None, settings: LossSettings, backend: str
) -> tuple[Tensor, Tensor]:
    """Row losses and false-negative counts of the layout's rows; `thresholds` one per row."""
    thr = thresholds.to(layout.rows.dtype) if thresholds is not None and settings.uses_threshold else None
    return _score_rows(layout.rows, layout.columns, thr, layout.partner, layout.self_index, settings, backend)


def reduce_rows(rows: Tensor, reduction: str, global_rows: int, world: int = 1) -> Tensor:
    """Reduce this process's row losses out of `global_rows` in all.

    Under distributed gathering (`world` > 1) each rank returns its share scaled by `world`, so
    that the average over ranks (what DDP does to gradients) equals the single-process value.
    """
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum() * world
    return rows.sum() * (world / global_rows)


def adaptive_info_nce(
    z1: Tensor,
    z2: Tensor,
    threshold: float | Tensor | None = None,
    *,
    temperature: float = 1.0,
    similarity: str = "cos",
    false_negatives: str = "attract",
    positive_weight: float = 0.5,
    mask: str = "hard",
    mask_temperature: float = 0.05,
    reduction: str = "mean",
    backend: str = "auto",
    gather_distributed: bool = False,
) -> Tensor:
    """Contrastive loss with adaptively constructed pairs (AdaptiveRec, Jeon et al. 2023).

    Candidates of row i whose similarity exceeds its threshold k_i are suspected false negatives:
    ``drop`` removes them from the softmax denominator (paper Eq. 8), ``attract`` also turns them
    into weighted positives (Eq. 9), ``relabel`` keeps them in the softmax as soft targets (the
    authors' code), and ``keep`` is plain InfoNCE / NT-Xent. The documentation's page on the four
    modes gives the formulas.

    Args:
        z1, z2: `(B, D)` two views of B >= 2 sequences; row b of z1 pairs with row b of z2.
        threshold: k in similarity units: a float, a 0-d tensor, `(B,)` (shared by both views)
            or `(2B,)`. Unused by ``keep``, where it may be None. Gets a gradient only with
            ``mask="soft"``.
        temperature: τ > 0; logits are s / τ.
        similarity: ``"cos"`` or ``"dot"``.
        false_negatives: ``"keep"``, ``"drop"``, ``"attract"`` or ``"relabel"``.
        positive_weight: α in [0, 1], the label mass kept on the partner when false negatives exist.
        mask: ``"hard"`` (s <= k is a negative) or ``"soft"`` (ν = sigmoid((k - s)/β)).
        mask_temperature: β > 0 of the soft mask.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (returns the `(2B,)` row losses).
        backend: ``"auto"`` (Triton for CUDA tensors when importable), ``"reference"`` or ``"triton"``.
        gather_distributed: score local rows against every rank's rows under torch.distributed.

    Returns:
        The loss, float32 (float64 for float64 inputs): a scalar, or `(2B,)` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: for any argument outside the contract, naming it and the fix.

    Example:
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
        >>> adaptive_info_nce(z1, z2, 0.5, reduction="none").shape
        torch.Size([8])
    """
    rows, _, global_rows = _rows_from_public(
        z1,
        z2,
        threshold,
        temperature,
        similarity,
        false_negatives,
        positive_weight,
        mask,
        mask_temperature,
        backend,
        gather_distributed,
    )
    world = distributed.world_size() if gather_distributed else 1
    return reduce_rows(rows, check_choice("reduction", reduction, REDUCTIONS), global_rows, world)


def _rows_from_public(
    z1: Tensor,
    z2: Tensor,
    threshold: float | Tensor | None,
    temperature: float,
    similarity: str,
    false_negatives: str,
    positive_weight: float,
    mask: str,
    mask_temperature: float,
    backend: str,
    gather_distributed: bool,
) -> tuple[Tensor, Tensor, int]:
    gathering = gather_distributed and distributed.world_size() > 1
    z1, z2 = check_embeddings(z1, z2, min_batch=1 if gathering else 2)
    settings = make_settings(temperature, false_negatives, positive_weight, mask, mask_temperature)
    check_choice("similarity", similarity, SIMILARITIES)
    resolved = resolve_backend(backend, z1.device)
    if settings.uses_threshold:
        if threshold is None:
            raise ValueError(
                f'false_negatives="{false_negatives}" needs a threshold (a float or a tensor); '
                'only "keep" works without one'
            )
        thresholds: Tensor | None = thresholds_per_row(threshold, z1.shape[0], embed(z1[:1], "dot"))
    else:
        thresholds = None
    layout = candidate_layout(embed(z1, similarity), embed(z2, similarity), gather_distributed)
    rows, counts = scored_rows(layout, thresholds, settings, resolved)
    return rows, counts, layout.global_rows


def k_stat(
    z1: Tensor,
    z2: Tensor,
    quantile: float = 0.9,
    similarity: str = "cos",
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> Tensor:
    """k_stat of a batch: the `quantile` of all candidate similarities (paper §3.2.1).

    Exact while N(N-2) <= `max_pairs` (N = 2B); beyond that estimated from a random sample of
    about `max_pairs` candidate pairs without building the N×N matrix.

    Returns:
        A 0-d float32 tensor without gradient.

    Example:
        >>> z = torch.randn(6, 4)
        >>> float(k_stat(z, z + 0.1, quantile=0.5)) <= 1.0
        True
    """
    z1, z2 = check_embeddings(z1, z2)
    check_unit_open("quantile", quantile)
    check_choice("similarity", similarity, SIMILARITIES)
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive int, got {max_pairs!r}")
    z = torch.cat([embed(z1, similarity), embed(z2, similarity)])
    return candidate_similarity_quantile(z, quantile, max_pairs)
