"""Objectives: `(model, batch, ctx) -> (loss, metrics)`, registered by name."""
from lmforge.objectives import clm, forge, python_loss  # noqa: F401  (importing registers clm, forge, python)
from lmforge.objectives import classification, distill, multitask  # noqa: F401  (seed 001's supervised objectives)
from lmforge.objectives import masked  # noqa: F401  (mlm, mask_diffusion: StackWise / seed 004)
from lmforge.objectives.base import StepContext
from lmforge.objectives.forge import compute_forge_loss

__all__ = ["StepContext", "compute_forge_loss"]
