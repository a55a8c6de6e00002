"""Load a trained run (preset + tokenizer + weights) for generation, evaluation or export."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.code_policy import code_policy
from lmforge.config import Preset, validate_preset
from lmforge.data import load_tokenizer
from lmforge.assembly import build_run_model
from lmforge.training.checkpoint import CheckpointError, CheckpointManager
from lmforge.training.state import load_model_state


@dataclass
class LoadedRun:
    preset: Preset
    model: torch.nn.Module
    tokenizer: object
    slot: str
    step: int


def load_run(run_dir: Path | str, slot: str | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """`slot=None` takes the newest loadable rolling checkpoint; otherwise e.g. 'best' or 'lm_prev'."""
    run_dir = Path(run_dir)
    preset_path = run_dir / "preset.json"
    if not preset_path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no preset.json)")
    with code_policy("skip"):  # generation never runs the training objective
        preset = validate_preset(json.loads(preset_path.read_text()))
    tokenizer = load_tokenizer(run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    ckpt = manager.load(slot) if slot else manager.load_latest()
    if ckpt is None:
        raise CheckpointError(f"no loadable checkpoint in {run_dir / 'checkpoints'}")
    model = build_run_model(preset, ckpt.model_state)  # with the heads an objective attached in training
    load_model_state(model, ckpt.model_state)
    model.to(device).eval()
    return LoadedRun(preset, model, tokenizer, ckpt.slot, int(ckpt.meta["step"]))
