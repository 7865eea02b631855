"""The fused kernels as PyTorch custom operators, so that torch.compile traces through them.

Dynamo cannot see inside a Triton launch from an `autograd.Function`; registered as
``adaptive_contrastive::masked_info_nce`` (forward) and ``adaptive_contrastive::masked_info_nce_backward``,
with shape functions for tracing and the backward registered as its autograd formula, the loss compiles
into one graph with the kernels as opaque calls. torch < 2.4 has no ``torch.library.custom_op``; there
`MaskedInfoNCETriton` (the plain autograd Function) runs instead, and a compiled graph breaks around it.

The operators take the loss settings as plain scalars (an operator schema has no dataclasses) and
recompute the kernels' prepared operands in the backward from the saved inputs (O(N·D) work); the
forward's four floats per row travel from forward to backward as the ``stats`` output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..reference import LossSettings, row_loss
from . import masked_info_nce as fused

AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")

_SECOND_ORDER = (
    'backend="triton" computes first-order gradients only: its backward is not differentiable, so '
    "create_graph=True (gradients of gradients, gradient penalties) cannot go through it; "
    'use backend="reference", whose gradients of gradients are exact'
)


def second_order_error() -> RuntimeError:
    return RuntimeError(_SECOND_ORDER)


def _settings(
    temperature: float,
    false_negatives: str,
    positive_weight: float,
    mask: str,
    mask_temperature: float,
    mask_gradient: str,
) -> LossSettings:
    return LossSettings(temperature, false_negatives, positive_weight, mask, mask_temperature, mask_gradient)


# How many scalar settings follow the tensors in both operators' arguments (see `_settings`).
_NUM_SCALARS = 6


def _forward(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    temperature: float,
    false_negatives: str,
    positive_weight: float,
    mask: str,
    mask_temperature: float,
    mask_gradient: str,
) -> tuple[Tensor, Tensor]:
    """Row losses `(Nq,)` and the saved row statistics `(4, Nq)` (lse, l_p, F, Φ), float32."""
    settings = _settings(temperature, false_negatives, positive_weight, mask, mask_temperature, mask_gradient)
    call = fused.FusedCall.prepare(q, k, thresholds, partner, self_index, settings, row_labels, column_labels)
    call.forward().run()
    lse, partner_logit, fn_count, phi_logit_sum = call.stats.unbind(0)
    return row_loss(lse, partner_logit, fn_count, phi_logit_sum, settings), call.stats


def _forward_shapes(q: Tensor, *_args: Any) -> tuple[Tensor, Tensor]:
    n = q.shape[0]
    return q.new_empty((n,), dtype=torch.float32), q.new_empty((4, n), dtype=torch.float32)


def _backward(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    stats: Tensor,
    g: Tensor,
    temperature: float,
    false_negatives: str,
    positive_weight: float,
    mask: str,
    mask_temperature: float,
    mask_gradient: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """dQ, dK (in the inputs' dtypes) and dt (float32; empty unless a soft mask's threshold is
    differentiated, ``mask_gradient="full"``)."""
    settings = _settings(temperature, false_negatives, positive_weight, mask, mask_temperature, mask_gradient)
    call = fused.FusedCall.prepare(q, k, thresholds, partner, self_index, settings, row_labels, column_labels)
    call.stats = stats
    launches, grad_q, grad_k, grad_thr = call.backward(g)
    for launch in launches:
        launch.run()
    call.add_partner_gradients(g, grad_q, grad_k)
    d = q.shape[1]
    thr = grad_thr * g if grad_thr is not None else g.new_empty((0,))
    return grad_q[:, :d].to(q.dtype).contiguous(), grad_k[:, :d].to(k.dtype).contiguous(), thr


def _backward_shapes(q: Tensor, k: Tensor, thresholds: Tensor | None, *args: Any) -> tuple[Tensor, Tensor, Tensor]:
    settings = _settings(*args[-_NUM_SCALARS:])
    soft = settings.uses_threshold and settings.mask == "soft" and thresholds is not None
    n_thr = q.shape[0] if soft and settings.exact_mask_gradient else 0
    return torch.empty_like(q), torch.empty_like(k), q.new_empty((n_thr,), dtype=torch.float32)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, k, thresholds, partner, self_index, row_labels, column_labels, *scalars = inputs
    _, stats = output
    ctx.save_for_backward(q, k, thresholds, partner, self_index, row_labels, column_labels, stats)
    ctx.scalars = scalars
    ctx.mark_non_differentiable(stats)


def _autograd_backward(ctx: Any, grad_rows: Tensor, _grad_stats: Tensor | None) -> tuple[Tensor | None, ...]:
    if torch.is_grad_enabled():
        raise second_order_error()
    q, k, thresholds, partner, self_index, row_labels, column_labels, stats = ctx.saved_tensors
    g = grad_rows.to(torch.float32).contiguous()  # a mean's gradient arrives expanded (stride 0)
    grad_q, grad_k, grad_thr = torch.ops.adaptive_contrastive.masked_info_nce_backward(
        q, k, thresholds, partner, self_index, row_labels, column_labels, stats, g, *ctx.scalars
    )
    wants_thr = thresholds is not None and ctx.needs_input_grad[2] and grad_thr.numel() > 0
    return (grad_q, grad_k, grad_thr if wants_thr else None, *([None] * (4 + _NUM_SCALARS)))


def _register() -> None:
    """Define the two operators once per process (re-importing this module must not redefine them)."""
    namespace = getattr(torch.ops, "adaptive_contrastive", None)
    if namespace is not None and hasattr(namespace, "masked_info_nce"):
        try:
            namespace.masked_info_nce.default  # noqa: B018 - raises if the name is not an operator
            return
        except (AttributeError, RuntimeError):
            pass
    forward_op = torch.library.custom_op("adaptive_contrastive::masked_info_nce", mutates_args=())(_forward)
    forward_op.register_fake(_forward_shapes)
    backward_op = torch.library.custom_op("adaptive_contrastive::masked_info_nce_backward", mutates_args=())(_backward)
    backward_op.register_fake(_backward_shapes)
    forward_op.register_autograd(_autograd_backward, setup_context=_setup_context)


if AVAILABLE:
    _register()


def masked_info_nce(
    q: Tensor,
    k: Tensor,
    thresholds: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    settings: LossSettings,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Row losses `(Nq,)` and F `(Nq,)` through the operator (or the autograd Function on old torch)."""
    if not AVAILABLE:
        rows, fn_count = fused.MaskedInfoNCETriton.apply(
            q, k, thresholds, partner, self_index, settings, row_labels, column_labels
        )
        return rows, fn_count
    rows, stats = torch.ops.adaptive_contrastive.masked_info_nce(
        q, k, thresholds, partner, self_index, row_labels, column_labels,
        settings.temperature, settings.false_negatives, settings.positive_weight, settings.mask,
        settings.mask_temperature, settings.mask_gradient,
    )  # fmt: skip
    return rows, stats[2]
