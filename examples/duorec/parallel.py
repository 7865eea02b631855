"""Data-parallel training of the example under torchrun: one global batch split across ranks.

Every rank draws the same global batch order and the same same-target partners (same generator
seed) and takes its contiguous slice (`Ranks.shard`), so the union over ranks is the batch one
process would train on. The contrastive loss gathers every rank's views
(``AdaptiveInfoNCE(gather_distributed=True)``) and returns this rank's share scaled by the world
size; the next-item loss is scaled the same way (`Ranks.row_weight`), so the gradient DDP averages
over ranks equals the single-process gradient of the global batch, also when the last batch does not
split evenly. Evaluation is sharded by users and the ranks gathered, so every rank holds the same
metrics and takes the same early-stopping decision. Rank 0 alone prints and writes files.

A single process is a world of one: every method is then the identity or a plain call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

# isort: split
from data import Batch
from diagnostics import EpochMeter
from evaluate import EvalSet, evaluate, ranking_metrics, score_ranks

T = TypeVar("T")
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes, and the collectives the trainer needs.

    Attributes:
        device: this rank's device (``cuda:LOCAL_RANK`` under torchrun on GPUs).
        rank: global rank, 0 .. world - 1.
        world: number of processes (1 without torchrun).
        local_rank: rank on this machine.
    """

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---------------------------------------------------------------------------------- batches
    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rows ``[start, stop)`` of `rank` (default: this one) in a global batch of `n`: contiguous,
        rank order, sizes differing by at most one."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = rank * base + min(rank, extra)
        return start, start + base + (rank < extra)

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch (all of it in one process)."""
        if not self.distributed:
            return rows
        start, stop = self.bounds(len(rows))
        return rows[start:stop]

    def row_weight(self, local: int, total: int) -> float:
        """Factor turning a mean over this rank's `local` rows into its share of the mean over `total`
        rows, times the world size, so that DDP's average over ranks is the mean over all rows."""
        return local * self.world / total

    def seed(self, base: int) -> int:
        """The seed of this rank's own random stream (dropout masks), reproducible from `base`."""
        return base * 1_000_003 + 7_919 * (self.rank + 1)

    def min_rows(self) -> int:
        """Fewest rows a global batch may have: 2 for the in-batch loss, and one per rank."""
        return max(2, self.world)

    # ------------------------------------------------------------------------------- collectives
    def gather_rows(self, x: Tensor, total: int) -> Tensor:
        """Every rank's rows of `x` in rank order, for a global batch of `total` rows split by `bounds`.

        No gradient flows back: for diagnostics and metrics only.
        """
        if not self.distributed:
            return x
        sizes = [stop - start for start, stop in (self.bounds(total, r) for r in range(self.world))]
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def gather_halves(self, x: Tensor, total: int) -> Tensor:
        """`x` = [first views; second views] of this rank's rows → the same for the global batch."""
        if not self.distributed:
            return x
        first, second = x.chunk(2)
        return torch.cat([self.gather_rows(first, total), self.gather_rows(second, total)])

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average the gradients of parameters outside DDP (the loss's ThresholdNet) over ranks."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.world

    def average_meter(self, meter: EpochMeter) -> None:
        """Average an epoch's per-rank sums over ranks. Every recorded value is either equal on all ranks
        or this rank's share times the world size, so the average is the single-process value."""
        if not self.distributed:
            return
        for table in (meter.sums, meter.fn):
            names = sorted(table)
            if not names:
                continue
            values = torch.tensor([table[name] for name in names], dtype=torch.float64, device=self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            for name, value in zip(names, (values / self.world).tolist(), strict=True):
                table[name] = value

    def gather_states(self, state: Tensor) -> list[Tensor]:
        """Every rank's copy of an equally-shaped state tensor (an RNG state), on the CPU."""
        if not self.distributed:
            return [state]
        local = state.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return [part.cpu() for part in parts]

    def main_first(self, step: Callable[[], T], others: bool = True) -> T | None:
        """Run `step` on rank 0, then (with `others`) on the other ranks; a `SystemExit` on rank 0 stops
        every rank, its message printed by rank 0 alone.

        For what must happen once before the others follow (a download, preparing the output folder,
        reading a checkpoint that may be damaged).
        """
        if not self.distributed:
            return step()
        result, stopped = None, None
        if self.main:
            try:
                result = step()
            except SystemExit as error:
                stopped = error
        flag = torch.tensor([stopped is not None], dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        if stopped is not None:
            raise stopped
        if int(flag.item()):
            raise SystemExit(1)
        if not self.main and others:
            result = step()
        return result

    def agree(self, flag: bool) -> bool:
        """Whether `flag` is the same on every rank."""
        if not self.distributed:
            return True
        value = torch.tensor([int(flag), -int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value[0]) == -int(value[1])

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers of `module`."""
        if not self.distributed:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def stop(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------------ model
    def wrap(self, model: nn.Module) -> Callable[[Batch], Tensor]:
        """The encoder of training steps: ``model.encode``, wrapped in DDP across ranks."""
        if not self.distributed:
            return model.encode  # type: ignore[return-value]
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(Encoder(model), device_ids=device_ids)

    def evaluate(self, model: nn.Module, items: np.ndarray, eval_set: EvalSet, **kwargs: Any) -> dict[str, float]:
        """`evaluate.evaluate` with the users sharded over ranks; every rank returns the whole split's metrics."""
        if not self.distributed:
            return evaluate(model, items, eval_set, self.device, **kwargs)  # type: ignore[arg-type]
        total = len(eval_set.samples)
        start, stop = self.bounds(total)
        rows = np.arange(start, stop)
        part = EvalSet(eval_set.samples.subset(rows), {k: v[start:stop] for k, v in eval_set.negatives.items()})
        if len(rows):
            ranks = score_ranks(model, items, part, self.device, **kwargs)  # type: ignore[arg-type]
        else:
            ranks = {name: torch.zeros(0, dtype=torch.int64) for name in ["full", *eval_set.negatives]}
        metrics: dict[str, float] = {}
        for name in ["full", *eval_set.negatives]:
            every = self.gather_rows(ranks[name].to(self.device), total).cpu()
            prefix = "" if name == "full" else f"{name}/"
            metrics.update({prefix + key: value for key, value in ranking_metrics(every).items()})
        return metrics


class Encoder(nn.Module):
    """``model.encode`` as a module's forward, so that DDP sees one forward per step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model.encode(batch)


def start(device: torch.device) -> Ranks:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), or run alone.

    Gloo on CPUs, NCCL on GPUs, where each process takes ``cuda:LOCAL_RANK``.

    Raises:
        SystemExit: a device choice that cannot work under torchrun, or no torch.distributed.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device)
    if not dist.is_available():
        raise SystemExit("error: this torch build has no torch.distributed: run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise SystemExit(
                f"error: --device {device}: under torchrun every process takes cuda:LOCAL_RANK; pass --device cuda "
                "and choose the GPUs with CUDA_VISIBLE_DEVICES"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    return Ranks(device, rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)
