"""DDP vs FSDP (and activation checkpointing) through `lmforge train`: tokens/s and peak memory per process.

Each row is one `lmforge train` run (under torchrun for 2 processes) of `configs/shakespeare_char_10m.json`, or of
a wider model with `--model`, for a few steps on tiny shakespeare; tokens/s is the median of the trainer's own
per-step rows after the first two, peak memory the process's max RSS as the trainer logs it (rank 0; the ranks
are symmetric). It also states how large a model fits in this machine's memory for each mode, from the bytes a
parameter costs in training (fp32 weights, gradients and two AdamW moments: 16 bytes; DDP keeps all of them in
every process, FSDP 1/world of them) and the measured overhead at the model size run here.

usage: python bench/scaling.py [--steps 8] [--batch 4] [--model 8x512] [--runs 2xddp,2xfsdp] [--out bench/results/scaling.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "shakespeare_char_10m.json"
BYTES_PER_PARAM = 16
RUNS = [  # (processes, train.parallel, train.activation_checkpointing)
    (1, "ddp", "none"), (1, "ddp", "blocks"), (1, "ddp", "selective"), (2, "ddp", "none"), (2, "ddp", "blocks"),
    (2, "fsdp", "none"), (2, "fsdp", "blocks"), (2, "fsdp", "selective"),
]


def run_one(nproc: int, parallel: str, ac: str, args: argparse.Namespace, run_dir: Path) -> dict:
    layers, width = (int(x) for x in args.model.split("x"))
    overrides = [
        "--run-dir", str(run_dir), "--train.max_steps", str(args.steps), "--train.batch_size", str(args.batch),
        "--train.parallel", parallel, "--train.activation_checkpointing", ac, "--train.log_interval", "1",
        "--train.eval_interval", "1000000", "--train.eval_batches", "1", "--train.save_interval", "1000000",
        "--train.legacy_weights_file", "null", "--train.progress_bar", "false", "--train.precision", args.precision,
        "--train.peak_flops", "1e12", "--samples.max_new_tokens", "1", "--model.dropout", "0.0",
        "--model.n_layer", str(layers), "--model.n_embd", str(width), "--model.n_head", str(max(1, width // 64)),
    ]
    cmd = [sys.executable, "-m", "lmforge", "train", str(PRESET), *overrides]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "lmforge",
               "train", str(PRESET), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"processes": nproc, "parallel": parallel, "activation_checkpointing": ac, "error": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "tokens_per_sec" in r]
    steady = steps[2:] or steps
    return {
        "processes": nproc, "parallel": parallel, "activation_checkpointing": ac,
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in steady),
        "step_ms": statistics.median(1000 * nproc * args.batch * 256 / r["tokens_per_sec"] for r in steady),
        "peak_mem_gib_per_process": max(r["mem_gib"] for r in steps), "wall_s": wall,
    }


def params_of(model: str) -> int:
    from lmforge.config import load_preset
    from lmforge.models import build_model

    layers, width = (int(x) for x in model.split("x"))
    cfg = load_preset(str(PRESET)).model.model_copy(update={"n_layer": layers, "n_embd": width, "n_head": max(1, width // 64), "vocab_size": 65})
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="sequences of 256 per process")
    ap.add_argument("--model", default="8x512", help="LAYERSxWIDTH of the GPT (6x384 is nanoGPT's 10.65M)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--runs", default="", help="comma-separated NxPARALLEL[+AC] to run, e.g. 2xddp,2xfsdp+blocks; default all")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scaling.json"))
    args = ap.parse_args()
    names = {f"{n}x{p}" + ("" if ac == "none" else f"+{ac}"): (n, p, ac) for n, p, ac in RUNS}
    runs = [names[r] for r in args.runs.split(",")] if args.runs else RUNS
    n_params = params_of(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (nproc, parallel, ac) in enumerate(runs):
            row = run_one(nproc, parallel, ac, args, Path(tmp) / f"run{i}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    state_gib = n_params * BYTES_PER_PARAM / 2**30
    print(f"\nmodel {args.model}: {n_params:,} parameters ({state_gib:.2f} GiB of weights, gradients and AdamW state), "
          f"batch {args.batch} x 256 per process, {args.precision}, {os.cpu_count()} CPU cores, {mem_total / 2**30:.0f} GiB\n")
    print("| processes | parallel | activation checkpointing | tokens/s | step ms | peak GiB per process |")
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['processes']} | {r['parallel']} | {r['activation_checkpointing']} | failed | | |")
            continue
        print(f"| {r['processes']} | {r['parallel']} | {r['activation_checkpointing']} | {r['tokens_per_sec']:,.0f} | "
              f"{r['step_ms']:,.0f} | {r['peak_mem_gib_per_process']:.2f} |")
    fits = {}
    for nproc, parallel in ((1, "ddp"), (2, "ddp"), (2, "fsdp")):
        base = next((r for r in rows if r["processes"] == nproc and r["parallel"] == parallel and r["activation_checkpointing"] == "none"
                     and "error" not in r), None)
        if base is None:
            continue
        share = 1 / nproc if parallel == "fsdp" else 1.0
        overhead = base["peak_mem_gib_per_process"] - state_gib * share  # runtime, activations, buffers at this size
        per_process = mem_total / 2**30 / nproc - overhead
        fits[f"{nproc}x{parallel}"] = int(per_process * 2**30 / (BYTES_PER_PARAM * share))
    for key, n in fits.items():
        print(f"largest model whose training state fits with {key}: ~{n / 1e6:,.0f}M parameters (memory accounting, not trained)")
    out = {"model": args.model, "params": n_params, "batch_per_process": args.batch, "steps": args.steps, "precision": args.precision,
           "rows": rows, "fits_params": fits, "memory_gib": mem_total / 2**30, "torch": torch.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
