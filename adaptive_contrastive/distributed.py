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


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows of `x` in rank order, and the offset of this rank's first row.

    Gradients reaching the gathered tensor flow back to the rank that owns each row.
    """
    if world_size() == 1:
        return x, 0
    counts = _row_counts(x)
    gathered: Tensor = _GatherRows.apply(x, counts)  # type: ignore[assignment]
    return gathered, sum(counts[: rank()])
