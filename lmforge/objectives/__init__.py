"""Objectives: `(model, batch, ctx) -> (loss, metrics)`, registered by name."""
from lmforge.objectives import clm  # noqa: F401
from lmforge.objectives.base import StepContext

__all__ = ["StepContext"]
