"""What every objective receives besides the model and the batch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lmforge.config_base import Section


class ReservingObjectiveConfig(Section):
    """An objective config whose objective needs token ids beyond the tokenizer's: a [MASK] id for the masked
    objectives. The run's vocabulary grows by `reserved_ids`, and those ids are the last ones (mask = vocab - 1)."""

    reserved_ids: ClassVar[int] = 1


@dataclass
class StepContext:
    """Loop facts an objective may need (schedules like a forge alpha read `step`)."""

    step: int
    total_steps: int
    scalars: dict[str, float] = field(default_factory=dict)
