"""What every model's forward returns, so objectives and generation never depend on an architecture."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelOutput:
    """Logits plus the states objectives read besides them (auxiliary heads, distillation)."""

    logits: torch.Tensor  # (B, T, V) next-token logits
    hidden_states: torch.Tensor  # (B, T, C) final-normed states, the lm_head's input
    cache: Any = None  # the model's incremental-decoding state (a KVCache for gpt), when one was passed in
