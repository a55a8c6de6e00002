"""Teacher-forced batches for needle retrieval: the needle evaluator's exact prompts, with the answer appended.

Training goes through the `needle` source (lmforge/data/sources/tasks.py, the same prompts as documents);
these ready-made batches serve the teacher-forced per-answer-byte score of bench/recall.py and the tests.

A tiny model pretrained briefly on text never learns to answer "What is the secret number of X?"
(it has never seen the format), so a needle score after plain pretraining measures nothing. These
batches teach the format: each row is `build_prompt(...)` over real filler with a fresh random needle
(`make_needle`), followed by the value and a period; the loss sits only on the answer bytes. Train on
one part of a corpus and evaluate with `run_needle` on a held-out part: the needles (random keys and
6-digit values) are new at evaluation, so a hit means the value was read back from the context.
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from lmforge.evaluation.needle import build_prompt, make_needle

IGNORE = -100


def needle_batch(
    filler: str,
    batch_size: int,
    length: int,
    rng: random.Random,
    encode: Callable[[str], list[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels), (B, T): `length` characters of haystack per row, the needle at a uniform depth;
    labels are -100 except where the next token is part of the answer (the value and its period)."""
    rows, answers = [], []
    for _ in range(batch_size):
        key, value = make_needle(rng)
        prompt = encode(build_prompt(filler, length, rng.random(), key, value, rng))
        answer = encode(value + ".")
        rows.append(prompt + answer)
        answers.append(len(answer))
    width = max(map(len, rows))  # rows differ only when the cut or the encoding changes a length
    x = torch.zeros(batch_size, width - 1, dtype=torch.long)
    y = torch.full((batch_size, width - 1), IGNORE, dtype=torch.long)
    for i, (ids, n) in enumerate(zip(rows, answers)):
        pad = width - len(ids)  # left-pad so every answer ends at the last position
        t = torch.tensor(ids)
        x[i, pad:] = t[:-1]
        y[i, pad + len(ids) - 1 - n :] = t[-n:]
    return x, y
