"""The contrastive views: DuoRec's three, and CL4SRec's.

- ``un``: two dropout passes of the same sequence (unsupervised augmentation);
- ``su``: the sequence against another training sequence with the same target item (supervised
  positive sampling, "semantic augmentation"), drawn anew for every batch;
- ``us_x``: a second dropout pass of the sequence against the same-target sequence (DuoRec's default).

In ``un`` and ``su`` the first view is the pass that also feeds the next-item loss; ``us_x`` runs a
separate pass for it, as DuoRec's code does.

- ``cl4srec``: two augmentations (item crop, mask or reorder) of the sequence, with a separate pass of
  the unaugmented sequence for the next-item loss (CL4SRec; the augmentations are in ``augment.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CONTRASTS = ("un", "su", "us_x", "cl4srec")


class SameTargetSampler:
    """Draws, for each training sample, another training sample with the same target item.

    The samples are grouped by target once (a CSR layout: `order` sorted by target, `start` and
    `count` per sample's group, `rank` = the sample's own position in its group). A draw picks one of
    the other ``count - 1`` members uniformly; a sample alone with its target gets itself.

    Args:
        targets: `(R,)` target item of every training sample.

    Example:
        >>> sampler = SameTargetSampler(np.array([7, 3, 7, 9]))
        >>> sampler.sample(np.array([0, 1, 2, 3]), torch.Generator().manual_seed(0)).tolist()
        [2, 1, 0, 3]
    """

    def __init__(self, targets: np.ndarray) -> None:
        targets = np.asarray(targets)
        self.order = np.argsort(targets, kind="stable")
        sorted_targets = targets[self.order]
        first = np.r_[True, sorted_targets[1:] != sorted_targets[:-1]]
        group_start = np.flatnonzero(first)
        group_size = np.diff(np.r_[group_start, len(targets)])
        group_of_sorted = np.cumsum(first) - 1
        self.start = np.empty(len(targets), dtype=np.int64)
        self.count = np.empty(len(targets), dtype=np.int64)
        self.rank = np.empty(len(targets), dtype=np.int64)
        self.start[self.order] = group_start[group_of_sorted]
        self.count[self.order] = group_size[group_of_sorted]
        self.rank[self.order] = np.arange(len(targets)) - group_start[group_of_sorted]

    def sample(self, rows: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """For each sample index in `rows`, the index of a different sample with the same target (itself if none)."""
        count = self.count[rows]
        others = np.maximum(count - 1, 1)
        uniform = torch.rand(len(rows), generator=generator, dtype=torch.float64).numpy()
        pick = np.minimum((uniform * others).astype(np.int64), others - 1)  # 0 .. count-2
        pick = pick + (pick >= self.rank[rows])  # skip the sample itself
        pick = np.where(count > 1, pick, self.rank[rows])
        return self.order[self.start[rows] + pick]

    def has_partner(self, rows: np.ndarray) -> Tensor:
        """Whether each sample in `rows` has another sample with its target."""
        return torch.from_numpy(self.count[rows] > 1)
