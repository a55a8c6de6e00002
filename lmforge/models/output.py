"""What every model's forward returns, so objectives and generation never depend on an architecture."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ModelOutput:
    """Logits plus the states objectives read besides them (auxiliary heads, distillation)."""

    logits: torch.Tensor  # (B, T, V) next-token logits
    hidden_states: torch.Tensor  # (B, T, C) final-normed states, the lm_head's input
    cache: Any = None  # the model's incremental-decoding state (a KVCache for gpt), when one was passed in
    # Extra loss terms the model itself owns (ACT ponder cost, a quantization regularizer), already weighted.
    # Objectives add their sum to the loss and log each by name, so no objective needs to know the architecture.
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    # Detached per-forward statistics worth logging (mean ponder steps, say); objectives pass them to metrics.
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
