"""One way to assemble a run's model from its preset: the arch, then its layer swaps, then heads a checkpoint holds.

The trainer, inference (`load_run`) and the ternary export all build through here, so a model that trains is the
model that loads.
"""
from __future__ import annotations

from typing import Callable

import torch

from lmforge.config import Preset
from lmforge.models import build_model
from lmforge.objectives.auxiliary import HEADS_NAME, attach_auxiliary_heads
from lmforge.objectives.heads import restore_heads
from lmforge.registry import LAYER_SWAPS


def build_run_model(preset: Preset, state: dict[str, torch.Tensor] | None = None, auxiliary: bool = False,
                    before_swaps: Callable[[torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """`preset.model` built and passed through `preset.layer_swaps` in order; with a checkpoint's `state`, the heads
    an objective attached in training (classification_head, the auxiliary heads, ...) are re-attached so the state
    loads. `auxiliary`: attach the preset's auxiliary heads even without a state (to count their parameters).
    `before_swaps(arch)` runs on the bare arch (train.init_from of full-precision weights into a swap that renames them)."""
    model = build_model(preset.model)
    if before_swaps is not None:
        before_swaps(model)
    for swap in preset.layer_swaps:
        model = LAYER_SWAPS.get(swap.name)(model, swap)
    if state is not None:
        restore_heads(model, state)
    if preset.auxiliary.enabled and (auxiliary or (state is not None and any(k.startswith(HEADS_NAME + ".") for k in state))):
        attach_auxiliary_heads(model, preset.auxiliary)
    return model
