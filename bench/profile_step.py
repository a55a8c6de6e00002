"""Where a training step's time goes: torch.profiler over lmforge's `Trainer.train_step` and, beside it, nanoGPT's
own step (its model.py and configure_optimizers, from `NANOGPT_DIR`), on the same config and batch shape.

Both run nanoGPT's 10.65M shakespeare_char config (6x384, block 256, dropout 0.2) by default; each profiles
`--steps` steps after `--warmup`, and the table lists the ops by self CPU time (the top `--top`), per step.
nanoGPT's step is its train.py loop body: forward under the same autocast, backward, clip 1.0, fused-if-available
AdamW, zero_grad(set_to_none); batches are random windows of tiny shakespeare ids like its get_batch.

usage: NANOGPT_DIR=~/nanoGPT python bench/profile_step.py [--preset shakespeare_char_10m] [--precision fp32]
                                                         [--batch 64] [--steps 3] [--out bench/results/profile_step.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lmforge.config import load_preset
from lmforge.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("LMFORGE_TEXT", REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))


def table(prof, steps: int, top: int) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "share": e.self_cpu_time_total / total,
             "calls_per_step": e.count / steps} for e in rows]


def profile_lmforge(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    preset = load_preset(args.preset, {"train.precision": args.precision, "train.batch_size": args.batch,
                                       "train.progress_bar": False, "train.legacy_weights_file": None})
    trainer = Trainer(preset, run_dir)
    model, data = trainer.wrapped_model(), iter(trainer.train_data)
    model.train()
    for _ in range(args.warmup):
        trainer.train_step(model, data)[0].item()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            trainer.train_step(model, data)[0].item()
    trainer.train_data.close()
    return table(prof, args.steps, args.top)


def profile_nanogpt(args: argparse.Namespace, nanogpt: Path) -> list[dict]:
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = TEXT.read_text()
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}  # nanoGPT's prepare.py: sorted characters
    ids = torch.tensor([vocab[c] for c in text[: int(len(text) * 0.9)]], dtype=torch.long)  # its train split
    cfg = module.GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, bias=False, vocab_size=len(vocab), dropout=0.2)
    torch.manual_seed(1337)
    model = module.GPT(cfg)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    ctx = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else torch.autocast("cpu", enabled=False)

    def step() -> None:
        ix = torch.randint(len(ids) - 256, (args.batch,))
        x = torch.stack([ids[i:i + 256] for i in ix])
        y = torch.stack([ids[i + 1:i + 257] for i in ix])
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    return table(prof, args.steps, args.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shakespeare_char_10m")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "profile_step.json"))
    args = ap.parse_args()
    report = {"preset": args.preset, "precision": args.precision, "batch": args.batch, "steps": args.steps,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        report["lmforge"] = profile_lmforge(args, Path(tmp) / "run")
    if os.environ.get("NANOGPT_DIR"):
        report["nanoGPT"] = profile_nanogpt(args, Path(os.environ["NANOGPT_DIR"]))
    for name in ("lmforge", "nanoGPT"):
        if name in report:
            print(f"\n{name}: top ops by self CPU time, ms per step ({args.precision}, batch {args.batch})")
            print("| op | ms/step | share | calls/step |\n|---|---:|---:|---:|")
            for r in report[name]:
                print(f"| {r['op']} | {r['self_ms_per_step']:,.1f} | {r['share']:.1%} | {r['calls_per_step']:.0f} |")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
