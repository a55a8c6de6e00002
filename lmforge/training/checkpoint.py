"""Crash-safe rolling checkpoints: `lm_current`, `lm_prev`, `lm_prev2`, and `best`.

A slot is a folder holding `model.safetensors` (weights), `state.pt` (optimizer,
schedule, RNG, data position, counters: loads with `torch.load(weights_only=True)`)
and `meta.json`, written last, which records the step and each file's size and
SHA-256. A slot without a matching `meta.json` is not a checkpoint. Under FSDP
(`train.parallel: fsdp`) the weights, optimizer and gradient-filter state are
instead in `shards/`, written by every process through torch.distributed.checkpoint
(meta `format: "dcp"`, see training/fsdp.py), and `state.pt` holds the rest.

Rotation never lowers the number of whole checkpoints on disk: the new slot is
written and fsynced under a temporary name first, the oldest slot is renamed
aside (not deleted) before the others shift, and it is deleted only once the
new `lm_current` is in place. Loading scans every slot name this module ever
writes, newest step first, and falls back past any slot that fails to verify.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

ROLLING = ("lm_current", "lm_prev", "lm_prev2")
BEST = "best"
_NEXT, _OLD = "lm_next", "lm_old"
MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"
SHARDS_DIR = "shards"  # FSDP slots: torch.distributed.checkpoint's files, one per process plus .metadata


class CheckpointError(RuntimeError):
    """A slot that cannot be trusted (missing file, wrong size or hash, unreadable)."""


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, read-only, permissions); the slots written before are whole."""


def is_write_failure(err: BaseException) -> bool:
    """OS write errors, and the ones torch.save and safetensors raise for them without an errno."""
    if isinstance(err, OSError):
        return True
    text = str(err)
    return type(err).__name__ == "SafetensorError" or (isinstance(err, RuntimeError) and (
        "inline_container" in text or "file write failed" in text or "PytorchStreamWriter" in text))


def write_failure(err: BaseException, target: Path, what: str) -> CheckpointWriteError:
    """One line: what could not be written where, why, and how much space is left there."""
    reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err).strip().splitlines()[-1]
    try:
        free = shutil.disk_usage(target if target.exists() else target.parent).free
        space = f"{free / 2**20:,.1f} MiB free there"
    except OSError:
        space = "free space unknown"
    hint = "make room or fix the permissions" if isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
        else "free some space"
    return CheckpointWriteError(f"cannot write {what} {target} ({reason}; {space}); the checkpoints written before are whole: "
                                f"{hint} and rerun the same command to resume")


@dataclass
class Checkpoint:
    slot: str
    path: Path
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen: dict[tuple, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state that hold an inf or NaN (of an FSDP state: in this
    process's shards)."""
    if isinstance(state, torch.Tensor):  # an FSDP DTensor is checked on this process's shard: no collective
        local = state.to_local() if isinstance(state, DTensor) else state
        return [prefix] if local.is_floating_point() and not bool(torch.isfinite(local).all()) else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]


def nonfinite_run_state(model_state: Any, optimizer_state: Any, grad_filter_states: Any) -> list[str]:
    """Names of the non-finite tensors in what a resume trains on: the weights, the optimizer state and the gradient
    filters' state (a Grokfast EMA holding NaN would put NaN into every later gradient)."""
    return (nonfinite_tensors(model_state) + nonfinite_tensors(optimizer_state or {}, "optimizer")
            + nonfinite_tensors(grad_filter_states or [], "grad_filters"))


def write_slot(directory: Path, model_state: dict[str, torch.Tensor] | None, train_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write one complete slot folder; `meta.json` goes last and marks it whole. `model_state` None: the folder
    already holds the weights (an FSDP slot's `shards/`, written by every process); they are fsynced and listed.

    A write that fails for lack of space or permission removes the half-written folder (it is only ever a
    temporary name) and raises CheckpointWriteError.
    """
    try:
        _write_slot_files(directory, model_state, train_state, meta)
    except Exception as err:
        if not is_write_failure(err):
            raise
        shutil.rmtree(directory, ignore_errors=True)
        raise write_failure(err, directory, "checkpoint slot") from None


def _write_slot_files(directory: Path, model_state: dict[str, torch.Tensor] | None, train_state: dict[str, Any], meta: dict[str, Any]) -> None:
    if model_state is not None:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        save_file(model_state, str(directory / MODEL_FILE), metadata={"format": "pt"})
    torch.save(train_state, directory / STATE_FILE)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != META_FILE):
        name = path.relative_to(directory).as_posix()
        _fsync_path(path)
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    if (directory / SHARDS_DIR).is_dir():
        _fsync_path(directory / SHARDS_DIR)
    meta = {**meta, "files": files, "saved_at": time.time()}
    tmp = directory / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    _fsync_path(tmp)
    os.replace(tmp, directory / META_FILE)
    _fsync_path(directory)


def read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory.name}: no readable {META_FILE} ({err})") from None
    for name, info in meta.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory.name}: {name} is missing")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{directory.name}: {name} is {size} bytes, expected {info['bytes']} (truncated?)")
    return meta


def is_sharded(meta: dict[str, Any]) -> bool:
    """A slot written under FSDP: weights, optimizer and filter state in `shards/` (torch.distributed.checkpoint)."""
    return meta.get("format") == "dcp"


def load_sharded_weights(directory: Path) -> dict[str, torch.Tensor]:
    """An FSDP slot's weights gathered into one full state dict in this process (export, eval, generate): a full-size
    tensor for every `model.*` entry of the DCP metadata, filled from all the shards by one non-distributed load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(directory / SHARDS_DIR))
    weights = {key.removeprefix("model."): torch.empty(m.size, dtype=m.properties.dtype)
               for key, m in reader.read_metadata().state_dict_metadata.items()
               if key.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load({"model": weights}, storage_reader=reader, no_dist=True)
    return weights


def read_slot(directory: Path, verify_hash: bool = True, weights: bool = True) -> Checkpoint:
    """A verified slot; `weights=False` leaves an FSDP slot's shards on disk (the trainer loads them sharded)."""
    meta = read_meta(directory)
    if verify_hash:
        for name, info in meta["files"].items():
            if _sha256(directory / name) != info["sha256"]:
                raise CheckpointError(f"{directory.name}: {name} does not match its SHA-256 (corrupt)")
    try:
        if is_sharded(meta):
            model_state = load_sharded_weights(directory) if weights else {}
        else:
            model_state = load_file(str(directory / MODEL_FILE))
        train_state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors/zip errors have many types; any of them means "unusable"
        raise CheckpointError(f"{directory.name}: cannot load ({type(err).__name__}: {err})") from None
    bad = nonfinite_run_state(model_state, train_state.get("optimizer"), train_state.get("grad_filters"))
    if bad:  # written before saves refused them, or by another tool: resuming it would train on NaN
        raise CheckpointError(f"{directory.name}: non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return Checkpoint(directory.name, directory, meta, model_state, train_state)


class CheckpointManager:
    """Rolling and best slots under `<run_dir>/checkpoints`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _slot(self, name: str) -> Path:
        return self.directory / name

    def save(self, slot: str, model_state: dict[str, torch.Tensor], train_state: dict[str, Any], meta: dict[str, Any]) -> Path | None:
        """Slot "rolling" rotates the rolling slots, any other name is replaced whole. A state holding inf or NaN
        (weights, optimizer or gradient-filter state) is refused with a warning and None: a slot only ever holds a state worth resuming."""
        bad = nonfinite_run_state(model_state, train_state.get("optimizer"), train_state.get("grad_filters"))
        if bad:
            warnings.warn(f"step {meta.get('step')}: {slot} checkpoint not written: non-finite values in "
                          f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; the older slots stay as they are", stacklevel=2)
            return None
        if slot == "rolling":
            return self.save_rolling(model_state, train_state, meta)
        return self.save_named(slot, model_state, train_state, meta)

    def save_rolling(self, model_state: dict[str, torch.Tensor], train_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._finish_rotation()  # a save killed mid-rotation is completed first, so nothing newer is lost
        write_slot(self._slot(_NEXT), model_state, train_state, meta)
        return self._promote("rolling")

    def _finish_rotation(self) -> None:
        """Shift slots down one place, moving each only into an empty name, then promote lm_next.

        Each step is a single rename, and the displaced oldest slot is kept as lm_old until the
        new lm_current is in place; rerunning this after a kill at any point completes the rotation.
        """
        nxt, old = self._slot(_NEXT), self._slot(_OLD)
        cur, prev, prev2 = (self._slot(n) for n in ROLLING)
        if nxt.exists():
            try:
                read_meta(nxt)
            except CheckpointError:
                shutil.rmtree(nxt)  # a write that never finished: not a checkpoint
        if nxt.exists():
            if cur.exists():
                if prev.exists():
                    if prev2.exists():
                        if old.exists():
                            shutil.rmtree(old)
                        os.replace(prev2, old)
                    os.replace(prev, prev2)
                os.replace(cur, prev)
            os.replace(nxt, cur)
            _fsync_path(self.directory)
        if old.exists():
            shutil.rmtree(old)

    def save_named(self, name: str, model_state: dict[str, torch.Tensor], train_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """A non-rolling slot such as `best` or a milestone: replaced whole, never half-written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_slot(self.staging(name), model_state, train_state, meta)
        return self._promote(name)

    def staging(self, slot: str) -> Path:
        """The temporary folder a save of `slot` ("rolling" or a name) is written into before it is promoted."""
        return self._slot(_NEXT) if slot == "rolling" else self._slot(slot + ".next")

    def begin_sharded(self, slot: str) -> Path:
        """Rank 0, before every process writes its shards into it: an empty staging folder with `shards/`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if slot == "rolling":
            self._finish_rotation()
        staging = self.staging(slot)
        if staging.exists():
            shutil.rmtree(staging)
        (staging / SHARDS_DIR).mkdir(parents=True)
        return staging

    def commit_sharded(self, slot: str, train_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Rank 0, once every shard is written: `state.pt`, then `meta.json` over all files, then the rotation."""
        write_slot(self.staging(slot), None, train_state, {**meta, "format": "dcp"})
        return self._promote(slot)

    def _promote(self, slot: str) -> Path:
        """A whole staged slot takes its name: the rolling rotation, or a named slot swapped in."""
        if slot == "rolling":
            self._finish_rotation()
            return self._slot(ROLLING[0])
        target, tmp, old = self._slot(slot), self.staging(slot), self._slot(slot + ".old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_path(self.directory)
        if old.exists():
            shutil.rmtree(old)
        return target

    def prune(self, prefix: str, keep: int) -> None:
        """Delete all but the `keep` newest slots named prefix + step (milestone snapshots)."""
        numbered = []
        for path in self.directory.glob(prefix + "*"):
            suffix = path.name[len(prefix):]
            if path.is_dir() and suffix.isdigit():
                numbered.append((int(suffix), path))
        for _, path in sorted(numbered, reverse=True)[keep:]:
            shutil.rmtree(path)

    def candidates(self) -> list[tuple[int, Path]]:
        """Every slot with a readable meta.json among the rolling names (and mid-rotation ones), newest first."""
        found = []
        for name in (*ROLLING, _NEXT, _OLD):
            path = self._slot(name)
            if not path.is_dir():
                continue
            try:
                meta = read_meta(path)
            except CheckpointError as err:
                warnings.warn(f"checkpoint slot skipped: {err}", stacklevel=2)
                continue
            found.append((int(meta["step"]), path))
        order = {n: i for i, n in enumerate((_NEXT, *ROLLING, _OLD))}
        return sorted(found, key=lambda t: (-t[0], order[t[1].name]))

    def load_latest(self) -> Checkpoint | None:
        """The newest slot that loads; a bad one is skipped with a warning naming why."""
        for _, path in self.candidates():
            try:
                return read_slot(path)
            except CheckpointError as err:
                warnings.warn(f"checkpoint {path.name} is unusable, falling back to an older one: {err}", stacklevel=2)
        return None

    def load(self, name: str) -> Checkpoint:
        path = self._slot(name)
        if not path.is_dir():
            have = sorted(p.name for p in self.directory.iterdir() if p.is_dir()) if self.directory.is_dir() else []
            raise CheckpointError(f"no checkpoint slot {name!r} in {self.directory}; present: {', '.join(have) or 'none'}")
        return read_slot(path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, fsync, rename: a kill (or a full disk) leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        _fsync_path(tmp)
    except Exception as err:
        if not is_write_failure(err):
            raise
        tmp.unlink(missing_ok=True)
        raise write_failure(err, path, "file") from None
    os.replace(tmp, path)
