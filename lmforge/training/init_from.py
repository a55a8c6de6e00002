"""`train.init_from`: start a new run from existing weights (a Hugging Face folder or another lmforge run).

Applied only to a fresh run: the trainer's resume then overwrites the weights
from the run's own checkpoint when it has one. The preset's model must have the
same shapes as the source; zero-valued tensors the model lacks (the biases a
GPT-2 export adds to a bias-free model) are dropped, since they change nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.errors import PresetError
from lmforge.training.state import load_model_state


def source_state(spec: str) -> dict[str, torch.Tensor]:
    """Weights named by `spec`: "hf:DIR" (transformers Llama/GPT-2), "RUN_DIR" (newest slot), "RUN_DIR:SLOT" or a .safetensors file."""
    if spec.startswith("hf:"):
        from lmforge.export.hf_import import load_hf_state

        return load_hf_state(spec[3:])[1]
    if spec.endswith(".safetensors") and Path(spec).is_file():  # a weights file (the pipeline's model=nn.Module)
        from safetensors.torch import load_file

        return load_file(spec)
    from lmforge.inference import load_run

    path, slot = Path(spec), None
    if not (path / "preset.json").is_file() and ":" in spec:
        head, slot = spec.rsplit(":", 1)
        path = Path(head)
    return load_run(path, slot).model.state_dict()


def load_source(spec: str) -> dict[str, torch.Tensor]:
    """`source_state(spec)`, its errors as a PresetError naming the spec."""
    try:
        return source_state(spec)
    except (OSError, ValueError, RuntimeError) as err:
        raise PresetError(f"train.init_from {spec!r}: {err}") from err


def misfits(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(shapes that differ, weights the model lacks) of `state` against `model`."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or bool(v.count_nonzero())}
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    return wrong, [k for k in state if k not in own]


def init_weights_from(model: torch.nn.Module, spec: str, state: dict[str, torch.Tensor] | None = None) -> None:
    """Copy the weights named by `spec` (or its already loaded `state`) into `model`; a PresetError names any shape
    that differs."""
    state = load_source(spec) if state is None else state
    wrong, extra = misfits(model, state)
    if wrong or extra:
        raise PresetError(f"train.init_from {spec!r} does not fit the preset's model: "
                          f"shapes {wrong[:3]}, weights the model lacks {extra[:3]}")
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    try:
        with torch.no_grad():
            load_model_state(model, {k: v.to(own[k].dtype) for k, v in state.items()})
    except RuntimeError as err:
        raise PresetError(f"train.init_from {spec!r}: {err}") from err
