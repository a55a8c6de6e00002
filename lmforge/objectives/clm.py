"""Causal language modelling: next-token cross-entropy, mean over non-pad targets."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.registry import OBJECTIVES

IGNORE_INDEX = -100


class CLMConfig(Section):
    name: Literal["clm"] = "clm"


def next_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over targets that are not -100, computed in fp32 even under autocast."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


@OBJECTIVES.register("clm", config=CLMConfig)
class CausalLM:
    def __init__(self, cfg: CLMConfig):
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["input_ids"])
        loss = next_token_cross_entropy(out.logits, batch["labels"])
        return loss, {"ce": loss.detach()}
