"""Refuse to resume checkpoints into a run they do not describe.

Every checkpoint slot keeps the resolved preset it was trained with. A resume compares the fields that decide
what the saved weights, optimizer state, data position and counters mean; if one changed (another model, tokenizer,
data, batch size, stage plan, optimizer...), the old checkpoints would lie about the new run, so the resume stops
with the differences and the fix. Fields that only steer what happens next (max_steps, lr, intervals, eval and
logging) may change between sessions. The stage plan's boundaries are checked against the checkpoint's stage
by the trainer (a new max_steps moves `until_fraction` ends).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.code_policy import code_policy
from lmforge.config import Preset, validate_preset
from lmforge.errors import PresetError
from lmforge.training.checkpoint import CheckpointManager, read_meta

IDENTITY = ("model", "data", "objective", "auxiliary", "layer_swaps", "grad_filters", "stages",
            "train.batch_size", "train.grad_accum_steps", "train.seed", "train.optimizer",
            "train.parallel",  # ddp and fsdp slots are different formats
            # restored with the optimizer state (its param groups), so a new value would be silently ignored:
            "train.weight_decay", "train.beta1", "train.beta2", "train.eps")
FREE = ("model.dropout", "data.num_workers", "data.cache_size", "train.optimizer.fused")  # change no saved meaning


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out or {prefix: {}}
    return {prefix: value}


def _at(preset: dict[str, Any], dotted: str) -> Any:
    node: Any = preset
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for every identity field that differs."""
    diffs = []
    for key in IDENTITY:
        a, b = _flatten(_at(saved, key), key), _flatten(_at(current, key), key)
        for field in sorted(set(a) | set(b)):
            if not field.startswith(FREE) and a.get(field) != b.get(field):
                diffs.append((field, a.get(field), b.get(field)))
    return diffs


def check_run_dir(checkpoints: CheckpointManager, current: Preset, run_dir: Path) -> None:
    """Before a run writes anything into `run_dir`: refuse it if the newest checkpoint there contradicts `current`."""
    newest = checkpoints.candidates()
    if newest:
        slot = newest[0][1]
        check_resumable(read_meta(slot).get("run_preset"), current.to_dict(), slot.name, run_dir)


def check_resumable(saved: dict[str, Any] | None, current: dict[str, Any], slot: str, run_dir: Path) -> None:
    """Raise PresetError when checkpoint `slot` was trained with a preset the current one contradicts."""
    if saved is None:  # a checkpoint written before slots kept their preset
        return
    try:  # with today's defaults filled in, so a field added since the checkpoint is not a difference
        with code_policy("skip"):  # only compared, never run
            saved = validate_preset(saved).to_dict()
    except PresetError:
        pass
    diffs = differences(saved, current)
    if not diffs:
        return
    shown = "\n".join(f"  {field}: {a!r} in the checkpoint, {b!r} now" for field, a, b in diffs[:12])
    more = f"\n  ... and {len(diffs) - 12} more" if len(diffs) > 12 else ""
    raise PresetError(
        f"{run_dir} holds checkpoints ({slot}) of a different run:\n{shown}{more}\n"
        "Resuming would load them into a run they do not describe. Use the values they were trained with, or train "
        f"this preset in a new --run-dir (with --train.init_from {run_dir} to start from those weights)."
    )
