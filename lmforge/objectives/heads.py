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


def restore_heads(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Re-attach Linear heads an objective added in training (`<name>_head.weight` in `state`, absent from the bare arch),
    so a run trained with one (classification) loads for generation, evaluation or as a distillation teacher."""
    own = set(model.state_dict())
    for key, weight in state.items():
        name, _, leaf = key.partition(".")
        if leaf == "weight" and name.endswith("_head") and key not in own and weight.dim() == 2 and "." not in name:
            head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=f"{name}.bias" in state)
            model.add_module(name, head.to(dtype=weight.dtype))
