"""`AdaptiveInfoNCE`: the stateful loss of AdaptiveRec.

The module holds state only: the threshold network, the running target k̄_stat and the epoch
counter. The math lives in `functional`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import distributed
from ._checks import (
    check_choice,
    check_embeddings,
    check_non_negative,
    check_unit_open,
    thresholds_per_row,
)
from ._modes import REDUCTIONS, SIMILARITIES
from .functional import candidate_layout, embed, make_settings, reduce_rows, resolve_backend, scored_rows
from .threshold import DEFAULT_MAX_PAIRS, ThresholdNet, candidate_similarity_quantile

UPDATES = ("epoch", "ema")


@dataclass(frozen=True, repr=False)
class Diagnostics:
    """Detached facts about the last forward call.

    Tensors stay on the loss's device (0-d unless noted), so reading them is the only sync.
    ``print(diagnostics)`` shows a one-line summary (which reads them); the fields hold the raw
    tensors.

    Attributes:
        k: `(N,)` threshold used by each row (NaN where the loss ran as ``keep``).
        k_learn: `(B,)` ThresholdNet output, or None without a ThresholdNet.
        k_stat: the batch's q-quantile of candidate similarities.
        k_bar: the target k̄_stat (NaN while none exists).
        false_negative_fraction: mean over rows of F_i / (N - 2), the share of candidates suspected.
        loss_learn: L_learn, the contrastive part.
        loss_reg: L_reg, the threshold regulariser (0 while no k̄_stat exists).
        mode: the false-negative mode the call actually used (``keep`` during warmup).
        epoch: the epoch the call belongs to, counted from 1 as a training loop counts: calls
            before the first `end_epoch()` report 1.
    """

    k: Tensor
    k_learn: Tensor | None
    k_stat: Tensor
    k_bar: Tensor
    false_negative_fraction: Tensor
    loss_learn: Tensor
    loss_reg: Tensor
    mode: str
    epoch: int

    def __repr__(self) -> str:
        # One line of means and shares; the raw tensors stay in the fields.
        return (
            f"Diagnostics(epoch={self.epoch}, mode={self.mode!r}, k_mean={_number(self.k.float().mean())}, "
            f"k_stat={_number(self.k_stat)}, k_bar={_number(self.k_bar)}, "
            f"suspected={float(self.false_negative_fraction):.2%}, loss_learn={_number(self.loss_learn)}, "
            f"loss_reg={_number(self.loss_reg)})"
        )


def _number(value: Tensor) -> str:
    return f"{float(value):.4g}"


class AdaptiveInfoNCE(nn.Module):
    """L_cl = L_learn + λ·L_reg of AdaptiveRec (Jeon, Ryu, Cho, Kang, ICML 2023 workshop).

    Each row's candidates above its threshold k are suspected false negatives; the threshold is
    learned by a ThresholdNet regularised towards k̄_stat, the mean over the previous epoch of the
    batch `quantile` of candidate similarities. Call `end_epoch()` after every epoch.

    Args:
        dim: embedding width D, needed only where a ThresholdNet is built: `threshold` left as
            ``"learn"`` with a mode that uses a threshold (every mode but ``"keep"``, which has no
            threshold to learn and builds none).
        threshold: ``"learn"`` (default: a new ThresholdNet), a ThresholdNet or any module mapping
            `(B, D)` to `(B,)`, a fixed float, or None to use k̄_stat itself as the threshold.
        temperature: τ > 0.
        similarity: ``"cos"`` (default) or ``"dot"``.
        false_negatives: ``"attract"`` (default), ``"drop"``, ``"relabel"`` or ``"keep"``.
        positive_weight: α in [0, 1].
        quantile: q in (0, 1) of k_stat (default 0.9).
        reg_weight: λ >= 0 of L_reg (default 0.1).
        warmup_epochs: epochs run as ``keep`` while k_stat is collected (default 1; 0 as the authors' code).
        mask: ``"hard"`` or ``"soft"``.
        mask_temperature: β of the soft mask.
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (`(2B,)` rows, each plus λ·L_reg, so that
            their mean is the ``"mean"`` loss).
        gather_distributed: score against every rank's rows under torch.distributed.
        update: ``"epoch"`` (k̄_stat = mean of the previous epoch) or ``"ema"``.
        momentum: EMA momentum for ``update="ema"``.
        max_pairs: pairs beyond which k_stat is estimated from a sample.

    Example:
        >>> loss_fn = AdaptiveInfoNCE(dim=16, warmup_epochs=0)
        >>> z1 = torch.randn(8, 16, requires_grad=True)
        >>> loss = loss_fn(z1, z1 + 0.1 * torch.randn(8, 16))
        >>> loss.backward()
        >>> loss_fn.end_epoch()
        >>> loss_fn.epoch
        1
    """

    k_bar: Tensor
    k_sum: Tensor
    k_count: Tensor
    epochs_done: Tensor
    calibrated: Tensor

    def __init__(
        self,
        dim: int | None = None,
        threshold: nn.Module | float | str | None = "learn",
        *,
        temperature: float = 1.0,
        similarity: str = "cos",
        false_negatives: str = "attract",
        positive_weight: float = 0.5,
        quantile: float = 0.9,
        reg_weight: float = 0.1,
        warmup_epochs: int = 1,
        mask: str = "hard",
        mask_temperature: float = 0.05,
        backend: str = "auto",
        reduction: str = "mean",
        gather_distributed: bool = False,
        update: str = "epoch",
        momentum: float = 0.99,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        super().__init__()
        self.settings = make_settings(temperature, false_negatives, positive_weight, mask, mask_temperature)
        self.similarity = check_choice("similarity", similarity, SIMILARITIES)
        if self.similarity == "dot" and self.settings.false_negatives == "attract":
            warnings.warn(
                "false_negatives='attract' with similarity='dot' is unbounded below: suspected false negatives "
                "leave the softmax denominator but are rewarded for a larger s_ij, and a dot product grows with "
                "the embeddings' norms (on Amazon Beauty the loss diverged within 4 epochs). Use "
                "similarity='cos', or false_negatives='relabel' (they stay in the denominator) or 'drop'.",
                UserWarning,
                stacklevel=2,
            )
        self.quantile = check_unit_open("quantile", quantile)
        self.reg_weight = check_non_negative("reg_weight", reg_weight)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.backend = check_choice("backend", backend, ("auto", "reference", "triton"))
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.gather_distributed = bool(gather_distributed)
        self.update = check_choice("update", update, UPDATES)
        self.momentum = check_unit_open("momentum", momentum)
        self.max_pairs = max_pairs

        self.threshold_net: nn.Module | None = None
        self.fixed_threshold: float | None = None
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int (the embedding width D), got {dim!r}")
        if isinstance(threshold, str):
            if threshold != "learn":
                raise ValueError(f'threshold={threshold!r}: pass "learn", a module, a float or None')
            if self.settings.uses_threshold:
                if dim is None:
                    raise ValueError(
                        f'false_negatives="{self.settings.false_negatives}" with threshold="learn" builds '
                        "ThresholdNet(dim): pass dim=D, the width of the embeddings (or a fixed threshold=, "
                        "or threshold=None to use k̄_stat itself)"
                    )
                self.threshold_net = ThresholdNet(dim, similarity=similarity)
            # "keep" has no threshold: nothing to learn, so no ThresholdNet and no L_reg.
        elif isinstance(threshold, nn.Module):
            self.threshold_net = threshold
        elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            if math.isnan(threshold):
                raise ValueError("threshold is NaN")
            self.fixed_threshold = float(threshold)
        elif threshold is not None:
            raise TypeError(f"threshold must be 'learn', a module, a float or None, got {type(threshold).__name__}")

        self.register_buffer("k_bar", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("k_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("k_count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("epochs_done", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("calibrated", torch.tensor(False))
        self.last: Diagnostics | None = None

    @property
    def epoch(self) -> int:
        """Completed epochs (calls of `end_epoch`)."""
        return int(self.epochs_done)

    @property
    def has_target(self) -> bool:
        """Whether k̄_stat exists yet."""
        return not bool(torch.isnan(self.k_bar))

    def end_epoch(self) -> None:
        """Roll k̄_stat to the mean k_stat of the epoch just finished and count the epoch."""
        if self.update == "epoch" and int(self.k_count) > 0:
            self.k_bar.fill_(float(self.k_sum / self.k_count))
        self.k_sum.zero_()
        self.k_count.zero_()
        self.epochs_done += 1

    def _record_k_stat(self, k_stat: Tensor) -> None:
        if not self.training:
            return
        k_stat = k_stat.to(self.k_bar)
        if self.update == "ema":
            blended = self.momentum * self.k_bar + (1 - self.momentum) * k_stat
            self.k_bar.copy_(torch.where(torch.isnan(self.k_bar), k_stat, blended))
        self.k_sum += k_stat
        self.k_count += 1

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        """L_cl for two views `(B, D)` of B sequences (scalar unless ``reduction="none"``)."""
        world = distributed.world_size() if self.gather_distributed else 1
        gather = world > 1
        z1, z2 = check_embeddings(z1, z2, min_batch=1 if gather else 2)
        backend = resolve_backend(self.backend, z1.device)
        layout = candidate_layout(embed(z1, self.similarity), embed(z2, self.similarity), gather)
        columns = layout.columns.detach()
        batch_k_stat = candidate_similarity_quantile(columns, self.quantile, self.max_pairs)
        self._record_k_stat(batch_k_stat)

        warm = int(self.epochs_done) < self.warmup_epochs
        calibrate = getattr(self.threshold_net, "calibrate", None)
        if not warm and callable(calibrate) and not bool(self.calibrated):
            # First use of the learned threshold: start it at k̄_stat (or, with no target yet, at
            # this batch's k_stat) rather than at an arbitrary k of the untrained network.
            calibrate(float(self.k_bar) if self.has_target else float(batch_k_stat))
            self.calibrated.fill_(True)

        k_learn: Tensor | None = None
        if self.threshold_net is not None:
            if isinstance(self.threshold_net, ThresholdNet) and gather:
                # Batch statistics of every rank's first views (already gathered, and embedded,
                # which g's own normalisation leaves unchanged), so g sees what one process would.
                k_learn = self.threshold_net(z1.detach(), columns[: layout.batch])
            else:
                k_learn = self.threshold_net(z1.detach())
            if k_learn.shape != (z1.shape[0],):
                raise ValueError(f"the threshold module must map (B, D) to (B,), got {tuple(k_learn.shape)}")
            k: Tensor | float | None = k_learn
        elif self.fixed_threshold is not None:
            k = self.fixed_threshold
        else:
            k = self.k_bar if self.has_target else None

        settings = self.settings
        if warm or k is None:
            settings = make_settings(
                settings.temperature, "keep", settings.positive_weight, settings.mask, settings.mask_temperature
            )
        thresholds = None
        if settings.uses_threshold:
            assert k is not None
            thresholds = thresholds_per_row(k, z1.shape[0], layout.rows)
            if settings.mask == "hard":
                thresholds = thresholds.detach()
        rows, counts = scored_rows(layout, thresholds, settings, backend)
        global_rows = layout.global_rows

        loss_reg = torch.zeros((), dtype=rows.dtype, device=rows.device)
        if k_learn is not None and self.has_target and not warm:
            # The mean over the B sequences of the whole (gathered) batch; under gathering this
            # rank's share, scaled like the rows (see functional.reduce_rows).
            square = (k_learn.to(rows.dtype) - self.k_bar.to(rows.dtype)).square()
            loss_reg = reduce_rows(square, "mean", global_rows // 2, world)
        loss_learn = reduce_rows(rows, self.reduction, global_rows, world)
        loss = loss_learn + self.reg_weight * loss_reg

        n_rows = rows.shape[0]
        self.last = Diagnostics(
            k=thresholds.detach()
            if thresholds is not None
            else torch.full((n_rows,), float("nan"), device=rows.device),
            k_learn=None if k_learn is None else k_learn.detach(),
            k_stat=batch_k_stat,
            k_bar=self.k_bar.detach().clone(),
            false_negative_fraction=counts.mean() / max(global_rows - 2, 1),
            loss_learn=loss_learn.detach().mean(),
            loss_reg=loss_reg.detach(),
            mode=settings.false_negatives,
            epoch=int(self.epochs_done) + 1,
        )
        return loss

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"false_negatives={s.false_negatives!r}, mask={s.mask!r}, temperature={s.temperature}, "
            f"similarity={self.similarity!r}, quantile={self.quantile}, reg_weight={self.reg_weight}, "
            f"warmup_epochs={self.warmup_epochs}, update={self.update!r}"
        )
