"""Weighted sum of named sub-objectives over one forward pass: loss = sum_i weight_i * loss_i.

Each task is `{"name": <registered objective>, "weight": w, ...its own options}`; every sub-objective must
offer `terms(model, out, batch, ctx)` (clm, classification and distill do), so the model runs once and its own
loss terms (`ModelOutput.aux_losses`) are added once, not once per task. Every term is logged as
`<task>/<metric>` and `<task>/loss`. Evaluation runs each task's `evaluate` (LM metrics for tasks without one);
val_loss is the same weighted sum, and val_accuracy comes from the first task with its own evaluation
(classification), else from next-token accuracy.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator

from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import add_model_terms
from lmforge.protocols import Objective, RunContext
from lmforge.registry import OBJECTIVES
from lmforge.runtime import Runtime


class MultitaskConfig(Section):
    name: Literal["multitask"] = "multitask"
    tasks: list[dict[str, Any]] = Field(min_length=1, description='sub-objectives: [{"name": "clm", "weight": 1.0}, {"name": "classification", "weight": 0.5}]')

    @field_validator("tasks")
    @classmethod
    def _validate_tasks(cls, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out = []
        for i, task in enumerate(tasks):
            name = task.get("name")
            if name not in OBJECTIVES or name == "multitask":
                allowed = ", ".join(n for n in OBJECTIVES.names() if n != "multitask")
                raise ValueError(f"tasks.{i}.name: unknown objective {name!r}; allowed: {allowed}")
            if name in seen:
                raise ValueError(f"tasks.{i}: objective {name!r} appears twice; each task is logged by its name")
            seen.add(name)
            weight = task.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"tasks.{i}.weight: must be a number >= 0, got {weight!r}")
            options = {k: v for k, v in task.items() if k != "weight"}
            config_cls = OBJECTIVES.config_class(name)
            try:
                sub = config_cls.model_validate(options) if config_cls is not None else None
            except ValidationError as err:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                raise ValueError(f"tasks.{i} ({name}): {problems}") from None
            out.append({**(sub.model_dump(mode="json") if sub is not None else {"name": name}), "weight": float(weight)})
        return out


@OBJECTIVES.register("multitask", config=MultitaskConfig)
class Multitask(Objective):
    def __init__(self, cfg: MultitaskConfig):
        self.cfg = cfg
        self.tasks: list[tuple[str, float, Any]] = []
        for task in cfg.tasks:
            name = task["name"]
            options = {k: v for k, v in task.items() if k != "weight"}
            config_cls = OBJECTIVES.config_class(name)
            objective = OBJECTIVES.get(name)(config_cls.model_validate(options) if config_cls is not None else None)
            if not hasattr(objective, "terms"):
                raise ValueError(f"objective {name!r} cannot be a multitask task: it has no terms(model, out, batch, ctx)")
            self.tasks.append((name, task["weight"], objective))

    def bind(self, model: torch.nn.Module, run: RunContext) -> None:
        for _, _, objective in self.tasks:
            objective.bind(model, run)

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["input_ids"])
        loss = None
        metrics: dict[str, torch.Tensor] = {}
        for name, weight, objective in self.tasks:
            term, sub_metrics = objective.terms(model, out, batch, ctx)
            loss = weight * term if loss is None else loss + weight * term
            metrics[f"{name}/loss"] = term.detach()
            metrics.update({f"{name}/{k}": v for k, v in sub_metrics.items()})
        return add_model_terms(loss, out, metrics), metrics

    def evaluate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], runtime: Runtime) -> dict[str, float]:
        from lmforge.evaluation import evaluate_lm

        result: dict[str, float] = {"val_loss": 0.0}
        accuracies: list[tuple[bool, float]] = []  # (is the task's own evaluation, accuracy)
        for name, weight, objective in self.tasks:
            own = objective.evaluate(model, batches, runtime)
            sub = own if own is not None else evaluate_lm(model, batches, runtime)
            result["val_loss"] += weight * sub["val_loss"]
            if "val_accuracy" in sub:
                accuracies.append((own is not None, sub["val_accuracy"]))
            result.update({f"{name}/{k}": v for k, v in sub.items()})
        if accuracies:  # a supervised task's accuracy (classification) says more than next-token accuracy
            result["val_accuracy"] = next((a for own, a in accuracies if own), accuracies[0][1])
        return result
