"""The forge objective (seed 000): cross-entropy plus α-weighted regularizers on the final hidden states.

total = CE + α·h_norm_weight·RMS(h) + α·cos_weight·(1 − cos(h, emb(target)))

RMS(h) pulls the final states' scale down; the cosine term pulls each state
toward the input embedding of the token it must predict (looked up under
no_grad, so it moves h, not the embedding). α comes from a controller, the
`forge_controller` schedule by default, and every term is returned so the
trainer logs each of them every step.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, Field, ValidationError, field_validator

from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms
from lmforge.protocols import Objective
from lmforge.registry import ALPHA_SCHEDULES, OBJECTIVES

DEFAULT_CONTROLLER = "forge_controller"


def compute_forge_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    h_states: torch.Tensor,
    embedding_layer: nn.Module,
    vocab_size: int,
    alpha: float,
    ignore_index: int = IGNORE_INDEX,
    h_norm_weight: float = 0.15,
    cos_weight: float = 0.40,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """The seed's composite loss over the targets that are not `ignore_index`, in fp32.

    logits (B, T, V), targets (B, T), h_states (B, T, C). CE is the mean over
    kept targets; RMS(h) is over the kept positions' elements; the cosine term
    is the mean over kept positions. The seed averaged over every position and
    looked up emb(-100) on padding; here padding counts nowhere. All three
    divide by a count clamped to 1, so a batch with no targets gives zeros,
    not NaN, without a host sync.
    """
    mask = targets != ignore_index  # (B, T)
    count = mask.sum().clamp_min(1)
    ce = F.cross_entropy(logits.float().reshape(-1, vocab_size), targets.reshape(-1), ignore_index=ignore_index, reduction="sum") / count
    h = h_states.float() * mask.unsqueeze(-1)  # (B, T, C), zero at ignored positions
    # clamp before sqrt: its gradient is infinite at 0 (an all-ignored batch would give NaN grads)
    h_norm = (h.pow(2).sum() / (count * h.size(-1))).clamp_min(1e-12).sqrt()
    with torch.no_grad():
        target_emb = embedding_layer(targets.masked_fill(~mask, 0)).float()  # (B, T, C); ignored rows are masked below
    cos = F.cosine_similarity(h_states.float(), target_emb, dim=-1)  # (B, T)
    cos_loss = ((1.0 - cos) * mask).sum() / count
    total = ce + alpha * h_norm_weight * h_norm + alpha * cos_weight * cos_loss
    return total, {"ce": ce.detach(), "h_norm": h_norm.detach(), "cos_loss": cos_loss.detach(), "alpha": float(alpha)}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The raw model under a DDP wrapper (`.module`) and/or torch.compile (`._orig_mod`)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def validate_controller(spec: Any) -> BaseModel:
    """An α controller is any registered alpha schedule (default forge_controller), validated by its own config.

    Looked up in ALPHA_SCHEDULES by name rather than imported, so objectives never import `lmforge.training`.
    """
    if isinstance(spec, BaseModel):
        return spec
    if not isinstance(spec, dict):
        raise ValueError("must be an object of schedule options, e.g. {\"warmup\": 0.05, \"peak\": 1.0}")
    spec = {"name": DEFAULT_CONTROLLER, **spec}
    if spec["name"] not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule {spec['name']!r}; allowed: {', '.join(ALPHA_SCHEDULES.names())}")
    cls = ALPHA_SCHEDULES.config_class(spec["name"])
    try:
        return cls.model_validate(spec)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or spec['name']}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors())
        raise ValueError(problems) from None


def controller_field() -> Any:
    """The `controller` field every α-driven objective declares (defaults to forge_controller's defaults)."""
    return Field(
        default_factory=lambda: {"name": DEFAULT_CONTROLLER}, validate_default=True,
        description="α over the run: a registered alpha schedule's options (name defaults to forge_controller)",
    )


class AlphaController:
    """α for each step from the controller schedule; the last α is checkpointed and restored with the objective."""

    def __init__(self, cfg: BaseModel):
        self.cfg = cfg
        self.alpha = 0.0
        self._fn = None
        self._total: int | None = None

    def __call__(self, ctx: StepContext) -> float:
        if self._total != ctx.total_steps:  # built on first use: the run length is known only then
            self._fn = ALPHA_SCHEDULES.get(self.cfg.name)(self.cfg, ctx.total_steps)
            self._total = ctx.total_steps
        self.alpha = float(self._fn(ctx.step))
        return self.alpha

    def state_dict(self) -> dict[str, float]:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.alpha = float(state["alpha"])


class ForgeConfig(Section):
    name: Literal["forge"] = "forge"
    controller: Any = controller_field()
    h_norm_weight: float = Field(0.15, ge=0, description="weight of RMS(h), times α (seed 0.15)")
    cos_weight: float = Field(0.40, ge=0, description="weight of 1 - cos(h, emb(target)), times α (seed 0.40)")

    @field_validator("controller")
    @classmethod
    def _controller(cls, value: Any) -> BaseModel:
        return validate_controller(value)


@OBJECTIVES.register("forge", config=ForgeConfig)
class ForgeObjective(Objective):
    """compute_forge_loss on the model's final normed hidden states and its input embedding."""

    def __init__(self, cfg: ForgeConfig):
        self.cfg = cfg
        self.controller = AlphaController(cfg.controller)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model(batch["input_ids"])
        loss, metrics = compute_forge_loss(
            out.logits, batch["labels"], out.hidden_states, unwrap_model(model).get_input_embeddings(), out.logits.size(-1),
            self.controller(ctx), IGNORE_INDEX, self.cfg.h_norm_weight, self.cfg.cos_weight,
        )
        return add_model_terms(loss, out, metrics), metrics

    def state_dict(self) -> dict[str, float]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.controller.load_state_dict(state)
