"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes, the target verifies.

Each round the draft samples `k` tokens one at a time; the target scores all of
them in one forward over its KV cache. Draft token i is kept with probability
min(1, p_i / q_i) (p: target, q: draft); the first rejected one is replaced by a
draw from norm(max(0, p_i - q_i)), and if all k survive the target's next
distribution gives one bonus token. Every emitted token is then distributed
exactly as the target's own sample, and under greedy decoding (temperature 0)
the output is the target's greedy output. Rejected positions are dropped from
both caches by moving `cache.length` back: later writes overwrite them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from lmforge.generation.sampling import SamplingConfig, warp_logits


@dataclass
class SpeculativeResult:
    tokens: list[int] = field(default_factory=list)  # new tokens, prompt excluded, stop token excluded
    proposed: int = 0  # draft tokens the target judged
    accepted: int = 0  # of those, kept
    rounds: int = 0  # target forwards after the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def sampling_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution (N, V) `sample_next` draws from for logits (N, V), without the context-dependent
    penalties; under greedy (temperature 0) a one-hot on the argmax."""
    logits = logits.float()
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return warp_logits(logits, cfg).softmax(-1)


def verify(
    p: torch.Tensor, q: torch.Tensor, draft_tokens: Sequence[int], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """The accept/reject rule. p (k+1, V): target probs at each draft position plus one; q (k, V): draft probs.

    Returns (accepted count n, the token that follows them): a resample from
    norm(max(0, p_n - q_n)) on rejection, else a draw from p_k (the bonus token).
    """
    for i, tok in enumerate(draft_tokens):
        ratio = p[i, tok] / q[i, tok]
        if ratio >= 1 or torch.rand((), generator=generator, device=p.device) < ratio:
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        total = residual.sum()
        residual = residual / total if total > 0 else p[i]  # p == q up to rounding: any draw from p is exact
        return i, int(torch.multinomial(residual, 1, generator=generator))
    n = len(draft_tokens)
    return n, int(torch.multinomial(p[n], 1, generator=generator))


class _Decoder:
    """One model with its KV cache over a shared token list: `cache.length` = tokens it has seen."""

    def __init__(self, model: nn.Module, max_len: int):
        self.model = model
        self.cache = model.new_cache(1, max_len)

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits (n, V) for the positions after each of ids' tokens the cache has not seen yet."""
        device = self.cache.k[0].device
        new = torch.tensor([ids[self.cache.length :]], dtype=torch.long, device=device)  # (1, n)
        return self.model.step(new, self.cache).logits[0]

    def rollback(self, length: int) -> None:
        self.cache.length = min(self.cache.length, length)


def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    k: int = 4,
    sampling: SamplingConfig | None = None,
    stop_ids: Iterable[int] | None = None,
    stream_callback: Callable[[int], None] | None = None,
) -> SpeculativeResult:
    """Continue one prompt by up to `max_new_tokens` tokens with `draft` proposing `k` at a time.

    Both models must share the tokenizer and offer `new_cache`/`step` (a KV
    cache); the prompt plus the new tokens must fit both block sizes. The
    repetition penalty and n-gram blocking change p per context and are not
    supported here; temperature, top-k, top-p and min-p are.
    """
    sampling = sampling or SamplingConfig()
    if sampling.repetition_penalty != 1.0 or sampling.no_repeat_ngram_size:
        raise ValueError("speculative decoding supports temperature, top_k, top_p and min_p, not repetition penalties")
    if k < 1:
        raise ValueError(f"k ({k}) must be >= 1")
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    room = min(target.config.block_size, draft.config.block_size)
    if len(ids) + max_new_tokens > room:
        raise ValueError(
            f"prompt ({len(ids)}) + max_new_tokens ({max_new_tokens}) exceeds the smaller block_size ({room}); ask for fewer tokens"
        )
    stops = set(stop_ids or ())
    device = next(target.parameters()).device
    generator = None if sampling.seed is None else torch.Generator(device=device).manual_seed(sampling.seed)
    result = SpeculativeResult()
    was = target.training, draft.training
    target.eval(), draft.eval()
    try:
        with torch.inference_mode():
            t, d = _Decoder(target, room), _Decoder(draft, room)
            if len(ids) > 1:  # prefill: both caches hold every token but the last
                t.logits(ids[:-1])
                d.logits(ids[:-1])
            while len(result.tokens) < max_new_tokens:
                kk = min(k, max_new_tokens - len(result.tokens))
                proposal, q_rows = [], []
                for _ in range(kk):
                    q = sampling_probs(d.logits(ids + proposal)[-1:], sampling)[0]  # (V,)
                    proposal.append(int(torch.multinomial(q, 1, generator=generator)))
                    q_rows.append(q)
                p = sampling_probs(t.logits(ids + proposal), sampling)  # (kk+1, V)
                n, nxt = verify(p, torch.stack(q_rows), proposal, generator)
                result.rounds += 1
                result.proposed += kk
                result.accepted += n
                new = (proposal[:n] + [nxt])[: max_new_tokens - len(result.tokens)]
                ids.extend(new)
                t.rollback(len(ids) - 1)
                d.rollback(len(ids) - 1)
                for tok in new:
                    if tok in stops:
                        return result
                    result.tokens.append(tok)
                    if stream_callback is not None:
                        stream_callback(tok)
    finally:
        target.train(was[0])
        draft.train(was[1])
    return result
