"""The Forge Controller (seed 000): the weight α of the forge loss's regularizers over a run.

Registered in ALPHA_SCHEDULES, not among the LR schedules: it is built like one
(`ALPHA_SCHEDULES.get("forge_controller")(cfg, total_steps)`) but returns α itself,
a loss weight, so it is an objective's `controller` and never a `train.lr_schedule`.

Phases, with `step` the 0-based optimizer step:
  warm-up     step < warmup:                α = 0 (plain cross-entropy)
  compaction  warmup <= step < compaction_end: α jumps to `start`, then rises
              linearly toward `peak` (reached at compaction_end)
  annealing   step >= compaction_end:       α = max(floor, peak * (1 - progress)),
              progress going 0 -> 1 over the rest of the run
The public code fixes start = 1, peak = 30, floor = 1, warm-up 4000 steps and
compaction_end at 70% of the run. At α = 30 the regularizers (up to
30·(0.15·RMS(h) + 0.40·2)) dwarf a cross-entropy of 1-2 nats, so the default
peak here is 1 with start and floor at a tenth of it; the seed's numbers are
one preset away (`{"warmup": 4000, "start": 1, "peak": 30, "floor": 1}`).
"""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, model_validator

from lmforge.config_base import Section
from lmforge.registry import ALPHA_SCHEDULES
from lmforge.run_point import RunPoint, at_step, check_run_point

Boundary = RunPoint  # an int counts optimizer steps, a float is a fraction of the run


class ForgeControllerConfig(Section):
    """α's phase boundaries and levels. A boundary written as an int (4000) is a step, as a float (0.7) a fraction of the run."""

    name: Literal["forge_controller"] = "forge_controller"
    warmup: Boundary = Field(0.05, ge=0, description="end of the α = 0 warm-up: steps (int) or fraction of the run (float)")
    compaction_end: Boundary = Field(0.7, ge=0, description="end of compaction, start of annealing: steps (int) or fraction (float); seed 0.7")
    start: float = Field(0.1, ge=0, description="α right after warm-up (seed: 1)")
    peak: float = Field(1.0, ge=0, description="α at the end of compaction (seed: 30, which swamps cross-entropy)")
    floor: float = Field(0.1, ge=0, description="α never anneals below this (seed: 1)")

    @model_validator(mode="after")
    def _check(self) -> "ForgeControllerConfig":
        check_run_point(self.warmup, "warmup")
        check_run_point(self.compaction_end, "compaction_end")
        if type(self.warmup) is type(self.compaction_end) and self.warmup > self.compaction_end:
            raise ValueError(f"warmup ({self.warmup}) must not come after compaction_end ({self.compaction_end})")
        return self


def resolve_boundary(value: Boundary, total_steps: int) -> int:
    """A boundary as a step (lmforge.run_point.at_step: a fraction is rounded; the seed floored, int(total * 0.7))."""
    return at_step(value, total_steps)


@ALPHA_SCHEDULES.register("forge_controller", config=ForgeControllerConfig)
def forge_controller(cfg: ForgeControllerConfig, total_steps: int) -> Callable[[int], float]:
    """α(step) for a run of `total_steps` optimizer steps (returns α, not an LR multiplier)."""
    warm = resolve_boundary(cfg.warmup, total_steps)
    end = resolve_boundary(cfg.compaction_end, total_steps)
    if warm > end:
        raise ValueError(f"forge_controller: warm-up ends at step {warm}, after compaction ends at step {end} (run of {total_steps} steps)")
    compaction = max(1, end - warm)
    anneal = max(1, total_steps - end)

    def fn(step: int) -> float:
        if step < warm:
            return 0.0
        if step < end:
            return cfg.start + (cfg.peak - cfg.start) * (step - warm) / compaction
        return max(cfg.floor, cfg.peak * (1.0 - (step - end) / anneal))

    return fn
