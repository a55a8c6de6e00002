"""Refuse to resume checkpoints into a run they do not describe.

Every checkpoint slot keeps the resolved preset it was trained with. A resume compares the fields that decide
what the saved weights, optimizer state, data position and counters mean; if one changed (another model, tokenizer,
data, batch size, stage plan, optimizer...), the old checkpoints would lie about the new run, so the resume stops
with the differences and the fix. Fields that only steer what happens next (max_steps, lr, intervals, eval and
logging) may change between sessions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import PresetError

IDENTITY = ("model", "data", "objective", "layer_swaps", "grad_filters", "stages",
            "train.batch_size", "train.grad_accum_steps", "train.seed", "train.optimizer.name")
FREE = ("model.dropout", "data.num_workers", "data.cache_size")  # inside IDENTITY, but they change no saved meaning


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


def check_resumable(saved: dict[str, Any] | None, current: dict[str, Any], slot: str, run_dir: Path) -> None:
    """Raise PresetError when checkpoint `slot` was trained with a preset the current one contradicts."""
    if saved is None:  # a checkpoint written before slots kept their preset
        return
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
