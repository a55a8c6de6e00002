"""Seed 001's fast vs high-quality configurations through the async API on a real-text classification task.

Task: which shared corpus does a line come from, KJV (verse, reference stripped) or WordNet (definition line)?
Inputs are the first 48 characters. Train: 2,000 samples; a separate val file of 400 other lines
(`val_data_path`, read whole). Each preset trains `--epochs` epochs with create_training_pipeline(preset=...).
Prints a table and writes bench/results/phase5_pipeline.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from lmforge import create_training_pipeline

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "phase5_pipeline.json"


def write_samples(path: Path, kjv: list[str], dictionary: list[str]) -> None:
    samples = []
    for a, b in zip(kjv, dictionary):
        samples += [{"input": a, "target": "bible"}, {"input": b, "target": "dictionary"}]
    path.write_text(json.dumps({"samples": samples}))


async def run(preset: str, train: Path, val: Path, run_dir: Path, epochs: int) -> dict:
    pipeline = create_training_pipeline(
        model=None, preset=preset, train_data_path=train, val_data_path=val, experiment_name=preset,
        task="classification", epochs=epochs, seq_length=48, eval_batches=100, log_interval=10, run_dir=str(run_dir),
    )
    epoch_rows = []
    pipeline.register_callback("epoch_end", lambda e, m: epoch_rows.append({"epoch": e, "loss": m["loss"], "val_accuracy": m.get("val_accuracy")}))
    t0 = time.perf_counter()
    result = await pipeline.setup().train()
    wall = time.perf_counter() - t0
    if not result.success:
        raise SystemExit(f"{preset}: {result.error}")
    m = result.metrics
    return {
        "preset": preset, "epochs": m["epochs_completed"], "steps": m["steps"], "steps_per_epoch": m["steps_per_epoch"],
        "final_loss": m["final_loss"], "best_val_loss": m["best_val_loss"], "final_accuracy": m["final_accuracy"],
        "best_accuracy": m["best_accuracy"], "train_seconds": m["training_time_hours"] * 3600, "wall_seconds": wall,
        "tokens_per_sec": m["tokens"] / (m["training_time_hours"] * 3600), "per_epoch": epoch_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    kjv = [line.split(" ", 1)[1][:48] for line in (DATA / "kjv.txt").read_text().splitlines()]
    dictionary = [line[:48] for line in (DATA / "dictionary.txt").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_samples(tmp / "train.json", kjv[:10000:10], dictionary[:50000:50])
        write_samples(tmp / "val.json", kjv[5:10000:50], dictionary[25:50000:250])
        rows = [asyncio.run(run(p, tmp / "train.json", tmp / "val.json", tmp / p, args.epochs)) for p in ("phase5_fast_cpu", "phase5_quality_cpu")]
    print(f"{'preset':<20} {'epochs':>6} {'steps':>6} {'final_loss':>10} {'best_val_loss':>13} {'final_acc':>9} {'best_acc':>8} {'train_s':>8} {'tok/s':>8}")
    for r in rows:
        print(f"{r['preset']:<20} {r['epochs']:>6} {r['steps']:>6} {r['final_loss']:>10.4f} {r['best_val_loss']:>13.4f} "
              f"{r['final_accuracy']:>9.4f} {r['best_accuracy']:>8.4f} {r['train_seconds']:>8.1f} {r['tokens_per_sec']:>8.0f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"task": "kjv vs dictionary line classification, 2000 train / 400 val samples, 48 chars", "rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
