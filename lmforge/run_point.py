"""Where in a run: an int counts optimizer steps, a float in [0, 1] is a fraction of the run's steps.

One type and one resolver for every "from here on" a preset can say: stage ends (`until_step` / `until_fraction`),
the Forge Controller's phase boundaries, `grokfast_phases`' boundaries and the BitNet two-stage split. A fraction
resolves to `round(fraction * total_steps)` (Python's round).
"""
from __future__ import annotations

RunPoint = int | float


def check_run_point(value: RunPoint, field: str) -> RunPoint:
    """Raise ValueError for a point no run has: a negative one, or a float above 1 (meant as a step count?)."""
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value}")
    if isinstance(value, float) and value > 1:
        raise ValueError(f"{field} {value} is a float, so a fraction of the run, and must be <= 1; write an int for a step count")
    return value


def at_step(point: RunPoint, total_steps: int) -> int:
    """The point as a step count of a run of `total_steps` optimizer steps."""
    return point if isinstance(point, int) else round(point * total_steps)
