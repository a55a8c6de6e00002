"""Training throughput: tokens/s and MFU of the `gpt` model across sizes, fp32 vs bf16, eager vs compiled.

Each cell times `Trainer.train_step` (forward, backward, clip, fused AdamW, and the
next batch from the run's DataPipeline over tiny shakespeare bytes) of a Trainer
built from a preset of that size, after warm-up steps, and reports the median
step time, so the figures are the trainer's own. MFU = FLOPs/token x tokens/s / peak, where the
peak is a square-matmul probe in the same dtype on this machine (torchtitan and
nanochat use a data-sheet peak; CPUs have none, so we measure it).

usage: python bench/throughput.py [--sizes tiny,small,medium] [--steps 20] [--compile-sizes tiny,small] [--out bench/results/throughput.json]
       python bench/throughput.py --guard-cost [--sizes small,medium] [--repeats 3]
--guard-cost times the step guard (train.skip_nonfinite: the loss and grad-norm check) instead: bf16 eager steps with
it on and off, alternated `--repeats` times, with clipping on (the check reuses the clip's norm) and off (it pays for
a norm of its own); writes bench/results/step_guard_cost.json.
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
from lmforge.runtime import measure_matmul_peak_flops, setup_runtime
from lmforge.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LMFORGE_TEXT", REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))  # LMFORGE_TEXT: a copy elsewhere

# (n_layer, n_head, n_embd, block_size, batch_size); "tiny" is nanoGPT's CPU shakespeare_char model.
SIZES = {
    "tiny": (4, 4, 128, 64, 12),
    "small": (4, 4, 256, 128, 16),
    "medium": (6, 6, 384, 256, 16),
    "large": (8, 8, 512, 256, 8),
}


def time_config(size: str, precision: str, compiled: bool, steps: int, warmup: int, run_dir: Path, skip_nonfinite: bool = True,
                grad_clip: float = 1.0) -> dict:
    """Median time of `Trainer.train_step` (forward, backward, clip, fused AdamW, and the next batch from the
    run's DataPipeline) after `warmup` steps, on a preset built for this size."""
    n_layer, n_head, n_embd, block, batch = SIZES[size]
    preset = {
        "name": f"throughput_{size}",
        "model": {"arch": "gpt", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block},
        "data": {"sources": [{"type": "text", "path": str(DATA)}], "tokenizer": {"type": "byte"}, "validation": {"method": "tail", "fraction": 0.1}},
        "train": {"batch_size": batch, "max_steps": warmup + steps, "lr": 1e-4, "precision": precision, "compile": compiled,
                  "device": "auto", "eval_batches": 1, "progress_bar": False, "legacy_weights_file": None, "seed": 0,
                  "skip_nonfinite": skip_nonfinite, "grad_clip": grad_clip},
    }
    trainer = Trainer(load_preset(preset), run_dir)
    rt = trainer.runtime
    model = trainer.wrapped_model()
    model.train()
    data = iter(trainer.train_data)
    times = []
    t_compile = time.perf_counter()
    for i in range(warmup + steps):
        rt.synchronize()
        t0 = time.perf_counter()
        loss, _, _, _ = trainer.train_step(model, data)
        loss.item()  # a host sync per step, so the timer sees the step finish (the loop syncs every log_interval)
        rt.synchronize()
        if i == warmup - 1:
            t_compile = time.perf_counter() - t_compile
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    trainer.train_data.close()
    step_time = statistics.median(times)
    tok_s = batch * block / step_time
    flops_tok = trainer.model.flops_per_token(block)
    return {
        "size": size, "n_layer": n_layer, "n_embd": n_embd, "block_size": block, "batch_size": batch,
        "params": trainer.model.num_params(), "precision": precision, "compiled": compiled, "skip_nonfinite": skip_nonfinite,
        "step_ms": step_time * 1e3, "tokens_per_sec": tok_s, "flops_per_token": flops_tok,
        "achieved_tflops": flops_tok * tok_s / 1e12, "warmup_seconds": t_compile,
    }


def guard_cost(sizes: list[str], steps: int, warmup: int, repeats: int, out: Path) -> None:
    """Median step time with the step guard on and off, alternated so drift hits both alike."""
    rows = []
    for size in sizes:
        for grad_clip in (1.0, 0.0):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(repeats):
                for on in (True, False):
                    with tempfile.TemporaryDirectory() as run_dir:
                        times[on].append(time_config(size, "bf16", False, steps, warmup, Path(run_dir), on, grad_clip)["step_ms"])
            on_ms, off_ms = statistics.median(times[True]), statistics.median(times[False])
            rows.append({"size": size, "grad_clip": grad_clip, "guard_on_ms": on_ms, "guard_off_ms": off_ms,
                         "overhead": on_ms / off_ms - 1, "runs_on_ms": times[True], "runs_off_ms": times[False]})
            print(f"  {size:7s} clip {grad_clip:3.1f}: guard on {on_ms:8.1f} ms, off {off_ms:8.1f} ms ({on_ms / off_ms - 1:+.1%})", flush=True)
    print("\n| size | clipping | step ms, guard on | step ms, guard off | overhead |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {'on' if r['grad_clip'] else 'off'} | {r['guard_on_ms']:.1f} | {r['guard_off_ms']:.1f} | {r['overhead']:+.1%} |")
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu", "rows": rows}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small,medium")
    ap.add_argument("--compile-sizes", default="tiny,small", help="sizes also timed under torch.compile ('' = none)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="default bench/results/throughput.json (step_guard_cost.json with --guard-cost)")
    ap.add_argument("--guard-cost", action="store_true", help="time the step guard on vs off instead (see the module docstring)")
    ap.add_argument("--repeats", type=int, default=3, help="--guard-cost: alternated runs per setting")
    args = ap.parse_args()
    results = REPO / "bench" / "results"
    if args.guard_cost:
        guard_cost(args.sizes.split(","), args.steps, args.warmup, args.repeats, Path(args.out or results / "step_guard_cost.json"))
        return
    args.out = args.out or str(results / "throughput.json")
    peaks = {p: measure_matmul_peak_flops(setup_runtime("cpu" if not torch.cuda.is_available() else "auto", p)) for p in ("fp32", "bf16")}
    rows = []
    for size in args.sizes.split(","):
        for compiled in (False, True):
            if compiled and size not in args.compile_sizes.split(","):
                continue
            for precision in ("fp32", "bf16"):
                with tempfile.TemporaryDirectory() as run_dir:
                    row = time_config(size, precision, compiled, args.steps, args.warmup + (3 if compiled else 0), Path(run_dir))
                row["mfu"] = row["achieved_tflops"] * 1e12 / peaks[precision]
                row["mfu_vs_bf16_peak"] = row["achieved_tflops"] * 1e12 / peaks["bf16"]
                rows.append(row)
                print(f"  {size:7s} {'compiled' if compiled else 'eager':8s} {precision}: {row['tokens_per_sec']:9.0f} tok/s", flush=True)
    header = f"{'size':7s} {'params':>9s} {'mode':8s} {'prec':4s} {'step ms':>8s} {'tok/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'bf16/fp32':>9s}"
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["compiled"] == row["compiled"] and r["precision"] == "fp32")
        speed = row["tokens_per_sec"] / base["tokens_per_sec"]
        print(f"{row['size']:7s} {row['params']:9,d} {'compiled' if row['compiled'] else 'eager':8s} {row['precision']:4s} "
              f"{row['step_ms']:8.1f} {row['tokens_per_sec']:9.0f} {row['achieved_tflops']:8.3f} {row['mfu']:6.1%} {speed:9.2f}")
    print(f"\npeak (matmul probe): fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "peak_flops": peaks, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
