"""Causal language modelling: next-token cross-entropy, mean over non-pad targets."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.protocols import Objective
from lmforge.registry import OBJECTIVES

IGNORE_INDEX = -100


class CLMConfig(Section):
    name: Literal["clm"] = "clm"


def next_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over targets that are not -100, computed in fp32 even under autocast."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def add_model_terms(loss: torch.Tensor, out, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """Add the model's own loss terms (`ModelOutput.aux_losses`) to `loss`, logging each and the model's stats."""
    for name, term in out.aux_losses.items():
        loss = loss + term
        metrics[name] = term.detach()
    for name, value in out.stats.items():
        metrics[name] = value.detach()
    return loss


def per_sequence_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean CE of each row over its non-pad targets (NaN for a row with none), for data.adaptive's per-source loss."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    valid = (labels != IGNORE_INDEX).sum(dim=1)
    return ce.sum(dim=1) / valid.float()


@OBJECTIVES.register("clm", config=CLMConfig)
class CausalLM(Objective):
    def __init__(self, cfg: CLMConfig):
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["input_ids"])
        ce = next_token_cross_entropy(out.logits, batch["labels"])
        metrics = {"ce": ce.detach()}
        loss = add_model_terms(ce, out, metrics)
        if "source_ids" in batch:  # data.adaptive is on: the trainer hands these to the data pipeline
            metrics["per_sequence_loss"] = per_sequence_cross_entropy(out.logits.detach(), batch["labels"])
        return loss, metrics

    def terms(self, model: torch.nn.Module, out, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE from an existing forward, without the model's own terms (the multitask objective adds those once)."""
        ce = next_token_cross_entropy(out.logits, batch["labels"])
        return ce, {"ce": ce.detach()}
