"""CL4SRec's contrastive views: two randomly augmented copies of every training sequence.

CL4SRec (Xie et al., "Contrastive Learning for Sequential Recommendation", ICDE 2022, arXiv 2010.14395)
contrasts two augmentations of the same sequence against the other sequences of the batch. Each
augmentation changes a sequence of n items by one of three operators, each with its own ratio:

- item crop (η): keep ⌊η·n⌋ consecutive items from a random start; at least one item is kept, so a
  view is never empty (the formula gives 0 items for η·n < 1);
- item mask (γ): replace ⌊γ·n⌋ items at random positions by the [mask] item, an id of its own (the
  model gets one embedding row more for it; padding, id 0, is never used as the mask);
- item reorder (β): shuffle ⌊β·n⌋ consecutive items from a random start.

Each view applies one operator. With ``pairs="distinct"`` the two views of a sequence use two different
operators, each ordered pair equally likely, as in the CL4SRec code of DuoRec's authors that the
AdaptiveRec authors ran; ``"independent"`` draws each view's operator on its own (so both views may
crop, say). The ratios' defaults (η = 0.6, γ = 0.3, β = 0.6) are that code's. A 1-item sequence is
left as it is by every operator (unless γ = 1, which masks everything).

Everything is vectorised over a right-padded batch and drawn from a ``torch.Generator``: the views are
a function of the generator's seed, and the padding, the maximum length (views are never longer than
their input) and the length buckets of the example's batches are kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# isort: split
from data import Batch, Samples, make_batch, pad_inputs
from model import DuoRec

CROP, MASK, REORDER = 0, 1, 2
OPERATORS = ("crop", "mask", "reorder")
PAIRS = ("distinct", "independent")
# The command line's names for the fields of `Augmentations`; None unless --contrast cl4srec.
ARGUMENTS = {"item_crop": "crop", "item_mask": "mask", "item_reorder": "reorder", "aug_pairs": "pairs"}


def _uniform(shape: int | tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    return torch.rand(shape, generator=generator, dtype=torch.float64).numpy()


def _share(ratio: float, lengths: np.ndarray) -> np.ndarray:
    """⌊ratio·n⌋ per row; the tolerance keeps e.g. 0.29·100 = 28.999999999999996 at 29."""
    return np.floor(ratio * lengths + 1e-9).astype(np.int64)


def _window_start(lengths: np.ndarray, size: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """A uniform start in 0 .. n - size for a window of `size` consecutive items in each row."""
    span = lengths - size + 1
    return np.minimum((_uniform(len(lengths), generator) * span).astype(np.int64), span - 1)


def item_crop(
    seqs: np.ndarray, lengths: np.ndarray, ratio: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep max(1, ⌊ratio·n⌋) consecutive items of each row, from a uniform start, left-aligned.

    Args:
        seqs: `(R, W)` item ids, each row right-padded with 0 after its `lengths[r]` items.
        lengths: `(R,)` number of items of each row, 1..W.
        ratio: η in [0, 1].
        generator: the source of the random starts.

    Returns:
        `(R, W)` cropped rows (right-padded with 0) and their `(R,)` lengths.
    """
    keep = np.maximum(_share(ratio, lengths), 1)
    start = _window_start(lengths, keep, generator)
    positions = np.arange(seqs.shape[1])
    index = np.minimum(start[:, None] + positions[None, :], seqs.shape[1] - 1)
    inside = positions[None, :] < keep[:, None]
    return np.where(inside, np.take_along_axis(seqs, index, axis=1), 0), keep


def item_mask(
    seqs: np.ndarray, lengths: np.ndarray, ratio: float, mask_id: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replace ⌊ratio·n⌋ items of each row, at positions drawn without replacement, by `mask_id`.

    Shapes as `item_crop`; lengths are unchanged and padding stays 0.
    """
    count = _share(ratio, lengths)
    positions = np.arange(seqs.shape[1])
    keys = np.where(positions[None, :] < lengths[:, None], _uniform(seqs.shape, generator), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")  # padding ranks last
    return np.where(rank < count[:, None], mask_id, seqs), lengths.copy()


def item_reorder(
    seqs: np.ndarray, lengths: np.ndarray, ratio: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ⌊ratio·n⌋ consecutive items of each row (uniform start, uniform permutation).

    Shapes as `item_crop`; lengths are unchanged, items outside the window and padding stay in place.
    """
    size = _share(ratio, lengths)
    start = _window_start(lengths, size, generator)
    positions = np.arange(seqs.shape[1])[None, :]
    inside = (positions >= start[:, None]) & (positions < (start + size)[:, None])
    # Sort keys: an item outside the window keeps its position as key; the window's items get random
    # keys within [start, start + size), so sorting permutes the window uniformly and nothing else.
    random_keys = start[:, None] + _uniform(seqs.shape, generator) * size[:, None]
    order = np.argsort(np.where(inside, random_keys, positions), axis=1, kind="stable")
    return np.take_along_axis(seqs, order, axis=1), lengths.copy()


def choose_operators(rows: int, pairs: str, generator: torch.Generator) -> np.ndarray:
    """`(rows, 2)` operator of each row's two views (0 crop, 1 mask, 2 reorder).

    ``distinct``: the second differs from the first, each of the 6 ordered pairs with probability 1/6;
    ``independent``: each uniform over the three.
    """
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    u = _uniform((rows, 2), generator)
    first = np.minimum((u[:, 0] * 3).astype(np.int64), 2)
    if pairs == "distinct":
        second = (first + 1 + np.minimum((u[:, 1] * 2).astype(np.int64), 1)) % 3
    else:
        second = np.minimum((u[:, 1] * 3).astype(np.int64), 2)
    return np.stack([first, second], axis=1)


@dataclass(frozen=True)
class Augmentations:
    """CL4SRec's three operators with their ratios, and how a sequence's two views pick theirs.

    Args:
        crop: η, the share of items an item-crop view keeps.
        mask: γ, the share of items an item-mask view replaces by the mask item.
        reorder: β, the share of items (one consecutive window) an item-reorder view shuffles.
        pairs: ``distinct`` (two different operators per sequence) or ``independent``.

    Example:
        >>> seqs, lengths = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]), np.array([5, 2])
        >>> views = Augmentations().views(seqs, lengths, mask_id=99, generator=torch.Generator().manual_seed(0))
        >>> [view[0].shape for view in views], [bool((view[1] <= lengths).all()) for view in views]
        ([(2, 5), (2, 5)], [True, True])
    """

    crop: float = 0.6
    mask: float = 0.3
    reorder: float = 0.6
    pairs: str = "distinct"

    def __post_init__(self) -> None:
        for name in OPERATORS:
            ratio = getattr(self, name)
            if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
                raise ValueError(f"{name} ratio must be a number in [0, 1], got {ratio!r}")
        if self.pairs not in PAIRS:
            raise ValueError(f"pairs must be one of {PAIRS}, got {self.pairs!r}")

    def apply(
        self, operator: int, seqs: np.ndarray, lengths: np.ndarray, mask_id: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One operator (0 crop, 1 mask, 2 reorder) on every row of `seqs`."""
        if operator == CROP:
            return item_crop(seqs, lengths, self.crop, generator)
        if operator == MASK:
            return item_mask(seqs, lengths, self.mask, mask_id, generator)
        if operator == REORDER:
            return item_reorder(seqs, lengths, self.reorder, generator)
        raise ValueError(f"operator must be 0 (crop), 1 (mask) or 2 (reorder), got {operator!r}")

    def views(
        self, seqs: np.ndarray, lengths: np.ndarray, mask_id: int, generator: torch.Generator
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """The two views of every row: `((seqs1, lengths1), (seqs2, lengths2))`, each `(R, W)` and `(R,)`.

        Args:
            seqs: `(R, W)` item ids, right-padded with 0.
            lengths: `(R,)` items per row, 1..W.
            mask_id: the id the mask operator writes (not 0, which is padding).
            generator: every random draw comes from it, in a fixed order.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        if seqs.ndim != 2 or lengths.shape != (seqs.shape[0],):
            raise ValueError(f"need seqs (R, W) and lengths (R,), got {seqs.shape} and {lengths.shape}")
        if len(lengths) and (lengths.min() < 1 or lengths.max() > seqs.shape[1]):
            raise ValueError(f"lengths must lie in 1..{seqs.shape[1]}, got {lengths.min()}..{lengths.max()}")
        if mask_id == 0:
            raise ValueError("mask_id 0 is the padding id; give the mask item an id of its own")
        operators = choose_operators(len(lengths), self.pairs, generator)
        out = []
        for view in range(2):
            view_seqs, view_lengths = np.zeros_like(seqs), lengths.copy()
            for operator in (CROP, MASK, REORDER):
                rows = np.flatnonzero(operators[:, view] == operator)
                if len(rows):
                    view_seqs[rows], view_lengths[rows] = self.apply(
                        operator, seqs[rows], lengths[rows], mask_id, generator
                    )
            out.append((view_seqs, view_lengths))
        return out[0], out[1]


def padded_batch(parts: Sequence[tuple[np.ndarray, np.ndarray]], bucket_edges: tuple[int, ...]) -> Batch:
    """Right-padded `(seqs, lengths)` blocks stacked into one length-grouped batch, rows in order.

    The rows are laid end to end in a flat item array, so `data.make_batch` groups and pads them exactly
    as it does the unaugmented inputs.
    """
    flat, lengths = [], []
    for seqs, length in parts:
        valid = np.arange(seqs.shape[1])[None, :] < length[:, None]
        flat.append(seqs[valid])  # row-major: each row's items, rows in order
        lengths.append(length)
    all_lengths = np.concatenate(lengths).astype(np.int64)
    return make_batch(np.concatenate(flat), np.cumsum(all_lengths), all_lengths, bucket_edges)


class CL4SRecViews:
    """Batches of training samples and their two CL4SRec views, ready for `DuoRec.encode`.

    Args:
        items: the dataset's flat item array (`SequenceData.items`).
        samples: the training samples (`data.train_samples`).
        augmentations: the operators and their ratios.
        mask_id: the model's mask item id (`DuoRec(..., mask_token=True).mask_id`).
        bucket_edges: the length groups of the batches (`()`: one group).
    """

    def __init__(
        self,
        items: np.ndarray,
        samples: Samples,
        augmentations: Augmentations,
        mask_id: int,
        bucket_edges: tuple[int, ...],
    ) -> None:
        self.items = items
        self.samples = samples
        self.augmentations = augmentations
        self.mask_id = mask_id
        self.bucket_edges = bucket_edges

    @classmethod
    def for_run(
        cls,
        config: Mapping[str, Any],
        items: np.ndarray,
        samples: Samples,
        model: DuoRec,
        bucket_edges: tuple[int, ...],
    ) -> CL4SRecViews | None:
        """The views of a run with configuration `config` (`vars(args)`), or None if it has no CL4SRec views
        (another ``--contrast``, or ``--loss none``)."""
        augmentations = from_config(config)
        if augmentations is None or not needs_mask_token(config):
            return None
        if model.mask_id is None:
            raise ValueError("CL4SRec's item-mask views need a model built with DuoRec(..., mask_token=True)")
        return cls(items, samples, augmentations, model.mask_id, bucket_edges)

    def batch(
        self, rows: np.ndarray, generator: torch.Generator, with_inputs: bool = True, part: slice | None = None
    ) -> Batch:
        """The inputs of samples `rows` (if `with_inputs`), then their first views, then their second views:
        a batch of `3 R` (or `2 R`) rows.

        `part` keeps only those rows (one process's slice of a global batch under torchrun); the views of
        every row are drawn all the same, so the generator advances alike in every process.
        """
        end, length = self.samples.end[rows], self.samples.length[rows]
        seqs = pad_inputs(self.items, end, length)
        first, second = self.augmentations.views(seqs, length, self.mask_id, generator)
        parts = [(seqs, length), first, second] if with_inputs else [first, second]
        if part is not None:
            parts = [(block[part], lengths[part]) for block, lengths in parts]
        return padded_batch(parts, self.bucket_edges)


# ------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `Augmentations`; they default to None and are filled by `check_arguments`."""
    default = Augmentations()
    group = parser.add_argument_group("CL4SRec views (--contrast cl4srec)")
    group.add_argument(
        "--item-crop", type=float, default=None, help=f"eta: share of items a crop view keeps (default {default.crop})"
    )
    group.add_argument(
        "--item-mask",
        type=float,
        default=None,
        help=f"gamma: share of items a mask view hides (default {default.mask})",
    )
    group.add_argument(
        "--item-reorder",
        type=float,
        default=None,
        help=f"beta: share of items a reorder view shuffles (default {default.reorder})",
    )
    group.add_argument(
        "--aug-pairs",
        choices=PAIRS,
        default=None,
        help=f"operators of a sequence's two views: distinct or independent draws (default {default.pairs})",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the CL4SRec flags' defaults for ``--contrast cl4srec``; refuse them with any other view.

    Other views keep them None, so their configuration (and the checkpoints written before these flags
    existed) does not change.
    """
    given = [name for name in ARGUMENTS if getattr(args, name) is not None]
    if args.contrast != "cl4srec":
        if given:
            flag = "--" + given[0].replace("_", "-")
            parser.error(f"{flag} applies to --contrast cl4srec only, not --contrast {args.contrast}: drop it")
        return
    default = Augmentations()
    for name, field in ARGUMENTS.items():
        if getattr(args, name) is None:
            setattr(args, name, getattr(default, field))
        elif field != "pairs" and not 0.0 <= getattr(args, name) <= 1.0:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} is a share of the sequence's items, in [0, 1]; got {getattr(args, name)}")


def from_config(config: Mapping[str, Any]) -> Augmentations | None:
    """The augmentations of a run's configuration (`vars(args)` or results.json's ``config``); None without
    CL4SRec views."""
    if config.get("contrast") != "cl4srec":
        return None
    return Augmentations(**{field: config[name] for name, field in ARGUMENTS.items()})


def needs_mask_token(config: Mapping[str, Any]) -> bool:
    """Whether the run's model has the extra [mask] embedding row: CL4SRec views with a contrastive loss."""
    return config.get("contrast") == "cl4srec" and config.get("loss") != "none"
