"""lmforge: one honest, fast, crash-safe training loop for language-model ideas."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

__version__ = "0.1.0"


def train(preset: "str | Path | dict[str, Any]", run_dir: "str | Path | None" = None, overrides: "dict[str, Any] | None" = None,
          callbacks: Iterable[Any] = (), trust_code: bool = False):
    """Train a preset (path, name in configs/, or dict) and return a TrainResult.

    `trust_code=True` lets a preset import the Python it names (objective `python`), as transformers' trust_remote_code.
    """
    from lmforge.config import load_preset
    from lmforge.training.trainer import train as _train

    return _train(load_preset(preset, overrides, trust_code=trust_code), run_dir, callbacks)


def create_training_pipeline(*args: Any, **kwargs: Any):
    """Seed 001's API: see lmforge.pipeline.create_training_pipeline (train with `await pipeline.train()`)."""
    from lmforge.pipeline import create_training_pipeline as _create

    return _create(*args, **kwargs)
