"""Activation checkpointing: trade backward-time recompute for activation memory, per block.

`blocks` keeps only each block's input and recomputes the whole block in backward (torch.utils.checkpoint,
non-reentrant). `selective` is torchtitan's op-level SAC: inside each block the outputs of matmuls and attention
are kept and everything cheap (norms, activations, element-wise ops) is recomputed, so most of the memory goes and
little of the compute comes back. The block's `forward` is wrapped in place, so parameter names, and with them
checkpoints and exports, stay as they are; nothing is recomputed outside training (no grad, no checkpointing).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from lmforge.protocols import BlockStack

Mode = Literal["none", "blocks", "selective"]

# ops whose outputs `selective` keeps (torchtitan's save list, less the collectives a single block has none of)
_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.linear.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _keep_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_keep_matmuls)


def _checkpointed(forward: Callable, selective: bool) -> Callable:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        extra = {"context_fn": _selective_contexts} if selective else {}
        return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)

    return run


def apply_activation_checkpointing(model: nn.Module, mode: Mode) -> int:
    """Wrap each block's forward of `model` (a BlockStack) for `mode`; returns how many blocks were wrapped."""
    if mode == "none":
        return 0
    if not isinstance(model, BlockStack):
        raise ValueError(f"train.activation_checkpointing {mode!r}: {type(model).__name__} has no `blocks` to checkpoint")
    for block in model.blocks:
        block.forward = _checkpointed(block.forward, selective=mode == "selective")
    return len(model.blocks)
