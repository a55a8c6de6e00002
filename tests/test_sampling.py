"""Sampling filters on hand-made logits, and `generate` on tiny models (cached vs cacheless, seeds, stops)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from lmforge.generation import (
    SamplingConfig,
    apply_repetition_penalty,
    block_repeated_ngrams,
    generate,
    min_p_filter,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from lmforge.models import GPT, GPTConfig, ModelOutput

V = 50
NEG = float("-inf")


def random_model(**overrides) -> GPT:
    """A tiny untrained GPT whose large init makes greedy output vary from token to token."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16, init_std=0.3, tie_embeddings=False)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))


def looping_model() -> GPT:
    """A tiny tied GPT at the default init: its greedy output repeats the last token forever."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, block_size=64))


class CycleModel(nn.Module):
    """A cacheless stand-in that always predicts (last token + 1) mod 3: output 0 1 2 0 1 2 ..."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> ModelOutput:
        logits = torch.zeros(*input_ids.shape, V)
        logits.scatter_(-1, ((input_ids + 1) % 3)[..., None], 10.0)  # (B, T, V)
        return ModelOutput(logits=logits, hidden_states=logits)


def bigrams(seq: list[int]) -> list[tuple[int, int]]:
    return list(zip(seq, seq[1:]))


def probs_logits(probs: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


# ---------------------------------------------------------------------------- filters


def test_top_k_filter():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = top_k_filter(logits, 2)
    assert out.tolist() == [[NEG, 4.0, 3.0, NEG]]
    assert top_k_filter(logits, 10).tolist() == logits.tolist()  # k > V keeps all


def test_top_p_keeps_smallest_set_reaching_p():
    # probabilities in a shuffled vocabulary order: token 2 is 0.5, token 0 is 0.3, token 3 is 0.15, token 1 is 0.05
    logits = probs_logits([0.3, 0.05, 0.5, 0.15])
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.4) == {2}  # 0.5 >= 0.4 alone
    assert kept(0.6) == {2, 0}  # 0.5 < 0.6, 0.8 >= 0.6
    assert kept(0.9) == {2, 0, 3}  # 0.8 < 0.9, 0.95 >= 0.9
    assert kept(1.0) == {0, 1, 2, 3}
    assert top_p_filter(logits, 0.6)[0, 0] == logits[0, 0]  # kept logits are unchanged


def test_min_p_filter():
    logits = probs_logits([0.5, 0.3, 0.15, 0.05])
    out = min_p_filter(logits, 0.2)  # threshold 0.2 * 0.5 = 0.1
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    out = min_p_filter(logits, 0.7)  # threshold 0.35
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_repetition_penalty_hand_example():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    ids = torch.tensor([[0, 1, 1]])
    out = apply_repetition_penalty(logits, ids, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # seen: 2 -> 1, -1 -> -2; unseen unchanged
    assert logits.tolist() == [[2.0, -1.0, 0.5, 3.0]]  # pure: input untouched


def test_block_repeated_ngrams_hand_example():
    logits = torch.zeros(1, 6)
    ids = torch.tensor([[1, 2, 3, 1, 2]])
    banned = lambda n: set((block_repeated_ngrams(logits, ids, n)[0] == NEG).nonzero().flatten().tolist())  # noqa: E731
    assert banned(2) == {3}  # "2 3" exists, so after the final 2, 3 is banned
    assert banned(3) == {3}  # "1 2 3" exists, the context ends in "1 2"
    assert banned(1) == {1, 2, 3}  # unigrams: every token seen
    assert banned(4) == set()  # "3 1 2 ?" never occurred
    assert banned(0) == set() and banned(6) == set()
    assert (logits == 0).all()


def test_block_repeated_ngrams_per_row():
    logits = torch.zeros(2, 5)
    ids = torch.tensor([[4, 0, 4], [1, 2, 1]])
    out = block_repeated_ngrams(logits, ids, 2)
    assert (out[0] == NEG).nonzero().flatten().tolist() == [0]
    assert (out[1] == NEG).nonzero().flatten().tolist() == [2]


def test_sample_next_greedy_and_top_k_one():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(4, 1, dtype=torch.long)
    greedy = sample_next(logits, ids, SamplingConfig(temperature=0))
    assert greedy.tolist() == logits.argmax(-1).tolist()
    g = torch.Generator().manual_seed(1)
    assert sample_next(logits, ids, SamplingConfig(temperature=1.5, top_k=1), g).tolist() == greedy.tolist()


def test_sampling_config_validation():
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2.0),
                dict(repetition_penalty=0.0), dict(no_repeat_ngram_size=-1)):
        field = next(iter(bad))
        with pytest.raises(ValueError, match=field):
            SamplingConfig(**bad)


# ---------------------------------------------------------------------------- generate


def test_greedy_with_cache_equals_without():
    model = random_model()
    greedy = SamplingConfig(temperature=0)
    prompts = [[1, 2, 3], [7, 8, 9]]
    cached = generate(model, prompts, 20, greedy, use_cache=True)
    plain = generate(model, prompts, 20, greedy, use_cache=False)
    assert cached == plain
    assert all(len(row) == 20 and len(set(row)) > 5 for row in cached)  # a real test: varied tokens
    # 3 + 20 tokens outgrow block_size 16: the re-prefilled cache sees the same window


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_greedy_cache_equivalence_short_context(pos):
    model = random_model(pos_embedding=pos, block_size=64)
    greedy = SamplingConfig(temperature=0)
    assert generate(model, [[5, 6]], 20, greedy) == generate(model, [[5, 6]], 20, greedy, use_cache=False)


def test_top_k_one_equals_greedy():
    model = random_model()
    greedy = generate(model, [[1, 2, 3]], 20, SamplingConfig(temperature=0))
    top1 = generate(model, [[1, 2, 3]], 20, SamplingConfig(temperature=1.0, top_k=1, seed=123))
    assert top1 == greedy


def test_no_repeat_ngram_in_generation():
    model = looping_model()
    loops = generate(model, [[3, 4]], 30, SamplingConfig(temperature=0))[0]
    seq = [3, 4] + loops
    assert len(set(bigrams(seq))) < len(bigrams(seq))  # the rig repeats itself without blocking
    blocked = generate(model, [[3, 4]], 30, SamplingConfig(temperature=0, no_repeat_ngram_size=2))[0]
    seq = [3, 4] + blocked
    assert len(blocked) == 30
    assert len(set(bigrams(seq))) == len(bigrams(seq))


def test_no_repeat_ngram_without_cache_support():
    model = CycleModel()
    loops = generate(model, [[0]], 12, SamplingConfig(temperature=0))[0]
    assert loops == [1, 2, 0] * 4
    blocked = generate(model, [[0]], 20, SamplingConfig(temperature=0, no_repeat_ngram_size=2))[0]
    seq = [0] + blocked
    assert len(set(bigrams(seq))) == len(bigrams(seq))


def test_seed_reproducible():
    model = random_model()
    cfg = lambda seed: SamplingConfig(temperature=1.0, top_p=0.95, seed=seed)  # noqa: E731
    a = generate(model, [[1, 2]], 20, cfg(7))
    b = generate(model, [[1, 2]], 20, cfg(7))
    c = generate(model, [[1, 2]], 20, cfg(8))
    assert a == b
    assert a != c


def test_mixed_prompt_lengths_match_single_prompts():
    model = random_model(block_size=64)
    greedy = SamplingConfig(temperature=0)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9]]
    batched = generate(model, prompts, 8, greedy)
    assert batched == [generate(model, [p], 8, greedy)[0] for p in prompts]
    tensor_prompts = torch.tensor([[1, 2, 3], [6, 7, 8]])
    assert generate(model, tensor_prompts, 8, greedy) == [batched[0], batched[2]]


def test_stop_ids_and_stream_callback():
    model = CycleModel()
    streamed: list[tuple[int, int]] = []
    out = generate(model, [[0], [1, 1]], 10, SamplingConfig(temperature=0), stop_ids=[0],
                   stream_callback=lambda i, tok: streamed.append((i, tok)))
    assert out == [[1, 2], [2]]  # each row stops at its first 0, which is not returned
    assert sorted(streamed) == [(0, 1), (0, 2), (1, 2)]


def test_generate_restores_mode_and_rejects_empty_prompt():
    model = random_model().train()
    generate(model, [[1]], 2, SamplingConfig(temperature=0))
    assert model.training
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[]], 2, SamplingConfig())
