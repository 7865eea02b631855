"""Functional API: argument checks, backend dispatch and reduction (SPEC §3–6)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed
from ._checks import (
    MIN_TEMPERATURE,
    check_choice,
    check_count,
    check_embeddings,
    check_labels,
    check_positive,
    check_unit_closed,
    check_unit_open,
    compute_dtype,
    thresholds_per_row,
)
from ._modes import BACKENDS, FALSE_NEGATIVE_MODES, MASK_GRADIENTS, MASKS, NORM_EPS, REDUCTIONS, SIMILARITIES
from .reference import LossSettings, masked_info_nce_rows
from .threshold import DEFAULT_MAX_PAIRS, candidate_similarity_quantile

__all__ = ["adaptive_info_nce", "k_stat"]

T = TypeVar("T")


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
    mask_gradient: str = "labels",
) -> LossSettings:
    return LossSettings(
        temperature=check_positive("temperature", temperature, MIN_TEMPERATURE),
        false_negatives=check_choice("false_negatives", false_negatives, FALSE_NEGATIVE_MODES),
        positive_weight=check_unit_closed("positive_weight", positive_weight),
        mask=check_choice("mask", mask, MASKS),
        mask_temperature=check_positive("mask_temperature", mask_temperature, MIN_TEMPERATURE),
        mask_gradient=check_choice("mask_gradient", mask_gradient, MASK_GRADIENTS),
    )


def embed(z: Tensor, similarity: str, keep_half: bool = False) -> Tensor:
    """Rows normalised for cosine similarity (ẑ = z / max(‖z‖, 1e-8)), in float32 (float64 stays).

    keep_half: float16/bfloat16 rows are normalised in float32 and cast back, so that the Triton
    backend runs its 16-bit kernels on them (they accumulate in float32); the reference backend
    computes in float32 and leaves it False.
    """
    out = z.to(compute_dtype(z.dtype))
    if similarity == "cos":
        out = F.normalize(out, dim=-1, eps=NORM_EPS)
    if keep_half and z.dtype in (torch.float16, torch.bfloat16):
        out = out.to(z.dtype)
    return out


def _score_rows(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    backend: str,
    row_labels: Tensor | None = None,
    column_labels: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    labels = {} if row_labels is None else {"row_labels": row_labels, "column_labels": column_labels}
    if backend == "triton":
        from .kernels import triton_masked_info_nce_rows

        return triton_masked_info_nce_rows(q, k, thresholds, partner, self_index, settings, **labels)
    return masked_info_nce_rows(q, k, thresholds, partner, self_index, settings, **labels)


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
    row_labels: Tensor | None = None  # (2b,) known-positive label of each row, both views alike
    column_labels: Tensor | None = None  # (N,) the same for every column

    @property
    def global_rows(self) -> int:
        return 2 * self.batch


def candidate_layout(
    u1: Tensor,
    u2: Tensor,
    gather_distributed: bool = False,
    labels: Tensor | None = None,
    counts: list[int] | None = None,
) -> CandidateLayout:
    """Lay out embedded views `(b, D)` (see `embed`) for scoring; gathers across ranks if asked.

    `labels` `(b,)` (int64, already checked) are gathered with the rows; `counts` (every rank's
    b, from `inputs_agreed`) spares the gathers a collective each.
    """
    b = u1.shape[0]
    rows = torch.cat([u1, u2])
    row_labels = None if labels is None else labels.repeat(2)
    column_labels = None if row_labels is None else row_labels.view_as(row_labels)
    if gather_distributed and distributed.world_size() > 1:
        all1, offset = distributed.gather_rows(u1, counts)
        all2, _ = distributed.gather_rows(u2, counts)
        total = all1.shape[0]
        columns = torch.cat([all1, all2])
        if labels is not None:
            column_labels = distributed.gather_rows(labels, counts)[0].repeat(2)
    else:
        # A view, not `rows` itself: torch.compile cannot trace an autograd.Function that receives
        # one tensor as two inputs (the gradients of both still reach the same rows).
        offset, total, columns = 0, b, rows.view_as(rows)
    own = torch.arange(b, device=u1.device) + offset
    return CandidateLayout(
        rows, columns, torch.cat([own + total, own]), torch.cat([own, own + total]), total, row_labels, column_labels
    )


def scored_rows(
    layout: CandidateLayout, thresholds: Tensor | None, settings: LossSettings, backend: str
) -> tuple[Tensor, Tensor]:
    """Row losses and false-negative counts of the layout's rows; `thresholds` one per row (or None
    when only the layout's labels decide)."""
    thr = None
    if thresholds is not None and settings.uses_threshold:
        thr = thresholds.to(compute_dtype(layout.rows.dtype))  # float32 also for 16-bit rows
    return _score_rows(
        layout.rows,
        layout.columns,
        thr,
        layout.partner,
        layout.self_index,
        settings,
        backend,
        layout.row_labels if settings.uses_threshold else None,
        layout.column_labels if settings.uses_threshold else None,
    )


def known_positive_counts(layout: CandidateLayout) -> Tensor | None:
    """K_i: how many of row i's candidates share its known label, from the labels alone in
    O(N log N) (a sort and two searches, no N×N block); None without labels."""
    if layout.row_labels is None or layout.column_labels is None:
        return None
    ordered = layout.column_labels.sort().values
    same = torch.searchsorted(ordered, layout.row_labels, right=True) - torch.searchsorted(ordered, layout.row_labels)
    # Every labelled row's own column and its partner's share its label but are no candidates.
    return torch.where(layout.row_labels >= 0, same - 2, 0)


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
    labels: Tensor | None = None,
    mask_gradient: str = "labels",
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
            or `(2B,)`. Unused by ``keep``, where it may be None; None in the other modes means that
            `labels` alone decide. Gets a gradient only with ``mask="soft"``.
        temperature: τ > 0; logits are s / τ.
        similarity: ``"cos"`` or ``"dot"``.
        false_negatives: ``"keep"``, ``"drop"``, ``"attract"`` or ``"relabel"``.
        positive_weight: α in [0, 1], the label mass kept on the partner when false negatives exist.
        mask: ``"hard"`` (s <= k is a negative) or ``"soft"`` (ν = sigmoid((k - s)/β)).
        mask_temperature: β > 0 of the soft mask.
        mask_gradient: how the soft mask is differentiated. ``"labels"`` (default): through the soft
            labels' dependence on the similarities only; the softmax denominator holds ν fixed and the
            threshold gets no gradient, as with the hard mask. ``"full"``: the exact derivative, whose
            denominator part rewards flagging every candidate (a learned threshold collapses; kept to
            reproduce that measurement).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (returns the `(2B,)` row losses).
        backend: ``"auto"`` (Triton for CUDA tensors when importable), ``"reference"`` or ``"triton"``.
        gather_distributed: score local rows against every rank's rows under torch.distributed.
        labels: optional integer `(B,)` known-positive labels, one per sequence (both views share it;
            negative = unknown). Two sequences with the same label >= 0 are known false negatives of
            each other in every mode but ``keep``, which rejects labels; the threshold adds suspects
            among the other candidates.

    Returns:
        The loss, float32 (float64 for float64 inputs): a scalar, or `(2B,)` with ``reduction="none"``.

    Raises:
        TypeError, ValueError: for any argument outside the contract, naming it and the fix.

    Example:
        >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
        >>> adaptive_info_nce(z1, z2, 0.5, reduction="none").shape
        torch.Size([8])
        >>> classes = torch.tensor([0, 1, 0, -1])  # sequences 0 and 2 are known positives
        >>> adaptive_info_nce(z1, z2, None, false_negatives="drop", labels=classes).shape
        torch.Size([])
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
        labels,
        mask_gradient,
    )
    world = distributed.world_size() if gather_distributed else 1
    return reduce_rows(rows, check_choice("reduction", reduction, REDUCTIONS), global_rows, world)


def inputs_agreed(gathering: bool, check: Callable[[], T], z1: object, labels: object) -> tuple[T, list[int] | None]:
    """Run this rank's input checks; under distributed gathering, also agree with every rank.

    Returns the checks' result and, when gathering, every rank's batch size. A failure on any rank
    raises on every rank (see `distributed.agree_on_inputs`) instead of leaving the others waiting
    in the gather.
    """
    if not gathering:
        return check(), None
    error: Exception | None = None
    try:
        result = check()
    except (TypeError, ValueError) as caught:
        error = caught
    rows, dim = (z1.shape[0], z1.shape[1]) if isinstance(z1, Tensor) and z1.dim() == 2 else (0, 0)
    dtype = z1.dtype if isinstance(z1, Tensor) else None
    counts = distributed.agree_on_inputs(error, rows, dim, dtype, labels is not None)
    return result, counts


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
    labels: Tensor | None = None,
    mask_gradient: str = "labels",
) -> tuple[Tensor, Tensor, int]:
    gathering = gather_distributed and distributed.world_size() > 1

    def check() -> tuple[Tensor, Tensor, LossSettings, str, Tensor | None, Tensor | None]:
        a, b = check_embeddings(z1, z2, min_batch=1 if gathering else 2)
        settings = make_settings(temperature, false_negatives, positive_weight, mask, mask_temperature, mask_gradient)
        check_choice("similarity", similarity, SIMILARITIES)
        resolved = resolve_backend(backend, a.device)
        checked_labels = None
        if labels is not None:
            if not settings.uses_threshold:
                raise ValueError(
                    'false_negatives="keep" handles no false negatives and takes no labels; use "drop", '
                    '"attract" or "relabel" for known positives, or leave labels=None'
                )
            checked_labels = check_labels(labels, a.shape[0], a.device)
        thresholds: Tensor | None = None
        if settings.uses_threshold and threshold is not None:
            thresholds = thresholds_per_row(threshold, a.shape[0], embed(a[:1], "dot"))
        elif settings.uses_threshold and labels is None:
            raise ValueError(
                f'false_negatives="{false_negatives}" needs a threshold (a float or a tensor) or labels; '
                'only "keep" works without either'
            )
        return a, b, settings, resolved, checked_labels, thresholds

    (a, b, settings, resolved, checked_labels, thresholds), counts = inputs_agreed(gathering, check, z1, labels)
    with autocast_off(a.device):
        half = resolved == "triton"  # the Triton backend keeps float16/bfloat16 rows for its 16-bit kernels
        layout = candidate_layout(
            embed(a, similarity, half), embed(b, similarity, half), gathering, checked_labels, counts
        )
        rows, fn_counts = scored_rows(layout, thresholds, settings, resolved)
    return rows, fn_counts, layout.global_rows


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Run the loss in its own precision (float32 accumulation) even inside a torch.autocast region:
    autocast would otherwise run its similarity products in bfloat16/float16."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def k_stat(
    z1: Tensor,
    z2: Tensor,
    quantile: float = 0.9,
    similarity: str = "cos",
    max_pairs: int = DEFAULT_MAX_PAIRS,
    seed: int | None = None,
) -> Tensor:
    """k_stat of a batch: the `quantile` of all candidate similarities (paper §3.2.1).

    Exact while N(N-2) <= `max_pairs` (N = 2B); beyond that estimated from a random sample of
    about `max_pairs` candidate pairs without building the N×N matrix. The sample is fixed by
    `seed` (default: drawn from torch's global generator, so `torch.manual_seed` reproduces it).

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
    check_count("max_pairs", max_pairs, minimum=4)
    if seed is None:
        seed = int(torch.randint(2**31 - 1, ()))  # torch's CPU generator: no device read
    z = torch.cat([embed(z1, similarity), embed(z2, similarity)])
    return candidate_similarity_quantile(z, quantile, max_pairs, check_count("seed", seed, minimum=0))
