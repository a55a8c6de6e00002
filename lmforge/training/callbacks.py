"""Hooks into the loop for users and recipes; the loop calls every method of every callback."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.training.trainer import Trainer


@dataclass
class TrainResult:
    """What `fit()` returns (and `on_train_end` receives)."""

    run_dir: Path
    steps: int
    tokens: int
    final_loss: float | None
    last_val: dict[str, float] = field(default_factory=dict)
    best_val_loss: float | None = None
    stop_reason: str = "completed"
    elapsed: float = 0.0
    resumed_from: int | None = None


class Callback:
    """Override what you need; each method gets the trainer and plain-float metrics."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: "Trainer", step: int, metrics: dict[str, Any]) -> None: ...

    def on_save(self, trainer: "Trainer", step: int, slot: str) -> None: ...

    def on_train_end(self, trainer: "Trainer", result: "TrainResult") -> None: ...


class EarlyStopping(Callback):
    """Stop when `metric` (val_loss: lower is better; val_accuracy: higher) has not improved by `min_delta` for `patience` evaluations."""

    def __init__(self, patience: int, min_delta: float = 0.0, metric: str = "val_loss"):
        self.patience, self.min_delta, self.metric = patience, min_delta, metric
        self.sign = -1.0 if metric == "val_accuracy" else 1.0  # compare sign * value, lower is better
        self.best = float("inf")
        self.bad_evals = 0

    def on_eval(self, trainer: "Trainer", step: int, metrics: dict[str, Any]) -> None:
        if self.metric not in metrics:
            raise KeyError(f"early stopping watches {self.metric!r} but the evaluation reports only {sorted(metrics)}")
        value = self.sign * metrics[self.metric]
        if value < self.best - self.min_delta:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals >= self.patience:
                trainer.request_stop(f"early stopping: no {self.metric} improvement for {self.patience} evaluations")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]
