"""Export any architecture as plain files: weights (safetensors), the resolved preset, the tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from lmforge.config import Preset
from lmforge.training.checkpoint import unique_state_dict


def export_safetensors(model: object, preset: Preset, tokenizer: object, out: Path | str) -> None:
    """`model.safetensors` (tied tensors once), `preset.json`, and the tokenizer's own files: a run dir
    minus checkpoints and training state, enough to rebuild the model with `lmforge.models.build_model`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(unique_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    tokenizer.save(out)
