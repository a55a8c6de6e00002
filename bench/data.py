"""Data pipeline speed against the trainer's appetite, and peak memory while streaming a >= 1 GB JSONL file.

1. Chain throughput: documents/s and tokens/s per source type and tokenizer, with 0 and 2 DataLoader
   workers. The corpus is ../shared/data/tinyshakespeare.txt (1.1 MB of real text), written once into each
   format: text, jsonl (one record per paragraph), json_samples and pickle (the same paragraphs as records),
   and, for the pre-tokenized formats, hdf5 rows and a binary .bin of its byte ids (their tokenizer column
   is "-": they skip encoding). Each configuration runs the whole chain, DataPipeline (read -> tokenize ->
   pack -> shuffle -> batch) at batch 16 x 256 tokens, for --seconds after the first batch (which pays for
   worker start-up). tokens/s counts batch tokens; documents/s is tokens/s divided by the mean tokens per
   document of that source and tokenizer, measured in one pass. PDFs are left out: their cost is pypdf's
   extraction, not this pipeline's.
2. Trainer consumption: tokens/s of a full training step (forward, backward, clip, fused AdamW) for the
   models the CPU presets train (bench/throughput.py's "tiny" = nanoGPT's CPU shakespeare_char model in
   fp32, "small" = quickstart_cpu's 4x256 in bf16), eager. The chain must outrun the fastest of them.
3. Streaming memory: a JSONL file of --rss-gb gigabytes is generated from every corpus in ../shared/data
   (records of ~4 KB of real text, the corpora repeated until the size is reached) and streamed once
   through DataPipeline (byte tokenizer, 0 workers) in a fresh child process, which reports its peak RSS
   and RSS samples along the way. Peak RSS must not grow with the file size.

usage: python bench/data.py [--seconds 1.5] [--rss-gb 0.1,1.0] [--skip-throughput] [--skip-rss]
                            [--out bench/results/data.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
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
SHARED = REPO.parent / "shared" / "data"
CORPUS = SHARED / "tinyshakespeare.txt"
RECORD_CHARS = 4096
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


def trainer_consumption(steps: int) -> list[dict[str, Any]]:
    """Training-step tokens/s of the CPU presets' models (bench/throughput.py's harness)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import time_config

    tokens = torch.from_numpy(np.frombuffer(CORPUS.read_bytes(), dtype=np.uint8).astype(np.int64))
    rows = []
    for size, precision in (("tiny", "fp32"), ("small", "bf16")):
        row = time_config(size, precision, False, steps, 2, tokens)
        rows.append({k: row[k] for k in ("size", "n_layer", "n_embd", "block_size", "batch_size", "params", "precision", "step_ms", "tokens_per_sec")})
        print(f"trainer {size:<6} {precision}  {row['tokens_per_sec']:>10,.0f} tokens/s", flush=True)
    return rows


def write_big_jsonl(path: Path, gigabytes: float) -> int:
    """Records of ~RECORD_CHARS characters of real text from every shared corpus, repeated to the size."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(SHARED.rglob("*.txt"))]
    records = []
    for text in texts:
        for i in range(0, len(text), RECORD_CHARS):
            records.append(json.dumps({"text": text[i:i + RECORD_CHARS]}) + "\n")
    block = "".join(records).encode("utf-8")
    target = int(gigabytes * 1e9)
    written = 0
    with open(path, "wb") as f:
        while written < target:
            piece = block
            if target - written < len(block):
                piece = block[: block.rfind(b"\n", 0, target - written) + 1]  # whole records only
                if not piece:
                    break
            f.write(piece)
            written += len(piece)
    return written


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (VmRSS) or its high-water mark (VmHWM), from /proc.

    Not getrusage's ru_maxrss: that survives exec, so a child started from a big parent would
    report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stream_once(path: Path) -> dict[str, Any]:
    """Child process: one pass of the whole chain over `path`; peak RSS and RSS at every 10% of the file."""
    from lmforge.data.tokenizers import ByteTokenizer

    size = path.stat().st_size
    cfg = DataConfig.model_validate({
        "sources": [{"type": "jsonl", "path": str(path)}], "tokenizer": {"type": "byte"},
        "validation": {"method": "tail", "fraction": 0.001}, "num_workers": 0, "shuffle_buffer": 256,
    })
    pipe = DataPipeline(cfg, ByteTokenizer(), batch_size=BATCH, seq_length=SEQ)
    rss_start = rss_mib()
    samples, tokens, t0 = [], 0, time.perf_counter()
    goal = size * (1 - 0.001) * 0.98  # byte tokens ~ file bytes minus JSON syntax; stop before the loop wraps
    next_mark = 0.1
    while tokens < goal:
        batch = next(pipe)
        tokens += int((batch["labels"] != -100).sum())
        if tokens >= next_mark * goal:
            samples.append({"fraction": round(next_mark, 1), "rss_mib": rss_mib()})
            next_mark += 0.1
    seconds = time.perf_counter() - t0
    peak = rss_mib("VmHWM")
    return {"file_bytes": size, "tokens": tokens, "seconds": seconds, "tokens_per_sec": tokens / seconds,
            "rss_start_mib": rss_start, "peak_rss_mib": peak, "rss_samples": samples}


def streaming_memory(sizes_gb: list[float], folder: Path) -> list[dict[str, Any]]:
    rows = []
    for gb in sizes_gb:
        path = folder / f"stream_{gb:g}gb.jsonl"
        t0 = time.perf_counter()
        write_big_jsonl(path, gb)
        gen_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(path)], capture_output=True, text=True, check=True)
        row = {"gigabytes": gb, "generate_seconds": gen_s, **json.loads(out.stdout.strip().splitlines()[-1])}
        path.unlink()
        rows.append(row)
        print(f"stream {gb:g} GB: {row['tokens']:,} tokens in {row['seconds']:.0f} s, peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="timed seconds per configuration, after the first batch")
    ap.add_argument("--trainer-steps", type=int, default=8, help="timed training steps per model")
    ap.add_argument("--rss-gb", default="0.1,1.0", help="comma-separated JSONL sizes in GB for the streaming-memory test")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "data.json"))
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.rss_child:
        print(json.dumps(stream_once(Path(args.rss_child))))
        return
    t_start = time.perf_counter()
    rows, trainer, streaming = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_throughput:
            specs = write_formats(folder)
            for kind, spec in specs.items():
                for tokenizer_type in TOKENIZERS if kind in TEXT_TYPES else ("byte",):
                    for workers in (0, 2):
                        row = measure(spec, tokenizer_type, workers, folder / "tokenizers", args.seconds)
                        rows.append(row)
                        print(f"{row['source']:<13} {row['tokenizer']:<5} workers={workers}  {row['docs_per_sec']:>10,.0f} docs/s  "
                              f"{row['tokens_per_sec']:>12,.0f} tokens/s", flush=True)
            trainer = trainer_consumption(args.trainer_steps)
        if not args.skip_rss:
            streaming = streaming_memory([float(x) for x in args.rss_gb.split(",")], folder)
    out = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "corpus": CORPUS.name, "batch_size": BATCH, "seq_length": SEQ, "seconds_per_config": args.seconds,
        "total_seconds": time.perf_counter() - t_start, "rows": rows, "trainer": trainer, "streaming": streaming,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    if rows:
        need = max(t["tokens_per_sec"] for t in trainer)
        print(f"\n| source | tokenizer | workers | documents/s | tokens/s | x fastest trainer ({need:,.0f} tok/s) |\n|---|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['source']} | {r['tokenizer']} | {r['workers']} | {r['docs_per_sec']:,.0f} | {r['tokens_per_sec']:,.0f} | {r['tokens_per_sec'] / need:,.0f} |")
        print("\n| trainer model | params | precision | step ms | tokens/s |\n|---|---:|---|---:|---:|")
        for t in trainer:
            print(f"| {t['size']} {t['n_layer']}x{t['n_embd']} (batch {t['batch_size']} x {t['block_size']}) | {t['params']:,} | {t['precision']} | {t['step_ms']:.1f} | {t['tokens_per_sec']:,.0f} |")
        slowest = min(rows, key=lambda r: r["tokens_per_sec"])
        verdict = "not the bottleneck" if slowest["tokens_per_sec"] > need else "THE BOTTLENECK"
        print(f"\nslowest chain ({slowest['source']}, {slowest['tokenizer']}, workers={slowest['workers']}): "
              f"{slowest['tokens_per_sec'] / need:.1f}x the fastest trainer: the data chain is {verdict}")
    if streaming:
        print("\n| JSONL size | tokens | seconds | tokens/s | RSS at start MiB | peak RSS MiB | RSS at 10% .. 100% MiB |\n|---:|---:|---:|---:|---:|---:|---|")
        for s in streaming:
            trace = " ".join(f"{x['rss_mib']:.0f}" for x in s["rss_samples"])
            print(f"| {s['file_bytes'] / 1e9:.2f} GB | {s['tokens']:,} | {s['seconds']:.0f} | {s['tokens_per_sec']:,.0f} | {s['rss_start_mib']:.0f} | {s['peak_rss_mib']:.0f} | {trace} |")
    print(f"\nwrote {args.out} ({out['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
