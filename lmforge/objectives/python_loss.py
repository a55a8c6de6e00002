"""The `python` objective: any loss function named by import path, called like `compute_forge_loss`.

The seed's "pluggable loss": a preset says
`{"name": "python", "path": "my_pkg.losses:my_loss"}` and the trainer runs that
function unchanged. It is called with the seed's keyword arguments
`logits, targets, h_states, embedding_layer, vocab_size, alpha`, plus
`ignore_index` if it declares that parameter (or **kwargs), plus `options`.
It returns `(loss, metrics)`; each metric (a number or 0-dim tensor) is logged
every step, and `alpha` is added when the function leaves it out. Targets hold
-100 (`ignore_index`) at padded positions.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, Field, field_validator

from lmforge.code_policy import may_import
from lmforge.config_base import Section
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms
from lmforge.objectives.forge import AlphaController, controller_field, unwrap_model, validate_controller
from lmforge.protocols import Objective
from lmforge.registry import OBJECTIVES


def import_function(path: str) -> Callable[..., Any]:
    """`package.module:function` -> the function; a ValueError that says what to fix otherwise."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"path {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {module_name!r} ({err}); install it, add its folder to PYTHONPATH, "
            "or run from its parent folder with `python -m lmforge`"
        ) from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{path!r} is not callable")
    return fn


class PythonLossConfig(Section):
    name: Literal["python"] = "python"
    path: str = Field(description="'package.module:function' with compute_forge_loss's signature, importable from sys.path")
    controller: Any = controller_field()
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the function (e.g. its coefficients)")

    @field_validator("path")
    @classmethod
    def _importable(cls, value: str) -> str:
        if may_import(value):  # refused unless the user trusts the preset's code (lmforge.code_policy)
            import_function(value)  # fail at preset validation, not at step 1
        return value

    @field_validator("controller")
    @classmethod
    def _controller(cls, value: Any) -> BaseModel:
        return validate_controller(value)


@OBJECTIVES.register("python", config=PythonLossConfig)
class PythonLoss(Objective):
    """Runs the model, computes α, and hands both to the user's function."""

    def __init__(self, cfg: PythonLossConfig):
        self.cfg = cfg
        self.fn = import_function(cfg.path)
        params = inspect.signature(self.fn).parameters
        self.pass_ignore_index = "ignore_index" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.controller = AlphaController(cfg.controller)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model(batch["input_ids"])
        alpha = self.controller(ctx)
        extra = {"ignore_index": IGNORE_INDEX} if self.pass_ignore_index else {}
        result = self.fn(
            logits=out.logits, targets=batch["labels"], h_states=out.hidden_states,
            embedding_layer=unwrap_model(model).get_input_embeddings(), vocab_size=out.logits.size(-1), alpha=alpha,
            **extra, **self.cfg.options,
        )
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            raise TypeError(f"loss function {self.cfg.path} must return (loss, metrics dict), got {type(result).__name__}")
        loss, metrics = result
        metrics = {"alpha": alpha, **metrics}
        return add_model_terms(loss, out, metrics), metrics

    def state_dict(self) -> dict[str, float]:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.controller.load_state_dict(state)
