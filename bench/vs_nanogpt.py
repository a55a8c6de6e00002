"""lmforge vs nanoGPT on this machine, alternated: nanoGPT's 10.65M shakespeare_char config (ms/step, tokens/s), its
CPU recipe (wall time to the val loss nanoGPT reaches), and lmforge's start-up times.

nanoGPT is the user's own copy (`NANOGPT_DIR`, e.g. a clone of github.com/karpathy/nanoGPT; never committed here).
This script copies it into a temporary folder, writes tiny shakespeare there as `data/shakespeare_char/input.txt`
(so its `prepare.py` makes train.bin/val.bin without downloading) and patches one line of the copy's `train.py`:
stock nanoGPT never autocasts on CPU (`ctx = nullcontext() if device_type == 'cpu'`), so `--dtype=bfloat16` would
still run fp32; the copy autocasts whenever the dtype is not float32, as it does on CUDA. The CPU recipe passes
`--dtype=float32`, which is what stock nanoGPT runs on CPU (its default dtype there, float16, is never applied).

Rows:
- `10m`: nanoGPT `config/train_shakespeare_char.py` (6x384, block 256, batch 64, dropout 0.2) and lmforge's
  mirror `configs/shakespeare_char_10m.json` (and its `_best` variant), `--iters` steps each, logged every step
  (both then sync on the loss every step); median ms/step after `--warmup` steps; `--repeats` alternated runs.
- `cpu`: nanoGPT's README CPU recipe (4x128, block 64, batch 12, 2000 iters, eval_iters 20) to its final val loss,
  timed from launch to the line that prints it; lmforge's `shakespeare_char_cpu_best` (the same 4 x 128 model) and
  `shakespeare_char_cpu_speedrun` (2 x 128, the ablations' winners), each timed from launch to the
  first evaluation at or below that loss (start-up + the trainer's own elapsed time at that row).
- `startup`: `lmforge train` of a 3-step run to its first step row, and a restart of it to its first resumed row.
`--rows` reruns only the rows named; the others keep what the JSON already holds.
Precision: `--precision auto` takes bf16 where the CPU has AMX or AVX512-BF16, else fp32 (bf16 matmuls emulated
without them are ~600x slower than fp32 on an AVX2 CPU: a bf16 comparison there measures the emulation).

usage: NANOGPT_DIR=~/nanoGPT python bench/vs_nanogpt.py [--rows 10m,cpu,startup] [--iters 8] [--repeats 2]
                                                        [--precision auto|bf16|fp32] [--out bench/results/vs_nanogpt.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("LMFORGE_TEXT", REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
AUTOCAST_LINE = "ctx = nullcontext() if device_type == 'cpu' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)"
AUTOCAST_PATCH = "ctx = nullcontext() if ptdtype == torch.float32 else torch.amp.autocast(device_type=device_type, dtype=ptdtype)"
NANOGPT_CPU_RECIPE = ["--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                      "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
QUIET = ["--train.progress_bar", "false", "--train.legacy_weights_file", "null", "--samples.max_new_tokens", "1"]


def nanogpt_copy(source: Path, into: Path) -> Path:
    """A patched copy of the user's nanoGPT with tiny shakespeare prepared in it."""
    work = into / "nanoGPT"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns(".git", "out*", "*.bin", "*.pkl", "*.pt"))
    train = work / "train.py"
    code = train.read_text()
    if AUTOCAST_LINE not in code:
        sys.exit(f"vs_nanogpt: {train} does not hold the line this script patches:\n  {AUTOCAST_LINE}")
    train.write_text(code.replace(AUTOCAST_LINE, AUTOCAST_PATCH))
    data = work / "data" / "shakespeare_char"
    shutil.copyfile(TEXT, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return work


def run_streaming(cmd: list[str], cwd: Path) -> tuple[list[tuple[float, str]], float]:
    """(seconds since launch, line) for every stdout/stderr line, and the whole wall time; exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - t0, line.rstrip("\n")) for line in proc.stdout]
    if proc.wait() != 0:
        sys.exit(f"vs_nanogpt: {' '.join(cmd)} failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return lines, time.perf_counter() - t0


def nanogpt_10m(work: Path, iters: int, dtype: str) -> list[float]:
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", f"--dtype={dtype}",
           f"--max_iters={iters}", "--eval_interval=1000000", "--eval_iters=1", "--log_interval=1", "--always_save_checkpoint=False"]
    lines, _ = run_streaming(cmd, work)
    return [float(m.group(3)) for _, line in lines if (m := ITER_LINE.match(line))]


def lmforge_train(preset: str, run_dir: Path, *overrides: str) -> tuple[list[dict], float, float]:
    """The run's metrics rows, the seconds from launch to its first step row being written, and the wall time."""
    cmd = [sys.executable, "-m", "lmforge", "train", preset, "--run-dir", str(run_dir), *QUIET, *overrides]
    metrics = run_dir / "metrics.jsonl"
    before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_row = None
    while proc.poll() is None:  # the metrics file is read only until the first step row appears
        if first_row is None and metrics.exists() and len(metrics.read_text().splitlines()) > before:
            first_row = time.perf_counter() - t0
        time.sleep(0.005 if first_row is None else 0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"vs_nanogpt: {' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()[before:]]
    return rows, first_row if first_row is not None else wall, wall


def lmforge_10m(preset: str, iters: int, precision: str, tmp: Path) -> list[float]:
    rows, _, _ = lmforge_train(preset, tmp / f"{preset}_{time.monotonic_ns()}", "--train.max_steps", str(iters),
                               "--train.precision", precision, "--train.log_interval", "1", "--train.eval_interval", "1000000",
                               "--train.eval_batches", "1", "--train.save_interval", "1000000")
    steps = [r for r in rows if "tokens_per_sec" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}] + steps, steps)]
    return [1000 * t / r["tokens_per_sec"] for t, r in zip(tokens, steps)]


def row_10m(work: Path, args: argparse.Namespace, precision: str, tmp: Path) -> dict:
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision]
    runs: dict[str, list[float]] = {"nanoGPT": [], "shakespeare_char_10m": [], "shakespeare_char_10m_best": []}
    for repeat in range(args.repeats):
        runs["nanoGPT"].append(statistics.median(nanogpt_10m(work, args.iters + args.warmup, dtype)[args.warmup:]))
        for preset in ("shakespeare_char_10m", "shakespeare_char_10m_best"):
            runs[preset].append(statistics.median(lmforge_10m(preset, args.iters + args.warmup, precision, tmp)[args.warmup:]))
        print(f"  10m repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} ms/step" for k, v in runs.items()), flush=True)
    tokens_per_step = 64 * 256
    out = {name: {"ms_per_step": statistics.median(v), "runs_ms": v, "tokens_per_sec": tokens_per_step / statistics.median(v) * 1000}
           for name, v in runs.items()}
    for name in ("shakespeare_char_10m", "shakespeare_char_10m_best"):
        out[name]["tokens_per_sec_vs_nanogpt"] = out[name]["tokens_per_sec"] / out["nanoGPT"]["tokens_per_sec"]
    return {"precision": precision, "iters": args.iters, "warmup": args.warmup, **out}


CPU_PRESETS = ("shakespeare_char_cpu_best", "shakespeare_char_cpu_speedrun")  # the 4 x 128 recipe, and the fastest to the loss


def row_cpu(work: Path, args: argparse.Namespace, tmp: Path) -> dict:
    nano, ours = [], {preset: [] for preset in CPU_PRESETS}
    for repeat in range(args.repeats):
        lines, wall = run_streaming([sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_CPU_RECIPE], work)
        evals = [(t, float(m.group(3))) for t, line in lines if (m := EVAL_LINE.match(line))]
        at, target = evals[-1]
        nano.append({"seconds_to_val": at, "val_loss": target, "wall_s": wall})
        for preset in CPU_PRESETS:
            rows, first_row, wall = lmforge_train(preset, tmp / f"{preset}_{repeat}")
            steps = [r for r in rows if "tokens_per_sec" in r]
            startup = first_row - steps[0]["elapsed"]  # launch -> training began
            hit = next((r for r in rows if r.get("val_loss") is not None and r["val_loss"] <= target), None)
            ours[preset].append({
                "seconds_to_val": None if hit is None else startup + hit["elapsed"], "val_loss_at_target": hit and hit["val_loss"],
                "target_step": hit and hit["step"], "final_val_loss": next(r["val_loss"] for r in reversed(rows) if "val_loss" in r),
                "startup_s": startup, "wall_s": wall})
            ratio = None if hit is None else ours[preset][-1]["seconds_to_val"] / at
            print(f"  cpu repeat {repeat + 1}: nanoGPT val {target:.4f} at {at:.1f} s; {preset} "
                  + (f"val {hit['val_loss']:.4f} at {ours[preset][-1]['seconds_to_val']:.1f} s ({ratio:.2f}x)" if hit else "never reached it"),
                  flush=True)
    ratios = {preset: [o["seconds_to_val"] / n["seconds_to_val"] if o["seconds_to_val"] else None for n, o in zip(nano, runs)]
              for preset, runs in ours.items()}
    return {"nanoGPT": nano, **ours, "time_ratio": ratios}


def row_startup(tmp: Path) -> dict:
    run = tmp / "startup"
    probe = "import time; t = time.perf_counter(); import lmforge.training.trainer; print(time.perf_counter() - t)"
    imports = float(subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    _, first, wall = lmforge_train("shakespeare_char_cpu_best", run, "--train.max_steps", "3", "--train.log_interval", "1",
                                   "--train.eval_interval", "1000000", "--train.eval_batches", "1")
    _, resumed_first, resumed_wall = lmforge_train("shakespeare_char_cpu_best", run, "--train.max_steps", "6", "--train.log_interval", "1",
                                                   "--train.eval_interval", "1000000", "--train.eval_batches", "1")
    return {"import_s": imports, "launch_to_first_step_s": first, "three_step_run_wall_s": wall,
            "restart_to_first_resumed_step_s": resumed_first, "resumed_run_wall_s": resumed_wall}


def pick_precision(asked: str) -> str:
    if asked != "auto":
        return asked
    from lmforge.runtime import cpu_has_amx_or_avx512_bf16

    return "bf16" if cpu_has_amx_or_avx512_bf16() else "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10m,cpu,startup")
    ap.add_argument("--iters", type=int, default=8, help="10m: timed steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="alternated runs of each tool")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "vs_nanogpt.json"))
    args = ap.parse_args()
    rows = set(args.rows.split(","))
    source = os.environ.get("NANOGPT_DIR")
    if (rows & {"10m", "cpu"}) and not (source and (Path(source) / "train.py").is_file()):
        sys.exit("vs_nanogpt: set NANOGPT_DIR to a nanoGPT work tree (git clone https://github.com/karpathy/nanoGPT)")
    import torch

    precision = pick_precision(args.precision)
    out = Path(args.out)
    report: dict = json.loads(out.read_text()) if out.exists() else {}  # rows not run now keep their last measurement
    report.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
                   "threads": torch.get_num_threads()})
    with tempfile.TemporaryDirectory(prefix="vs_nanogpt-") as tmp_name:
        tmp = Path(tmp_name)
        work = nanogpt_copy(Path(source), tmp) if rows & {"10m", "cpu"} else None
        if work is not None:
            report["nanogpt_commit"] = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
        if "10m" in rows:
            report["10m"] = row_10m(work, args, precision, tmp)  # its own "precision" field
        if "cpu" in rows:
            report["cpu_recipe"] = row_cpu(work, args, tmp)
        if "startup" in rows:
            report["startup"] = row_startup(tmp)
    print_tables(report)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def print_tables(report: dict) -> None:
    if "10m" in report:
        r = report["10m"]
        print(f"\n10.65M shakespeare_char config, {r['precision']}, median of {len(r['nanoGPT']['runs_ms'])} alternated runs")
        print("| run | ms/step | tokens/s | vs nanoGPT |\n|---|---:|---:|---:|")
        for name in ("nanoGPT", "shakespeare_char_10m", "shakespeare_char_10m_best"):
            x = r[name]
            print(f"| {name} | {x['ms_per_step']:,.0f} | {x['tokens_per_sec']:,.0f} | {x.get('tokens_per_sec_vs_nanogpt', 1.0):.2f}x |")
    if "cpu_recipe" in report:
        r = report["cpu_recipe"]
        print("\nnanoGPT's CPU recipe: wall time from launch to nanoGPT's final val loss")
        print("| repeat | nanoGPT val | nanoGPT s | lmforge preset | its val | its s | ratio |\n|---:|---:|---:|---|---:|---:|---:|")
        for preset in (p for p in CPU_PRESETS if p in r):
            for i, (n, o, ratio) in enumerate(zip(r["nanoGPT"], r[preset], r["time_ratio"][preset]), 1):
                print(f"| {i} | {n['val_loss']:.4f} | {n['seconds_to_val']:.1f} | {preset} | {o['val_loss_at_target'] or float('nan'):.4f} | "
                      f"{o['seconds_to_val'] or float('nan'):.1f} | {ratio if ratio is not None else float('nan'):.2f}x |")
    if "startup" in report:
        s = report["startup"]
        print(f"\nstart-up: imports {s['import_s']:.2f} s; launch -> first step {s['launch_to_first_step_s']:.2f} s; "
              f"restart -> first resumed step {s['restart_to_first_resumed_step_s']:.2f} s")


if __name__ == "__main__":
    main()
