"""Sample k continuations, keep the best by a score: seed 002's planned use of its value head at inference.

`value`: the value head's prediction at the end of prompt + candidate, i.e. the mean NLL it expects of the next
`value_horizon` tokens after the candidate (lower is better: the candidate the model expects to continue most
easily). `nll`: the candidate's own mean NLL under the model (plain sample-and-rank), the baseline that says how
much of any gain is the value head's and how much is just ranking samples. Off unless asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.generation.generate import context_limit, generate
from lmforge.generation.sampling import SamplingConfig
from lmforge.objectives.auxiliary import heads_of

RerankBy = Literal["value", "nll"]


@dataclass
class Reranked:
    best: list[int]  # the chosen continuation's token ids
    candidates: list[list[int]]
    scores: list[float]  # lower is better, one per candidate


def _context(model: nn.Module, ids: list[int]) -> list[int]:
    block = context_limit(model)
    return ids[-block:] if block else ids


@torch.inference_mode()
def candidate_scores(model: nn.Module, prompt: Sequence[int], candidates: Sequence[Sequence[int]], by: RerankBy) -> list[float]:
    """The score of each candidate continuation of `prompt` (lower is better); an empty candidate scores +inf."""
    heads = heads_of(model)
    if by == "value" and (heads is None or heads.value is None):
        raise ValueError("rerank by value needs a run trained with auxiliary.enable_value")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for cand in candidates:
            if not cand:
                scores.append(float("inf"))
                continue
            ids = _context(model, list(prompt) + list(cand))
            out = model(torch.tensor([ids], device=device))
            if by == "value":
                scores.append(float(heads.predict_value(out.hidden_states[0, -1]).float()))
            else:
                n = min(len(cand), len(ids) - 1)
                logits = out.logits[0, -n - 1:-1].float()
                scores.append(float(F.cross_entropy(logits, torch.tensor(ids[-n:], device=device))))
    finally:
        model.train(was_training)
    return scores


def rerank_generate(model: nn.Module, prompt: Sequence[int], max_new_tokens: int, k: int, by: RerankBy,
                    sampling: SamplingConfig | None = None, stop_ids: Sequence[int] | None = None) -> Reranked:
    """k sampled continuations of `prompt` (one batch), the one with the lowest score first."""
    if k < 1:
        raise ValueError(f"rerank needs at least 1 candidate, got {k}")
    candidates = generate(model, [list(prompt)] * k, max_new_tokens, sampling, stop_ids=stop_ids)
    scores = candidate_scores(model, prompt, candidates, by)
    best = min(range(k), key=scores.__getitem__)
    return Reranked(candidates[best], candidates, scores)
