"""Hebbian memory (gated linear attention) vs softmax attention: forward+backward time against sequence length.

One mixing layer at width 256 with 4 heads (head size 64), batch 1, fp32 on this machine's CPU:
- `chunked`: HebbianMemory, chunkwise-parallel form (chunk 64), one decay per head (the default);
- `chunked_per_key`: the same with GLA's per-key-dimension decay;
- `recurrent`: HebbianMemory stepping one position at a time (the generation form), per-head decay;
- `sdpa`: causal softmax attention (F.scaled_dot_product_attention, is_causal) behind the same qkv and
  output projections, i.e. what the memory replaces.
Each cell is the median wall time of --repeats runs of forward + backward of mean(out^2), after one
warm-up run, with plasticity alpha = 0.1. The time of a cell is predicted from the previous length (linear
for the memory forms, quadratic for sdpa): if all runs would exceed --cap seconds it runs once without
warm-up; if one run would, a memory cell is timed once on its first --prefix positions and scaled linearly
by length, marked "extrapolated" (so are all longer cells of that kind), and an sdpa cell is skipped.
The recurrent form's cost per position grows with length under autograd (it keeps one state per step),
so its extrapolated cells are lower bounds. Reports ms per run, us per token and tokens/s; writes
bench/results/memory_scaling.json. MFU is left out: these are memory-bound small-head kernels on a CPU.

usage: python bench/memory_scaling.py [--lengths 512,1024,...] [--cap 30]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.agiformer import HebbianMemory

WIDTH, HEADS = 256, 4


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with the memory's projection shapes, for a like-for-like cost."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def build(kind: str) -> tuple[nn.Module, callable]:
    if kind == "sdpa":
        layer = SoftmaxAttention(WIDTH, HEADS)
        return layer, lambda x: layer(x)
    layer = HebbianMemory(WIDTH, HEADS, per_key_decay=kind == "chunked_per_key", chunk_size=64)
    form = "recurrent" if kind == "recurrent" else "chunked"
    return layer, lambda x: layer(x, 0.1, form=form)[0]


def time_run(fn, T: int, repeats: int, warmup: bool = True) -> float:
    """Median seconds of forward + backward at length T (after one warm-up run, unless warmup=False)."""
    x = torch.randn(1, T, WIDTH, requires_grad=True)
    times = []
    for i in range(repeats + int(warmup)):
        t0 = time.perf_counter()
        out = fn(x)
        out.square().mean().backward()
        dt = time.perf_counter() - t0
        if not torch.isfinite(out).all():
            raise RuntimeError(f"non-finite output at T={T}")
        if i or not warmup:
            times.append(dt)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--kinds", default="chunked,chunked_per_key,recurrent,sdpa")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap", type=float, default=30.0, help="seconds a cell may take before it is extrapolated/skipped")
    ap.add_argument("--prefix", type=int, default=2048, help="positions timed for an extrapolated memory cell")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: on a shared 2-core machine more threads mostly add contention)")
    ap.add_argument("--out", default="bench/results/memory_scaling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",")]
    torch.manual_seed(0)
    rows = []
    for kind in args.kinds.split(","):
        layer, fn = build(kind)
        prev: tuple[int, float, bool] | None = None  # length, seconds, whether it was extrapolated
        for T in lengths:
            power = 2 if kind == "sdpa" else 1
            predicted = prev[1] * (T / prev[0]) ** power if prev else 0.0
            status = "measured"
            if predicted > args.cap or (prev and prev[2]):  # too slow to run whole (and once so, always so)
                if kind == "sdpa":
                    rows.append({"kind": kind, "seq_len": T, "status": "skipped", "predicted_s": predicted})
                    print(f"{kind:16s} {T:6d}  skipped (predicted {predicted:.1f} s > cap)", flush=True)
                    continue
                P = min(args.prefix, T)
                seconds = time_run(fn, P, 1, warmup=False) * T / P
                status = f"extrapolated from {P} positions"
            elif predicted * (args.repeats + 1) > args.cap:
                seconds = time_run(fn, T, 1, warmup=False)
                status = "measured (1 run, no warm-up)"
            else:
                seconds = time_run(fn, T, args.repeats)
            prev = (T, seconds, status.startswith("extrapolated"))
            row = {"kind": kind, "seq_len": T, "status": status, "seconds": seconds,
                   "us_per_token": seconds / T * 1e6, "tokens_per_s": T / seconds}
            rows.append(row)
            print(f"{kind:16s} {T:6d}  {seconds * 1e3:10.1f} ms  {row['us_per_token']:8.1f} us/token  "
                  f"{row['tokens_per_s']:10.0f} tok/s  {status}", flush=True)
        del layer
    print()
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    print("us/token (forward+backward, batch 1, width 256, 4 heads, fp32)")
    print(f"{'seq_len':>8s} " + " ".join(f"{k:>16s}" for k in kinds))
    for T in lengths:
        cells = []
        for k in kinds:
            r = next((r for r in rows if r["kind"] == k and r["seq_len"] == T), None)
            if r is None or "seconds" not in r:
                cells.append(f"{'skipped':>16s}")
            else:
                mark = "*" if r["status"].startswith("extrapolated") else ""
                cells.append(f"{r['us_per_token']:15.1f}{mark or ' '}")
        print(f"{T:8d} " + " ".join(cells))
    print("(* = extrapolated from a prefix)")
    meta = {"width": WIDTH, "heads": HEADS, "batch": 1, "dtype": "fp32", "chunk_size": 64, "plasticity": 0.1,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "repeats": args.repeats, "cap_s": args.cap}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
