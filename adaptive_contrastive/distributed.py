"""All-gather with gradients, for scoring local rows against every rank's candidates.

Safe to import and call without torch.distributed: a single process is a world of one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _row_counts(x: Tensor) -> list[int]:
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _collective_device() -> torch.device:
    """Where a small tensor must live for the process group's backend (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}


def agree_on_inputs(
    error: Exception | None, rows: int, dim: int, dtype: torch.dtype | None, labelled: bool
) -> list[int]:
    """Every rank's row count, after all ranks agreed that their inputs are valid and alike.

    One small all-gather: each rank shares whether its own checks passed, its rows, D, dtype and
    whether it passed labels. A rank whose checks failed raises its own error; every other rank
    raises a ValueError that names the failing rank, so no rank is left waiting in a collective that
    the others never join. Ranks that disagree on D, dtype or labels all raise the same error.
    """
    status = [0 if error is None else 1, rows, dim, _DTYPE_CODES.get(dtype, 0) if dtype else 0, int(labelled)]
    local = torch.tensor(status, dtype=torch.int64, device=_collective_device())
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    table = torch.stack(parts).cpu().tolist()
    if error is not None:
        raise error
    failed = [r for r, row in enumerate(table) if row[0]]
    if failed:
        raise ValueError(
            f"gather_distributed: rank(s) {failed} rejected their inputs (see the error raised there); "
            "this rank stops too instead of waiting for them"
        )
    for column, what in ((2, "the embedding width D"), (3, "the embeddings' dtype"), (4, "whether labels are passed")):
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            if column == 3:
                names = {code: str(t).removeprefix("torch.") for t, code in _DTYPE_CODES.items()}
                shown = [names.get(v, "?") for v in values]
            else:
                shown = values
            raise ValueError(f"gather_distributed: ranks disagree on {what}: {shown} (rank 0 first)")
    return [row[1] for row in table]


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; the backward sums the gradient over ranks and keeps our slice.

    Ranks may hold different numbers of rows: rows are padded to the largest count, because
    all_gather needs equal shapes.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, counts: list[int]) -> Tensor:  # type: ignore[override]
        largest = max(counts)
        padded = x.new_zeros((largest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        me = dist.get_rank()
        ctx.start = sum(counts[:me])
        ctx.stop = ctx.start + counts[me]
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def gather_rows(x: Tensor, counts: list[int] | None = None) -> tuple[Tensor, int]:
    """All ranks' rows of `x` in rank order, and the offset of this rank's first row.

    Gradients reaching the gathered tensor flow back to the rank that owns each row. `counts`,
    every rank's row count, saves a collective where it is already known.
    """
    if world_size() == 1:
        return x, 0
    if counts is None:
        counts = _row_counts(x)
    gathered: Tensor = _GatherRows.apply(x, counts)  # type: ignore[assignment]
    return gathered, sum(counts[: rank()])
