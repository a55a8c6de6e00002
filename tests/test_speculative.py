"""Speculative decoding: greedy equals the target's greedy, and the accept/reject rule samples from the target."""
from __future__ import annotations

import pytest
import torch

from lmforge.generation import SamplingConfig, generate, speculative_generate, verify
from lmforge.models import GPT, GPTConfig

V = 50


def model(seed: int, **overrides) -> GPT:
    """A tiny untrained GPT with a large init, so its greedy output varies from token to token."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64, init_std=0.3, tie_embeddings=False)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculative_equals_target_greedy(k):
    target = model(0)
    draft = model(1, n_layer=1, n_embd=16, n_head=2, n_kv_head=1)  # a different, smaller model
    prompt = [3, 17, 42, 8]
    plain = generate(target, [prompt], 40, SamplingConfig(temperature=0))[0]
    spec = speculative_generate(target, draft, prompt, 40, k=k, sampling=SamplingConfig(temperature=0))
    assert spec.tokens == plain
    assert len(set(plain)) > 5  # the check is not about a constant sequence
    assert spec.proposed >= 40 - spec.rounds and 0 <= spec.accepted <= spec.proposed


def test_draft_equal_to_target_accepts_everything():
    target = model(0)
    spec = speculative_generate(target, target, [1, 2], 30, k=4, sampling=SamplingConfig(temperature=0))
    assert spec.acceptance_rate == 1.0
    assert spec.tokens == generate(target, [[1, 2]], 30, SamplingConfig(temperature=0))[0]
    sampled = speculative_generate(target, target, [1, 2], 30, k=4, sampling=SamplingConfig(temperature=1.0, seed=0))
    assert sampled.acceptance_rate > 0.99  # p == q: min(1, p/q) = 1 up to float rounding


def test_stop_ids_and_length():
    target, draft = model(0), model(1, n_layer=1)
    full = speculative_generate(target, draft, [5], 25, k=4, sampling=SamplingConfig(temperature=0))
    assert len(full.tokens) == 25
    stop = full.tokens[10]
    cut = speculative_generate(target, draft, [5], 25, k=4, sampling=SamplingConfig(temperature=0), stop_ids=[stop])
    assert cut.tokens == full.tokens[: full.tokens.index(stop)]
    with pytest.raises(ValueError, match="block_size"):
        speculative_generate(target, draft, [5] * 60, 10)


def test_verify_samples_exactly_from_target():
    """With k = 1 the emitted token must be distributed as p whatever q is (Leviathan et al. 2023, appendix A.1)."""
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    gen = torch.Generator().manual_seed(0)
    n_trials = 20000
    counts = torch.zeros(4)
    accepted = 0
    drafts = torch.multinomial(q[0], n_trials, replacement=True, generator=gen).tolist()
    for tok in drafts:
        n, nxt = verify(p, q, [tok], gen)
        accepted += n
        counts[tok if n == 1 else nxt] += 1
    freq = counts / n_trials
    assert torch.allclose(freq, p[0], atol=0.012), freq
    expected_acceptance = torch.minimum(p[0], q[0]).sum().item()  # sum_x min(p, q)
    assert accepted / n_trials == pytest.approx(expected_acceptance, abs=0.012)


def test_sampled_first_token_follows_target_softmax():
    """End to end on a 6-token vocabulary: the first generated token over many seeds matches the target's softmax."""
    target = model(0, vocab_size=6, init_std=0.1)
    draft = model(1, vocab_size=6, n_layer=1, init_std=0.5)
    prompt = [1, 2, 3]
    with torch.no_grad():
        p = target(torch.tensor([prompt])).logits[0, -1].softmax(-1)
    n_trials = 1000  # seeds 0..999: deterministic, and 3 standard errors (~0.04) is far below |p - q| (up to 0.42)
    counts = torch.zeros(6)
    for seed in range(n_trials):
        out = speculative_generate(target, draft, prompt, 1, k=2, sampling=SamplingConfig(temperature=1.0, seed=seed))
        counts[out.tokens[0]] += 1
    assert torch.allclose(counts / n_trials, p, atol=0.04), (counts / n_trials, p)


def test_generate_cli_with_draft_run_equals_plain_greedy(tmp_path, small_text):
    import subprocess
    import sys

    from conftest import REPO, tiny_preset
    from lmforge.config import load_preset
    from lmforge.training.trainer import train

    target = tiny_preset(small_text, max_steps=20, eval_interval=20, save_interval=20)
    draft = tiny_preset(small_text, max_steps=10, eval_interval=10, save_interval=10)
    draft["model"].update(n_layer=1, n_embd=16)
    train(load_preset(target), tmp_path / "target")
    train(load_preset(draft), tmp_path / "draft")
    base = [sys.executable, "-m", "lmforge", "generate", "--run-dir", str(tmp_path / "target"), "--prompt", "ROMEO:",
            "--max-new-tokens", "20", "--temperature", "0"]
    plain = subprocess.run(base, capture_output=True, text=True, cwd=REPO, timeout=120)
    spec = subprocess.run(base + ["--draft-run-dir", str(tmp_path / "draft"), "--draft-k", "3"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and len(spec.stdout) > len("ROMEO:") + 10
    assert "draft tokens accepted" in spec.stderr
