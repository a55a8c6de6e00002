"""Does the forge loss help? VGT + forge vs VGT + plain cross-entropy vs a GPT of about the same size.

All runs start from configs/forge_vgt_cpu.json (real WikiText-2 text, char
level) and differ only where named below: same data, split, batch, sequence
length, LR schedule, seed and number of steps. Each run is evaluated on the
same held-out tail (val_loss in nats/char and val_bpc). Tokens/s is the median
of the per-step rates the trainer logs (steps only, no eval), after the first
10 steps.

usage: python bench/forge_compare.py [--steps 300] [--seed 1337] [--with-seed-peak] [--out-dir bench/results]
Writes forge_compare.json and forge_terms.png (α and each forge term over the
forge run's steps) to --out-dir and prints a table. Run dirs go to
runs/forge_compare/ and are replaced on each call.
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import lmforge  # noqa: E402
from lmforge.config import apply_overrides, read_preset_file, validate_preset  # noqa: E402
from lmforge.data import build_val_batches  # noqa: E402
from lmforge.inference import load_run  # noqa: E402
from lmforge.objectives import compute_forge_loss  # noqa: E402
from lmforge.training.metrics import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "forge_vgt_cpu.json"
RUNS_DIR = REPO / "runs" / "forge_compare"
SKIP_STEPS = 10  # first steps pay for allocator warm-up; left out of tokens/s

# What each run changes in the base preset (dotted overrides).
VARIANTS: dict[str, dict[str, Any]] = {
    "vgt_forge": {},
    "vgt_ce": {"objective": {"name": "clm"}},
    # 4 x 128 GPT (lmforge defaults: RoPE, RMSNorm, SwiGLU, tied head): about VGT's parameter count
    "gpt_ce": {"objective": {"name": "clm"},
               "model": {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.05}},
}
SEED_PEAK = {"objective.controller.start": 1.0, "objective.controller.peak": 30.0, "objective.controller.floor": 1.0}


def variant_preset(base: dict, name: str, changes: dict[str, Any], steps: int, seed: int) -> dict:
    raw = apply_overrides(base, {"train.max_steps": steps, "train.seed": seed, "data.seed": seed, "train.log_interval": 1, "train.progress_bar": False,
                                 "train.milestone_interval": 0, "samples.max_new_tokens": 100})
    for key, value in changes.items():
        if "." in key:
            raw = apply_overrides(raw, {key: value})
        else:
            raw[key] = value
    raw["name"] = name
    return raw


def run(name: str, raw: dict) -> dict[str, Any]:
    run_dir = RUNS_DIR / name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a resume of an older one
    print(f"--- {name}", flush=True)
    result = lmforge.train(raw, run_dir=run_dir)
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    final = load_run(run_dir)
    return {
        "params": final.model.num_params(),
        "steps": result.steps,
        "val_loss": result.last_val["val_loss"],
        "val_bpc": result.last_val["val_bpc"],
        "val_accuracy": result.last_val["val_accuracy"],
        "final_train_ce": rows[-1]["ce"],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rows[SKIP_STEPS:]),
        "wall_seconds": result.elapsed,
        **forge_terms_on_val(final),
        "metrics": str(run_dir / "metrics.jsonl"),
    }


@torch.no_grad()
def forge_terms_on_val(loaded) -> dict[str, float]:
    """RMS(h) and 1 − cos(h, emb(target)) of the final model on the val batches: did the regularizers move h
    compared with the runs that never saw them? (α = 0, so the loss is plain CE; only the terms are read.)"""
    p, model = loaded.preset, loaded.model
    seq = p.data.seq_length or p.model.block_size
    batches = build_val_batches(p.data, loaded.tokenizer, p.train.batch_size, seq, p.train.eval_batches)
    sums = {"val_h_norm": 0.0, "val_cos_loss": 0.0}
    for batch in batches:
        out = model(batch["input_ids"])
        _, m = compute_forge_loss(out.logits, batch["labels"], out.hidden_states, model.get_input_embeddings(), out.logits.size(-1), 0.0)
        sums["val_h_norm"] += m["h_norm"].item() / len(batches)
        sums["val_cos_loss"] += m["cos_loss"].item() / len(batches)
    return sums


def plot_terms(metrics_path: Path, out: Path, h_norm_weight: float, cos_weight: float) -> None:
    rows = [r for r in read_metrics(metrics_path.parent) if "loss" in r]
    steps = [r["step"] for r in rows]
    fig, (ax_a, ax_l, ax_r) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax_a.plot(steps, [r["alpha"] for r in rows], color="k")
    ax_a.set_ylabel("α (forge controller)")
    ax_l.plot(steps, [r["loss"] for r in rows], label="total loss", lw=1)
    ax_l.plot(steps, [r["ce"] for r in rows], label="cross-entropy", lw=1)
    ax_l.plot(steps, [r["alpha"] * h_norm_weight * r["h_norm"] for r in rows], label=f"α·{h_norm_weight}·RMS(h)", lw=1)
    ax_l.plot(steps, [r["alpha"] * cos_weight * r["cos_loss"] for r in rows], label=f"α·{cos_weight}·(1−cos)", lw=1)
    ax_l.set_ylabel("nats (train)")
    ax_l.legend()
    ax_r.plot(steps, [r["h_norm"] for r in rows], label="RMS(h)", lw=1)
    ax_r.plot(steps, [r["cos_loss"] for r in rows], label="1 − cos(h, emb(target))", lw=1)
    ax_r.set_ylabel("unweighted term")
    ax_r.set_xlabel("step")
    ax_r.legend()
    fig.suptitle("Forge-VGT on WikiText-2 (char): α and each loss term")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None, help="train.seed and data.seed of every run (default: the preset's): init, dropout and data order")
    parser.add_argument("--with-seed-peak", action="store_true", help="also train VGT + forge with the seed's controller (α 1 -> 30 -> 1)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.chdir(REPO)  # preset data paths are relative to the repo root

    base = read_preset_file(BASE)
    steps = args.steps or base["train"]["max_steps"]
    seed = base["train"].get("seed", 1337) if args.seed is None else args.seed
    variants = dict(VARIANTS)
    if args.with_seed_peak:
        variants["vgt_forge_seed_peak"] = SEED_PEAK
    results = {name: run(name, variant_preset(base, name, changes, steps, seed)) for name, changes in variants.items()}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    forge_cfg = validate_preset(base).objective
    plot_terms(Path(results["vgt_forge"]["metrics"]), args.out_dir / "forge_terms.png", forge_cfg.h_norm_weight, forge_cfg.cos_weight)
    summary = {
        "preset": str(BASE.relative_to(REPO)),
        "steps": steps,
        "seed": seed,
        "batch_size": base["train"]["batch_size"],
        "seq_length": base["model"]["block_size"],
        "data": base["data"]["sources"][0]["path"],
        "variants": variants,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in results.items()},
        "vgt_tokens_per_sec_over_gpt": results["vgt_ce"]["tokens_per_sec"] / results["gpt_ce"]["tokens_per_sec"],
    }
    (args.out_dir / "forge_compare.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\n{steps} steps each, seed {seed}, batch {summary['batch_size']} x {summary['seq_length']} chars, {summary['data']}")
    print(f"{'run':<22}{'params':>10}{'val CE (nats)':>15}{'val bpc':>9}{'val acc':>9}{'tokens/s':>10}{'wall s':>8}"
          f"{'RMS(h)':>8}{'1-cos':>7}")
    for name, r in results.items():
        print(f"{name:<22}{r['params']:>10,}{r['val_loss']:>15.4f}{r['val_bpc']:>9.4f}{r['val_accuracy']:>9.3f}"
              f"{r['tokens_per_sec']:>10,.0f}{r['wall_seconds']:>8.1f}{r['val_h_norm']:>8.3f}{r['val_cos_loss']:>7.3f}")
    print(f"wrote {args.out_dir / 'forge_compare.json'} and {args.out_dir / 'forge_terms.png'}")


if __name__ == "__main__":
    main()
