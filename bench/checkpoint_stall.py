"""How long does a checkpoint stop training? Sync vs async saves (`train.async_save`) on a 10.65M-parameter model.

The model is nanoGPT's shakespeare_char config (6 layers, 6 heads, width 384, block 256, learned positions,
LayerNorm, GELU, tied head: 10.65M parameters), trained by lmforge's Trainer on tiny shakespeare characters.
For each mode it times `Trainer.save("rolling")` as the loop sees it (the blocking part: the gathered train
state, the host snapshot for async, the whole write for sync) and, for async, how long the background write
takes after it returns; plus the median train step. It reports the blocked time as a share of one step and the
smallest save interval at which saving costs at most 3.5% of training time (CheckFreq's bound, Mohan et al. 2021).

usage: python bench/checkpoint_stall.py [--saves 5] [--steps 5] [--batch 8] [--out bench/results/checkpoint_stall.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config import load_preset
from lmforge.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LMFORGE_TEXT", REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))  # LMFORGE_TEXT: a copy elsewhere
CHECKFREQ_BOUND = 0.035


def measure(async_save: bool, saves: int, steps: int, batch: int, run_dir: Path) -> dict:
    preset = {
        "name": "checkpoint_stall",
        "model": {"arch": "gpt", "n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "pos_embedding": "learned",
                  "norm": "layernorm", "mlp": "gelu", "bias": False, "tie_embeddings": True, "dropout": 0.0},
        "data": {"sources": [{"type": "text", "path": str(DATA)}], "tokenizer": {"type": "char"},
                 "validation": {"method": "tail", "fraction": 0.1}},
        "train": {"batch_size": batch, "max_steps": 1000, "precision": "bf16", "progress_bar": False, "async_save": async_save,
                  "legacy_weights_file": None, "eval_batches": 1, "seed": 0},
    }
    trainer = Trainer(load_preset(preset), run_dir)
    model, data = trainer.wrapped_model(), iter(trainer.train_data)
    step_times, blocked, background = [], [], []
    for i in range(saves):
        for _ in range(steps):
            t0 = time.perf_counter()
            loss, *_ = trainer.train_step(model, data)
            loss.item()
            step_times.append(time.perf_counter() - t0)
        trainer.step += steps
        t0 = time.perf_counter()
        trainer.save("rolling")
        blocked.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        trainer.writer.wait()  # measured apart: the next steps would overlap it
        background.append(time.perf_counter() - t1)
    trainer.train_data.close()
    step = statistics.median(step_times[1:])
    stall = statistics.median(blocked)
    return {
        "mode": "async" if async_save else "sync", "params": trainer.model.num_params(), "batch_size": batch,
        "step_s": step, "blocked_s": stall, "background_write_s": statistics.median(background) if async_save else 0.0,
        "blocked_share_of_step": stall / step, "min_save_interval_for_3.5pct": stall / (CHECKFREQ_BOUND * step),
        "blocked_all_s": blocked,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="train steps between saves")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (nanoGPT's config uses 64; the save does not depend on it)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "checkpoint_stall.json"))
    args = ap.parse_args()
    rows = []
    for async_save in (False, True, False, True):  # alternated, so drift hits both alike
        with tempfile.TemporaryDirectory() as run_dir:
            rows.append(measure(async_save, args.saves, args.steps, args.batch, Path(run_dir)))
        r = rows[-1]
        print(f"  {r['mode']:5s}: step {r['step_s'] * 1e3:7.0f} ms, save blocks {r['blocked_s'] * 1e3:7.1f} ms "
              f"(+{r['background_write_s'] * 1e3:.0f} ms in the background)", flush=True)
    print("\n| save | params | step ms | save blocks the loop, ms | written in the background, ms | blocked / step | save interval for <= 3.5% |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("sync", "async"):
        mine = [r for r in rows if r["mode"] == mode]
        step = statistics.median(r["step_s"] for r in mine)
        stall = statistics.median(r["blocked_s"] for r in mine)
        bg = statistics.median(r["background_write_s"] for r in mine)
        print(f"| {mode} | {mine[0]['params']:,} | {step * 1e3:.0f} | {stall * 1e3:.1f} | {bg * 1e3:.0f} | {stall / step:.1%} | "
              f"every {max(1, round(stall / (CHECKFREQ_BOUND * step)))} steps |")
    Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                          "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
