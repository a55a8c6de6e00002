"""Load a trained run (preset + tokenizer + weights) for generation, evaluation or export."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.code_policy import code_policy
from lmforge.config import Preset, validate_preset
from lmforge.data import load_tokenizer
from lmforge.assembly import build_run_model
from lmforge.training.checkpoint import CheckpointError, CheckpointManager
from lmforge.training.stages import apply_model_settings, settings_of_stage
from lmforge.training.state import load_model_state


@dataclass
class LoadedRun:
    preset: Preset
    model: torch.nn.Module
    tokenizer: object
    slot: str
    step: int
    objective: Any = None  # the objective config of the checkpoint's stage (the preset's, or its stage's own)

    @property
    def causal(self) -> bool:
        """Whether the model reads left to right only (a bidirectional one has no next-token loss or sampling)."""
        from lmforge.generation.generate import is_causal

        return is_causal(self.model)


def load_run(run_dir: Path | str, slot: str | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """`slot=None` takes the newest loadable rolling checkpoint; otherwise e.g. 'best' or 'lm_prev'. A staged run's
    model gets the model settings (`causal`, `depth`) of the stage its checkpoint was written in."""
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
    objective = preset.objective
    if preset.stages:  # the model as its stage left it: a run pretrained bidirectionally, then causally, samples causally
        stage = int(ckpt.train_state.get("stage", 0))
        apply_model_settings(model, stage, settings_of_stage(preset, stage))
        objective = preset.stages[stage].objective or preset.objective
    model.to(device).eval()
    return LoadedRun(preset, model, tokenizer, ckpt.slot, int(ckpt.meta["step"]), objective)
