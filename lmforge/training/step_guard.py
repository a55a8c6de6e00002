"""Which steps may reach the weights: a finite loss and gradient norm on every rank, and optionally no spike.

A step that fails is skipped whole: no optimizer step, no optimizer state, no gradient-filter state, no
adaptive-mixing update. The check costs one gradient-norm pass (free when clipping is on: the clip reuses it)
and one small all-reduce plus one host sync per step, as fp16's GradScaler already pays.

Spikes follow OLMo-core's SkipStepOptimizer: z-scores of the loss and of the gradient norm against the last
`window` steps (at least `min_history` of them), with two differences: only rises count (a sudden drop is
never harmful), and non-finite values never enter the window.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch.distributed.tensor import DTensor

from lmforge.runtime import Runtime


@dataclass(frozen=True)
class Verdict:
    """`apply`: let the optimizer step (fp16's scaler may still skip an overflow); `skip_reason`: why not."""

    apply: bool
    skip_reason: str | None
    loss: float
    grad_norm: float


def global_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor: under FSDP the norm of sharded gradients is a DTensor, already reduced
    over the shards (the same value on every process), so its full value is read out."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class SpikeWindow:
    """The last `window` finite values of one signal; `is_spike(v)` once `min_history` of them are in."""

    def __init__(self, window: int, sigma: float, min_history: int):
        self.sigma, self.min_history = sigma, min_history
        self.values: deque[float] = deque(maxlen=window)

    def z_score(self, value: float) -> float | None:
        if len(self.values) < self.min_history:
            return None
        n = len(self.values)
        mean = sum(self.values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / (n - 1))
        return (value - mean) / std if std > 0 else (0.0 if value <= mean else math.inf)

    def push(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(value)


class StepGuard:
    """Counts skipped steps and the current run of consecutive bad ones (the trainer rolls back on a long run)."""

    def __init__(self, skip_nonfinite: bool, spikes: Any | None, runtime: Runtime):
        self.skip_nonfinite = skip_nonfinite
        self.spike_cfg = spikes
        self.runtime = runtime
        self.skipped_steps = 0
        self.consecutive_bad = 0
        self.rollbacks = 0
        self.rollbacks_in_a_row = 0  # since the last good step
        self.reset_window()

    @property
    def active(self) -> bool:
        return self.skip_nonfinite or self.spike_cfg is not None

    def reset_window(self) -> None:
        """A new stage (objective, data) starts a new window: its loss scale is not the last stage's."""
        cfg = self.spike_cfg
        self.windows = None if cfg is None else {
            name: SpikeWindow(cfg.window, cfg.sigma, cfg.min_history) for name in ("loss", "grad_norm")
        }

    def grad_norm(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        """The global L2 norm of the (unscaled) gradients, as clip_grad_norm_ computes it."""
        grads = [p.grad for p in parameters if p.grad is not None]
        return global_norm(torch.nn.utils.get_total_norm(grads)) if grads else torch.zeros((), device=self.runtime.device)

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor, scaler_enabled: bool) -> Verdict:
        """The same verdict on every rank: rank-mean loss and grad norm (NaN if any rank has one), one host sync.

        Under fp16 loss scaling a non-finite gradient with a finite loss is an overflow: the scaler skips that
        step and lowers its scale, as it always has, so it is not counted here.
        """
        both = self.runtime.all_reduce_mean_tensor(torch.stack([loss.float(), grad_norm.float()]))
        loss_value, norm_value = both.tolist()
        reason = None
        if self.skip_nonfinite and not math.isfinite(loss_value):
            reason = f"loss is {loss_value}"
        elif self.skip_nonfinite and not math.isfinite(norm_value) and not scaler_enabled:
            reason = f"grad norm is {norm_value}"
        elif self.windows is not None and math.isfinite(norm_value):
            for name, value in (("loss", loss_value), ("grad_norm", norm_value)):
                z = self.windows[name].z_score(value)
                if z is not None and z > self.spike_cfg.sigma:
                    reason = f"{name} spike: {value:.4g} is {z:.1f} std above the last {len(self.windows[name].values)} steps"
                    break
            for name, value in (("loss", loss_value), ("grad_norm", norm_value)):
                self.windows[name].push(value)  # spikes too (as OLMo-core), so a lasting shift becomes the new normal
        if reason is None:
            self.consecutive_bad = self.rollbacks_in_a_row = 0
            return Verdict(True, None, loss_value, norm_value)
        self.skipped_steps += 1
        self.consecutive_bad += 1
        return Verdict(False, reason, loss_value, norm_value)

    def rolled_back(self) -> None:
        self.rollbacks += 1
        self.rollbacks_in_a_row += 1
        self.consecutive_bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps, "consecutive_bad": self.consecutive_bad,
            "rollbacks": self.rollbacks, "rollbacks_in_a_row": self.rollbacks_in_a_row,
            "windows": None if self.windows is None else {k: list(w.values) for k, w in self.windows.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_bad = int(state["consecutive_bad"])
        self.rollbacks, self.rollbacks_in_a_row = int(state["rollbacks"]), int(state["rollbacks_in_a_row"])
        if self.windows is not None and state.get("windows"):
            for name, values in state["windows"].items():
                self.windows[name].values.clear()
                self.windows[name].values.extend(values)
