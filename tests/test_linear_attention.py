"""Linear attention against flash-linear-attention's pure-PyTorch reference (fla/ops/linear_attn/naive.py, loaded by
file path: the fla package itself needs Triton), plus the bidirectional form, the recurrent state and FAVOR+."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from lmforge.config import load_preset
from lmforge.models import GPT, GPTConfig
from lmforge.models.linear_attention import elu_feature_map, favor_features, linear_attention, orthogonal_gaussian
from lmforge.training.trainer import train


@pytest.fixture(scope="module")
def fla_naive():
    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        pytest.skip("fla-core is not installed (pip install fla-core: a test-only dependency)")
    path = Path(spec.origin).parent / "ops" / "linear_attn" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("fla_linear_attn_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _qkv(B=2, H=3, T=130, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, d, generator=g) for _ in range(3))


@pytest.mark.parametrize("chunk", [1, 32, 64, 200])
def test_causal_chunked_form_equals_fla_naive_recurrent(fla_naive, chunk):
    """fla's normalize=True divides by q . cumsum(k) with q scaled; scale=1 makes it exactly our normalisation
    (its default scale d^-1/2 would cancel in the ratio, but not in its 1e-10 epsilon)."""
    q, k, v = _qkv()
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    ours, (S, _) = linear_attention(fq, fk, v, causal=True, chunk_size=chunk)
    ref, ref_state = fla_naive.naive_recurrent_linear_attn(fq.transpose(1, 2), fk.transpose(1, 2), v.transpose(1, 2),
                                                          scale=1.0, output_final_state=True, normalize=True)
    torch.testing.assert_close(ours, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, ref_state[0], rtol=1e-5, atol=1e-4)


def test_bidirectional_form_equals_the_quadratic_formula():
    q, k, v = _qkv(T=50)
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    ours, _ = linear_attention(fq, fk, v, causal=False)
    weights = fq @ fk.transpose(-1, -2)  # (B, H, T, T): fine at this size, never built by the op
    torch.testing.assert_close(ours, (weights @ v) / weights.sum(-1, keepdim=True), rtol=1e-5, atol=1e-5)


def test_the_state_carried_between_calls_continues_exactly():
    q, k, v = _qkv(T=97)
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    full, _ = linear_attention(fq, fk, v, chunk_size=16)
    outs, state = [], None
    for start, end in ((0, 40), (40, 41), (41, 97)):
        o, state = linear_attention(fq[:, :, start:end], fk[:, :, start:end], v[:, :, start:end], chunk_size=16, state=state)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-5, atol=1e-5)


def test_favor_features_estimate_the_softmax_kernel():
    """E[phi(q) . phi(k)] = exp(q . k / sqrt(d)), unbiased: the error falls as 1/sqrt(m) (4x the features, half the
    error) and the mean ratio stays at 1 (with unsigned QR factors it stayed ~0.7% low)."""
    d = 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, d, generator=g) * 0.5
    y = torch.randn(64, d, generator=g) * 0.5
    exact = torch.exp(x @ y.T / math.sqrt(d))
    errors = {}
    for m in (2048, 32768):
        w = orthogonal_gaussian(m, d, g)
        ratio = (favor_features(x, w, is_query=False) @ favor_features(y, w, is_query=False).T) / exact
        errors[m] = (ratio - 1).abs().median().item()
    assert errors[32768] < 0.01 and errors[32768] < errors[2048] / 2.5 and abs(ratio.mean().item() - 1) < 0.003
    assert (favor_features(x, w, is_query=True) > 0).all()  # positive: the denominators never vanish or flip sign


@pytest.mark.parametrize("feature_map", ["elu", "favor"])
def test_gpt_with_linear_attention_decodes_incrementally_as_its_full_forward(feature_map):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=64, attention="linear",
                          linear={"feature_map": feature_map, "chunk_size": 8})).eval()
    x = torch.randint(0, 40, (2, 30))
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2)
        parts = [model(x[:, :11], cache=cache).logits] + [model(x[:, i : i + 1], cache=cache).logits for i in range(11, 30)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.state_bytes() == 2 * 2 * 2 * (model.blocks[0].attn.n_features * 16 + model.blocks[0].attn.n_features) * 4


@pytest.mark.parametrize("feature_map", ["elu", "favor"])
def test_attention_linear_trains_a_shipped_gpt_preset(tmp_path, feature_map):
    result = train(load_preset("shakespeare_char_cpu_best", {
        "model.attention": "linear", "model.linear.feature_map": feature_map, "train.max_steps": 3,
        "train.eval_interval": 3, "train.eval_batches": 1, "train.progress_bar": False, "train.legacy_weights_file": None,
    }), tmp_path)
    assert result.steps == 3 and math.isfinite(result.final_loss)
