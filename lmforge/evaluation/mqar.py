"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al. 2023).

A sequence opens with `num_kv_pairs` key/value pairs (keys from the lower half of the vocabulary,
values from the upper half, keys distinct within a sequence), then every key is queried once, later,
at a gap drawn from a power law (small gaps likely: `p(g) ~ g ** (power_a - 1)`). Only the answer
positions carry labels: `labels[t]` is the value that must follow the query key `inputs[t]`; the
value itself never appears after the query, so nothing can be copied from the query region. The
other query-region tokens are random (`random_non_queries`), as in Zoology.

Byte-level patch models (agiformer, 4-byte patches) see the same task through `expand_tokens`: every
token becomes `patch_size` copies of its byte, so one token = one patch, and the one label sits on
the last byte of the query patch, i.e. it predicts the first byte of the next patch from a latent
that has read the whole query key. Accuracy is per query (one answer position each).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100


@dataclass(frozen=True)
class MQARSetting:
    """One MQAR cell: `seq_len` tokens, `num_kv_pairs` pairs, over a `vocab_size` split in key/value halves."""

    seq_len: int = 64
    num_kv_pairs: int = 8
    vocab_size: int = 256
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        if self.seq_len < 4 * self.num_kv_pairs:
            raise ValueError(f"seq_len ({self.seq_len}) must be >= 4 * num_kv_pairs ({4 * self.num_kv_pairs}): "
                             "2 tokens per pair, then room for a query and its answer slot per pair")
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(f"num_kv_pairs ({self.num_kv_pairs}) > key vocabulary ({self.vocab_size // 2 - 1}); "
                             "keys must be distinct in a sequence")


def mqar_batch(setting: MQARSetting, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels), both (batch_size, seq_len) int64; labels are -100 except at the query positions."""
    s = setting
    n, L, V = s.num_kv_pairs, s.seq_len, s.vocab_size
    half = V // 2
    context = 2 * n
    space = (L - context) // 2  # query slots: even offsets of the query region (a query and its free slot)
    p = s.power_a * np.arange(1, space + 1) ** (s.power_a - 1)
    p = p / p.sum()
    inputs = np.zeros((batch_size, L), dtype=np.int64)
    labels = np.full((batch_size, L), IGNORE, dtype=np.int64)
    for b in range(batch_size):
        keys = rng.choice(np.arange(1, half), size=n, replace=False)
        values = rng.choice(np.arange(half, V), size=n, replace=False)
        inputs[b, 0:context:2], inputs[b, 1:context:2] = keys, values
        gaps = rng.choice(space, size=n, replace=False, p=p)  # query i sits 2 * gap tokens into the query region
        pos = context + 2 * gaps
        inputs[b, pos] = keys
        labels[b, pos] = values
        if s.random_non_queries:
            free = np.ones(L, dtype=bool)
            free[:context], free[pos] = False, False
            inputs[b, free] = rng.integers(0, V, size=int(free.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def expand_tokens(inputs: torch.Tensor, labels: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One token -> `patch_size` copies of it; each label moves to the last byte of its token's span."""
    B, L = inputs.shape
    x = inputs.repeat_interleave(patch_size, dim=1)
    y = torch.full((B, L * patch_size), IGNORE, dtype=labels.dtype)
    y[:, patch_size - 1 :: patch_size] = labels
    return x, y


def masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the answer positions only (fp32 even under autocast)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast: Callable | None = None) -> float:
    """Fraction of answer positions whose argmax is the value (greedy, one prediction per query)."""
    was = model.training
    model.eval()
    hits = total = 0
    for x, y in batches:
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(x).logits
        mask = y != IGNORE
        hits += int((logits.argmax(-1)[mask] == y[mask]).sum())
        total += int(mask.sum())
    model.train(was)
    return hits / max(total, 1)


def fit(
    model: nn.Module,
    make_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int = 50,
    autocast: Callable | None = None,
    time_limit_s: float | None = None,
) -> dict:
    """AdamW with warm-up + cosine on freshly drawn batches, loss on labelled positions only (plus the
    model's own terms, e.g. agiformer's ponder cost). Stops early at `time_limit_s`; returns what ran."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(i / max(steps, 1), 1.0))) * 0.9 + 0.1
    )
    model.train()
    t0, losses = time.perf_counter(), []
    step = 0
    for step in range(1, steps + 1):
        x, y = make_batch()
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out = model(x)
        loss = masked_loss(out.logits, y)
        for term in out.aux_losses.values():
            loss = loss + term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            break
    return {"steps": step, "seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-20:]))}
