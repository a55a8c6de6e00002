"""From accumulated gradients to a weight update, or to a skipped step: unscale, check, filter, clip, step.

The order is fixed and matters: the step guard reads the raw gradients before any gradient filter folds them
into its state (a NaN there would live on in the filter), and clipping acts on the filtered gradients.
"""
from __future__ import annotations

from typing import Sequence

import torch

from lmforge.protocols import GradientFilter
from lmforge.training.grad_filters import apply_grad_filters
from lmforge.training.step_guard import StepGuard, Verdict, global_norm


def apply_update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    grad_filters: Sequence[GradientFilter], guard: StepGuard, grad_clip: float, loss: torch.Tensor,
) -> tuple[Verdict | None, torch.Tensor | None]:
    """Step the optimizer unless the guard says no; returns the verdict (None with the guard off) and the grad norm
    (the pre-clip norm of the filtered gradients when clipping, else the raw norm the guard checked)."""
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    verdict, grad_norm = None, None
    if guard.active:
        grad_norm = guard.grad_norm(params)
        verdict = guard.check(loss, grad_norm, scaler.is_enabled())
        if not verdict.apply:
            scaler.update()  # fp16: closes the unscale_ above (and lowers the scale, as for an overflow)
            optimizer.zero_grad(set_to_none=True)
            return verdict, grad_norm
    if grad_filters:
        apply_grad_filters(grad_filters, model, skip_nonfinite=scaler.is_enabled())
        grad_norm = None  # the filtered gradients have a norm of their own
    if grad_clip > 0:
        if grad_norm is None:
            grad_norm = global_norm(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        else:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return verdict, grad_norm
