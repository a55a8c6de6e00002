"""The cheap CPU dropout mask: its statistics, and attention with it against torch's own math kernel given the same mask."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.dropout import LANES, Dropout, dropout, keep_mask, scaled_dot_product_attention


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_keep_mask_keeps_one_minus_p_in_every_lane(p):
    torch.manual_seed(0)
    n = 1 << 20
    keep, scale = keep_mask((n,), p)
    drops = round(p * LANES)
    assert scale == pytest.approx(LANES / (LANES - drops)) and keep.dtype == torch.bool
    sigma = ((1 - p) * p / (n / 4)) ** 0.5
    for lane in range(4):  # each 16-bit quarter of the 64-bit words, the sign lane included
        assert keep[lane::4].float().mean().item() == pytest.approx(1 - p, abs=5 * sigma)
    pairs = keep[0::2].float() * keep[1::2].float()  # neighbouring lanes are independent
    assert pairs.mean().item() == pytest.approx((1 - p) ** 2, abs=5 * sigma)


def test_keep_mask_replays_under_the_seed_and_stays_finite_near_one():
    torch.manual_seed(3)
    a, _ = keep_mask((7, 5), 0.3)
    torch.manual_seed(3)
    b, _ = keep_mask((7, 5), 0.3)
    assert torch.equal(a, b) and a.shape == (7, 5)
    keep, scale = keep_mask((1000,), 0.999999)
    assert scale == LANES and keep.float().mean() < 0.01


def test_dropout_zeroes_or_scales_and_its_gradient_follows_the_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.2)
    torch.manual_seed(1)
    keep, scale = keep_mask(x.shape, 0.2)
    assert torch.equal(y, torch.where(keep, x, 0.0) * scale) and torch.equal(y == 0, ~keep)
    y.sum().backward()
    assert torch.equal(x.grad, keep.float() * scale)
    assert torch.equal(dropout(x, 0.2, training=False), x) and torch.equal(dropout(x, 0.0), x)
    module = Dropout(0.2)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.2))
    assert torch.equal(module.eval()(x), x)


def test_dropout_keeps_the_expectation():
    torch.manual_seed(2)
    x = torch.full((1 << 20,), 3.0)
    assert dropout(x, 0.2).mean().item() == pytest.approx(3.0, rel=3e-3)


def _torch_math(q, k, v, p, keep, **kw):
    """torch's own math attention (what SDPA runs on CPU with dropout), given the dropout mask; a bool mask becomes
    the additive one, as SDPA's entry point converts it before dispatching to this kernel."""
    kw, mask = dict(kw), kw.get("attn_mask")
    if mask is not None:
        kw["attn_mask"] = torch.zeros(mask.shape).masked_fill(mask.logical_not(), float("-inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dropout mask should only be used for testing purposes"
        return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, kw.get("attn_mask"), p, kw.get("is_causal", False),
                                                                   keep, scale=kw.get("scale"), enable_gqa=kw.get("enable_gqa", False))[0]


@pytest.mark.parametrize("case", ["causal", "gqa", "bool_mask", "scale"])
def test_attention_with_dropout_matches_torch_math_kernel_given_the_mask(case):
    torch.manual_seed(0)
    B, H, T, hs = 2, 4, 12, 8
    kv_heads = 2 if case == "gqa" else H
    q = torch.randn(B, H, T, hs, requires_grad=True)
    k, v = (torch.randn(B, kv_heads, T, hs, requires_grad=True) for _ in range(2))
    kw = {"is_causal": case != "bool_mask", "enable_gqa": case == "gqa", "scale": 0.3 if case == "scale" else None}
    if case == "bool_mask":
        kw["attn_mask"] = torch.rand(T, T) > 0.3
        kw["attn_mask"][:, 0] = True  # every query sees at least one key
    p = 0.25
    torch.manual_seed(5)
    out = scaled_dot_product_attention(q, k, v, dropout_p=p, **kw)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    torch.manual_seed(5)
    keep, _ = keep_mask((B, H, T, T), p)
    ref = _torch_math(q, k, v, p, keep, **kw)
    ref_grads = torch.autograd.grad(ref, (q, k, v), torch.ones_like(ref))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out, F.scaled_dot_product_attention(q, k, v, **kw))  # dropout did act


def test_attention_without_dropout_is_torchs_sdpa():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    assert torch.equal(scaled_dot_product_attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_attention_under_bf16_autocast_runs_its_math_in_fp32():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8).bfloat16() for _ in range(3))
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True)
    torch.manual_seed(4)
    keep, _ = keep_mask((1, 2, 16, 16), 0.1)
    ref = _torch_math(q, k, v, round(0.1 * LANES) / LANES, keep, is_causal=True)  # torch upcasts bf16 to fp32 on CPU too
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
