"""Adaptive source reweighting (`data.adaptive`): sources the model currently finds harder are drawn more often.

Every `adaptive_interval_tokens` trained tokens, each source's target weight is its base weight times its
mean per-sequence loss over the interval divided by the mean of those losses (higher loss -> higher
weight; seed 002's code had the sign backwards, see ../shared/CORRECTIONS.md). The weight then moves
toward the target by an EMA, new = s * old + (1 - s) * target, and is clamped to [min, max]. A source
not seen in an interval keeps its weight.

The weights live in the training process in a shared-memory tensor created before the DataLoader
starts its workers; workers read it at every draw, so an update reaches them without restarting.
With adaptive on, every mix mode draws documents by these weights (round_robin and sequential become
weighted draws, starting from equal weights). Because workers prefetch, the step at which a worker first
sees new weights depends on timing, so an adaptive run resumes with the saved weights but is not
batch-for-batch identical to the uninterrupted run.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from lmforge.config_base import Section


class AdaptiveConfig(Section):
    """Seed 002's knobs, under `data.adaptive`."""

    adaptive_interval_tokens: int = Field(50_000, ge=1, description="trained tokens between weight updates")
    adaptive_min_weight: float = Field(0.1, gt=0, description="lower clamp of a source's weight (weights are relative; base = 1)")
    adaptive_max_weight: float = Field(10.0, gt=0, description="upper clamp of a source's weight")
    adaptive_smoothing: float = Field(0.5, ge=0, lt=1, description="EMA factor: share of the old weight kept at each update")

    @model_validator(mode="after")
    def _clamp_order(self) -> "AdaptiveConfig":
        if self.adaptive_min_weight > self.adaptive_max_weight:
            raise ValueError("data.adaptive.adaptive_min_weight must be <= adaptive_max_weight")
        return self


class AdaptiveWeights:
    """The main process's per-source loss accounting and the shared weight tensor the workers' mixers read."""

    def __init__(self, cfg: AdaptiveConfig, names: list[str], base: list[float] | None = None):
        self.cfg, self.names = cfg, names
        n = len(names)
        self.base = torch.tensor(base if base is not None else [1.0] * n, dtype=torch.float64)
        self.weights = self.base.clamp(cfg.adaptive_min_weight, cfg.adaptive_max_weight).share_memory_()
        self.loss_sum = torch.zeros(n, dtype=torch.float64)
        self.count = torch.zeros(n, dtype=torch.float64)
        self.tokens = 0
        self.last_loss = torch.full((n,), float("nan"), dtype=torch.float64)
        self.updates = 0

    def observe(self, source_ids: torch.Tensor, losses: torch.Tensor, tokens: int) -> None:
        """Add a micro-batch's per-sequence losses (B,) under their source ids (B,); update when the interval is full."""
        ids = source_ids.detach().to("cpu", torch.long)
        values = losses.detach().to("cpu", torch.float64)
        finite = torch.isfinite(values)
        self.loss_sum.index_add_(0, ids[finite], values[finite])
        self.count.index_add_(0, ids[finite], torch.ones_like(values[finite]))
        self.tokens += tokens
        if self.tokens >= self.cfg.adaptive_interval_tokens:
            self.update()

    def update(self) -> None:
        seen = self.count > 0
        if seen.any():
            mean = self.loss_sum[seen] / self.count[seen]
            self.last_loss[seen] = mean
            target = self.weights.clone()
            target[seen] = self.base[seen] * mean / mean.mean().clamp_min(1e-12)
            s = self.cfg.adaptive_smoothing
            new = (s * self.weights + (1 - s) * target).clamp(self.cfg.adaptive_min_weight, self.cfg.adaptive_max_weight)
            self.weights.copy_(new)  # in place: the workers hold this storage
            self.updates += 1
        self.loss_sum.zero_()
        self.count.zero_()
        self.tokens = 0

    def metrics(self) -> dict[str, float]:
        """`weight/<source>` always, `loss/<source>` once a source has a measured interval."""
        out = {f"weight/{name}": float(w) for name, w in zip(self.names, self.weights)}
        out.update({f"loss/{name}": float(v) for name, v in zip(self.names, self.last_loss) if not math.isnan(v)})
        return out

    def state_dict(self) -> dict:
        return {
            "weights": self.weights.tolist(), "loss_sum": self.loss_sum.tolist(), "count": self.count.tolist(),
            "tokens": self.tokens, "last_loss": self.last_loss.tolist(), "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.weights.copy_(torch.tensor(state["weights"], dtype=torch.float64))
        self.loss_sum = torch.tensor(state["loss_sum"], dtype=torch.float64)
        self.count = torch.tensor(state["count"], dtype=torch.float64)
        self.tokens = int(state["tokens"])
        self.last_loss = torch.tensor(state["last_loss"], dtype=torch.float64)
        self.updates = int(state["updates"])
