"""Where a training step's time goes: torch.profiler over a short `lmforge train` run and, beside it, over nanoGPT's
own `train.py` (from `NANOGPT_DIR`), on the same config, batch and number of steps.

`--recipe 10m` (default) runs nanoGPT's 10.65M shakespeare_char config (6x384, block 256, dropout 0.2) in both;
`--recipe cpu` runs nanoGPT's README CPU recipe (4x128, block 64, batch 12, no dropout) beside
shakespeare_char_cpu_best, or beside any `--preset` (shakespeare_char_cpu_speedrun). Each runs through its
own training loop (lmforge's Trainer via `lmforge.train`; nanoGPT's train.py via runpy, in a temporary copy prepared
by bench/vs_nanogpt.py's `nanogpt_copy`), for `--steps` steps with evaluation cut to one batch. The whole run is
profiled (model build and the one-batch evaluation included in both, a small share next to the steps), and the
table lists the ops by self CPU time divided by the number of steps.

usage: NANOGPT_DIR=~/nanoGPT python bench/profile_step.py [--recipe 10m|cpu] [--preset NAME] [--precision fp32]
                                                         [--batch N] [--steps N] [--out bench/results/profile_step.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lmforge.config import load_preset
from lmforge.training.trainer import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_nanogpt import NANOGPT_CPU_RECIPE, nanogpt_copy  # noqa: E402  (the patched, data-prepared copy of the user's nanoGPT)

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # name: (lmforge preset, batch, nanoGPT's arguments before the profiling ones, which override them)
    "10m": ("shakespeare_char_10m", 64, ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False"]),
    "cpu": ("shakespeare_char_cpu_best", 12, ["config/train_shakespeare_char.py", *NANOGPT_CPU_RECIPE]),
}


def table(prof, steps: int, top: int) -> list[dict]:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps, "share": e.self_cpu_time_total / total,
             "calls_per_step": e.count / steps} for e in rows]


def profile_lmforge(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    preset = load_preset(args.preset, {
        "train.precision": args.precision, "train.batch_size": args.batch, "train.max_steps": args.steps,
        "train.eval_interval": 1_000_000, "train.eval_batches": 1, "train.save_interval": 1_000_000, "train.log_interval": 1,
        "train.progress_bar": False, "train.legacy_weights_file": None, "samples.max_new_tokens": 1,
    })
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(preset, run_dir)
    return table(prof, args.steps, args.top)


def profile_nanogpt(args: argparse.Namespace, work: Path) -> list[dict]:
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[args.precision]
    argv = ["train.py", *RECIPES[args.recipe][2], f"--dtype={dtype}",
            f"--batch_size={args.batch}", f"--max_iters={args.steps - 1}", "--eval_interval=1000000", "--eval_iters=1",
            "--log_interval=1", "--always_save_checkpoint=False"]  # iterations 0..max_iters: `steps` optimizer steps
    old_argv, old_cwd, old_path = sys.argv, os.getcwd(), list(sys.path)
    try:
        sys.argv, sys.path[:0] = argv, [str(work)]  # train.py imports its model.py and configurator.py
        os.chdir(work)  # its configurator reads config/... and writes out_dir relative to the work tree
        with profile(activities=[ProfilerActivity.CPU]) as prof, contextlib.redirect_stdout(sys.stderr):
            runpy.run_path(str(work / "train.py"), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        os.chdir(old_cwd)
    return table(prof, args.steps, args.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="10m",
                    help="nanoGPT's 10.65M shakespeare_char config, or its README's CPU recipe")
    ap.add_argument("--preset", default=None, help="the lmforge preset; default: the recipe's mirror")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--batch", type=int, default=None, help="default: the recipe's (64, or 12 for cpu)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "profile_step.json"))
    args = ap.parse_args()
    preset, batch, _ = RECIPES[args.recipe]
    args.preset, args.batch = args.preset or preset, args.batch or batch
    report = {"recipe": args.recipe, "preset": args.preset, "precision": args.precision, "batch": args.batch, "steps": args.steps,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        report["lmforge"] = profile_lmforge(args, Path(tmp) / "run")
        if os.environ.get("NANOGPT_DIR"):
            report["nanoGPT"] = profile_nanogpt(args, nanogpt_copy(Path(os.environ["NANOGPT_DIR"]), Path(tmp)))
    for name in ("lmforge", "nanoGPT"):
        if name in report:
            print(f"\n{name}: top ops by self CPU time, ms per step ({args.precision}, batch {args.batch}, whole run / {args.steps})")
            print("| op | ms/step | share | calls/step |\n|---|---:|---:|---:|")
            for r in report[name]:
                print(f"| {r['op']} | {r['self_ms_per_step']:,.1f} | {r['share']:.1%} | {r['calls_per_step']:.1f} |")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
