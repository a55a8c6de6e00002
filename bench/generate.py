"""Decoding speed: lmforge with and without the KV cache, transformers' `generate` on the exported weights,
and speculative decoding with a small draft run.

Two char-level runs are trained first on tiny shakespeare (a 4x128 target, a
1x64 draft, a few hundred steps each), so the draft agrees with the target
often enough for acceptance to mean something. Every row decodes the same
prompt greedily for the same number of new tokens at batch 1, fp32 on CPU;
tokens/s is new tokens over the best of `--repeats` wall times. The
transformers row loads the `lmforge export --format hf` folder with
`AutoModelForCausalLM.from_pretrained` and must produce the same tokens.

usage: python bench/generate.py [--new-tokens 200] [--repeats 3] [--out bench/results/generate.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from lmforge.config import load_preset
from lmforge.export.hf import export_hf
from lmforge.generation import SamplingConfig, generate, speculative_generate
from lmforge.inference import load_run
from lmforge.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
PROMPT = "ROMEO:\nBut soft, what light"


def run_preset(name: str, n_layer: int, n_head: int, n_embd: int, steps: int) -> dict:
    return {
        "name": name,
        "model": {"arch": "gpt", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": 256},
        "data": {"sources": [{"type": "text", "path": str(DATA)}], "tokenizer": {"type": "char"},
                 "validation": {"method": "tail", "fraction": 0.1}, "seq_length": 64},
        "train": {"batch_size": 16, "max_steps": steps, "lr": 3e-3, "precision": "fp32", "eval_interval": steps,
                  "eval_batches": 4, "save_interval": steps, "progress_bar": False, "log_interval": 50,
                  "lr_schedule": {"name": "warmup_cosine", "warmup_steps": 20}},
        "samples": {"prompts": [], "max_new_tokens": 1},
    }


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Smallest wall time of `repeats` calls after one untimed warm-up (the machine is shared: the minimum is the
    least disturbed) and the last result."""
    fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target-steps", type=int, default=300)
    ap.add_argument("--draft-steps", type=int, default=300)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "generate.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        run_bench(args, Path(tmp))


def run_bench(args: argparse.Namespace, tmp: Path) -> None:
    """Train both runs under `tmp`, time every decoder, print the table and write the JSON."""
    t0 = time.perf_counter()
    train(load_preset(run_preset("target", 4, 4, 128, args.target_steps)), tmp / "target")
    train(load_preset(run_preset("draft", 1, 2, 64, args.draft_steps)), tmp / "draft")
    train_s = time.perf_counter() - t0
    target, draft = load_run(tmp / "target"), load_run(tmp / "draft")
    ids = target.tokenizer.encode(PROMPT)
    n = args.new_tokens
    greedy = SamplingConfig(temperature=0)

    rows: list[dict] = []

    def add(name: str, seconds: float, tokens: list[int], **extra) -> None:
        rows.append({"decoder": name, "new_tokens": len(tokens), "seconds": round(seconds, 4),
                     "tokens_per_sec": round(len(tokens) / seconds, 1), **extra})

    s, cached = best_time(lambda: generate(target.model, [ids], n, greedy)[0], args.repeats)
    add("lmforge, KV cache", s, cached)
    s, uncached = best_time(lambda: generate(target.model, [ids], n, greedy, use_cache=False)[0], args.repeats)
    add("lmforge, no cache", s, uncached, same_tokens=uncached == cached)

    from transformers import AutoModelForCausalLM

    export_hf(target.model, target.tokenizer, tmp / "hf")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp / "hf"), local_files_only=True).eval()
    x = torch.tensor([ids])

    def hf_generate() -> list[int]:
        with torch.inference_mode():
            return hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(ids):].tolist()

    s, hf_tokens = best_time(hf_generate, args.repeats)
    add(f"transformers {type(hf).__name__}.generate", s, hf_tokens, same_tokens=hf_tokens == cached)

    for k in (2, 4, 6):
        s, spec = best_time(lambda k=k: speculative_generate(target.model, draft.model, ids, n, k=k, sampling=greedy), args.repeats)
        add(f"speculative, draft 1x64, k={k}", s, spec.tokens, same_tokens=spec.tokens == cached,
            acceptance=round(spec.acceptance_rate, 3), target_forwards=spec.rounds)
    base = rows[0]["tokens_per_sec"]
    for r in rows:
        r["vs_kv_cache"] = round(r["tokens_per_sec"] / base, 2)

    print(f"target 4x128 ({target.model.num_params():,} params), draft 1x64 ({draft.model.num_params():,}), "
          f"prompt {len(ids)} tokens, {n} new, greedy, batch 1, {torch.get_num_threads()} threads; training took {train_s:.0f} s")
    print(f"| {'decoder':<40} | tokens/s | vs KV cache | acceptance | same tokens |")
    print(f"|{'-' * 42}|---------:|------------:|-----------:|:-----------:|")
    for r in rows:
        print(f"| {r['decoder']:<40} | {r['tokens_per_sec']:8.1f} | {r['vs_kv_cache']:11.2f} | "
              f"{r.get('acceptance', ''):>10} | {str(r.get('same_tokens', 'ref')):^11} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "target_params": target.model.num_params(), "draft_params": draft.model.num_params(),
        "target_steps": target.step, "draft_steps": draft.step, "prompt_tokens": len(ids), "new_tokens": n, "rows": rows,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
