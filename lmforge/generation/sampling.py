"""Next-token selection: pure functions from logits (B, V) to filtered logits, and `sample_next`.

Filters return new tensors (inputs are left untouched) and mark removed
tokens with -inf, so they compose in any order and work on any device.
`generated_ids` (B, L) is always the whole sequence so far, prompt included,
as in Hugging Face: a prompt's tokens count as repetitions too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.generation.utf8 import utf8_filter


@dataclass
class SamplingConfig:
    """How to pick each next token. The defaults sample from the model's plain distribution."""

    temperature: float = 1.0  # divides the logits; 0 = greedy (argmax, after penalties and n-gram blocking)
    top_k: int | None = None  # keep the k most likely tokens; None = off
    top_p: float | None = None  # nucleus: keep the smallest set with cumulative probability >= top_p; None = off
    min_p: float | None = None  # keep tokens with probability >= min_p * the top probability; None = off
    repetition_penalty: float = 1.0  # CTRL-style penalty on tokens already in the context; 1 = off
    no_repeat_ngram_size: int = 0  # ban tokens that would repeat an n-gram of this size; 0 = off
    seed: int | None = None  # seeds the sampling generator; None = nondeterministic
    utf8: bool = False  # byte-level models: never pick a byte that makes the text invalid UTF-8 (generation.utf8)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature ({self.temperature}) must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k ({self.top_k}) must be >= 1 or None")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p ({self.top_p}) must be in (0, 1] or None")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p ({self.min_p}) must be in [0, 1] or None")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty ({self.repetition_penalty}) must be > 0 (1 = off)")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size ({self.no_repeat_ngram_size}) must be >= 0 (0 = off)")


def apply_repetition_penalty(logits: torch.Tensor, generated_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL (Keskar et al. 2019), as in Hugging Face: for tokens already in generated_ids (B, L), divide
    positive logits by `penalty` and multiply negative ones, so both move toward less likely."""
    if penalty == 1.0 or generated_ids.numel() == 0:
        return logits
    seen = torch.gather(logits, 1, generated_ids)  # (B, L)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, generated_ids, seen)


def block_repeated_ngrams(logits: torch.Tensor, generated_ids: torch.Tensor, n: int) -> torch.Tensor:
    """Hugging Face's `no_repeat_ngram_size`: ban every token that would complete an n-gram already in
    generated_ids (B, L). A row whose every token would be banned is left as it is, so sampling can go on."""
    B, L = generated_ids.shape
    if n <= 0 or L < n:
        return logits
    ngrams = generated_ids.unfold(1, n, 1)  # (B, L-n+1, n) every n-gram in the context
    prefix = generated_ids[:, L - n + 1 :]  # (B, n-1) the n-1 tokens the next one would follow
    matches = (ngrams[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (B, L-n+1)
    counts = torch.zeros_like(logits, dtype=torch.long).scatter_add_(1, ngrams[:, :, -1], matches.long())  # (B, V)
    banned = counts > 0
    banned &= ~banned.all(dim=-1, keepdim=True)
    return logits.masked_fill(banned, float("-inf"))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept too)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probabilities sum to >= p. A token stays if the tokens ranked above it sum to < p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # (B, V) probability of strictly better-ranked tokens
    remove_sorted = mass_above >= p  # the top token always stays (mass_above = 0 < p)
    remove = remove_sorted.scatter(1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """min-p sampling (Nguyen et al. 2024): keep tokens whose probability is >= min_p * the top one's,
    a cut that tightens when the model is confident and loosens when it is not."""
    probs = logits.softmax(dim=-1)  # (B, V)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def warp_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering (temperature > 0): the shape of the distribution drawn from."""
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        logits = top_k_filter(logits, cfg.top_k)
    if cfg.top_p is not None:
        logits = top_p_filter(logits, cfg.top_p)
    if cfg.min_p is not None:
        logits = min_p_filter(logits, cfg.min_p)
    return logits


def sample_next(
    logits: torch.Tensor,
    generated_ids: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V) given the sequence so far, prompt included (B, L).

    Order: repetition penalty, n-gram blocking and the utf8 constraint (they change which
    tokens are allowed at all), then greedy if temperature is 0, else temperature, top-k,
    top-p, min-p, and a draw from the remaining distribution. Done in fp32.
    """
    logits = logits.float()
    logits = apply_repetition_penalty(logits, generated_ids, cfg.repetition_penalty)
    logits = block_repeated_ngrams(logits, generated_ids, cfg.no_repeat_ngram_size)
    if cfg.utf8:
        logits = utf8_filter(logits, generated_ids)
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = warp_logits(logits, cfg).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
