"""Where metrics go: `<run_dir>/metrics.jsonl` (one JSON object per row) and, optionally, TensorBoard and W&B."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.errors import PresetError

if TYPE_CHECKING:
    import torch

    from lmforge.config import WandbConfig
    from lmforge.runtime import Runtime
    from lmforge.training.trainer import Trainer

WANDB_ID_FILE = "wandb_id"  # the W&B run id, so a resumed run keeps logging into the same W&B run


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than crash
    return value


class MetricsLogger:
    """Appends rows to metrics.jsonl; on resume, drops rows newer than the checkpoint so steps never repeat."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = False, wandb: "WandbConfig | None" = None,
                 run_name: str | None = None, config: dict[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if enabled and wandb is not None:
            self._wandb = start_wandb(Path(run_dir), wandb, run_name, config)

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if row.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        tmp.replace(self.path)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = row.get("step", 0)
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def start_wandb(run_dir: Path, cfg: "WandbConfig", run_name: str | None, config: dict[str, Any] | None):
    """A W&B run for this run dir (offline runs are written under it), resumed when the run dir already has one."""
    try:
        import wandb
    except ImportError:
        raise PresetError("train.wandb needs the wandb package: pip install 'lmforge[wandb]' (or remove train.wandb)") from None
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id + "\n")
    return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_name, mode=cfg.mode, tags=cfg.tags,
                      dir=str(run_dir), id=run_id, resume="allow", config=config)


def train_row(trainer: "Trainer", loss: float, lr: float, metrics: dict[str, "torch.Tensor"], grad_norm: "torch.Tensor | None",
              window_tokens: int, window_time: float) -> dict[str, Any]:
    """One training row: loss, lr, the objective's terms, speed (tokens/s, TFLOP/s per device), MFU (not with
    quantized layers), schedule, stage, data and memory facts."""
    tokens_per_sec = window_tokens / max(window_time, 1e-9)
    row: dict[str, Any] = {
        "step": trainer.step, "tokens": trainer.tokens, "loss": loss, "lr": lr,
        **{k: v.item() for k, v in metrics.items()},
        "tokens_per_sec": tokens_per_sec,
        "elapsed": trainer.elapsed(),
    }
    if grad_norm is not None:
        row["grad_norm"] = grad_norm.item()
    if trainer.guard.active:
        row["skipped_steps"] = trainer.guard.skipped_steps
    schedule, at, _ = trainer.stages.schedule_at(trainer.step - 1)  # the step just taken
    row.update(schedule.describe(at))
    row.update(trainer.stages.describe(trainer.stage_index))
    flops = trainer.stage_flops[trainer.stage_index]  # the stage's own cost: a shallow or cached stage does less per token
    if flops:
        achieved = flops * tokens_per_sec / trainer.runtime.world_size  # model FLOP/s per device
        row["tflops"] = achieved / 1e12
        if trainer.peak_flops:
            row["mfu"] = achieved / trainer.peak_flops
    row.update(trainer.train_data.adaptive_metrics())
    row.update(trainer.train_data.skip_metrics())
    row.update(trainer.runtime.memory_stats())
    return row


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(enabled: bool, total: int, initial: int, name: str | None):
    """A tqdm bar over the optimizer steps (None when off, or on ranks other than 0)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name or "train", unit="step", dynamic_ncols=True)


def mfu_peak_flops(runtime: "Runtime", override: float | None, model: "torch.nn.Module", tokens_per_step: int) -> float | None:
    """The peak MFU divides by, or None where MFU is not reported: a model with quantized layers, whose matmuls no
    fp32/bf16 peak describes (torchtitan skips MFU under FP8/MX for the same reason)."""
    from lmforge.protocols import has_quantized_layers
    from lmforge.runtime import gemm_shapes, peak_flops

    if has_quantized_layers(model):
        return None
    return peak_flops(runtime, override, gemm_shapes(model, tokens_per_step))
