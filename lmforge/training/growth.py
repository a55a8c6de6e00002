"""What a stage does once, on entering it in a live run: grow the model's depth, give it a fresh head, and back up
the blocks the previous stage trained (seed 004). A resume into the middle of a stage does none of it: the
checkpoint already holds the grown model.

Growth methods (the model is built at full depth; the blocks above `depth` wait untrained):
- `random`: the new blocks keep their initialisation (zero-layer progressive training, arXiv 2511.04981);
- `copy`: new block i copies trained block i mod old_depth (one-layer progressive training copies its one layer);
- `zero`: random new blocks with their output projections (`c_proj`) zeroed, so each starts as the identity on
  the residual stream and the grown model computes exactly what the shallow one did (function preserving);
- `midas`: MIDAS (Saunshi et al. 2024, arXiv 2409.19044): the middle group of `block_size` layers is duplicated
  in place (the groups above it move up one), once per group of depth added.
Copied blocks take their optimizer state (Adam moments, step) with them, so a moved block trains on as before.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, get_args

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from lmforge.config import GrowthConfig
from lmforge.protocols import LayerwiseModel, Optimizer
from lmforge.training.optim import OptimizerChain

GROWTH_METHODS = get_args(GrowthConfig.model_fields["method"].annotation)  # one home: the preset schema


def _state_tables(optimizer: Optimizer, p: torch.Tensor) -> Iterator[dict]:
    members = optimizer.optimizers if isinstance(optimizer, OptimizerChain) else [optimizer]
    for member in members:
        if any(q is p for g in member.param_groups for q in g["params"]):
            yield member.state


@torch.no_grad()
def copy_block(model: LayerwiseModel, dst: int, src: int, optimizer: Optimizer | None) -> None:
    """blocks[dst] := blocks[src], weights, buffers and optimizer state."""
    source, target = model.blocks[src], model.blocks[dst]
    for (_, q), (_, p) in zip(source.named_parameters(), target.named_parameters()):
        p.copy_(q)
        if optimizer is None:
            continue
        for table in _state_tables(optimizer, p):
            if q in table:
                table[p] = copy.deepcopy(table[q])
            else:
                table.pop(p, None)
    for (_, q), (_, p) in zip(source.named_buffers(), target.named_buffers()):
        p.copy_(q)


def midas_moves(old_depth: int, new_depth: int, block_size: int) -> list[tuple[int, int]]:
    """(dst, src) block copies, in order, that grow `old_depth` to `new_depth` by MIDAS middle-group duplication."""
    if old_depth % block_size or new_depth % block_size or old_depth < block_size:
        raise ValueError(f"midas grows by groups of {block_size} layers from at least one group; "
                         f"{old_depth} -> {new_depth} layers is not that")
    moves, depth = [], old_depth
    while depth < new_depth:
        middle = (depth // block_size) // 2  # the group duplicated (group 0 of a one-group model)
        start = (middle + 1) * block_size
        moves += [(i + block_size, i) for i in reversed(range(start, depth))]  # the groups above move up one group
        moves += [(start + j, middle * block_size + j) for j in range(block_size)]  # the copy sits right above the original
        depth += block_size
    return moves


@torch.no_grad()
def grow(model: LayerwiseModel, optimizer: Optimizer | None, method: str, old_depth: int, new_depth: int, block_size: int = 1) -> None:
    """Initialise blocks old_depth..new_depth-1 for the deeper model (see the module docstring)."""
    if new_depth <= old_depth:
        raise ValueError(f"growth needs a deeper stage: depth {old_depth} -> {new_depth}")
    if method == "midas":
        for dst, src in midas_moves(old_depth, new_depth, block_size):
            copy_block(model, dst, src, optimizer)
    elif method == "copy":
        if old_depth == 0:
            raise ValueError("growth 'copy' needs at least one trained block to copy (a zero-layer model grows with 'random' or 'zero')")
        for i in range(old_depth, new_depth):
            copy_block(model, i, i % old_depth, optimizer)
    elif method == "zero":
        for i in range(old_depth, new_depth):
            projections = [p for n, p in model.blocks[i].named_parameters() if n.rsplit(".", 2)[-2:-1] == ["c_proj"]]
            if not projections:
                raise ValueError(f"growth 'zero' found no c_proj output projection in block {i}")
            for p in projections:
                p.zero_()
    elif method != "random":
        raise ValueError(f"growth method {method!r}; allowed: {', '.join(GROWTH_METHODS)}")


def fresh_head(model: LayerwiseModel, optimizer: Optimizer | None) -> None:
    """The model's head (final norm and LM head) re-initialised, its optimizer state dropped: a stage's own head."""
    for p in model.reset_head():
        if optimizer is not None:
            for table in _state_tables(optimizer, p):
                table.pop(p, None)


def write_backup(model: nn.Module, names: list[str], path: Path | None) -> None:
    """fp32 copies of the parameters `names` as safetensors at `path` (written to a temporary file, then renamed);
    under FSDP every process gathers, the one given a path writes."""
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    state = {}
    for n in names:
        p = params[n].detach()
        if isinstance(p, DTensor):  # an FSDP shard: gathered (a collective, so every process calls this)
            p = p.full_tensor()
        state[n] = p.float().cpu().contiguous()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
