"""Autoregressive generation for any model: incremental with a cache where the model offers one.

A model with `new_cache(batch_size)` and `step(input_ids, cache)` is decoded
incrementally: the prompt is prefilled once, then each step feeds one token.
Any other model (or `use_cache=False`) is re-run on the whole context each
step. Both paths see the same context window, so they pick the same tokens.

Prompts of different lengths are not left-padded: padding would shift the
positions RoPE and learned tables see, and need a pad mask in every model.
Prompts are grouped by length instead; each group is one batch.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from lmforge.generation.sampling import SamplingConfig, sample_next
from lmforge.generation.stop import find_stop

StreamCallback = Callable[[int, int], None]  # (prompt index, token id)


def generate(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    stop_ids: Iterable[int] | None = None,
    use_cache: bool = True,
    stream_callback: StreamCallback | None = None,
    stop_strings: Sequence[str] | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; return the new tokens per prompt, in order.

    A row ends at its first token in `stop_ids`, which is not returned.
    `stream_callback(prompt_index, token_id)` is called for each returned token
    as soon as it is chosen. With `stop_strings` (and `decode`, ids -> text), a
    row also ends as soon as its decoded continuation contains one of them; its
    tokens up to and including the one that completed it are returned (a token
    may straddle the stop string; `trim_at_stop(decode(ids), stop_strings)` gives
    the text before it). Once a context outgrows the model's `block_size`,
    only its last `block_size` tokens are seen (the cache is re-prefilled with
    them each step, which then costs what a cacheless step does). Runs under
    `torch.inference_mode()` in eval mode; the caller may wrap it in autocast.
    """
    sampling = sampling or SamplingConfig()
    if not is_causal(model):
        raise ValueError("a bidirectional model (model.causal false) cannot be sampled token by token: every position "
                         "reads the ones after it, with or without a cache; sample a mask_diffusion run by diffusion")
    prompts = _as_lists(prompt_ids)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty: give at least one token (e.g. a BOS/EOS id)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be >= 0")
    stops = set(stop_ids or ())
    stop_strings = [s for s in stop_strings or () if s]
    if stop_strings and decode is None:
        raise ValueError("stop_strings need decode (token ids -> text) to be matched")
    text_stop = (lambda ids: find_stop(decode(ids), stop_strings) is not None) if stop_strings else None
    device = next(model.parameters()).device
    generator = None if sampling.seed is None else torch.Generator(device=device).manual_seed(sampling.seed)

    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)

    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for rows in by_length.values():
                ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)  # (B, T)
                emit = None if stream_callback is None else (lambda b, tok, rows=rows: stream_callback(rows[b], tok))
                new = _generate_batch(model, ids, max_new_tokens, sampling, stops, use_cache, generator, emit, text_stop)
                for i, tokens in zip(rows, new):
                    results[i] = tokens
    finally:
        model.train(was_training)
    return results


def is_causal(model: nn.Module) -> bool:
    """Whether the model reads left to right (its config's `causal`; models without one always do)."""
    return bool(getattr(getattr(model, "config", None), "causal", True))


def context_limit(model: nn.Module) -> int | None:
    """The most tokens the model attends to (its config's block_size), None for a model without a limit."""
    return getattr(getattr(model, "config", None), "block_size", None)


def _generate_batch(
    model: nn.Module,
    ids: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig,
    stops: set[int],
    use_cache: bool,
    generator: torch.Generator | None,
    emit: StreamCallback | None,
    text_stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Decode one batch of equal-length prompts ids (B, T)."""
    B = ids.size(0)
    block_size = context_limit(model)
    context = _CachedContext(model, B) if use_cache and hasattr(model, "new_cache") and hasattr(model, "step") else None
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for _ in range(max_new_tokens):
        if context is not None:
            logits = context.next_logits(ids)  # (B, V)
        else:
            window = ids if block_size is None else ids[:, -block_size:]
            logits = model(window).logits[:, -1]  # (B, V)
        next_ids = sample_next(logits, ids, sampling, generator)  # (B,)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)  # (B, T+1)
        for b, tok in enumerate(next_ids.tolist()):
            if done[b]:
                continue
            if tok in stops:
                done[b] = True
                continue
            out[b].append(tok)
            if emit is not None:
                emit(b, tok)
            if text_stop is not None and text_stop(out[b]):
                done[b] = True
        if all(done):
            break
    return out


class _CachedContext:
    """Feeds a growing sequence to a model's cache: only tokens it hasn't seen, re-prefilling when full."""

    def __init__(self, model: nn.Module, batch_size: int):
        self.model = model
        self.cache = model.new_cache(batch_size)
        self.fed = 0  # how many leading tokens of the sequence the model has seen

    def next_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits (B, V) for the sequence ids (B, L)."""
        new = ids.size(1) - self.fed
        if self.cache.length + new > self.cache.max_len:
            # Out of room: restart from the last max_len tokens, the window a cacheless model would see.
            self.cache.reset()
            window = ids[:, -self.cache.max_len :]
        else:
            window = ids[:, self.fed :]
        self.fed = ids.size(1)
        return self.model.step(window, self.cache).logits[:, -1]


def _as_lists(prompt_ids: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    """Prompts as lists of ints: a (B, T) tensor, a single (T,) tensor, or a list of token lists."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() not in (1, 2):
            raise ValueError(f"prompt_ids tensor must be (T,) or (B, T), got shape {tuple(prompt_ids.shape)}")
        rows = prompt_ids.tolist()
        return [rows] if prompt_ids.dim() == 1 else rows
    return [[int(t) for t in p] for p in prompt_ids]
