"""StackWise part 1's attention measurements, through lmforge's Trainer and generate:

- `--part kv`: MHA vs GQA vs MLA on `shakespeare_char_cpu_best` (4 x 128, 4 heads of 32; GQA with 1 KV head; MLA with
  its defaults: latent 128, RoPE key 16): val loss after the preset's 600 steps (same data, seed, schedule), KV-cache
  bytes per token and layer (bf16), and greedy decode tokens/s (batch 1, 200 tokens after a 1-token prompt, cache on);
- `--part linear`: linear (elu+1) vs softmax attention, forward + backward time per token of a 2 x 128 GPT at 512
  to 16,384 positions (batch 1, fp32, median of `--repeats`), where softmax is SDPA (no T x T matrix is stored by its
  fused CPU kernel either, but its work grows as T^2) and linear is the chunked prefix-sum form.

usage: python bench/stackwise_attention.py [--part kv,linear] [--steps 600] [--out bench/results/stackwise_attention.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config import load_preset
from lmforge.generation import SamplingConfig, generate
from lmforge.models import GPT, GPTConfig
from lmforge.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"mha": {}, "gqa": {"model.attention": "gqa", "model.n_kv_head": 1}, "mla": {"model.attention": "mla"}}


def kv_part(steps: int) -> list[dict]:
    rows = []
    for name, overrides in VARIANTS.items():
        with tempfile.TemporaryDirectory() as run_dir:
            t0 = time.perf_counter()
            result = train(load_preset("shakespeare_char_cpu_best", {
                **overrides, "train.max_steps": steps, "train.progress_bar": False, "train.legacy_weights_file": None,
                "train.eval_interval": steps, "samples.max_new_tokens": 1}), run_dir)
            wall = time.perf_counter() - t0
            from lmforge.inference import load_run

            model = load_run(run_dir).model.eval()
        cache_bytes = model.new_cache(1, dtype=torch.bfloat16).bytes_per_token() // model.config.n_layer
        greedy = SamplingConfig(temperature=0.0)
        times = []
        for _ in range(3):
            t1 = time.perf_counter()
            with torch.inference_mode():
                generate(model, [[0]], 200, greedy)
            times.append(time.perf_counter() - t1)
        rows.append({"attention": name, "params": model.num_params(), "val_loss": result.last_val["val_loss"],
                     "steps": result.steps, "train_seconds": wall, "cache_bytes_per_token_per_layer_bf16": cache_bytes,
                     "decode_tokens_per_s": 200 / statistics.median(times)})
        print(f"  {name}: val {rows[-1]['val_loss']:.4f}, cache {cache_bytes} B/token/layer, "
              f"decode {rows[-1]['decode_tokens_per_s']:.0f} tok/s ({wall:.0f} s training)", flush=True)
    return rows


def linear_part(lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for T in lengths:
        for attention in ("mha", "linear"):
            torch.manual_seed(0)
            model = GPT(GPTConfig(vocab_size=256, n_layer=2, n_head=4, n_embd=128, block_size=T, attention=attention))
            x = torch.randint(0, 256, (1, T))
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                model(x).logits.float().logsumexp(-1).mean().backward()
                times.append(time.perf_counter() - t0)
                model.zero_grad(set_to_none=True)
            step = statistics.median(times[1:])
            rows.append({"attention": "softmax (SDPA)" if attention == "mha" else "linear (elu+1)", "positions": T,
                         "fwd_bwd_ms": step * 1e3, "us_per_token": step / T * 1e6})
            print(f"  T={T:6d} {rows[-1]['attention']:15s}: {step * 1e3:8.1f} ms, {rows[-1]['us_per_token']:6.1f} us/token", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="kv,linear")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "stackwise_attention.json"))
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    if "kv" in args.part.split(","):
        result["kv"] = kv_part(args.steps)
        print("\n| attention | params | val loss (600 steps) | KV cache, bytes/token/layer (bf16) | greedy decode, tokens/s |")
        print("|---|---:|---:|---:|---:|")
        for r in result["kv"]:
            print(f"| {r['attention']} | {r['params']:,} | {r['val_loss']:.4f} | {r['cache_bytes_per_token_per_layer_bf16']} | "
                  f"{r['decode_tokens_per_s']:.0f} |")
    if "linear" in args.part.split(","):
        result["linear"] = linear_part([int(t) for t in args.lengths.split(",")], args.repeats)
        print("\n| positions | softmax fwd+bwd, us/token | linear fwd+bwd, us/token |\n|---:|---:|---:|")
        for T in sorted({r["positions"] for r in result["linear"]}):
            soft, lin = (next(r for r in result["linear"] if r["positions"] == T and r["attention"].startswith(k)) for k in ("softmax", "linear"))
            print(f"| {T:,} | {soft['us_per_token']:.1f} | {lin['us_per_token']:.1f} |")
    result.update({"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()})
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
