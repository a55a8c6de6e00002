"""`bitnet_two_stage`: the LR and weight-decay schedule of the BitNet b1.58 training tips.

Ternary weights only change when a latent weight crosses a rounding boundary,
so b1.58 trains with a higher peak LR than fp16 and, half-way, cuts the LR
sharply and switches weight decay off: the latent weights then settle on
their grid instead of being pulled toward zero (where they would flip to 0).

    step < warmup_steps            linear warm-up to 1
    warmup_steps <= step < split   stage 1: linear 1 -> stage1_end_ratio, weight decay on
    split <= step                  stage 2: drop to stage2_start_ratio, linear -> min_lr_ratio
                                   at the last step, weight decay 0

`split = max(warmup_steps, round(split_fraction * total_steps))`. The trainer
reads `weight_decay_multiplier` and `describe` from the returned function.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from lmforge.config_base import Section
from lmforge.registry import SCHEDULES
from lmforge.run_point import at_step
from lmforge.training.schedules import Schedule


class BitNetTwoStageConfig(Section):
    name: Literal["bitnet_two_stage"] = "bitnet_two_stage"
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps (part of stage 1)")
    split_fraction: float = Field(0.5, gt=0, lt=1, description="where stage 2 starts, as a fraction of the run (paper: the midpoint)")
    stage1_end_ratio: float = Field(0.8, gt=0, le=1, description="LR multiplier reached at the end of stage 1")
    stage2_start_ratio: float = Field(
        2 / 3, gt=0, le=1, description="LR multiplier right after the split (training tips, 700M: 1.5e-3 -> 1e-3)"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="LR multiplier at the last step")
    weight_decay_shape: Literal["constant", "cosine"] = Field(
        "constant", description="stage-1 weight decay: constant train.weight_decay, or cosine from it to 0 at the split"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "BitNetTwoStageConfig":
        if not self.min_lr_ratio <= self.stage2_start_ratio <= self.stage1_end_ratio:
            raise ValueError("need min_lr_ratio <= stage2_start_ratio <= stage1_end_ratio (stage 2 decays more sharply)")
        return self


class TwoStageSchedule(Schedule):
    """step -> LR multiplier, plus weight_decay_multiplier(step) and describe(step) for the trainer."""

    def __init__(self, cfg: BitNetTwoStageConfig, total_steps: int):
        self.cfg, self.total = cfg, total_steps
        self.warm = min(cfg.warmup_steps, max(0, total_steps - 1))
        self.split = min(max(self.warm, at_step(cfg.split_fraction, total_steps)), max(self.warm, total_steps - 1))

    def stage(self, step: int) -> int:
        return 1 if step < self.split else 2

    def __call__(self, step: int) -> float:
        c = self.cfg
        if step < self.warm:
            return (step + 1) / (self.warm + 1)
        if step < self.split:
            progress = (step - self.warm) / max(1, self.split - self.warm)
            return 1.0 - (1.0 - c.stage1_end_ratio) * progress
        progress = min(1.0, (step - self.split) / max(1, self.total - 1 - self.split))
        return c.stage2_start_ratio - (c.stage2_start_ratio - c.min_lr_ratio) * progress

    def weight_decay_multiplier(self, step: int) -> float:
        if self.stage(step) == 2:
            return 0.0
        if self.cfg.weight_decay_shape == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * step / max(1, self.split)))

    def describe(self, step: int) -> dict[str, float]:
        return {"lr_stage": self.stage(step), "wd_multiplier": self.weight_decay_multiplier(step)}


@SCHEDULES.register("bitnet_two_stage", config=BitNetTwoStageConfig)
def bitnet_two_stage(cfg: BitNetTwoStageConfig, total_steps: int) -> TwoStageSchedule:
    return TwoStageSchedule(cfg, total_steps)
