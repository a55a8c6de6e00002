"""Gradient filters: Grokfast (Lee et al. 2024, arXiv 2405.20233), run between backward and the optimizer step.

Grokfast treats each parameter's gradient over steps as a signal and adds back
an amplified low-pass copy of it: the slow component, which the paper links to
generalization, grows; the fast, overfitting component keeps its size.

    grokfast_ema   mu <- alpha*mu + (1-alpha)*g    (mu starts at the first gradient)
                   g  <- g + lamb*mu
    grokfast_ma    window <- last `window` raw gradients (this one included)
                   g  <- g + lamb*mean(window)     (warmup: do nothing until the window is full)

Note the sign: the filtered gradient *adds* the smoothed one. Seed 001's
`g + lamb*(g - ema)` amplifies the fast part instead (see CORRECTIONS.md).

The trainer builds a filter as `GRAD_FILTERS.get(name)(cfg, model)`, calls
`apply_grad_filters` (each `f(model)` in order) after backward and
`scaler.unscale_`, before clipping (skipping a step whose fp16 gradients
overflowed), and saves
`f.state_dict()` (plain dicts of tensors, ints and lists, so it loads with
`torch.load(weights_only=True)`).

Memory: EMA keeps one fp32 copy of every gradient (+1x the trainable
parameters); MA keeps `window` copies plus a running sum ((window+1)x), and
both are saved in every checkpoint.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from lmforge.config_base import Section
from lmforge.registry import GRAD_FILTERS


def _grads(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, grad) of every parameter that received a gradient this step; tied weights appear once."""
    return [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]


def grads_are_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite; one host sync."""
    grads = [g for _, g in _grads(model)]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


def apply_grad_filters(filters: list, model: nn.Module, skip_nonfinite: bool) -> None:
    """Run the filters on this step's (unscaled) gradients, in order.

    With `skip_nonfinite` (the trainer sets it when an fp16 GradScaler is on) a step whose gradients overflowed
    is left alone: the scaler skips that optimizer step, and an inf folded into a filter's state would poison
    every later step. Without a scaler nothing is checked, so the common path adds no host sync.
    """
    if not filters or (skip_nonfinite and not grads_are_finite(model)):
        return
    for f in filters:
        f(model)


class GrokfastEMAConfig(Section):
    """`grad_filters: [{"name": "grokfast_ema", "alpha": 0.98, "lamb": 2.0}]` (the paper's algorithmic-data setting)."""

    name: Literal["grokfast_ema"] = "grokfast_ema"
    alpha: float = Field(0.98, ge=0, lt=1, description="EMA momentum; the cutoff: alpha**N = 0.1 for an N-step timescale (0.98 ~ 100)")
    lamb: float = Field(2.0, ge=0, description="amplification of the slow (EMA) gradient added to the raw one; 0 = no-op")


@GRAD_FILTERS.register("grokfast_ema", config=GrokfastEMAConfig)
class GrokfastEMA:
    """Grokfast (EMA): adds `lamb` times an exponential moving average of past raw gradients."""

    def __init__(self, cfg: GrokfastEMAConfig, model: nn.Module | None = None):
        self.cfg = cfg
        self.mu: dict[str, torch.Tensor] = {}  # parameter name -> EMA of its raw gradient
        self.steps = 0

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        named = _grads(model)
        old = []  # (mu, g) of parameters with an EMA already; a new one starts at its gradient
        for name, g in named:
            mu = self.mu.get(name)
            if mu is None:
                self.mu[name] = g.detach().clone(memory_format=torch.contiguous_format)  # mu_1 = g_1
            else:
                if mu.device != g.device:  # state loaded from a checkpoint lands on the CPU
                    self.mu[name] = mu = mu.to(g.device)
                old.append((mu, g))
        if old:
            mus, gs = [m for m, _ in old], [g for _, g in old]
            torch._foreach_lerp_(mus, gs, 1.0 - self.cfg.alpha)  # mu + (1-a)(g - mu) = a*mu + (1-a)*g
        all_g = [g for _, g in named]
        torch._foreach_add_(all_g, [self.mu[n] for n, _ in named], alpha=self.cfg.lamb)  # g <- g + lamb*mu
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "mu": dict(self.mu)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.mu = dict(state["mu"])


class GrokfastMAConfig(Section):
    """`grad_filters: [{"name": "grokfast_ma", "window": 100, "lamb": 5.0}]` (the paper's algorithmic-data setting)."""

    name: Literal["grokfast_ma"] = "grokfast_ma"
    window: int = Field(100, ge=1, description="moving-average length in steps; memory grows with it (window gradient copies)")
    lamb: float = Field(5.0, ge=0, description="amplification of the windowed mean added to the raw gradient")
    warmup: bool = Field(True, description="leave gradients untouched until the window is full (the official code's default)")


class _Window:
    """A ring buffer of one parameter's last `window` raw gradients and their running sum.

    The sum is updated in O(1) per step (reading all `window` copies would cost more than the model's own
    step at small sizes) and recomputed exactly each time the ring wraps, so rounding cannot drift.
    """

    def __init__(self, buffer: torch.Tensor, total: torch.Tensor, pos: int, filled: int):
        self.buffer, self.total, self.pos, self.filled = buffer, total, pos, filled

    @classmethod
    def empty(cls, g: torch.Tensor, window: int) -> "_Window":
        return cls(g.new_zeros((window, *g.shape)), torch.zeros_like(g), 0, 0)

    def push(self, g: torch.Tensor) -> None:
        window = self.buffer.shape[0]
        slot = self.buffer[self.pos]
        if self.filled == window:
            self.total.sub_(slot)  # the oldest gradient leaves the window
        slot.copy_(g)
        self.total.add_(g)
        self.filled = min(window, self.filled + 1)
        self.pos = (self.pos + 1) % window
        if self.pos == 0:
            torch.sum(self.buffer[: self.filled], dim=0, out=self.total)

    def to(self, device: torch.device) -> "_Window":
        return _Window(self.buffer.to(device), self.total.to(device), self.pos, self.filled)


@GRAD_FILTERS.register("grokfast_ma", config=GrokfastMAConfig)
class GrokfastMA:
    """Grokfast-MA: adds `lamb` times the mean of the last `window` raw gradients (this step's included)."""

    def __init__(self, cfg: GrokfastMAConfig, model: nn.Module | None = None):
        self.cfg = cfg
        self.windows: dict[str, _Window] = {}
        self.steps = 0

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        named = _grads(model)
        for name, g in named:
            w = self.windows.get(name)
            if w is None:
                w = self.windows[name] = _Window.empty(g, self.cfg.window)
            elif w.buffer.device != g.device:
                w = self.windows[name] = w.to(g.device)
            w.push(g)  # the raw gradient, before it is modified below
            if not self.cfg.warmup or w.filled == self.cfg.window:
                g.add_(w.total, alpha=self.cfg.lamb / w.filled)  # g + lamb * mean(window)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The ring buffers as saved (a partial one trimmed to its filled rows), running sums and positions."""
        return {
            "steps": self.steps,
            "window": self.cfg.window,
            "slots": {
                n: {"buffer": w.buffer if w.filled == self.cfg.window else w.buffer[: w.filled].clone(), "total": w.total, "pos": w.pos}
                for n, w in self.windows.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["window"]) != self.cfg.window:
            raise ValueError(
                f"grokfast_ma: the checkpoint's window is {state['window']} but the preset says {self.cfg.window}; "
                "set grad_filters[].window back to resume, or start a new run"
            )
        self.steps = int(state["steps"])
        self.windows = {}
        for name, s in state["slots"].items():
            saved = s["buffer"]
            buffer = saved.new_zeros((self.cfg.window, *saved.shape[1:]))
            buffer[: saved.shape[0]] = saved
            self.windows[name] = _Window(buffer, s["total"].clone(), int(s["pos"]), int(saved.shape[0]))
