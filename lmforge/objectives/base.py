"""What every objective receives besides the model and the batch."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepContext:
    """Loop facts an objective may need (schedules like a forge alpha read `step`)."""

    step: int
    total_steps: int
    scalars: dict[str, float] = field(default_factory=dict)
