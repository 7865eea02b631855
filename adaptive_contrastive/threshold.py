"""SimThres (paper §3.2): the batch statistic k_stat and the learned threshold network g."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice
from ._modes import NORM_EPS, SIMILARITIES

ARCHITECTURES = ("set", "flat")

# 2^16 candidate pairs: exact k_stat up to B = 128 (N(N-2) = 65,280), a sample beyond. Its
# standard error is about 1e-3 in cosine units, and k̄_stat averages it over a whole epoch.
DEFAULT_MAX_PAIRS = 1 << 16


def candidate_similarity_quantile(z: Tensor, quantile: float, max_pairs: int = DEFAULT_MAX_PAIRS) -> Tensor:
    """q-quantile of s_ij over all candidate pairs of Z = `z` (N = 2B rows, SPEC §4).

    Exact (``torch.quantile``'s linear interpolation) while N(N-2) <= `max_pairs`. Beyond that
    the pairs are a random grid: about √max_pairs rows and as many columns drawn without
    replacement, so every candidate pair has the same chance to be in the sample and the N×N
    matrix is never built. `z` is already normalised for cosine similarity.

    Returns a 0-d float32 tensor without gradient.
    """
    with torch.no_grad():
        n = z.shape[0]
        zc = z.float() if z.dtype != torch.float64 else z
        if n * (n - 2) <= max_pairs:
            rows = torch.arange(n, device=z.device)
            cols = rows
        else:
            side = max(1, math.isqrt(max_pairs))
            n_rows = min(n, side)
            n_cols = min(n, max(1, max_pairs // n_rows))
            rows = torch.randperm(n, device=z.device)[:n_rows]
            cols = torch.randperm(n, device=z.device)[:n_cols]
        sims = zc[rows] @ zc[cols].T if cols is not rows else zc @ zc.T
        # Self and partner pairs go to +inf: they then rank above every candidate, so the
        # candidates' order statistics are the first ones of the whole block (no gather needed).
        excluded = (cols[None, :] == rows[:, None]) | (cols[None, :] == ((rows + n // 2) % n)[:, None])
        n_excluded = int(excluded.sum())
        sims.masked_fill_(excluded, float("inf"))
        return _linear_quantile(sims.flatten(), quantile, sims.numel() - n_excluded).float()


def _linear_quantile(values: Tensor, quantile: float, count: int | None = None) -> Tensor:
    """`torch.quantile` (linear interpolation) of the `count` smallest entries of `values`, by two
    O(n) selections instead of a sort; every other entry must be larger than those."""
    n = values.numel() if count is None else count
    position = quantile * (n - 1)
    below = min(int(math.floor(position)), n - 1)
    low = torch.kthvalue(values, below + 1).values
    high = torch.kthvalue(values, min(below + 2, n)).values
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
        similarity: ``"cos"`` squashes k to (-1, 1) with tanh and uses normalised rows; ``"dot"``
            leaves both unbounded.
        batch_size: the fixed B of ``arch="flat"``.

    Example:
        >>> g = ThresholdNet(8)
        >>> g(torch.randn(5, 8)).shape
        torch.Size([5])
    """

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
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.arch = check_choice("arch", arch, ARCHITECTURES)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        hidden = 2 * dim if hidden is None else hidden
        if arch == "flat":
            if batch_size is None or isinstance(batch_size, bool) or batch_size < 2:
                raise ValueError(
                    f'arch="flat" maps a whole batch to B thresholds: pass batch_size=B (>= 2), got {batch_size!r}'
                )
            self.batch_size: int | None = int(batch_size)
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
        return torch.tanh(x) if self.similarity == "cos" else x

    def _unsquash(self, k: float) -> float:
        return math.atanh(max(-0.999, min(0.999, k))) if self.similarity == "cos" else k

    @torch.no_grad()
    def calibrate(self, k: float) -> None:
        """Move the output bias so that k_learn starts near `k` (used once k̄_stat first exists)."""
        self.head.bias.fill_(self._unsquash(float(k)))

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
        if self.arch == "flat":
            if z.shape[0] != self.batch_size:
                raise ValueError(
                    f'ThresholdNet(arch="flat") was built for batch_size={self.batch_size} and got a batch of '
                    f'{z.shape[0]}; use drop_last=True in the DataLoader or arch="set", which takes any batch size'
                )
            return self._squash(self.head(self.body(z.reshape(1, -1))).squeeze(0))
        if batch is not None:
            batch = batch.to(z.dtype)
        return self._squash(self.head(self.body(self.set_features(z, batch))).squeeze(-1))
