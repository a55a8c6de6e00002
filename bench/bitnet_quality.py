"""What does BitNet b1.58 cost in quality, speed and size? The same GPT trained fp32 vs b1.58 on real text.

Both runs start from configs/bitnet_shakespeare_cpu.json (char-level tiny
shakespeare, val = the file's last 10%) with the same model, data order,
seed, batch, steps and evaluation; they differ only in:
- fp:    no layer swap; nanoGPT's recipe for this data (AdamW, warm-up + cosine to
         0.1, weight decay 0.1) at --fp-lr (nanoGPT: 1e-3);
- b1.58: layer swap bitlinear; the paper's two-stage schedule with its own peak
         LR (--b158-lr, the preset's by default: b1.58 wants a higher LR).
Reported per run: val loss (nats/char) and bpc on the whole val split, train
tokens/s (median of the logged per-step rates after the first 10 steps, no
eval) and MFU. For b1.58 also: the packed ternary export (`lmforge export
--format ternary`) size against fp16, and the largest |logit| difference
between the packed model and the fake-quantized one on a val batch.

usage: python bench/bitnet_quality.py [--steps 600] [--b158-lr 1.5e-3,3e-3] [--fp-lr 1e-3,3e-3] [--out-dir bench/results]
Run dirs go to runs/bitnet_quality/ and are replaced on each call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
from pathlib import Path
from typing import Any

import torch

from lmforge.config import apply_overrides, load_preset, read_preset_file
from lmforge.data import build_val_batches
from lmforge.export.ternary_export import export_ternary, load_ternary
from lmforge.inference import load_run
from lmforge.training.checkpoint import unique_state_dict
from lmforge.training.metrics import read_metrics
from lmforge.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "bitnet_shakespeare_cpu.json"
RUNS_DIR = REPO / "runs" / "bitnet_quality"
SKIP_STEPS = 10  # first steps pay for allocator warm-up; left out of tokens/s


def variant(base: dict, name: str, steps: int, seed: int, lr: float, bitnet: bool) -> dict:
    raw = apply_overrides(base, {
        "train.max_steps": steps, "train.seed": seed, "data.seed": seed, "train.lr": lr, "train.log_interval": 1,
        "train.eval_interval": steps, "train.save_interval": steps, "train.progress_bar": False,
        "samples.max_new_tokens": 100,
    })
    raw["name"] = name
    if not bitnet:
        raw["layer_swaps"] = []
        raw["train"]["lr_schedule"] = {"name": "warmup_cosine", "warmup_steps": 100, "min_lr_ratio": 0.1}
    return raw


def run(name: str, raw: dict) -> dict[str, Any]:
    run_dir = RUNS_DIR / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a resume of an older one
    print(f"--- {name}", flush=True)
    result = train(load_preset(raw), run_dir)
    rows = [r for r in read_metrics(run_dir) if "loss" in r][SKIP_STEPS:]
    return {
        "lr": raw["train"]["lr"],
        "lr_schedule": raw["train"]["lr_schedule"]["name"],
        "steps": result.steps,
        "val_loss": result.last_val["val_loss"],
        "val_bpc": result.last_val["val_bpc"],
        "final_train_ce": rows[-1]["ce"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rows),
        "mfu": statistics.median(r["mfu"] for r in rows) if "mfu" in rows[0] else None,
        "wall_seconds": result.elapsed,
        "run_dir": str(run_dir.relative_to(REPO)),
    }


@torch.no_grad()
def packed_check(run_dir: Path, fp_run_dir: Path, out: Path) -> dict[str, Any]:
    """Export the b1.58 run packed, reload it, and compare its logits and val loss with the fake-quant model."""
    loaded = load_run(run_dir)
    sizes = export_ternary(loaded.model, loaded.preset, loaded.tokenizer, out)
    packed = load_ternary(out).model
    p = loaded.preset
    batch = build_val_batches(p.data, loaded.tokenizer, p.train.batch_size, p.data.seq_length or p.model.block_size, 1)[0]
    ref, got = loaded.model(batch["input_ids"]).logits, packed(batch["input_ids"]).logits
    fp_model = load_run(fp_run_dir).model
    fp_fp16 = 2 * sum(t.numel() for t in unique_state_dict(fp_model).values() if t.is_floating_point())
    return {**sizes, "max_abs_logit_diff_packed_vs_fake_quant": (ref - got).abs().max().item(),
            "fp_model_fp16_bytes": fp_fp16, "file_ratio_vs_fp_model_fp16": fp_fp16 / sizes["file_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    parser.add_argument("--seed", type=int, default=1337, help="train.seed and data.seed of both runs")
    parser.add_argument("--fp-lr", default="1e-3",
                        help="peak LR of the fp run (nanoGPT's shakespeare_char: 1e-3), or several comma-separated (the gap uses the best)")
    parser.add_argument("--b158-lr", default=None,
                        help="peak LR of the b1.58 run, or several comma-separated (one run each; the gap uses the best); "
                        "default: the preset's")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.chdir(REPO)  # preset data paths are relative to the repo root

    base = read_preset_file(BASE)
    b158_lrs = [float(x) for x in args.b158_lr.split(",")] if args.b158_lr else [base["train"]["lr"]]
    results = {}
    for lr in [float(x) for x in args.fp_lr.split(",")]:
        results[f"fp32@{lr:g}"] = run(f"fp32_lr{lr:g}", variant(base, f"fp32_lr{lr:g}", args.steps, args.seed, lr, bitnet=False))
    for lr in b158_lrs:
        results[f"b1.58@{lr:g}"] = run(f"b158_lr{lr:g}", variant(base, f"b158_lr{lr:g}", args.steps, args.seed, lr, bitnet=True))
    best_fp = min((k for k in results if k.startswith("fp32")), key=lambda k: results[k]["val_loss"])
    best = min((k for k in results if k.startswith("b1.58")), key=lambda k: results[k]["val_loss"])
    fp, bit = results[best_fp], results[best]
    size = packed_check(REPO / bit["run_dir"], REPO / fp["run_dir"], RUNS_DIR / "b158_packed")
    summary = {
        "preset": str(BASE.relative_to(REPO)),
        "data": base["data"]["sources"][0]["path"],
        "model": base["model"],
        "steps": args.steps,
        "seed": args.seed,
        "batch_size": base["train"]["batch_size"],
        "seq_length": base["model"]["block_size"],
        "runs": results,
        "best_fp32": best_fp,
        "best_b158": best,
        "val_loss_gap_nats": bit["val_loss"] - fp["val_loss"],
        "val_loss_gap_relative": bit["val_loss"] / fp["val_loss"] - 1,
        "b158_tokens_per_sec_over_fp": bit["tokens_per_sec"] / fp["tokens_per_sec"],
        "packed_export": size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bitnet_quality.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\n{args.steps} steps each, seed {args.seed}, batch {summary['batch_size']} x {summary['seq_length']} chars, {summary['data']}")
    print(f"{'run':<16}{'peak lr':>9}{'schedule':>18}{'val loss':>10}{'val bpc':>9}{'train ce':>10}{'tokens/s':>10}{'MFU':>8}{'wall s':>8}")
    for name, r in results.items():
        mfu = f"{r['mfu']:.4f}" if r["mfu"] is not None else "-"
        print(f"{name:<16}{r['lr']:>9.1e}{r['lr_schedule']:>18}{r['val_loss']:>10.4f}{r['val_bpc']:>9.4f}{r['final_train_ce']:>10.4f}"
              f"{r['tokens_per_sec']:>10,.0f}{mfu:>8}{r['wall_seconds']:>8.1f}")
    print(f"val loss gap {best} - {best_fp}: {summary['val_loss_gap_nats']:+.4f} nats ({100 * summary['val_loss_gap_relative']:+.1f}%); "
          f"b1.58 speed: {summary['b158_tokens_per_sec_over_fp']:.2f}x fp32 (fake quant trains slower)")
    print("(tokens/s: median per-step training rate; wall s includes setup and the final 150-batch eval)")
    print(f"packed export: ternary layers {size['ternary_params']:,} weights -> {size['ternary_packed_bytes']:,} bytes "
          f"vs {size['ternary_fp16_bytes']:,} fp16 ({size['ternary_ratio_vs_fp16']:.2f}x); whole file {size['file_bytes']:,} bytes "
          f"(rest {size['rest_params']:,} params in {size['rest_dtype']}) vs {size['model_fp16_bytes']:,} fp16 "
          f"({size['model_ratio_vs_fp16']:.2f}x; the fp32 run's model in fp16: {size['fp_model_fp16_bytes']:,} bytes, "
          f"{size['file_ratio_vs_fp_model_fp16']:.2f}x); max |logit diff| packed vs fake-quant "
          f"{size['max_abs_logit_diff_packed_vs_fake_quant']:.2e}")
    print(f"wrote {args.out_dir / 'bitnet_quality.json'}")


if __name__ == "__main__":
    main()
