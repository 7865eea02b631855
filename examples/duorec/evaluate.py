"""Ranking evaluation: full ranking over all items and the papers' 100-negative settings.

A rank is 0-based: the number of competitors that score at least as high as the target, so ties
count against the target (a constant model ranks every target last, not first). Then, with one
relevant item per user,

- ``Recall@k`` (= HR@k) = 1 if rank < k,
- ``NDCG@k`` = 1 / log2(rank + 2) if rank < k,
- ``MRR@k``  = 1 / (rank + 1) if rank < k,

averaged over users. Full ranking scores all items except padding and, like RecBole and DuoRec,
keeps the user's history among the candidates. The sampled settings rank the target against 100
negatives drawn without replacement from all items but the target, uniformly (``uni100``) or in
proportion to item popularity (``pop100``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# isort: split
from data import BUCKET_EDGES, Samples, make_batch
from model import DuoRec

KS = (5, 10, 20)
NEGATIVES = 100
SAMPLERS = ("uni100", "pop100")


def full_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based ranks `(R,)` of `targets` (column indices) among all columns of `scores` `(R, C)`.

    Ties count against the target.
    """
    target_scores = scores.gather(1, targets[:, None])
    return (scores >= target_scores).sum(1) - 1  # minus the target itself


def sampled_ranks(scores: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """0-based ranks of `targets` among `negatives` `(R, M)` (column indices, never the target).

    Ties count against the target.
    """
    target_scores = scores.gather(1, targets[:, None])
    return (scores.gather(1, negatives) >= target_scores).sum(1)


def ranking_metrics(ranks: Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``NDCG@k``, ``MRR@k`` and ``Recall@k`` of 0-based ranks, averaged.

    Example:
        >>> m = ranking_metrics(torch.tensor([0, 1]), ks=(1,))
        >>> m["Recall@1"], m["MRR@1"], m["NDCG@1"]
        (0.5, 0.5, 0.5)
    """
    return {f"{name}@{k}": float(user_values(ranks, name, k).mean()) for k in ks for name in ("NDCG", "MRR", "Recall")}


def user_values(ranks: Tensor, name: str, k: int) -> Tensor:
    """Each user's ``NDCG``, ``MRR`` or ``Recall`` at `k` from 0-based ranks (float64), before averaging."""
    ranks = ranks.double()
    hit = ranks < k
    value = {"NDCG": lambda: 1.0 / torch.log2(ranks + 2.0), "MRR": lambda: 1.0 / (ranks + 1.0)}.get(name)
    if value is None and name != "Recall":
        raise ValueError(f"metric must be NDCG, MRR or Recall, got {name!r}")
    return hit.double() if value is None else torch.where(hit, value(), 0.0)


def _first_distinct(draws: np.ndarray, targets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `draws` `(R, M)`: the first `n` distinct values that are not the row's target, in draw
    order, and whether the row had that many."""
    order = np.argsort(draws, axis=1, kind="stable")  # stable: the first occurrence sorts first
    ordered = np.take_along_axis(draws, order, axis=1)
    repeat = np.zeros_like(draws, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    keep = ~repeat & (draws != targets[:, None])
    enough = keep.sum(1) >= n
    keep &= np.cumsum(keep, axis=1) <= n
    picked = np.zeros((len(draws), n), dtype=np.int64)
    picked[enough] = draws[enough][keep[enough]].reshape(-1, n)
    return picked, enough


def sample_negatives(
    targets: Tensor, weights: Tensor, n: int = NEGATIVES, generator: torch.Generator | None = None
) -> Tensor:
    """`n` distinct negatives per row, drawn in proportion to `weights` `(C,)` with the row's target excluded.

    The draws are sequential sampling without replacement (each next negative in proportion to the
    weights of the items not drawn yet), done as sampling with replacement that skips repeats and
    the target, which is the same distribution and much faster than ``torch.multinomial`` without
    replacement over a large catalogue. `targets` and the result are column indices (item id - 1).

    Raises:
        ValueError: fewer than `n` items have a positive weight besides the target.
    """
    w = weights.double().cpu().numpy()
    if int((w > 0).sum()) - 1 < n:
        raise ValueError(f"cannot draw {n} distinct negatives from {int((w > 0).sum())} items with positive weight")
    cumulative = np.cumsum(w)
    cumulative /= cumulative[-1]  # ends at exactly 1, so a draw u < 1 never lands past the last positive weight
    target = targets.cpu().numpy()
    out = np.zeros((len(target), n), dtype=np.int64)
    todo = np.arange(len(target))
    draws = np.zeros((len(target), 0), dtype=np.int64)
    width = 2 * n
    while len(todo):
        uniform = torch.rand(len(todo), width, generator=generator, dtype=torch.float64).numpy()
        # Rows short of n distinct negatives draw more, continuing their own sequence: restarting them
        # would bias the result against the rows' frequent items.
        draws = np.concatenate([draws, np.searchsorted(cumulative, uniform, side="right")], axis=1)
        draws = np.minimum(draws, len(w) - 1)
        picked, enough = _first_distinct(draws, target[todo], n)
        out[todo[enough]] = picked[enough]
        todo, draws, width = todo[~enough], draws[~enough], draws.shape[1]
    return torch.from_numpy(out)


@dataclass
class EvalSet:
    """Samples of one split with their fixed sampled negatives (column indices), per sampler name."""

    samples: Samples
    negatives: dict[str, Tensor]


def make_eval_set(samples: Samples, item_counts: np.ndarray, seed: int = 2023) -> EvalSet:
    """Draw the split's 100 uniform and 100 popularity negatives once, with a fixed seed, so that every
    epoch and every run is scored against the same candidates. `item_counts` is `(n_items + 1,)` with
    the padding count at index 0; popularity is the item's interaction count in the filtered dataset.
    Catalogues with at most 100 items get no sampled settings."""
    counts = torch.as_tensor(item_counts[1:], dtype=torch.float64)
    targets = torch.as_tensor(samples.target - 1)
    negatives: dict[str, Tensor] = {}
    if len(counts) > NEGATIVES:
        generator = torch.Generator().manual_seed(seed)
        negatives["uni100"] = sample_negatives(targets, torch.ones_like(counts), generator=generator)
        if int((counts > 0).sum()) > NEGATIVES:
            negatives["pop100"] = sample_negatives(targets, counts, generator=generator)
    return EvalSet(samples, negatives)


@torch.no_grad()
def score_ranks(
    model: DuoRec,
    items: np.ndarray,
    eval_set: EvalSet,
    device: torch.device,
    batch_size: int = 1024,
    bucket_edges: tuple[int, ...] = BUCKET_EDGES,
) -> dict[str, Tensor]:
    """0-based ranks of every sample's target: under ``full`` and under each sampler name."""
    was_training = model.training
    model.eval()
    samples = eval_set.samples
    ranks: dict[str, list[Tensor]] = {"full": [], **{name: [] for name in eval_set.negatives}}
    for start in range(0, len(samples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(samples)))
        batch = make_batch(items, samples.end[rows], samples.length[rows], bucket_edges).to(device)
        scores = model.item_scores(model.encode(batch)).float()
        targets = torch.as_tensor(samples.target[rows] - 1, device=device)
        ranks["full"].append(full_ranks(scores, targets).cpu())
        for name, negatives in eval_set.negatives.items():
            ranks[name].append(sampled_ranks(scores, targets, negatives[rows].to(device)).cpu())
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in ranks.items()}


def evaluate(
    model: DuoRec, items: np.ndarray, eval_set: EvalSet, device: torch.device, **kwargs: object
) -> dict[str, float]:
    """Metrics of a split: full ranking under plain keys (``NDCG@10``), sampled settings prefixed
    (``uni100/NDCG@10``, ``pop100/NDCG@10``)."""
    metrics: dict[str, float] = {}
    for name, ranks in score_ranks(model, items, eval_set, device, **kwargs).items():  # type: ignore[arg-type]
        prefix = "" if name == "full" else f"{name}/"
        metrics.update({prefix + key: value for key, value in ranking_metrics(ranks).items()})
    return metrics


def metrics_table(metrics: dict[str, float], title: str = "test") -> str:
    """A text table: one row per setting (full, uni100, pop100), columns Recall/NDCG/MRR at 5, 10, 20."""
    columns = [f"{m}@{k}" for m in ("Recall", "NDCG", "MRR") for k in KS]
    settings = ["full"] + [name for name in SAMPLERS if f"{name}/NDCG@10" in metrics]
    width = max(len(c) for c in columns) + 1
    lines = [f"{title:<8}" + "".join(f"{c:>{width}}" for c in columns)]
    for setting in settings:
        prefix = "" if setting == "full" else f"{setting}/"
        lines.append(f"{setting:<8}" + "".join(f"{metrics[prefix + c]:>{width}.4f}" for c in columns))
    return "\n".join(lines)
