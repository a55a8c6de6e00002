"""FSDP2 for any block-stack model, and its checkpoints through torch.distributed.checkpoint (DCP).

`shard_model` applies `fully_shard` to each block and then to the root (torchtitan's layout): a block's
parameters are all-gathered just before its forward and freed after it, gradients are reduce-scattered, and
each process keeps 1/world of the weights, gradients and optimizer state. With bf16 the policy computes in bf16
and reduces gradients in fp32 (`MixedPrecisionPolicy`); `train.fsdp_cpu_offload` keeps the shards in host memory.

A slot written under FSDP holds `shards/` (each process writes its own file, rank 0 the `.metadata`) with the
weights, the optimizer state and the gradient filters' state, all keyed by parameter name; `state.pt` (rank 0)
holds the rest, as for DDP. DCP records every tensor's global shape, so a slot loads on any number of processes:
a resume on another world size reshards on load. Rank 0 stages, fsyncs, lists and rotates the slot exactly as a
DDP save does, after every process has written (`CheckpointManager.begin_sharded` / `commit_sharded`). The run
dir must be one every process can read and write (a shared filesystem across nodes).
"""
from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from lmforge.protocols import BlockStack, GradientFilter
from lmforge.runtime import Runtime
from lmforge.training.checkpoint import (
    SHARDS_DIR, Checkpoint, CheckpointError, CheckpointManager, CheckpointWriteError, is_write_failure, nonfinite_run_state, read_slot, write_failure,
)


def shard_model(model: nn.Module, runtime: Runtime, cpu_offload: bool = False) -> None:
    """fully_shard each block, then the root, over all processes (in place: the parameters become DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not isinstance(model, BlockStack):
        raise ValueError(f"train.parallel 'fsdp': {type(model).__name__} has no `blocks` to shard")
    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if runtime.precision == "bf16" \
        else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=runtime.device.type == "cuda") if cpu_offload else OffloadPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)


def sharded_state(model: nn.Module, optimizer: Any, grad_filters: Sequence[GradientFilter]) -> dict[str, Any]:
    """What DCP writes: weights and optimizer state by parameter name (torch's get_state_dict), and the filters'."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state, "grad_filters": [f.state_dict() for f in grad_filters]}


def save_sharded(manager: CheckpointManager, runtime: Runtime, slot: str, model: nn.Module, optimizer: Any,
                 grad_filters: Sequence[GradientFilter], train_state: dict[str, Any], meta: dict[str, Any]) -> Path | None:
    """Every process: write its shards of `slot`; rank 0 then writes state.pt and meta.json and rotates.

    A state with inf/NaN on any process is refused on all (None, as CheckpointManager.save); a failed write
    (disk full, read-only) raises CheckpointWriteError on every process, the earlier slots whole.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = sharded_state(model, optimizer, grad_filters)
    bad = nonfinite_run_state(state["model"], state["optimizer"], state["grad_filters"])
    if runtime.all_reduce_mean(float(bool(bad))) > 0:  # any process
        if runtime.is_main:
            warnings.warn(f"step {meta.get('step')}: {slot} checkpoint not written: non-finite values"
                          f"{' in ' + ', '.join(bad[:3]) if bad else ' on another process'}; the older slots stay as they are", stacklevel=2)
        return None
    failure, staging = None, manager.staging(slot)
    if runtime.is_main:
        try:
            manager.begin_sharded(slot)
        except OSError as err:
            failure = str(write_failure(err, staging, "checkpoint slot"))
    failure = runtime.broadcast_object(failure)
    if failure is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # one process: "assuming the intent is to save in a single process"
                dcp.save(state, checkpoint_id=str(staging / SHARDS_DIR))
        except (Exception, CheckpointException) as err:  # DCP re-raises a process's write error on all (a BaseException)
            cause = next((e for e, _ in getattr(err, "failures", {}).values() if is_write_failure(e)), err)
            if not is_write_failure(cause):
                raise
            failure = str(write_failure(cause, staging, "checkpoint slot"))
    written = None
    if runtime.is_main and failure is None:
        try:
            written = manager.commit_sharded(slot, train_state, meta)
        except CheckpointWriteError as err:
            failure = str(err)
        except OSError as err:  # a rename of the rotation: the other processes must hear of it, not wait
            failure = str(write_failure(err, staging, "checkpoint slot"))
    failure = runtime.broadcast_object(failure)  # also the barrier: no process runs ahead of the rotation
    if failure:
        if runtime.is_main:
            shutil.rmtree(staging, ignore_errors=True)  # only ever a temporary name
        raise CheckpointWriteError(failure)
    return written


def _filter_states(slot: Path, model: nn.Module, count: int) -> list[dict[str, Any]]:
    """The filters' saved state, full tensors read on every process, then placed as the filters build them from
    sharded gradients: a tensor of a parameter's shape sharded like it (grokfast_ema's average, grokfast_ma's sum),
    a stack of such tensors replicated (grokfast_ma's window buffer: `new_zeros` on a DTensor replicates)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

    if count == 0:
        return []
    loaded = _load_state_dict_from_keys(keys={"grad_filters"}, checkpoint_id=str(slot / SHARDS_DIR))["grad_filters"]
    params = dict(model.named_parameters())

    def place(value: Any, p: torch.Tensor | None = None) -> Any:  # p: the parameter the nearest enclosing key names
        if isinstance(value, dict):
            return {k: place(v, params.get(k, p) if isinstance(k, str) else p) for k, v in value.items()}
        if isinstance(value, list):
            return [place(v, p) for v in value]
        if not isinstance(value, torch.Tensor) or p is None:
            return value
        if isinstance(p, DTensor) and tuple(value.shape) == tuple(p.shape):  # a per-parameter state: sharded like it
            return distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
        if isinstance(p, DTensor) and tuple(value.shape[1:]) == tuple(p.shape):  # a stack of them (grokfast_ma's
            return distribute_tensor(value.to(p.device), p.device_mesh, [Replicate()])  # window), replicated as built
        return value.to(p.device)

    states = loaded if isinstance(loaded, list) else [loaded[str(i)] for i in range(len(loaded))]
    return [place(s) for s in states]


def load_latest_sharded(manager: CheckpointManager, runtime: Runtime, model: nn.Module, optimizer: Any,
                        grad_filters: Sequence[GradientFilter]) -> Checkpoint | None:
    """Every process: the newest whole slot loaded into the (sharded) model, optimizer and filters; its state.pt
    in the returned Checkpoint. A slot that fails to verify, load, or holds inf/NaN is passed over with a warning."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    names = runtime.broadcast_object([p.name for _, p in manager.candidates()] if runtime.is_main else None)
    touched = False  # DCP loads into the live parameters: once a load is refused, only a later good slot may follow
    for name in names:
        path = manager.directory / name
        ok = None
        if runtime.is_main:
            try:
                ckpt = read_slot(path, weights=False)
                ok = "sharded" if ckpt.meta.get("format") == "dcp" else "not sharded"
            except CheckpointError as err:
                warnings.warn(f"checkpoint {name} is unusable, falling back to an older one: {err}", stacklevel=2)
        ok = runtime.broadcast_object(ok)
        if ok is None:
            continue
        if ok != "sharded":
            raise CheckpointError(f"checkpoint {name} was written without train.parallel 'fsdp'; resume it with the "
                                  "train.parallel it was trained with")
        ckpt = read_slot(path, verify_hash=False, weights=False)
        state = sharded_state(model, optimizer, [])
        touched = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # one process: "assuming the intent is to load in a single process"
                dcp.load({"model": state["model"], "optimizer": state["optimizer"]}, checkpoint_id=str(path / SHARDS_DIR))
        except CheckpointException as err:  # raised on every process alike
            if runtime.is_main:
                warnings.warn(f"checkpoint {name} is unusable, falling back to an older one: {err}", stacklevel=2)
            continue
        bad = nonfinite_run_state(state["model"], state["optimizer"], None)  # the filters' state is read below
        if runtime.all_reduce_mean(float(bool(bad))) > 0:  # any process
            if runtime.is_main:
                warnings.warn(f"checkpoint {name} is unusable, falling back to an older one: non-finite values", stacklevel=2)
            continue
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        for f, s in zip(grad_filters, _filter_states(path, model, len(grad_filters))):
            f.load_state_dict(s)
        return ckpt
    if touched:
        raise CheckpointError(f"no checkpoint in {manager.directory} is usable (see the warnings above); move it aside to start afresh")
    return None


def rederive_position(pipeline: Any, saved_ranks: list[dict[str, Any]], runtime: Runtime, seed: int, step: int) -> None:
    """Resume on another number of processes: where each process's data stream and RNG go on from.

    Each process reads its own shard of every source, so with another number of processes no saved stream
    continues. Every process starts its new stream at the stage's data start and skips the batches the saved
    processes drew, on average, per process (it reads and packs them: this takes time on a long run), so the run
    goes on at the same point of the same epoch (data.adaptive's weights are rank 0's). What is not kept: which
    documents come in which later batch (some of the epoch's documents come twice and others not at all until the
    next epoch), and the RNG streams (dropout, sampling), which are re-seeded from (train.seed, step, rank).
    """
    from lmforge.training.state import seed_everything

    consumed = sum(int(r["data"]["batches_consumed"]) for r in saved_ranks)
    skip = consumed // runtime.world_size
    start = {**pipeline.state_dict(), "readers": {}, "next_reader": 0, "batches_consumed": 0}  # the stage's data start
    if "adaptive" in saved_ranks[0]["data"]:  # data.adaptive's weights are one state shared by all processes
        start["adaptive"] = saved_ranks[0]["data"]["adaptive"]
    pipeline.load_state_dict(start)  # also after a rollback, when the pipeline has drawn batches already
    if runtime.is_main:
        print(f"resuming {len(saved_ranks)} processes' checkpoint on {runtime.world_size}: each process skips {skip:,} "
              "batches to the saved point of the data", file=sys.stderr)
    for _ in range(skip):
        next(pipeline)
    seed_everything(seed * 1_000_003 + step * 131 + runtime.rank)
