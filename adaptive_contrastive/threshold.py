"""SimThres (paper §3.2): the batch statistic k_stat and the learned threshold network g."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice
from ._modes import NORM_EPS, SIMILARITIES

ARCHITECTURES = ("set", "flat", "authors")
# The authors' g ends in k = AUTHORS_SCALE·(sigmoid(x) - 1/2), so k lies in (-1.05, 1.05).
AUTHORS_SCALE = 2.1

# 2^16 candidate pairs: exact k_stat up to B = 128 (N(N-2) = 65,280), a sample beyond. Its
# standard error is about 1e-3 in cosine units, and k̄_stat averages it over a whole epoch.
DEFAULT_MAX_PAIRS = 1 << 16


def candidate_similarity_quantile(
    z: Tensor, quantile: float, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int | Tensor = 0
) -> Tensor:
    """q-quantile of s_ij over all candidate pairs of Z = `z` (N = 2B rows, SPEC §4).

    Exact (``torch.quantile``'s linear interpolation) while N(N-2) <= `max_pairs`. Beyond that
    the pairs are a grid of about √max_pairs rows × √max_pairs columns taken from two disjoint
    random halves of the B sequences: every pair of the grid is then a candidate (no self or
    partner pair can occur), so the sample size is known in advance, and every candidate pair has
    the same chance to be in it. The halves come from `seed` (an int or an integer tensor, e.g. a
    step counter) through a fixed integer hash: no random generator, no device sync, and every
    process holding the same `z` and `seed` draws the same sample. The N×N matrix is never built.
    `z` is already normalised for cosine similarity.

    Returns a 0-d float32 tensor without gradient.
    """
    with torch.no_grad():
        n = z.shape[0]
        zc = z.float() if z.dtype != torch.float64 else z
        if n * (n - 2) <= max_pairs:
            sims = zc @ zc.T
            rows = torch.arange(n, device=z.device)
            # Self and partner pairs go to +inf: they then rank above every candidate, so the
            # candidates' order statistics are the first ones of the whole block (no gather needed).
            sims[rows, rows] = float("inf")
            sims[rows, (rows + n // 2) % n] = float("inf")
            if n <= 2:  # one sequence: no candidate pair at all
                return torch.full((), float("nan"), device=z.device)
            count = n * (n - 2)
            values = sims.flatten()
        else:
            row_index, column_index = _sample_grid(n // 2, max_pairs, seed, z.device)
            values = (zc[row_index] @ zc[column_index].T).flatten()
            count = values.numel()
        return _linear_quantile(values, quantile, count).float()


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) in int64 arithmetic that cannot overflow."""
    mask = 0xFFFFFFFF
    x = x & mask
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & mask
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & mask
    return x ^ (x >> 16)


def _sample_grid(batch: int, max_pairs: int, seed: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices of the k_stat sample: disjoint random sets of sequences, one random
    view each (both views when the batch is too small for √max_pairs sequences per side)."""
    side = max(1, math.isqrt(max_pairs))
    per_side = max(1, min(batch // 2, side))
    views = 2 if 2 * per_side <= side else 1
    # A Python int seed enters as a kernel scalar; a tensor seed stays on its device (no copy, no sync).
    keys = torch.arange(batch, device=device, dtype=torch.int64) + seed * batch
    order = torch.argsort(_mix32(_mix32(keys) + 0x3C6EF372))
    row_seqs, column_seqs = order[:per_side], order[batch - per_side :]
    if views == 2:
        return torch.cat([row_seqs, row_seqs + batch]), torch.cat([column_seqs, column_seqs + batch])
    # One view per sequence, chosen by another bit of the hash.
    view = (_mix32(keys + 0x1B873593) & 1)[order]
    return row_seqs + batch * view[:per_side], column_seqs + batch * view[batch - per_side :]


def _linear_quantile(values: Tensor, quantile: float, count: int | None = None) -> Tensor:
    """`torch.quantile` (linear interpolation) of the `count` smallest entries of `values`, every
    other entry being larger than those: one O(n) selection for the lower order statistic, and the
    upper one as the smallest larger value (or the same one when it repeats), without a sort."""
    n = values.numel() if count is None else count
    position = quantile * (n - 1)
    below = min(int(math.floor(position)), n - 1)
    low = torch.kthvalue(values, below + 1).values
    if below + 1 >= n:
        return low
    at_most_low = (values <= low).sum()
    next_value = torch.where(values > low, values, float("inf")).min()
    high = torch.where(at_most_low >= below + 2, low, next_value)
    return torch.lerp(low, high, position - below)


class ThresholdNet(nn.Module):
    """g of paper Eq. 7: maps a batch of sequence embeddings `(B, D)` to thresholds k_learn `(B,)`.

    Args:
        dim: embedding width D.
        hidden: width of the hidden layer (default ``2 * dim``).
        arch: ``"set"`` (default) applies one MLP to every row on the features
            ``[û_i, mean_j û_j, μ_i, σ_i]``, where μ_i, σ_i are the mean and standard deviation
            of row i's similarities to the batch, computed from the batch mean and second moment
            in O(B·D²). It is permutation-equivariant and works for any batch size.
            ``"flat"`` is the paper's literal g, an MLP on the flattened batch with B outputs;
            it needs ``batch_size`` and accepts only that batch size.
            ``"authors"`` is g as the authors' released code builds it: two linear layers
            B·D → B·D/8 → B with no activation between, then k = 2.1·(sigmoid − 1/2) in (−1.05, 1.05)
            whatever the similarity, initialised N(0, 0.02) with zero biases, on the raw
            (unnormalised) flattened batch. It needs ``batch_size``; `hidden` defaults to B·D/8.
            Its first layer has B²D²/8 weights (537 M at B = 1024, D = 64): meant for reproducing
            that code, not for new work.
        similarity: ``"cos"`` squashes k to (-1, 1) with tanh and uses normalised rows; ``"dot"``
            leaves both unbounded.
        batch_size: the fixed B of ``arch="flat"`` and ``arch="authors"``.

    Example:
        >>> g = ThresholdNet(8)
        >>> g(torch.randn(5, 8)).shape
        torch.Size([5])
    """

    dim: int
    arch: str
    similarity: str
    batch_size: int | None
    body: nn.Sequential
    head: nn.Linear

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        *,
        arch: str = "set",
        similarity: str = "cos",
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.arch = check_choice("arch", arch, ARCHITECTURES)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        if arch in ("flat", "authors"):
            if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 2:
                raise ValueError(
                    f'arch="{arch}" maps a whole batch to B thresholds: pass batch_size=B (>= 2), got {batch_size!r}'
                )
        if arch == "authors":
            assert batch_size is not None
            hidden = max(1, batch_size * dim // 8) if hidden is None else hidden
        else:
            hidden = 2 * dim if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if arch == "authors":
            assert batch_size is not None
            self.batch_size: int | None = int(batch_size)
            self.body = nn.Sequential(nn.Linear(batch_size * dim, hidden))
            self.head = nn.Linear(hidden, batch_size)
            for layer in (self.body[0], self.head):  # RecBole's initialisation, as the authors' model has it
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
            return
        if arch == "flat":
            assert batch_size is not None
            self.batch_size = int(batch_size)
            self.body = nn.Sequential(nn.Linear(batch_size * dim, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, batch_size)
        else:
            self.batch_size = None
            self.body = nn.Sequential(nn.Linear(2 * dim + 2, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, 1)
        # A near-constant start: k_learn begins at the head's bias, which `calibrate` can set.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def _squash(self, x: Tensor) -> Tensor:
        if self.arch == "authors":
            return AUTHORS_SCALE * (torch.sigmoid(x) - 0.5)
        return torch.tanh(x) if self.similarity == "cos" else x

    def _unsquash(self, k: Tensor) -> Tensor:
        """The head output that the squashing maps to `k` (clamped inside the squashed range)."""
        if self.arch == "authors":
            p = 0.5 + k.clamp(-0.999 * AUTHORS_SCALE / 2, 0.999 * AUTHORS_SCALE / 2) / AUTHORS_SCALE
            return torch.log(p / (1 - p))
        return torch.atanh(k.clamp(-0.999, 0.999)) if self.similarity == "cos" else k

    @torch.no_grad()
    def calibrate(self, k: float | Tensor) -> None:
        """Move the output bias so that k_learn starts near `k` (used once k̄_stat first exists).

        `k` may be a 0-d tensor on the module's device: then nothing is read back to the host.
        """
        bias = self.head.bias
        target = torch.as_tensor(k, dtype=bias.dtype).to(bias.device)
        bias.copy_(self._unsquash(target).expand_as(bias))

    def set_features(self, z: Tensor, batch: Tensor | None = None) -> Tensor:
        """Per-row features ``[û_i, ū, μ_i, σ_i]`` of `z` against the rows of `batch` (default `z`)."""
        u = F.normalize(z, dim=-1, eps=NORM_EPS) if self.similarity == "cos" else z
        if batch is None:
            ub = u
        else:
            ub = F.normalize(batch, dim=-1, eps=NORM_EPS) if self.similarity == "cos" else batch
        mean = ub.mean(0)  # (D,)
        second = ub.T @ ub / ub.shape[0]  # (D, D): E[u_j u_jᵀ]
        mu = u @ mean  # mean_j s_ij
        var = ((u @ second) * u).sum(-1) - mu.square()
        sigma = var.clamp_min(0).add(1e-12).sqrt()
        return torch.cat([u, mean.expand_as(u), mu[:, None], sigma[:, None]], dim=-1)

    def forward(self, z: Tensor, batch: Tensor | None = None) -> Tensor:
        """k_learn `(B,)` for the rows of `z`; `batch` supplies the batch statistics (all ranks' rows
        under distributed training), defaulting to `z` itself."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"ThresholdNet expects z of shape (B, {self.dim}), got {tuple(z.shape)}")
        z = z.to(self.head.weight.dtype)
        if self.arch in ("flat", "authors"):
            if z.shape[0] != self.batch_size:
                raise ValueError(
                    f'ThresholdNet(arch="{self.arch}") was built for batch_size={self.batch_size} and got a batch '
                    f'of {z.shape[0]}; use drop_last=True in the DataLoader or arch="set", which takes any batch size'
                )
            return self._squash(self.head(self.body(z.reshape(1, -1))).squeeze(0))
        if batch is not None:
            batch = batch.to(z.dtype)
        return self._squash(self.head(self.body(self.set_features(z, batch))).squeeze(-1))
