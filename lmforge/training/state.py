"""Capture and restore everything besides weights that an exact resume needs."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain containers (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": np_state[1].tolist(), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved once per storage: keys missing only because they are tied aliases are fine."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"checkpoint has weights this model lacks: {unexpected[:5]}")
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    tensors = {**params, **buffers}
    loaded_ptrs = {tensors[k].data_ptr() for k in state if k in tensors}
    truly_missing = [k for k in missing if k not in tensors or tensors[k].data_ptr() not in loaded_ptrs]
    if truly_missing:
        raise RuntimeError(f"checkpoint lacks weights this model needs: {truly_missing[:5]}")


def gather_ranks(runtime: Any, local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's `local` (RNG, data position), gathered onto each rank in rank order (one entry without DDP)."""
    if not runtime.distributed:
        return [local]
    import torch.distributed as dist

    per_rank: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(per_rank, local)
    return per_rank
