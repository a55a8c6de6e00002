"""Sequence classification: a linear head on the final hidden state of the last real input token.

The batch comes from `data.task: classification` (data/supervised.py): right-padded input_ids, last_index (B,)
and class_labels (B,). A causal model's state at the last real token has seen the whole input and no padding,
so no attention mask is needed. The head is attached to the model by `bind` before the optimizer is built,
so AdamW trains it and every checkpoint holds it (as `classification_head.*`).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lmforge.errors import PresetError
from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms
from lmforge.objectives.heads import attach_head, unwrap
from lmforge.protocols import Objective, RunContext
from lmforge.registry import OBJECTIVES
from lmforge.runtime import Runtime

HEAD_NAME = "classification_head"


class ClassificationConfig(Section):
    name: Literal["classification"] = "classification"


def class_logits(model: torch.nn.Module, out, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, num_classes) logits from the hidden state at each row's last real token."""
    hidden = out.hidden_states  # (B, T, C)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, batch["last_index"]]  # (B, C)
    return getattr(unwrap(model), HEAD_NAME)(pooled).float()


@OBJECTIVES.register("classification", config=ClassificationConfig)
class Classification(Objective):
    """CE over class ids (labels -100 = unknown class, ignored); logs `cls_loss` and `accuracy`."""

    def __init__(self, cfg: ClassificationConfig):
        self.cfg = cfg

    def bind(self, model: torch.nn.Module, run: RunContext) -> None:
        labels = run.labels
        if labels is None:
            raise PresetError("objective 'classification' needs data.task 'classification' (batches with class_labels)")
        attach_head(model, HEAD_NAME, len(labels))

    def terms(self, model: torch.nn.Module, out, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics from an existing forward, without the model's own terms (multitask adds those once)."""
        if "class_labels" not in batch:
            raise ValueError("objective 'classification' needs batches with class_labels: set data.task 'classification'")
        logits = class_logits(model, out, batch)
        y = batch["class_labels"]
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)
        valid = y != IGNORE_INDEX
        accuracy = ((logits.argmax(-1) == y) & valid).sum() / valid.sum().clamp_min(1)
        return loss, {"cls_loss": loss.detach(), "accuracy": accuracy.detach()}

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["input_ids"])
        loss, metrics = self.terms(model, out, batch, ctx)
        return add_model_terms(loss, out, metrics), metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], runtime: Runtime) -> dict[str, float]:
        """val_loss (mean CE per sample) and val_accuracy over every val sample, reduced over ranks."""
        return evaluate_classification(model, batches, runtime)


@torch.no_grad()
def evaluate_classification(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], runtime: Runtime) -> dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # summed CE, correct, samples
    for batch in batches:
        batch = {k: v.to(runtime.device, non_blocking=True) for k, v in batch.items()}
        with runtime.autocast():
            out = model(batch["input_ids"])
        logits = class_logits(model, out, batch)
        y = batch["class_labels"]
        valid = y != IGNORE_INDEX
        totals[0] += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").double()
        totals[1] += ((logits.argmax(-1) == y) & valid).sum()
        totals[2] += valid.sum()
    if runtime.distributed:
        import torch.distributed as dist

        dist.all_reduce(totals)
    model.train(was_training)
    ce, correct, samples = totals.tolist()
    if samples == 0:
        raise ValueError("the validation split has no samples with a known class")
    return {"val_loss": ce / samples, "val_accuracy": correct / samples, "val_samples": samples}
