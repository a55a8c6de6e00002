"""Data pipeline throughput: documents/s and tokens/s per source type and tokenizer, with 0 and 2 DataLoader workers.

The corpus is ../shared/data/tinyshakespeare.txt (1.1 MB of real text), written once into each format:
text, jsonl (one record per paragraph), json_samples and pickle (the same paragraphs as records), and,
for the pre-tokenized formats, hdf5 rows and a binary .bin of its byte ids (their tokenizer column is
"-": they skip encoding). Each configuration runs the whole chain, DataPipeline (read -> tokenize ->
pack -> shuffle -> batch) at batch 16 x 256 tokens, for --seconds after the first batch (which pays for
worker start-up). tokens/s counts batch tokens; documents/s is tokens/s divided by the mean tokens per
document of that source and tokenizer, measured in one pass. PDFs are left out: their cost is pypdf's
extraction, not this pipeline's.

usage: python bench/data_throughput.py [--seconds 1.5] [--out bench/results/data_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data import DataConfig, DataPipeline, build_tokenizer, iter_texts
from lmforge.data.prepare import document_ids
from lmforge.data.stream import build_sources

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
BATCH, SEQ = 16, 256
TEXT_TYPES = ("text", "jsonl", "json_samples", "pickle")
TOKEN_TYPES = ("hdf5", "binary")
TOKENIZERS = ("byte", "char", "bpe")


def write_formats(folder: Path) -> dict[str, dict[str, Any]]:
    """The corpus in every benchmarked format; returns each format's source spec."""
    import h5py

    text = CORPUS.read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    (folder / "play.txt").write_text(text)
    (folder / "play.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    (folder / "play.json").write_text(json.dumps({"samples": [{"text": p} for p in paragraphs]}))
    (folder / "play.pkl").write_bytes(pickle.dumps([{"text": p} for p in paragraphs]))
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    ids.tofile(folder / "play.bin")
    (folder / "play.bin.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 256, "tokenizer": "byte"}))
    rows = len(ids) // 256
    with h5py.File(folder / "play.h5", "w") as f:
        f.create_group("dataset").create_dataset("inputs", data=ids[: rows * 256].reshape(rows, 256).astype(np.int32), chunks=(64, 256))
    return {
        "text": {"type": "text", "path": str(folder / "play.txt")},
        "jsonl": {"type": "jsonl", "path": str(folder / "play.jsonl")},
        "json_samples": {"type": "json_samples", "path": str(folder / "play.json")},
        "pickle": {"type": "pickle", "path": str(folder / "play.pkl")},
        "hdf5": {"type": "hdf5", "path": str(folder / "play.h5"), "eos": False},
        "binary": {"type": "binary", "path": str(folder / "play.bin"), "chunk_tokens": 4096},
    }


def measure(spec: dict, tokenizer_type: str, workers: int, tok_dir: Path, seconds: float) -> dict[str, Any]:
    cfg = DataConfig.model_validate({
        "sources": [spec], "tokenizer": {"type": tokenizer_type, "vocab_size": 2048, "train_chars": 1_000_000},
        "validation": {"method": "hash", "fraction": 0.01}, "num_workers": workers, "shuffle_buffer": 256,
    })
    tokenizer = build_tokenizer(cfg.tokenizer, tok_dir / tokenizer_type, lambda: iter_texts(cfg, "all", cfg.tokenizer.train_chars))
    [source] = build_sources(cfg, "train")
    per_doc = [len(document_ids(doc, tokenizer)) for doc, _ in source.documents(None, 0)]
    pipe = DataPipeline(cfg, tokenizer, batch_size=BATCH, seq_length=SEQ)
    next(pipe)
    t0, batches = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        next(pipe)
        batches += 1
    elapsed = time.perf_counter() - t0
    pipe.close()
    tokens_per_sec = batches * BATCH * SEQ / elapsed
    return {
        "source": spec["type"], "tokenizer": tokenizer_type if spec["type"] in TEXT_TYPES else "-", "workers": workers,
        "tokens_per_sec": tokens_per_sec, "docs_per_sec": tokens_per_sec / float(np.mean(per_doc)),
        "tokens_per_doc": float(np.mean(per_doc)), "batches": batches, "seconds": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per configuration, after the first batch")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "data_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        specs = write_formats(folder)
        for kind, spec in specs.items():
            for tokenizer_type in TOKENIZERS if kind in TEXT_TYPES else ("byte",):
                for workers in (0, 2):
                    row = measure(spec, tokenizer_type, workers, folder / "tokenizers", args.seconds)
                    rows.append(row)
                    print(f"{row['source']:<13} {row['tokenizer']:<5} workers={workers}  {row['docs_per_sec']:>10,.0f} docs/s  "
                          f"{row['tokens_per_sec']:>12,.0f} tokens/s", flush=True)
    out = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "corpus": CORPUS.name, "batch_size": BATCH, "seq_length": SEQ, "seconds_per_config": args.seconds,
        "total_seconds": time.perf_counter() - t_start, "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n| source | tokenizer | workers | documents/s | tokens/s |\n|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['tokenizer']} | {r['workers']} | {r['docs_per_sec']:,.0f} | {r['tokens_per_sec']:,.0f} |")
    print(f"\nwrote {args.out} ({out['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
