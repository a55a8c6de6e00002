"""Who writes a checkpoint, and when: now, in the training thread, or in one background thread (`train.async_save`).

An async save snapshots the weights and the train state into host memory (the only part that blocks the loop),
then writes the very same slot files, through the very same rotation, from a background thread: a kill during
the write leaves every earlier slot whole, as a sync save does. One write is in flight at a time; the next save,
a rollback, and the end of the run wait for it, and a failed background write is raised there (CheckFreq's
snapshot-then-persist split, Mohan et al. 2021; torch.distributed.checkpoint.async_save does the same for DCP).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from lmforge.runtime import Runtime
from lmforge.training.checkpoint import CheckpointManager, CheckpointWriteError, atomic_torch_save, unique_state_dict
from lmforge.training.fsdp import save_sharded


def snapshot(value: Any) -> Any:
    """A host-memory copy of every tensor in a (nested) state, so training can go on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


class CheckpointWriter:
    """Writes slots with the run's extras (the legacy weights mirror, milestone pruning), sync or in the background."""

    def __init__(self, manager: CheckpointManager, train_cfg: Any, run_dir: Path, runtime: Runtime | None = None):
        self.manager, self.cfg, self.run_dir = manager, train_cfg, run_dir
        self.runtime = runtime
        self.background = bool(train_cfg.async_save)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # whatever ended the background write, raised at the next wait()

    def save_run(self, slot: str, model: torch.nn.Module, optimizer: Any, grad_filters: list, state: dict[str, Any],
                 meta: dict[str, Any]) -> None:
        """Called on every rank: FSDP writes each rank's shards (training/fsdp.py); otherwise rank 0 writes the slot
        (now or in the background) and every rank learns whether it failed (CheckpointWriteError on all)."""
        rt = self.runtime
        if rt is not None and rt.sharded:
            written = save_sharded(self.manager, rt, slot, model, optimizer, grad_filters, state, meta)
            if written and slot.startswith(self.cfg.milestone_prefix):
                self.manager.prune(self.cfg.milestone_prefix, self.cfg.keep_milestones)
            return
        failure = None
        if rt is None or rt.is_main:
            try:
                self.save(slot, unique_state_dict(model), state, meta)
            except CheckpointWriteError as err:
                failure = str(err)
        failure = rt.broadcast_object(failure) if rt is not None else failure  # also the barrier: no rank runs ahead
        if failure:
            raise CheckpointWriteError(failure)

    def save(self, slot: str, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Write now, or snapshot and write in the background; raises an earlier background write's failure."""
        self.wait()
        if not self.background:
            self._write(slot, weights, state, meta)
            return
        weights, state = snapshot(weights), snapshot(state)
        self._thread = threading.Thread(target=self._write_catching, args=(slot, weights, state, meta),
                                        name=f"lmforge-save-{slot}", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise what made it fail (CheckpointWriteError for a
        full or read-only disk, any other error as itself), once, in the training thread."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_catching(self, slot: str, weights: dict, state: dict, meta: dict) -> None:
        try:
            self._write(slot, weights, state, meta)
        except Exception as err:  # noqa: BLE001 - a thread's exception is otherwise only printed; the loop must see it
            self._error = err

    def _write(self, slot: str, weights: dict, state: dict, meta: dict) -> None:
        cfg = self.cfg
        written = self.manager.save(slot, weights, state, meta)  # None: refused, non-finite values
        if written and slot == "rolling" and cfg.legacy_weights_file:
            atomic_torch_save(weights, self.run_dir / cfg.legacy_weights_file)
        if written and slot.startswith(cfg.milestone_prefix):
            self.manager.prune(cfg.milestone_prefix, cfg.keep_milestones)
