"""`AdaptiveInfoNCE`: the stateful loss of AdaptiveRec.

The module holds state only: the threshold network, the running target k̄_stat and the epoch
counter. The math lives in `functional`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed
from ._checks import (
    check_choice,
    check_count,
    check_embeddings,
    check_labels,
    check_non_negative,
    check_unit_open,
    compute_dtype,
    is_real,
    thresholds_per_row,
)
from ._modes import BACKENDS, REDUCTIONS, SIMILARITIES
from .functional import (
    CandidateLayout,
    autocast_off,
    candidate_layout,
    embed,
    inputs_agreed,
    known_positive_counts,
    make_settings,
    reduce_rows,
    resolve_backend,
    scored_rows,
)
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
        k_stat: the batch's q-quantile of candidate similarities (divided by τ with
            ``threshold_units="logit"``, like `k_learn` and `k_bar`; `k` is always in similarity units).
        k_bar: the target k̄_stat (NaN while none exists).
        false_negative_fraction: mean over rows of F_i / (N - 2), the share of candidates treated as
            false negatives (known positives included).
        known_positive_fraction: the share of candidates that are known positives (from ``labels``;
            None without labels). `suspected_fraction` is the rest of `false_negative_fraction`.
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
    known_positive_fraction: Tensor | None = None

    @property
    def suspected_fraction(self) -> Tensor:
        """Share of candidates flagged by the threshold alone (false negatives that are not known)."""
        if self.known_positive_fraction is None:
            return self.false_negative_fraction
        return self.false_negative_fraction - self.known_positive_fraction

    def __repr__(self) -> str:
        # One line of means and shares; the raw tensors stay in the fields.
        known = "" if self.known_positive_fraction is None else f"known={float(self.known_positive_fraction):.2%}, "
        return (
            f"Diagnostics(epoch={self.epoch}, mode={self.mode!r}, k_mean={_number(self.k.float().mean())}, "
            f"k_stat={_number(self.k_stat)}, k_bar={_number(self.k_bar)}, "
            f"suspected={float(self.false_negative_fraction):.2%}, {known}loss_learn={_number(self.loss_learn)}, "
            f"loss_reg={_number(self.loss_reg)})"
        )


def _number(value: Tensor) -> str:
    return f"{float(value):.4g}"


REG_NORMS = ("mean_square", "l2")
THRESHOLD_UNITS = ("similarity", "logit")
# Buffers that keep their own dtype whatever the module is cast to (see `_apply`).
_STATE_BUFFERS = ("k_bar", "k_sum", "k_count", "epochs_done", "calibrated", "sample_step")


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
            `(B, D)` to `(B,)`, a fixed float, None to use k̄_stat itself as the threshold, or
            ``"labels"`` for no threshold at all: only the known positives passed to `forward` as
            ``labels`` count as false negatives (the oracle of a synthetic study, or DuoRec with its
            same-target pairs masked).
        temperature: τ > 0.
        similarity: ``"cos"`` (default) or ``"dot"``.
        false_negatives: ``"attract"`` (default), ``"drop"``, ``"relabel"`` or ``"keep"``.
        positive_weight: α in [0, 1].
        quantile: q in (0, 1) of k_stat (default 0.9).
        reg_weight: λ >= 0 of L_reg (default 0.1).
        warmup_epochs: epochs run as ``keep`` while k_stat is collected (default 1; 0 as the authors' code).
        mask: ``"hard"`` or ``"soft"``.
        mask_temperature: β of the soft mask.
        mask_gradient: how the soft mask is differentiated: ``"labels"`` (default; the threshold learns
            from L_reg alone, as with the hard mask, and the similarities get the soft labels' gradient)
            or ``"full"`` (the exact derivative, also into k_learn: it rewards flagging every candidate and
            collapses the threshold within an epoch; kept to reproduce that measurement).
        backend: ``"auto"``, ``"reference"`` or ``"triton"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (`(2B,)` rows, each plus λ·L_reg, so that
            their mean is the ``"mean"`` loss).
        gather_distributed: score against every rank's rows under torch.distributed.
        update: ``"epoch"`` (k̄_stat = mean of the previous epoch) or ``"ema"``.
        momentum: EMA momentum for ``update="ema"``.
        max_pairs: candidate pairs beyond which k_stat is estimated from a sample of about this
            many pairs (an int >= 4).
        reg_norm: ``"mean_square"`` (default: L_reg = mean_i (k_i − k̄_stat)², independent of the
            batch size) or ``"l2"`` (L_reg = ‖k − k̄_stat‖₂ over the batch, as the authors' code).
        threshold_units: ``"similarity"`` (default: k, k_stat and k̄_stat are similarities, as the
            paper defines them) or ``"logit"`` (they are logits s/τ, as the authors' code compares
            them; the same thing at τ = 1).
        detach_threshold_input: True (default) feeds the ThresholdNet detached embeddings, so L_reg
            trains the threshold network only; False lets L_reg's gradient reach the encoder too,
            as in the authors' code.
        calibrate: start a learned threshold that has a ``calibrate`` method (ThresholdNet) at
            k̄_stat on its first use (default True); False keeps the untrained network's output.
        collapse_share: `end_epoch` warns when the threshold flagged more than this share of the
            candidates as suspected false negatives in every training step of the epoch (default 0.5;
            None never warns): the contrastive term then has almost no negatives left.

    On CUDA tensors the embeddings are checked for NaN and inf on the first call only: each
    check reads a device value back to the host, and the loss makes no such read afterwards.

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
    sample_step: Tensor
    _collapse_steps: Tensor

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
        mask_gradient: str = "labels",
        backend: str = "auto",
        reduction: str = "mean",
        gather_distributed: bool = False,
        update: str = "epoch",
        momentum: float = 0.99,
        max_pairs: int = DEFAULT_MAX_PAIRS,
        reg_norm: str = "mean_square",
        threshold_units: str = "similarity",
        detach_threshold_input: bool = True,
        calibrate: bool = True,
        collapse_share: float | None = 0.5,
    ) -> None:
        super().__init__()
        self.settings = make_settings(
            temperature, false_negatives, positive_weight, mask, mask_temperature, mask_gradient
        )
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
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, minimum=0)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.gather_distributed = bool(gather_distributed)
        self.update = check_choice("update", update, UPDATES)
        self.momentum = check_unit_open("momentum", momentum)
        self.max_pairs = check_count("max_pairs", max_pairs, minimum=4)
        self.reg_norm = check_choice("reg_norm", reg_norm, REG_NORMS)
        self.threshold_units = check_choice("threshold_units", threshold_units, THRESHOLD_UNITS)
        self.detach_threshold_input = bool(detach_threshold_input)
        self.calibrate = bool(calibrate)
        self.collapse_share = None if collapse_share is None else check_unit_open("collapse_share", collapse_share)

        self.threshold_net: nn.Module | None = None
        self.fixed_threshold: float | None = None
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1):
            raise ValueError(f"dim must be a positive int (the embedding width D), got {dim!r}")
        self.labels_only = isinstance(threshold, str) and threshold == "labels"
        if self.labels_only:
            if not self.settings.uses_threshold:
                raise ValueError('threshold="labels" needs a mode that handles false negatives, not "keep"')
        elif isinstance(threshold, str):
            if threshold != "learn":
                raise ValueError(f'threshold={threshold!r}: pass "learn", "labels", a module, a float or None')
            if self.settings.uses_threshold:
                if dim is None:
                    raise ValueError(
                        f'false_negatives="{self.settings.false_negatives}" with threshold="learn" builds '
                        "ThresholdNet(dim): pass dim=D, the width of the embeddings (or a fixed threshold=, "
                        'threshold=None to use k̄_stat itself, or threshold="labels" for known positives only)'
                    )
                self.threshold_net = ThresholdNet(int(dim), similarity=similarity)
            # "keep" has no threshold: nothing to learn, so no ThresholdNet and no L_reg.
        elif isinstance(threshold, nn.Module):
            self.threshold_net = threshold
        elif is_real(threshold):
            self.fixed_threshold = float(threshold)  # type: ignore[arg-type]
            if math.isnan(self.fixed_threshold):
                raise ValueError("threshold is NaN")
        elif threshold is not None:
            raise TypeError(f"threshold must be 'learn', a module, a float or None, got {type(threshold).__name__}")

        self.register_buffer("k_bar", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("k_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("k_count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("epochs_done", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("sample_step", torch.tensor(0, dtype=torch.int64))
        # This epoch's training steps that flagged by threshold, and how many of them stayed at or below
        # `collapse_share`: counted on the device, read once in `end_epoch`, not saved.
        self.register_buffer("_collapse_steps", torch.zeros(2, dtype=torch.int64), persistent=False)
        self._last: Diagnostics | None = None
        self._last_epoch: int | None = None  # the epoch of `_last` once `end_epoch` has moved on
        # Host-side mirrors of the buffers the forward branches on, so that it never reads a device value
        # back; `_sync_host_state` refreshes them after `load_state_dict`. The forward reads only flags that
        # change once or twice in a run (never a counter): torch.compile specialises on every host value
        # the forward reads and would otherwise recompile at each new value.
        self._epochs = 0
        self._warming_up = self.warmup_epochs > 0
        self._has_target = False
        self._calibrated = False
        self._validated = False
        self._backends: dict[torch.device, str] = {}
        self.register_load_state_dict_post_hook(_sync_host_state)

    # ------------------------------------------------------------------------------ state

    @property
    def epoch(self) -> int:
        """Completed epochs (calls of `end_epoch`)."""
        return self._epochs

    @property
    def last(self) -> Diagnostics | None:
        """`Diagnostics` of the last forward call (None before the first)."""
        if self._last is None:
            return None
        # The forward leaves the epoch out (reading the host counter there would make torch.compile
        # recompile every epoch); it is the current one unless `end_epoch` has run since.
        epoch = self._epochs + 1 if self._last_epoch is None else self._last_epoch
        return dataclasses.replace(self._last, epoch=epoch)

    @property
    def has_target(self) -> bool:
        """Whether k̄_stat exists yet."""
        return self._has_target

    def end_epoch(self) -> None:
        """Roll k̄_stat to the mean k_stat of the epoch just finished and count the epoch.

        Warns (`collapse_share`) when every training step of the epoch flagged more than that share of the
        candidates. Reads the epoch's step counts back from the device: the one device read the module
        makes outside its first call.
        """
        recorded, steps, below = torch.cat([self.k_count.reshape(1), self._collapse_steps]).tolist()
        self._warn_if_collapsed(steps, below)
        if self.update == "epoch" and recorded > 0:
            self.k_bar.copy_(self.k_sum / self.k_count)
            self._has_target = True
        self.k_sum.zero_()
        self.k_count.zero_()
        self._collapse_steps.zero_()
        if self._last is not None and self._last_epoch is None:
            self._last_epoch = self._epochs + 1
        self.epochs_done += 1
        self._epochs += 1
        self._warming_up = self._epochs < self.warmup_epochs

    def _record_suspected_share(self, share: Tensor) -> None:
        """Count, on the device, the training steps whose suspected share stayed at or below `collapse_share`."""
        if not self.training or self.collapse_share is None:
            return
        below = (share.detach() <= self.collapse_share).to(torch.int64)
        self._collapse_steps.add_(torch.stack((torch.ones_like(below), below)))

    def _warn_if_collapsed(self, steps: int, below: int) -> None:
        if steps == 0 or below > 0:
            return
        s = self.settings
        warnings.warn(
            f"epoch {self._epochs + 1}: the threshold flagged more than {self.collapse_share:.0%} of the candidates "
            f"as suspected false negatives in every one of its {steps} training steps (false_negatives="
            f"{s.false_negatives!r}, mask={s.mask!r}). With so few negatives left the contrastive term does little "
            "while its loss looks small. Check k_learn against k_stat in `last`; raise reg_weight, or use "
            'mask="hard".',
            UserWarning,
            stacklevel=3,
        )

    def _record_k_stat(self, k_stat: Tensor) -> None:
        if not self.training:
            return
        k_stat = k_stat.to(self.k_bar)
        if self.update == "ema":
            blended = self.momentum * self.k_bar + (1 - self.momentum) * k_stat
            self.k_bar.copy_(blended if self._has_target else k_stat)
            self._has_target = True
        self.k_sum += k_stat
        self.k_count += 1

    def _apply(self, fn: Any, recurse: bool = True) -> AdaptiveInfoNCE:  # type: ignore[override]
        """Move the running statistics with the module but never change their dtype: `.half()` or
        ``.to(torch.bfloat16)`` would otherwise round k̄_stat and the epoch sums to 8 or 11 bits."""
        kept = {name: buffer for name in _STATE_BUFFERS if (buffer := self._buffers.get(name)) is not None}
        for name in kept:
            del self._buffers[name]
        try:
            super()._apply(fn, recurse)
        finally:
            for name, buffer in kept.items():
                device = fn(torch.empty(0, device=buffer.device)).device
                self._buffers[name] = buffer.to(device)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the k_stat sample had a step counter start that counter at 0.
        state_dict.setdefault(prefix + "sample_step", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------ forward

    def _resolve_backend(self, device: torch.device) -> str:
        if device not in self._backends:
            self._backends[device] = resolve_backend(self.backend, device)
        return self._backends[device]

    def _units(self, value: Tensor) -> Tensor:
        """A similarity-unit statistic in the threshold's units."""
        return value / self.settings.temperature if self.threshold_units == "logit" else value

    def forward(
        self,
        z1: Tensor,
        z2: Tensor,
        labels: Tensor | None = None,
        threshold_input: Tensor | None = None,
    ) -> Tensor:
        """L_cl for two views `(B, D)` of B sequences (scalar unless ``reduction="none"``).

        Args:
            z1, z2: `(B, D)` the two views; row b of z1 pairs with row b of z2.
            labels: optional integer `(B,)` known-positive labels, one per sequence (negative =
                unknown): sequences sharing a label >= 0 are false negatives of each other, whatever
                the threshold says. Required with ``threshold="labels"``; rejected in ``keep`` mode.
            threshold_input: optional `(B, D')` rows the threshold module reads instead of `z1`
                (the authors' code feeds it the next-item representation of the batch).
        """
        world = distributed.world_size() if self.gather_distributed else 1
        gather = world > 1

        def check() -> tuple[Tensor, Tensor, Tensor | None]:
            check_finite = not isinstance(z1, Tensor) or z1.device.type == "cpu" or not self._validated
            a, b = check_embeddings(z1, z2, min_batch=1 if gather else 2, check_finite=check_finite)
            if labels is None:
                if self.labels_only:
                    raise ValueError(
                        'AdaptiveInfoNCE(threshold="labels") needs labels: call loss_fn(z1, z2, labels=...)'
                    )
                return a, b, None
            if not self.settings.uses_threshold:
                raise ValueError(
                    'false_negatives="keep" handles no false negatives and takes no labels; use "drop", '
                    '"attract" or "relabel" for known positives, or leave labels=None'
                )
            return a, b, check_labels(labels, a.shape[0], a.device)

        (z1, z2, labels), counts = inputs_agreed(gather, check, z1, labels)
        self._validated = True
        backend = self._resolve_backend(z1.device)
        with autocast_off(z1.device):
            return self._loss(z1, z2, labels, threshold_input, counts, world, backend)

    def _loss(
        self,
        z1: Tensor,
        z2: Tensor,
        labels: Tensor | None,
        threshold_input: Tensor | None,
        counts: list[int] | None,
        world: int,
        backend: str,
    ) -> Tensor:
        gather = world > 1
        half = backend == "triton"  # 16-bit rows reach the 16-bit kernels; the reference computes in float32
        layout = candidate_layout(
            embed(z1, self.similarity, half), embed(z2, self.similarity, half), gather, labels, counts
        )
        columns = layout.columns.detach()
        batch_k_stat = self._units(
            candidate_similarity_quantile(columns, self.quantile, self.max_pairs, self.sample_step)
        )
        if self.training:
            self.sample_step += 1
        self._record_k_stat(batch_k_stat)

        # Warm-up collects k_stat before a threshold that depends on it is used; labels alone need none.
        warm = self._warming_up and not self.labels_only
        k_learn = (
            None
            if self.threshold_net is None
            else self._learned_threshold(z1, threshold_input, layout, warm, batch_k_stat)
        )
        k: Tensor | float | None
        if k_learn is not None:
            k = k_learn
        elif self.fixed_threshold is not None:
            k = self.fixed_threshold
        elif self.labels_only or not self._has_target:
            k = None
        else:
            k = self.k_bar

        settings = self.settings
        if warm:
            k = None  # no threshold yet: the known positives alone, or plain InfoNCE without them
        if k is None and labels is None:
            settings = make_settings(
                settings.temperature, "keep", settings.positive_weight, settings.mask, settings.mask_temperature
            )
        thresholds = None
        if settings.uses_threshold and k is not None:
            in_similarity = k * settings.temperature if self.threshold_units == "logit" else k
            # Thresholds in float32 (float64 for float64 rows) even when the rows are 16-bit.
            like = layout.rows.new_empty(0, dtype=compute_dtype(layout.rows.dtype))
            thresholds = thresholds_per_row(in_similarity, z1.shape[0], like, check_nan=k is not k_learn)
            if settings.mask == "hard" or not settings.exact_mask_gradient:
                thresholds = thresholds.detach()
        rows, fn_counts = scored_rows(layout, thresholds, settings, backend)
        global_rows = layout.global_rows

        loss_reg = torch.zeros((), dtype=rows.dtype, device=rows.device)
        if k_learn is not None and self._has_target and not warm:
            loss_reg = self._regulariser(k_learn.to(rows.dtype), layout, world)
        loss_learn = reduce_rows(rows, self.reduction, global_rows, world)
        loss = loss_learn + self.reg_weight * loss_reg

        known = known_positive_counts(layout)
        nan = torch.full((rows.shape[0],), float("nan"), device=rows.device)
        diagnostics = Diagnostics(
            k=nan if thresholds is None else thresholds.detach(),
            k_learn=None if k_learn is None else k_learn.detach(),
            k_stat=batch_k_stat,
            k_bar=self.k_bar.detach().clone(),
            false_negative_fraction=fn_counts.mean() / max(global_rows - 2, 1),
            loss_learn=loss_learn.detach().mean(),
            loss_reg=loss_reg.detach(),
            mode=settings.false_negatives,
            epoch=0,  # filled in by `last`
            known_positive_fraction=None if known is None else known.to(rows.dtype).mean() / max(global_rows - 2, 1),
        )
        self._last, self._last_epoch = diagnostics, None
        if thresholds is not None:
            self._record_suspected_share(diagnostics.suspected_fraction)
        return loss

    def _learned_threshold(
        self, z1: Tensor, threshold_input: Tensor | None, layout: CandidateLayout, warm: bool, batch_k_stat: Tensor
    ) -> Tensor:
        """k_learn `(B,)` from the threshold module, calibrated on its first use in training."""
        assert self.threshold_net is not None
        calibrate = getattr(self.threshold_net, "calibrate", None)
        if self.calibrate and self.training and not warm and callable(calibrate) and not self._calibrated:
            # First use of the learned threshold: start it at k̄_stat (or, with no target yet, at
            # this batch's k_stat) rather than at an arbitrary k of the untrained network.
            calibrate(self.k_bar if self._has_target else batch_k_stat)
            self.calibrated.fill_(True)
            self._calibrated = True
        source = z1 if threshold_input is None else threshold_input
        if self.detach_threshold_input:
            source = source.detach()
        net = self.threshold_net
        if (
            isinstance(net, ThresholdNet)
            and net.arch == "set"
            and self.gather_distributed
            and layout.batch > source.shape[0]
        ):
            # Batch statistics of every rank's rows, so that g sees what one process would.
            if threshold_input is None:
                batch = layout.columns[: layout.batch].detach()
            else:
                batch = distributed.gather_rows(source.detach())[0]
            k_learn = net(source, batch)
        else:
            k_learn = net(source)
        if k_learn.shape != (z1.shape[0],):
            raise ValueError(f"the threshold module must map (B, D) to (B,), got {tuple(k_learn.shape)}")
        return k_learn

    def _regulariser(self, k_learn: Tensor, layout: CandidateLayout, world: int) -> Tensor:
        """L_reg of this process's rows; under gathering its share, scaled like the rows (see
        `functional.reduce_rows`) so that the average over ranks is the single-process value."""
        difference = k_learn - self.k_bar.to(k_learn.dtype)
        if self.reg_norm == "mean_square":
            return reduce_rows(difference.square(), "mean", layout.global_rows // 2, world)
        if world > 1:
            # A norm does not split into per-rank shares: every rank takes the whole batch's norm.
            # DDP averages the gradients, and the gathered rows' backward sums over ranks.
            difference = distributed.gather_rows(difference)[0]
        return torch.linalg.vector_norm(difference)

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"false_negatives={s.false_negatives!r}, mask={s.mask!r}, temperature={s.temperature}, "
            f"similarity={self.similarity!r}, quantile={self.quantile}, reg_weight={self.reg_weight}, "
            f"warmup_epochs={self.warmup_epochs}, update={self.update!r}"
        )


def _sync_host_state(module: nn.Module, _incompatible: Any) -> None:
    """Refresh the host-side mirrors from loaded buffers (one read of each, at load time only)."""
    assert isinstance(module, AdaptiveInfoNCE)
    module._epochs = int(module.epochs_done)
    module._warming_up = module._epochs < module.warmup_epochs
    module._has_target = not bool(torch.isnan(module.k_bar))
    module._calibrated = bool(module.calibrated)
