"""`grokfast_phases`: seed 001's phase-aware LR schedule. The seed's idea, not the Grokfast paper's.

The paper (Lee et al. 2024) trains with a constant LR after a 10-step warm-up;
the gradient filter alone does the accelerating. Seed 001 adds four phases:

    step < warmup_end            linear warm-up to 1
    warmup_end <= step < acceleration_end      acceleration_multiplier (seed: x5)
    acceleration_end <= step < consolidation_end  consolidation_multiplier (seed: x0.2)
    consolidation_end <= step    cosine from refinement_multiplier (seed: 1, "standard")
                                 to min_lr_ratio at refinement_end, then min_lr_ratio

Seed defaults: 1000 / 6000 / 8000 steps, then 10,000 cosine steps (refinement_end 18000).
Two departures from the seed's code, both to keep the LR sane: its cosine has no
end (past 10,000 steps `cos` climbs back to the full LR), so here it holds at
`min_lr_ratio`; and its warm-up starts at LR 0 (`step / warmup`), here at
1/(warmup+1) like lmforge's other schedules, so no step is wasted.

With `unit: "fraction"` the four boundaries are fractions of the run's steps.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from lmforge.config_base import Section
from lmforge.registry import SCHEDULES
from lmforge.run_point import at_step
from lmforge.training.schedules import Schedule

PHASES = ("warmup", "acceleration", "consolidation", "refinement")


class GrokfastPhasesConfig(Section):
    name: Literal["grokfast_phases"] = "grokfast_phases"
    unit: Literal["steps", "fraction"] = Field("steps", description="boundaries in optimizer steps, or as fractions of the run")
    warmup_end: float = Field(1000, ge=0, description="end of the linear warm-up (seed: 1000 steps)")
    acceleration_end: float = Field(6000, ge=0, description="end of the high-LR phase (seed: 6000 steps)")
    consolidation_end: float = Field(8000, ge=0, description="end of the low-LR phase (seed: acceleration_end + 2000)")
    refinement_end: float = Field(18000, ge=0, description="where the cosine reaches min_lr_ratio (seed: consolidation_end + 10000)")
    acceleration_multiplier: float = Field(5.0, gt=0, description="LR multiplier while accelerating (seed: 5)")
    consolidation_multiplier: float = Field(0.2, gt=0, description="LR multiplier while consolidating (seed: 0.2)")
    refinement_multiplier: float = Field(1.0, gt=0, description="start of the cosine (seed: 1, the base LR)")
    min_lr_ratio: float = Field(0.0, ge=0, description="end of the cosine and the LR after it (seed: 0)")

    @model_validator(mode="after")
    def _ordered(self) -> "GrokfastPhasesConfig":
        b = [self.warmup_end, self.acceleration_end, self.consolidation_end, self.refinement_end]
        if b != sorted(b):
            raise ValueError(f"need warmup_end <= acceleration_end <= consolidation_end <= refinement_end (got {b})")
        if self.unit == "fraction" and b[-1] > 1:
            raise ValueError(f"unit 'fraction' needs boundaries in [0, 1] (refinement_end is {b[-1]}); or use unit 'steps'")
        if self.unit == "steps" and any(x != int(x) for x in b):
            raise ValueError(f"unit 'steps' needs whole-step boundaries (got {b}); or use unit 'fraction'")
        return self


class GrokfastPhases(Schedule):
    """step (0-based) -> LR multiplier, with `describe(step)` for the metrics row."""

    def __init__(self, cfg: GrokfastPhasesConfig, total_steps: int):
        self.cfg = cfg
        points = (cfg.warmup_end, cfg.acceleration_end, cfg.consolidation_end, cfg.refinement_end)
        self.bounds = tuple(at_step(float(x) if cfg.unit == "fraction" else int(x), total_steps) for x in points)

    def phase(self, step: int) -> str:
        for name, end in zip(PHASES, self.bounds[:3]):
            if step < end:
                return name
        return PHASES[3]

    def __call__(self, step: int) -> float:
        c, (warm, accel, consol, refine) = self.cfg, self.bounds
        phase = self.phase(step)
        if phase == "warmup":
            return (step + 1) / (warm + 1)
        if phase == "acceleration":
            return c.acceleration_multiplier
        if phase == "consolidation":
            return c.consolidation_multiplier
        progress = min(1.0, (step - consol) / max(1, refine - consol))
        return c.min_lr_ratio + (c.refinement_multiplier - c.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def describe(self, step: int) -> dict[str, float | str]:
        """The phase name and the multiplier applied at `step` (lr / train.lr)."""
        return {"lr_phase": self.phase(step), "lr_phase_multiplier": self(step)}


@SCHEDULES.register("grokfast_phases", config=GrokfastPhasesConfig)
def grokfast_phases(cfg: GrokfastPhasesConfig, total_steps: int) -> GrokfastPhases:
    return GrokfastPhases(cfg, total_steps)
