"""AdamW with nanoGPT's decay rule, fused where the backend has a fused kernel."""
from __future__ import annotations

import inspect

import torch

from lmforge.runtime import Runtime


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (dim >= 2: linear and embedding weights); never biases or norm gains."""
    if hasattr(model, "configure_optimizer_groups"):
        return model.configure_optimizer_groups(weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, train_cfg, runtime: Runtime) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, train_cfg.weight_decay) if g["params"]]
    for group in groups:  # a schedule's weight_decay_multiplier scales this, per group
        group["base_weight_decay"] = group["weight_decay"]
    kwargs = dict(lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)
    fused_ok = "fused" in inspect.signature(torch.optim.AdamW).parameters and runtime.fused_adamw_supported()
    if fused_ok and all(p.dtype.is_floating_point for g in groups for p in g["params"]):
        kwargs["fused"] = True  # one kernel for all params: ~9% faster per step on CPU (PERF-NOTES)
    return torch.optim.AdamW(groups, **kwargs)
