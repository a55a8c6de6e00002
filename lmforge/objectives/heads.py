"""Modules an objective attaches to the model before the optimizer is built, so they train and checkpoint with it."""
from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The raw module under DDP (`.module`) and torch.compile (`._orig_mod`), where attached heads live."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@torch.no_grad()
def hidden_size(model: torch.nn.Module) -> int:
    """Width of `ModelOutput.hidden_states`, from a one-token forward (works for every registered arch)."""
    was_training = model.training
    model.eval()  # no dropout: the probe draws nothing from the RNG, so seeded runs stay reproducible
    device = next(model.parameters()).device
    width = model(torch.zeros(1, 1, dtype=torch.long, device=device)).hidden_states.shape[-1]
    model.train(was_training)
    return int(width)


def attach_head(model: torch.nn.Module, name: str, out_features: int) -> torch.nn.Linear:
    """A Linear(hidden -> out_features) registered as `model.<name>` (kept if already there, e.g. on a second bind)."""
    existing = getattr(model, name, None)
    if isinstance(existing, torch.nn.Linear) and existing.out_features == out_features:
        return existing
    param = next(model.parameters())
    head = torch.nn.Linear(hidden_size(model), out_features).to(device=param.device, dtype=param.dtype)
    model.add_module(name, head)
    return head
