"""The run directory: where a run's preset, tokenizer, metrics, samples and checkpoints live."""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.config import Preset
from lmforge.training.state import gather_ranks

if TYPE_CHECKING:
    from lmforge.runtime import Runtime
    from lmforge.training.callbacks import TrainResult

RUNS_DIR = "runs"


class RunDirError(OSError):
    """The run directory cannot be created or written."""


def default_run_dir(preset: Preset) -> Path:
    """`runs/<preset name>`: rerunning a preset finds its checkpoints and resumes."""
    return Path(RUNS_DIR) / (preset.name or "run")


def prepare(run_dir: Path) -> None:
    """Create the run dir and prove it is writable before any work is done."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run directory {run_dir} is not writable ({err.strerror or err}); pass --run-dir with a writable path") from None


SHARED_PROBE = ".shared_probe"


def check_shared(run_dir: Path, runtime: "Runtime") -> None:
    """Every process must see the run dir rank 0 prepared: the others read its tokenizer and checkpoints and, under
    FSDP, write their shards into it. Across nodes that means a shared filesystem; a local path on each node is
    refused here, on every process, instead of failing later with a missing file."""
    if not runtime.distributed:
        return
    token = f"{os.getpid()}-{os.urandom(8).hex()}" if runtime.is_main else None
    if runtime.is_main:
        (run_dir / SHARED_PROBE).write_text(token)
    token = runtime.broadcast_object(token)  # also the barrier after rank 0's write
    try:
        seen = (run_dir / SHARED_PROBE).read_text() == token
    except OSError:
        seen = False
    views = gather_ranks(runtime, {"host": socket.gethostname(), "seen": seen})
    if runtime.is_main:
        (run_dir / SHARED_PROBE).unlink(missing_ok=True)
    missing = [f"process {rank} on {view['host']}" for rank, view in enumerate(views) if not view["seen"]]
    if missing:
        raise RunDirError(f"run directory {run_dir} is not the same folder for every process ({', '.join(missing)} cannot "
                          "see what process 0 wrote there): with torchrun across nodes, pass --run-dir on a filesystem "
                          "every node shares")


def save_result(run_dir: Path, result: "TrainResult") -> None:
    """`result.json`: how the last `fit()` ended (steps, tokens, stop reason, last val, elapsed), for `lmforge runs`
    and `lmforge compare` to tell a finished run from one that was stopped or crashed."""
    row = {"steps": result.steps, "tokens": result.tokens, "final_loss": result.final_loss, "last_val": result.last_val,
           "best_val_loss": result.best_val_loss, "stop_reason": result.stop_reason, "elapsed": result.elapsed,
           "resumed_from": result.resumed_from}
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    os.replace(tmp, run_dir / "result.json")


def save_preset(run_dir: Path, preset: Preset) -> None:
    """The resolved preset (defaults and vocab size filled in), so a run describes itself."""
    tmp = run_dir / "preset.json.tmp"
    tmp.write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    os.replace(tmp, run_dir / "preset.json")


RUN_ID_FILE = "run_id"


def run_id(run_dir: Path) -> str:
    """The run's id (12 hex digits, written once into the run dir): what its stage backups are filed under."""
    path = run_dir / RUN_ID_FILE
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(uuid.uuid4().hex[:12] + "\n")
        tmp.replace(path)
    return path.read_text().strip()
