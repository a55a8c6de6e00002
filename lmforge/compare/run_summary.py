"""What one run dir says about its run: final and best val, speed, MFU, memory, size, FLOPs, status; and its curves.

Read from the files every run writes (`preset.json`, `metrics.jsonl`, `result.json`), so it works for any run,
trained by `compare` or not. Speed figures are medians of the trainer's logged per-step rates, leaving out the
first `WARMUP_ROWS` rows (allocator and cache warm-up).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.training.metrics import read_metrics

WARMUP_ROWS = 10


@dataclass
class RunSummary:
    run_dir: str
    preset: str | None
    status: str  # the last fit's stop reason, "incomplete (step N)" or "failed: ..."
    steps: int = 0
    tokens: int = 0
    params: int | None = None
    flops_per_token: float | None = None
    val_loss: float | None = None  # at the last evaluation
    val_bpb: float | None = None
    val_bpc: float | None = None
    val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_val_step: int | None = None  # where the best was: past it, val loss rose (the run started to overfit) or stalled
    tokens_per_sec: float | None = None
    mfu: float | None = None
    wall_seconds: float | None = None
    peak_mem_gib: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # other final val_* numbers (per stage, NELBO, ...)

    @property
    def flops(self) -> float | None:
        return self.tokens * self.flops_per_token if self.flops_per_token else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops}


def train_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "tokens_per_sec" in r]


def val_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "val_loss" in r]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def model_size(preset_raw: dict[str, Any]) -> tuple[int | None, float | None]:
    """Parameters and training FLOPs per token of a run's model, from its resolved preset (built on meta: free);
    for a stage plan the average over its stages (shallow, frozen and cached stages cost less)."""
    import torch

    from lmforge.assembly import build_run_model
    from lmforge.config import validate_preset
    from lmforge.errors import PresetError
    from lmforge.run_shape import run_flops_per_token, run_shape, sequence_length

    try:
        preset = validate_preset(preset_raw)
        with torch.device("meta"):
            model = build_run_model(preset, auxiliary=True)
        steps = run_shape(preset, 1, 0).total_steps  # a stage plan's cost depends on where its stages end
        return sum(p.numel() for p in model.parameters()), run_flops_per_token(preset, sequence_length(preset), steps) or None
    except (PresetError, ValueError, TypeError, RuntimeError):
        return None, None


def summarize_run(run_dir: Path, with_size: bool = True) -> RunSummary:
    run_dir = Path(run_dir)
    preset_raw = json.loads((run_dir / "preset.json").read_text()) if (run_dir / "preset.json").exists() else None
    rows = read_metrics(run_dir)
    trains, vals = train_rows(rows), val_rows(rows)
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else None
    last_step = rows[-1]["step"] if rows else 0
    if result is not None and result.get("steps", -1) >= last_step:
        status = result["stop_reason"]
    else:
        status = f"incomplete (step {last_step})"
    s = RunSummary(str(run_dir), preset_raw.get("name") if preset_raw else None, status)
    if trains:
        s.steps, s.tokens = trains[-1]["step"], trains[-1]["tokens"]
        steady = trains[WARMUP_ROWS:] or trains
        s.tokens_per_sec = _median([r["tokens_per_sec"] for r in steady])
        s.mfu = _median([r["mfu"] for r in steady if "mfu" in r])
        s.peak_mem_gib = max((r["mem_gib"] for r in trains if "mem_gib" in r), default=None)
    if vals:
        last = vals[-1]
        s.val_loss, s.val_bpb, s.val_bpc = last["val_loss"], last.get("val_bpb"), last.get("val_bpc")
        s.val_accuracy = last.get("val_accuracy")
        finite = [r for r in vals if isinstance(r["val_loss"], (int, float))]
        if finite:
            best = min(finite, key=lambda r: r["val_loss"])  # the first of equal bests
            s.best_val_loss, s.best_val_step = best["val_loss"], best["step"]
        s.extra = {k: v for k, v in last.items() if k.startswith("val_") and "/" in k and isinstance(v, (int, float))}
    s.wall_seconds = result["elapsed"] if result else (rows[-1].get("elapsed") if rows else None)
    if with_size and preset_raw is not None:
        s.params, s.flops_per_token = model_size(preset_raw)
    return s


def list_runs(root: Path) -> list[Path]:
    """Every run dir under `root` (a folder holding preset.json and metrics.jsonl), `root` itself included."""
    root = Path(root)
    found = {p.parent for p in root.rglob("preset.json") if (p.parent / "metrics.jsonl").exists()}
    return sorted(found)
