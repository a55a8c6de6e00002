"""The run directory: where a run's preset, tokenizer, metrics, samples and checkpoints live."""
from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.config import Preset

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


def save_preset(run_dir: Path, preset: Preset) -> None:
    """The resolved preset (defaults and vocab size filled in), so a run describes itself."""
    tmp = run_dir / "preset.json.tmp"
    tmp.write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    os.replace(tmp, run_dir / "preset.json")
