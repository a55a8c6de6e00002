"""LR schedules, registered by name: `train.lr_schedule` (and a stage's own `lr_schedule`).

A schedule is built as `SCHEDULES.get(name)(config, total_steps)` and returns a `Schedule`: called with the
optimizer step (0-based) it gives a multiplier of the peak LR. Two more methods the trainer reads, with
neutral defaults here:
- `weight_decay_multiplier(step)`: scales each decayed group's weight decay (BitNet b1.58 drops it to 0 mid-run);
- `describe(step)`: extra fields for the metrics row (a phase name, say).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal

from pydantic import Field

from lmforge.config_base import Section
from lmforge.registry import SCHEDULES

ScheduleFn = Callable[[int], float]


class Schedule(ABC):
    """Base of every LR schedule: `__call__(step)` is the LR multiplier; the other two are optional extras."""

    @abstractmethod
    def __call__(self, step: int) -> float:
        """The LR multiplier at optimizer step `step` (0-based)."""

    def weight_decay_multiplier(self, step: int) -> float:
        return 1.0

    def describe(self, step: int) -> dict[str, Any]:
        return {}


class FunctionSchedule(Schedule):
    """A schedule given as a plain step -> multiplier function."""

    def __init__(self, fn: ScheduleFn):
        self.fn = fn

    def __call__(self, step: int) -> float:
        return self.fn(step)


class WarmupCosineConfig(Section):
    name: Literal["warmup_cosine"] = "warmup_cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR as a fraction of the peak (nanoGPT: min_lr / lr)")
    decay_steps: int | None = Field(None, ge=1, description="step at which the decay reaches min LR; None = the run's last step")


@SCHEDULES.register("warmup_cosine", config=WarmupCosineConfig)
def warmup_cosine(cfg: WarmupCosineConfig, total_steps: int) -> Schedule:
    """Linear warm-up then cosine decay to `min_lr_ratio`, exactly nanoGPT's `get_lr`."""
    decay = cfg.decay_steps or total_steps
    warm = cfg.warmup_steps

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if step > decay:
            return cfg.min_lr_ratio
        ratio = (step - warm) / max(1, decay - warm)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        return cfg.min_lr_ratio + coeff * (1.0 - cfg.min_lr_ratio)

    return FunctionSchedule(fn)


class ConstantConfig(Section):
    name: Literal["constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)


@SCHEDULES.register("constant", config=ConstantConfig)
def constant(cfg: ConstantConfig, total_steps: int) -> Schedule:
    """Linear warm-up, then the peak value for the rest of the run."""
    warm = cfg.warmup_steps
    return FunctionSchedule(lambda step: (step + 1) / (warm + 1) if step < warm else 1.0)


class WSDConfig(Section):
    name: Literal["wsd"] = "wsd"
    warmup_steps: int = Field(100, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1, description="share of the run spent decaying at the end")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    decay_shape: Literal["linear", "sqrt"] = Field("linear", description="sqrt = 1-sqrt cooldown (Hägele et al. 2024)")


@SCHEDULES.register("wsd", config=WSDConfig)
def warmup_stable_decay(cfg: WSDConfig, total_steps: int) -> Schedule:
    """Warm-up, a long constant phase, then a short decay (MiniCPM's WSD); resumable at any step."""
    warm = cfg.warmup_steps
    decay_start = max(warm, int(total_steps * (1 - cfg.decay_fraction)))
    decay_len = max(1, total_steps - decay_start)

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / decay_len)
        shape = progress if cfg.decay_shape == "linear" else math.sqrt(progress)
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - shape)

    return FunctionSchedule(fn)


def build_schedule(cfg: Section, total_steps: int) -> Schedule:
    return SCHEDULES.get(cfg.name)(cfg, total_steps)
