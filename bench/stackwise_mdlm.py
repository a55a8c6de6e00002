"""AR vs masked diffusion when data repeat: tiny shakespeare (1M characters) for many epochs at equal training FLOPs.

Three runs of the same 4 x 128 model (block 128, batch 12, the same steps, so the same FLOPs: a diffusion step
costs what an AR step does), trained by lmforge's Trainer:
- `ar`: causal, next-token CE, no regularisation;
- `ar_regularized`: causal, dropout 0.1 and 15% of the input tokens masked (`clm_masked_inputs`), the fair AR
  baseline of arXiv 2510.04071;
- `mdlm`: bidirectional, `mask_diffusion` (its val_loss is the NELBO bound, an upper bound on its NLL, so a tie
  on this table favours AR).
Each reports its best val loss (nats per character), the epoch of that best, and whether val rose after it
(overfitting; arXiv 2507.15857 finds diffusion keeps improving with repeated data after AR starts to overfit).

usage: python bench/stackwise_mdlm.py [--epochs 6] [--evals-per-epoch 2] [--out bench/results/stackwise_mdlm.json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config import load_preset
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "ar": {"model.causal": True, "objective": {"name": "clm"}, "model.dropout": 0.0},
    "ar_regularized": {"model.causal": True, "objective": {"name": "clm_masked_inputs", "input_mask_rate": 0.15}, "model.dropout": 0.1},
    "mdlm": {"model.causal": False, "objective": {"name": "mask_diffusion"}, "model.dropout": 0.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--evals-per-epoch", type=int, default=2)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "stackwise_mdlm.json"))
    args = ap.parse_args()
    train_chars = 0.9 * len((REPO.parent / "shared" / "data" / "tinyshakespeare.txt").read_text())
    tokens_per_step = 12 * 128
    steps_per_epoch = train_chars / tokens_per_step
    steps = math.ceil(args.epochs * steps_per_epoch)
    interval = max(1, round(steps_per_epoch / args.evals_per_epoch))
    results = {}
    for name in args.runs.split(","):
        overrides = {**RUNS[name], "train.max_steps": steps, "train.eval_interval": interval, "train.save_interval": steps,
                     "train.progress_bar": False, "train.legacy_weights_file": None, "samples.max_new_tokens": 1,
                     "train.lr_schedule": {"name": "warmup_cosine", "warmup_steps": 100, "min_lr_ratio": 0.1}}
        with tempfile.TemporaryDirectory() as run_dir:
            t0 = time.perf_counter()
            train(load_preset("stackwise_mdlm_cpu", overrides), run_dir)
            wall = time.perf_counter() - t0
            evals = [(r["step"], r["val_loss"]) for r in read_metrics(Path(run_dir)) if "val_loss" in r]
        best_step, best = min(evals, key=lambda e: e[1])
        after = [v for s, v in evals if s > best_step]
        results[name] = {"best_val_loss": best, "best_epoch": best_step / steps_per_epoch, "final_val_loss": evals[-1][1],
                         "rose_after_best": bool(after) and max(after) > best + 1e-3, "evals": evals, "wall_s": wall,
                         "objective": overrides["objective"]["name"]}
        r = results[name]
        print(f"  {name:15s} best val {best:.4f} at epoch {r['best_epoch']:.1f}, final {r['final_val_loss']:.4f} "
              f"({'overfits' if r['rose_after_best'] else 'still improving'}), {wall:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps({"epochs": args.epochs, "steps": steps, "steps_per_epoch": steps_per_epoch,
                                              "runs": results, "torch": torch.__version__,
                                              "machine": platform.processor() or platform.machine()}, indent=2))
    print("\n| run | objective | best val loss (nats/char) | at epoch | final | after the best |\n|---|---|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['objective']} | {r['best_val_loss']:.4f} | {r['best_epoch']:.1f} | {r['final_val_loss']:.4f} | "
              f"{'rises (overfits)' if r['rose_after_best'] else 'no rise'} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
