"""Bits per byte of agiformer vs a byte-level `gpt` on real text at equal training compute (FLOPs), on this CPU.

Both models read tiny shakespeare as raw bytes (the `byte` tokenizer, 256 ids), same batch, same
context, same data order and seed, same optimizer recipe (AdamW, warm-up + cosine to 0.1, weight decay
0.1, clip 1.0), val = the file's last 10% (never trained on). They differ in the model and in the step
count: each model trains for `budget / (flops_per_token(seq_len) * batch_size * seq_len)` steps, where
`flops_per_token` is the model's own 6N-style count (lmforge/models/flops.py for gpt; agiformer counts
its ACT block at act_max_steps, an upper bound, so agiformer is charged at least what it used).
Reported per model: val bits per byte over the whole val split (evaluate_lm's `val_bpb`), training
tokens/s (median of logged per-step rates after the first 10 steps), wall time, FLOPs spent, and for
agiformer the mean ACT ponder steps.

usage: python bench/bpc.py [--budget 2.0e13] [--probe] [--out bench/results/bpc.json]
`--probe` times 12 steps of each model (fp32 and bf16) and prints ms/step, to size the budget.
Run dirs go to runs/bpc/ and are replaced on each call.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.config import load_preset
from lmforge.models import build_model
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data/tinyshakespeare.txt"
RUNS_DIR = REPO / "runs" / "bpc"
SEQ_LEN, BATCH = 256, 16
SKIP_STEPS = 10  # allocator warm-up, left out of tokens/s

MODELS = {
    # ~0.9M weights each: the default-width agiformer (2 hybrid blocks, ACT up to 4 steps, AR decoder) ...
    "agiformer": {"arch": "agiformer", "n_embd": 128, "n_layer": 2, "n_head": 4, "block_size": SEQ_LEN,
                  "attn_window": 32, "memory_chunk": 32, "act_max_steps": 4, "local_decoder": "autoregressive"},
    # ... and nanoGPT's CPU shakespeare_char shape (4 x 128, RoPE, RMSNorm, SwiGLU, tied head).
    "gpt": {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": SEQ_LEN, "dropout": 0.0},
}


def preset(name: str, model: dict, steps: int, precision: str, seed: int) -> dict:
    warmup = max(1, min(100, steps // 10))
    return {
        "name": f"bpc_{name}",
        "model": model,
        "data": {"sources": [{"type": "text", "path": DATA}], "tokenizer": {"type": "byte"},
                 "validation": {"method": "tail", "fraction": 0.1}, "seq_length": SEQ_LEN, "seed": seed},
        "train": {"batch_size": BATCH, "max_steps": steps, "lr": 2e-3, "precision": precision, "seed": seed,
                  "lr_schedule": {"name": "warmup_cosine", "warmup_steps": warmup, "min_lr_ratio": 0.1},
                  "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0,
                  "log_interval": 1, "eval_interval": steps, "save_interval": steps, "eval_batches": 1000,
                  "progress_bar": False},
        "samples": {"prompts": ["\n"], "max_new_tokens": 1},
    }


def build(model_cfg: dict) -> torch.nn.Module:
    return build_model(load_preset(preset("probe", model_cfg, 1, "fp32", 0)).model.model_copy(update={"vocab_size": 256}))


def flops_per_step(model_cfg: dict) -> tuple[float, int]:
    """(training FLOPs per optimizer step, parameter count) of a model section, built with a byte vocabulary."""
    m = build(model_cfg)
    return m.flops_per_token(SEQ_LEN) * BATCH * SEQ_LEN, m.num_params()


def unused_act_flops_per_byte(model_cfg: dict, mean_steps: float) -> float:
    """What flops_per_token charges agiformer for ACT steps it did not take (it counts act_max_steps)."""
    m = build(model_cfg)
    reasoning = sum(p.numel() for p in m.reasoning.parameters())
    return 6 * reasoning * (m.config.act_max_steps - mean_steps) / m.config.patch_size


def run(name: str, raw: dict) -> dict[str, Any]:
    run_dir = RUNS_DIR / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a resume
    print(f"--- {name}: {raw['train']['max_steps']} steps", flush=True)
    result = train(load_preset(raw), run_dir)
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    timed = rows[SKIP_STEPS:] or rows
    out = {
        "steps": result.steps,
        "val_bpb": result.last_val["val_bpb"],
        "val_loss_nats_per_byte": result.last_val["val_loss"],
        "val_bytes": result.last_val["val_tokens"],
        "final_train_loss": rows[-1]["loss"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in timed),
        "wall_seconds": result.elapsed,
        "run_dir": str(run_dir.relative_to(REPO)),
    }
    if "ponder_steps" in rows[-1]:
        out["mean_ponder_steps"] = statistics.mean(r["ponder_steps"] for r in rows)
    return out


def probe(precisions: list[str], seed: int) -> None:
    for name, model in MODELS.items():
        for precision in precisions:
            run_dir = RUNS_DIR / f"probe_{name}_{precision}"
            shutil.rmtree(run_dir, ignore_errors=True)
            t0 = time.perf_counter()
            train(load_preset(preset(name, model, 12, precision, seed)), run_dir)
            rows = [r for r in read_metrics(run_dir) if "loss" in r][4:]
            ms = statistics.median(BATCH * SEQ_LEN / r["tokens_per_sec"] for r in rows) * 1e3
            fps, n = flops_per_step(model)
            print(f"{name:<10} {precision:<5} params {n:>9,}  {ms:7.1f} ms/step  {fps:.3e} FLOPs/step  "
                  f"(whole call {time.perf_counter() - t0:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0e13, help="training FLOPs per model")
    parser.add_argument("--precision", default="bf16", help="train.precision of both runs")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--probe", action="store_true", help="only time a few steps of each model (fp32, bf16)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bpc.json")
    args = parser.parse_args()
    os.chdir(REPO)  # the preset's data path is relative to the repo root
    if args.probe:
        probe(["fp32", "bf16"], args.seed)
        return

    results = {}
    for name, model in MODELS.items():
        fps, n_params = flops_per_step(model)
        steps = max(1, math.floor(args.budget / fps))
        r = run(name, preset(name, model, steps, args.precision, args.seed))
        results[name] = {"params": n_params, "flops_per_byte": fps / (BATCH * SEQ_LEN), "train_flops": steps * fps,
                         "train_bytes": steps * BATCH * SEQ_LEN, **r, "model": model}
        if "mean_ponder_steps" in r:  # the budget charged ACT at its cap; what the steps taken cost
            used = results[name]["flops_per_byte"] - unused_act_flops_per_byte(model, r["mean_ponder_steps"])
            results[name]["flops_per_byte_at_mean_ponder"] = used
            results[name]["train_flops_at_mean_ponder"] = used * results[name]["train_bytes"]
    summary = {
        "data": DATA, "val": "last 10% of the file (bytes)", "seq_len": SEQ_LEN, "batch_size": BATCH,
        "budget_flops": args.budget, "precision": args.precision, "seed": args.seed, "runs": results,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\nequal budget {args.budget:.2e} training FLOPs per model, {args.precision}, batch {BATCH} x {SEQ_LEN} bytes, {DATA}")
    print(f"{'model':<11}{'params':>10}{'FLOPs/byte':>12}{'steps':>7}{'train MB':>9}{'val bpb':>9}{'tokens/s':>10}{'wall s':>8}{'ponder':>8}")
    for name, r in results.items():
        ponder = f"{r['mean_ponder_steps']:.2f}" if "mean_ponder_steps" in r else "-"
        print(f"{name:<11}{r['params']:>10,}{r['flops_per_byte']:>12.3e}{r['steps']:>7}{r['train_bytes'] / 1e6:>9.2f}"
              f"{r['val_bpb']:>9.4f}{r['tokens_per_sec']:>10,.0f}{r['wall_seconds']:>8.1f}{ponder:>8}")
    for name, r in results.items():
        if "train_flops_at_mean_ponder" in r:
            print(f"{name}: charged {r['train_flops']:.3e} FLOPs (ACT at its cap of {r['model']['act_max_steps']} steps); "
                  f"at its mean {r['mean_ponder_steps']:.2f} steps it used {r['train_flops_at_mean_ponder']:.3e}")
    print("(val bpb: bits per byte over the whole held-out tail; tokens/s: median per-step training rate; "
          "wall s includes setup and the final eval)")


if __name__ == "__main__":
    main()
