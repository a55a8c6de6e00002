"""The gpt model: shapes, causality, GQA, KV cache, tying, accounting, context extension, config errors."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lmforge.models import GPT, GPTConfig, ModelOutput, build_model
from lmforge.registry import MODELS

V = 50


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, block_size=32)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).eval()


def tokens(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_registered_and_built_by_arch():
    assert MODELS.get("gpt") is GPT
    assert MODELS.config_class("gpt") is GPTConfig
    assert isinstance(build_model(GPTConfig(vocab_size=V, n_layer=1, n_embd=32)), GPT)


def test_output_shapes():
    out = tiny()(tokens(3, 10))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 10, V)
    assert out.hidden_states.shape == (3, 10, 32)
    assert out.cache is None


def test_vocab_size_required():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(GPTConfig())


def test_too_long_input_raises():
    with pytest.raises(ValueError, match="block_size"):
        tiny(block_size=8)(tokens(1, 9))


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_causal(pos):
    model = tiny(pos_embedding=pos)
    x = tokens(2, 12)
    t = 7
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % V
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa(n_kv_head):
    model = tiny(n_kv_head=n_kv_head)
    attn = model.blocks[0].attn
    hs = 32 // 4
    assert attn.c_attn.out_features == (4 + 2 * n_kv_head) * hs  # fewer k/v heads than q heads
    with torch.no_grad():
        out = model(tokens()).logits
    assert torch.isfinite(out).all()
    assert out.std() > 0
    assert not torch.allclose(out[:, 0], out[:, -1])  # positions get different predictions
    assert model.num_params() < tiny().num_params()


CACHE_CASES = [(*case, False) for case in itertools.product(["rope", "learned"], ["swiglu", "gelu"], ["rmsnorm", "layernorm"])]
CACHE_CASES += [("rope", "relu2", "rmsnorm", False), ("rope", "swiglu", "rmsnorm", True), ("learned", "relu2", "layernorm", True)]


@pytest.mark.parametrize("pos,mlp,norm,qk_norm", CACHE_CASES)
def test_kv_cache_matches_full_forward(pos, mlp, norm, qk_norm):
    model = tiny(pos_embedding=pos, mlp=mlp, norm=norm, n_kv_head=2, bias=norm == "layernorm", qk_norm=qk_norm)
    x = tokens(2, 14)
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2)
        pieces = [
            model.step(x[:, :5], cache).logits,  # prefill (offset 0, is_causal)
            model.step(x[:, 5:6], cache).logits,  # one token (no mask)
            model.step(x[:, 6:7], cache).logits,
            model.step(x[:, 7:11], cache).logits,  # a chunk at offset 7 (explicit shifted mask)
            model.step(x[:, 11:], cache).logits,
        ]
    assert cache.length == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    cache.reset()
    assert cache.length == 0


def test_cache_overflow_raises():
    model = tiny()
    cache = model.new_cache(1, max_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="full"):
        model.step(tokens(1, 5), cache)


def test_tied_head_shares_storage():
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    untied = tiny(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    assert untied.num_params() == model.num_params() + V * 32


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_num_params(pos):
    model = tiny(pos_embedding=pos)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())
    emb = V * 32 + (32 * 32 if pos == "learned" else 0)
    assert model.num_params(exclude_embeddings=True) == model.num_params() - emb


def test_init_scales_residual_projections():
    model = tiny(n_layer=8, n_embd=64, init_std=0.02)
    proj = model.blocks[0].attn.c_proj.weight.std().item()
    qkv = model.blocks[0].attn.c_attn.weight.std().item()
    assert proj == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / sqrt(2 * 8)
    assert qkv == pytest.approx(0.02, rel=0.1)


def test_zero_init_proj_starts_every_block_as_the_identity():
    model = tiny(zero_init_proj=True, tie_embeddings=False)
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 4 and all(not p.any() for p in projections)
    assert model.blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)  # the rest keeps its init
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model.lm_head(model.ln_f(model.wte(x))))
    model.train()
    F.cross_entropy(model(x).logits.flatten(0, 1), x.flatten()).backward()
    assert all(p.grad.abs().sum() > 0 for p in projections)  # zero weights, non-zero gradients: they train from step 1


def test_relu2_mlp_is_primers_squared_relu():
    """relu2's MLP is c_proj(relu(c_fc x)^2), transformers' `ReLUSquaredActivation` (Primer, Nemotron) in between."""
    transformers = pytest.importorskip("transformers")
    model = tiny(mlp="relu2")
    mlp = model.blocks[0].mlp
    assert mlp.c_fc.out_features == 4 * 32  # the gelu width: mlp_ratio * n_embd, two matrices
    x = torch.randn(2, 5, 32)
    act = transformers.activations.ACT2FN["relu2"]
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(act(mlp.c_fc(x))), rtol=0, atol=0)
        assert (mlp.c_fc(x) < 0).any()  # the negative half is there and clipped


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_qk_norm_normalises_each_heads_queries_and_keys(norm):
    """The one-kernel norm over all heads equals q_norm on each query head and k_norm on each key head apart."""
    model = tiny(qk_norm=True, n_kv_head=2, norm=norm)
    attn = model.blocks[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (8,)  # head_dim
    assert getattr(attn.q_norm, "bias", None) is None  # weights only, either kind
    with torch.no_grad():
        for p in (attn.q_norm.weight, attn.k_norm.weight):
            p.copy_(torch.randn(8))
        qk = torch.randn(2, 12, 6, 8)  # (B, T, 4 query heads + 2 key heads, hs)
        separate = torch.cat([attn.q_norm(qk[:, :, :4]), attn.k_norm(qk[:, :, 4:])], dim=2)
        torch.testing.assert_close(attn._norm_heads(qk), separate, rtol=1e-6, atol=1e-6)
    assert model.num_params() == tiny(n_kv_head=2, norm=norm).num_params() + 2 * 2 * 8  # 2 layers x (q + k) x hs


def test_flops_per_token_formula():
    # gelu, bias-free, rmsnorm, tied, learned positions: parameters by hand.
    L, C, H, V_, T, S = 2, 32, 4, 50, 16, 24
    model = tiny(n_layer=L, n_embd=C, n_head=H, block_size=T, pos_embedding="learned", mlp="gelu")
    per_block = C * 3 * C + C * C + C * 4 * C + 4 * C * C + 2 * C  # qkv, proj, fc, proj, two norm gains
    n_nonemb = L * per_block + C  # + final norm
    assert model.num_params(exclude_embeddings=True) == n_nonemb
    expected = 6 * n_nonemb + 6 * C * V_ + 12 * L * H * (C // H) * S
    assert model.flops_per_token(S) == expected
    assert expected > 0
    untied = tiny(n_layer=L, n_embd=C, n_head=H, block_size=T, pos_embedding="learned", mlp="gelu", tie_embeddings=False)
    assert untied.flops_per_token(S) == expected  # the untied head is in N instead


def test_swiglu_hidden_dim():
    cfg = GPTConfig(vocab_size=V, n_embd=96, n_head=4, mlp_ratio=4.0, multiple_of=64)
    assert cfg.mlp_hidden_dim == 256  # int(2/3 * 4 * 96) = 256, already a multiple of 64
    assert GPTConfig(vocab_size=V, n_embd=32, multiple_of=64).mlp_hidden_dim == 128  # 85 -> 128
    assert GPTConfig(vocab_size=V, n_embd=32, mlp="gelu").mlp_hidden_dim == 128


def test_optimizer_groups_follow_nanogpt():
    from lmforge.training.optim import decay_groups

    model = tiny(norm="layernorm", bias=True)
    decay, no_decay = decay_groups(list(model.parameters()), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert any(p is model.wte.weight for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_extend_learned_positions():
    model = tiny(pos_embedding="learned", block_size=16)
    old = model.wpe.weight.detach().clone()
    model.extend_max_seq_len(40)
    new = model.wpe.weight
    assert new.shape == (40, 32)
    torch.testing.assert_close(new[0], old[0])
    torch.testing.assert_close(new[-1], old[-1])
    # row i is the old table at i * 15/39: row 13 sits exactly on old row 5
    torch.testing.assert_close(new[13], old[5])
    assert model.config.block_size == 40
    with torch.no_grad():
        out = model(tokens(1, 40)).logits
    assert out.shape == (1, 40, V) and torch.isfinite(out).all()
    # a fresh model from the updated config takes the extended weights
    fresh = GPT(model.config)
    fresh.load_state_dict(model.state_dict())


def test_extend_learned_without_interpolation_keeps_old_rows():
    model = tiny(pos_embedding="learned", block_size=16)
    old = model.wpe.weight.detach().clone()
    model.extend_max_seq_len(24, interpolate=False)
    torch.testing.assert_close(model.wpe.weight[:16], old)


def test_extend_rope_interpolates_positions():
    model = tiny(block_size=16)
    cos, sin = model.rotary.cos.clone(), model.rotary.sin.clone()
    model.extend_max_seq_len(32, interpolate=True)
    assert model.config.rope_scale == 0.5 and model.config.block_size == 32
    # position 2t after doubling has the angles position t had
    torch.testing.assert_close(model.rotary.cos[::2], cos)
    torch.testing.assert_close(model.rotary.sin[::2], sin)
    with torch.no_grad():
        assert model(tokens(1, 32)).logits.shape == (1, 32, V)
    # rebuilding from the saved config reproduces the interpolated tables
    torch.testing.assert_close(GPT(model.config).rotary.cos, model.rotary.cos)


def test_extend_rope_without_interpolation_extends_table():
    model = tiny(block_size=16)
    cos = model.rotary.cos.clone()
    model.extend_max_seq_len(32, interpolate=False)
    assert model.config.rope_scale == 1.0
    assert model.rotary.cos.shape[0] == 32
    torch.testing.assert_close(model.rotary.cos[:16], cos)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(n_embd=100, n_head=3), "n_embd"),
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(n_layr=2), "n_layr"),
        (dict(dropout=1.0), "dropout"),
        (dict(pos_embedding="alibi"), "pos_embedding"),
        (dict(mlp="relu"), "mlp"),
        (dict(qk_norm=True, attention="mla"), "qk_norm"),
        (dict(qk_norm=True, attention="linear"), "qk_norm"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValidationError) as err:
        GPTConfig(**kwargs)
    assert field in str(err.value)


def test_config_divisibility_message():
    with pytest.raises(ValidationError, match=r"n_embd \(100\) must be divisible by n_head \(3\)"):
        GPTConfig(n_embd=100, n_head=3)


def test_bf16_autocast_forward_and_cached_step():
    model = tiny(n_kv_head=2)
    x = tokens(2, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        cache = model.new_cache(2)  # fp32 cache fed bf16 keys
        model.step(x[:, :6], cache)
        step = model.step(x[:, 6:8], cache).logits
    assert torch.isfinite(out.logits.float()).all() and torch.isfinite(step.float()).all()
    torch.testing.assert_close(step.float(), out.logits[:, 6:8].float(), atol=0.1, rtol=0.05)


def test_dropout_only_in_training():
    model = tiny(dropout=0.5)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x).logits)
        model.train()
        assert not torch.allclose(model(x).logits, model(x).logits)


def test_overfits_one_batch():
    model = tiny(n_embd=32, block_size=16).train()
    x = tokens(2, 17, seed=3)
    inputs, labels = x[:, :-1], x[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(model(inputs).logits.flatten(0, 1), labels.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
