"""Algorithmic research tasks, as sample generators: the Grokfast paper's x∘y mod p, Zoology's MQAR, and needle retrieval.

These are what the task sources (lmforge/data/sources/tasks.py) turn into documents and what the evaluations
(lmforge/evaluation/mqar.py, needle.py) score. They live in the data layer so both point here, and nothing
in the data layer imports evaluation code. Presets name these tasks explicitly; training never falls back to them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

IGNORE = -100
ModularOp = Literal["*", "+", "-", "/"]


# ---------------------------------------------------------------------------- x ∘ y mod p (Power et al. 2022; Grokfast)


@dataclass(frozen=True)
class ModularTask:
    """Equations `x op y = c` over the numbers mod p: ids 0..p-1 are the numbers, p the operator, p + 1 the equals sign.

    x in [0, p), y in [1, p) (the Grokfast code's range, which also keeps division defined); with p = 97 there are
    97·96 = 9,312 equations. The model reads `x op y =` and is scored on the answer `c` only.
    """

    p: int = 97
    op: ModularOp = "*"

    @property
    def op_token(self) -> int:
        return self.p

    @property
    def eq_token(self) -> int:
        return self.p + 1

    @property
    def vocab_size(self) -> int:
        return self.p + 2

    def answers(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.op == "*":
            return (x * y) % p
        if self.op == "+":
            return (x + y) % p
        if self.op == "-":
            return (x - y) % p
        return (x * torch.tensor([pow(int(v), p - 2, p) for v in y])) % p  # x / y = x * y^(p-2) for prime p

    def equations(self) -> torch.Tensor:
        """All equations, (p·(p-1), 5) int64 rows `x op y = c`, in (x, y) order."""
        x, y = torch.cartesian_prod(torch.arange(self.p), torch.arange(1, self.p)).T
        op, eq = torch.full_like(x, self.op_token), torch.full_like(x, self.eq_token)
        return torch.stack([x, op, y, eq, self.answers(x, y)], dim=1)

    def split(self, train_fraction: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) rows: a seeded random permutation cut at `train_fraction`; disjoint, together all equations."""
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        rows = self.equations()
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        n_train = int(len(rows) * train_fraction)
        return rows[perm[:n_train]], rows[perm[n_train:]]


# ---------------------------------------------------------------------------- MQAR (Zoology, Arora et al. 2023)


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


# ---------------------------------------------------------------------------- needle in a haystack

QUESTION = "\nWhat is the secret number of {key}? The secret number of {key} is "
NEEDLE = " The secret number of {key} is {value}. "


def make_needle(rng: random.Random) -> tuple[str, str]:
    """A pronounceable made-up key (not a famous fact) and a 6-digit value."""
    key = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()
    return key, str(rng.randrange(100_000, 1_000_000))


def build_prompt(filler: str, length: int, depth: float, key: str, value: str, rng: random.Random) -> str:
    """`length` characters of filler from a random start, the needle at fraction `depth` of it (cut at a
    space), then the question."""
    if len(filler) < length:
        raise ValueError(f"filler has {len(filler)} characters, fewer than the haystack length {length}")
    start = rng.randrange(0, len(filler) - length + 1)
    hay = filler[start : start + length]
    cut = int(depth * len(hay))
    space = hay.rfind(" ", 0, cut) if cut < len(hay) else len(hay)
    cut = space if space > 0 else cut
    return hay[:cut] + NEEDLE.format(key=key, value=value) + hay[cut:] + QUESTION.format(key=key)
