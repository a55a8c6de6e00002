"""Export a `gpt` model to Hugging Face transformers: Llama when RoPE/RMSNorm/SwiGLU (Qwen3 with qk_norm,
DeepseekV3 with MLA), GPT-2 when learned/LayerNorm/GELU.

Weights are renamed and reshaped only; the test checks the logits of the
reloaded model against lmforge's. Two conventions differ from lmforge's:
- RoPE: lmforge rotates channel pairs (i, i + hs/2) by -angle ([x1 cos + x2 sin,
  x2 cos - x1 sin]); HF Llama's `rotate_half` rotates the same pairs by +angle.
  Negating the second half of every q and k head turns one into the other
  (R(-a) = F R(a) F with F that sign flip, and F is orthogonal, so q.k is kept).
  QK-norm's weights need no flip: the sign flip is elementwise, so it commutes with RMSNorm.
- GPT-2 stores Linear weights as Conv1D (in, out), has no GQA (k and v heads are
  repeated), and always has biases and LayerNorm offsets (zeros when lmforge has none).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.models.gpt import GPT, GPTConfig

if TYPE_CHECKING:  # transformers is an optional extra, imported where it is used
    from transformers import PretrainedConfig


class ExportError(ValueError):
    pass


def hf_style(cfg: GPTConfig) -> str:
    """'llama', 'qwen3' (qk_norm), 'deepseek_v3' (MLA) or 'gpt2', or an ExportError naming the fields to change."""
    if cfg.attention == "linear":
        raise ExportError("transformers has no causal LM with lmforge's linear attention; use --format safetensors")
    if not cfg.causal:
        raise ExportError("a bidirectional model (model.causal false) would run causally in transformers' decoder classes; "
                          "use --format safetensors")
    if cfg.pos_embedding == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu":
        if cfg.attention == "mla":
            if cfg.bias:
                raise ExportError("DeepseekV3's MLP has no biases: export an MLA model with model.bias false, or use --format safetensors")
            return "deepseek_v3"
        if cfg.qk_norm:
            if cfg.bias:
                raise ExportError("Qwen3's MLP has no biases: export a qk_norm model with model.bias false, or use --format safetensors")
            return "qwen3"
        return "llama"
    if cfg.pos_embedding == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and not cfg.qk_norm:
        return "gpt2"
    raise ExportError(
        f"no Hugging Face architecture for pos_embedding={cfg.pos_embedding}, norm={cfg.norm}, mlp={cfg.mlp}, "
        f"qk_norm={cfg.qk_norm}: export supports rope+rmsnorm+swiglu (Llama; Qwen3 with qk_norm; DeepseekV3 with "
        "attention mla) and learned+layernorm+gelu (GPT-2); use --format safetensors"
    )


def _flip_rope_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Negate the second half of each head's output rows of a q or k projection (weight or bias)."""
    w = w.clone().view(n_heads, head_dim, *w.shape[1:])
    w[:, head_dim // 2 :] *= -1
    return w.view(n_heads * head_dim, *w.shape[2:])


def _rope_parameters(c: GPTConfig) -> dict[str, object]:
    if c.rope_scale != 1.0:
        return {"rope_type": "linear", "rope_theta": c.rope_theta, "factor": 1.0 / c.rope_scale}
    return {"rope_type": "default", "rope_theta": c.rope_theta}


def qwen3_state_and_config(model: GPT) -> tuple[dict[str, torch.Tensor], PretrainedConfig]:
    """Qwen3ForCausalLM's state dict and config: Llama's mapping plus each layer's q_norm/k_norm weights."""
    from transformers import Qwen3Config

    c = model.config
    sd, _ = llama_state_and_config(model)
    for i, block in enumerate(model.blocks):
        sd[f"model.layers.{i}.self_attn.q_norm.weight"] = block.attn.q_norm.weight
        sd[f"model.layers.{i}.self_attn.k_norm.weight"] = block.attn.k_norm.weight
    config = Qwen3Config(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden_dim, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_parameters=_rope_parameters(c),
        tie_word_embeddings=c.tie_embeddings, attention_bias=False, use_sliding_window=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return sd, config


def llama_state_and_config(model: GPT) -> tuple[dict[str, torch.Tensor], PretrainedConfig]:
    """LlamaForCausalLM's state dict and config: fused qkv and gate/up split apart, q/k heads sign-fixed for RoPE."""
    from transformers import LlamaConfig

    c = model.config
    config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden_dim, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_parameters=_rope_parameters(c),
        tie_word_embeddings=c.tie_embeddings, attention_bias=c.bias, mlp_bias=c.bias,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    hs, nh, nkv = c.head_dim, c.n_head, c.kv_heads
    sd = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.ln_f.weight}
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = block.ln_1.weight
        sd[p + "post_attention_layernorm.weight"] = block.ln_2.weight
        names = ("weight", "bias") if c.bias else ("weight",)
        for name in names:
            q, k, v = getattr(block.attn.c_attn, name).split([nh * hs, nkv * hs, nkv * hs], dim=0)
            sd[p + f"self_attn.q_proj.{name}"] = _flip_rope_half(q, nh, hs)
            sd[p + f"self_attn.k_proj.{name}"] = _flip_rope_half(k, nkv, hs)
            sd[p + f"self_attn.v_proj.{name}"] = v
            sd[p + f"self_attn.o_proj.{name}"] = getattr(block.attn.c_proj, name)
            gate, up = getattr(block.mlp.c_fc, name).chunk(2, dim=0)
            sd[p + f"mlp.gate_proj.{name}"], sd[p + f"mlp.up_proj.{name}"] = gate, up
            sd[p + f"mlp.down_proj.{name}"] = getattr(block.mlp.c_proj, name)
    return sd, config


def _flip_rope_rows(w: torch.Tensor, start: int, rope_dim: int) -> torch.Tensor:
    """Negate rows start + rope_dim/2 .. start + rope_dim (the second half of a RoPE part) of a weight or bias."""
    w = w.clone()
    w[start + rope_dim // 2 : start + rope_dim] *= -1
    return w


def deepseek_v3_state_and_config(model: GPT) -> tuple[dict[str, torch.Tensor], PretrainedConfig]:
    """DeepseekV3ForCausalLM's state dict and config for an MLA model: dense (first_k_dense_replace = every layer,
    so no MoE), rope_interleave off (lmforge's half-split RoPE), the RoPE rows of q and of the shared key sign-fixed."""
    from transformers import DeepseekV3Config

    c, m = model.config, model.config.mla_sizes
    nope, rd, vd, nh = m["qk_nope_head_dim"], m["qk_rope_head_dim"], m["v_head_dim"], c.n_head
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scale != 1.0:
        rope = {"rope_type": "linear", "rope_theta": c.rope_theta, "factor": 1.0 / c.rope_scale}
    config = DeepseekV3Config(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden_dim, num_hidden_layers=c.n_layer,
        num_attention_heads=nh, num_key_value_heads=nh, kv_lora_rank=m["kv_lora_rank"], q_lora_rank=m["q_lora_rank"],
        qk_rope_head_dim=rd, qk_nope_head_dim=nope, v_head_dim=vd, first_k_dense_replace=c.n_layer, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps, rope_parameters=rope, rope_interleave=False,
        tie_word_embeddings=c.tie_embeddings, attention_bias=c.bias, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    sd = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.ln_f.weight}
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight

    def flip_q(w: torch.Tensor) -> torch.Tensor:
        w = w.clone().view(nh, nope + rd, *w.shape[1:])
        w[:, nope + rd // 2 :] *= -1
        return w.view(nh * (nope + rd), *w.shape[2:])

    for i, block in enumerate(model.blocks):
        p, a = f"model.layers.{i}.", block.attn
        sd[p + "input_layernorm.weight"] = block.ln_1.weight
        sd[p + "post_attention_layernorm.weight"] = block.ln_2.weight
        if a.low_rank_q:
            sd[p + "self_attn.q_a_proj.weight"] = a.q_a_proj.weight
            sd[p + "self_attn.q_a_layernorm.weight"] = a.q_a_norm.weight
            sd[p + "self_attn.q_b_proj.weight"] = flip_q(a.q_b_proj.weight)
        else:
            sd[p + "self_attn.q_proj.weight"] = flip_q(a.q_proj.weight)
        sd[p + "self_attn.kv_a_proj_with_mqa.weight"] = _flip_rope_rows(a.kv_a_proj.weight, m["kv_lora_rank"], rd)
        sd[p + "self_attn.kv_a_layernorm.weight"] = a.kv_a_norm.weight
        sd[p + "self_attn.kv_b_proj.weight"] = a.kv_b_proj.weight
        sd[p + "self_attn.o_proj.weight"] = a.c_proj.weight
        if c.bias:
            if a.low_rank_q:
                sd[p + "self_attn.q_a_proj.bias"] = a.q_a_proj.bias
            sd[p + "self_attn.kv_a_proj_with_mqa.bias"] = _flip_rope_rows(a.kv_a_proj.bias, m["kv_lora_rank"], rd)
            sd[p + "self_attn.o_proj.bias"] = a.c_proj.bias
        gate, up = block.mlp.c_fc.weight.chunk(2, dim=0)
        sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"] = gate, up
        sd[p + "mlp.down_proj.weight"] = block.mlp.c_proj.weight
    return sd, config


def gpt2_state_and_config(model: GPT) -> tuple[dict[str, torch.Tensor], PretrainedConfig]:
    """GPT2LMHeadModel's state dict and config: Conv1D (in, out) weights, kv heads repeated, zeros for absent biases."""
    from transformers import GPT2Config

    c = model.config
    config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=c.mlp_hidden_dim, activation_function="gelu", layer_norm_epsilon=c.norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=c.tie_embeddings,
        bos_token_id=None, eos_token_id=None,
    )
    hs, nh, nkv = c.head_dim, c.n_head, c.kv_heads

    def bias(module: torch.nn.Module, size: int) -> torch.Tensor:
        b = getattr(module, "bias", None)
        return b if b is not None else torch.zeros(size)

    def expand_kv(w: torch.Tensor) -> torch.Tensor:
        """(nkv*hs, ...) -> (nh*hs, ...): query head j reads kv head j // (nh/nkv), as SDPA's enable_gqa does."""
        return w.view(nkv, hs, *w.shape[1:]).repeat_interleave(nh // nkv, dim=0).reshape(nh * hs, *w.shape[1:])

    sd = {
        "transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
        "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": bias(model.ln_f, c.n_embd),
    }
    if not c.tie_embeddings:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        a, m = block.attn, block.mlp
        q, k, v = a.c_attn.weight.split([nh * hs, nkv * hs, nkv * hs], dim=0)
        qb, kb, vb = bias(a.c_attn, (nh + 2 * nkv) * hs).split([nh * hs, nkv * hs, nkv * hs])
        sd[p + "attn.c_attn.weight"] = torch.cat([q, expand_kv(k), expand_kv(v)]).T  # Conv1D: (in, out)
        sd[p + "attn.c_attn.bias"] = torch.cat([qb, expand_kv(kb), expand_kv(vb)])
        sd[p + "attn.c_proj.weight"] = a.c_proj.weight.T
        sd[p + "attn.c_proj.bias"] = bias(a.c_proj, c.n_embd)
        sd[p + "mlp.c_fc.weight"] = m.c_fc.weight.T
        sd[p + "mlp.c_fc.bias"] = bias(m.c_fc, c.mlp_hidden_dim)
        sd[p + "mlp.c_proj.weight"] = m.c_proj.weight.T
        sd[p + "mlp.c_proj.bias"] = bias(m.c_proj, c.n_embd)
        for ln in ("ln_1", "ln_2"):
            norm = getattr(block, ln)
            sd[p + f"{ln}.weight"], sd[p + f"{ln}.bias"] = norm.weight, bias(norm, c.n_embd)
    return sd, config


@torch.no_grad()
def to_hf_model(model: GPT) -> torch.nn.Module:
    """A transformers LlamaForCausalLM, Qwen3ForCausalLM, DeepseekV3ForCausalLM or GPT2LMHeadModel (fp32, eval mode)
    with `model`'s weights."""
    from transformers import DeepseekV3ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM

    if not isinstance(model, GPT):
        raise ExportError(f"--format hf exports `gpt` models only (got {type(model).__name__}); use --format safetensors")
    style = hf_style(model.config)
    build, cls = {"llama": (llama_state_and_config, LlamaForCausalLM), "gpt2": (gpt2_state_and_config, GPT2LMHeadModel),
                  "deepseek_v3": (deepseek_v3_state_and_config, DeepseekV3ForCausalLM),
                  "qwen3": (qwen3_state_and_config, Qwen3ForCausalLM)}[style]
    sd, config = build(model)
    hf = cls(config)
    missing, unexpected = hf.load_state_dict({k: v.detach().float().contiguous() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise ExportError(f"weight mapping is incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    return hf.float().eval()


def save_hf_tokenizer(tokenizer: object, out: Path) -> str:
    """bpe/pretrained: a PreTrainedTokenizerFast (tokenizer.json + tokenizer_config.json) that AutoTokenizer loads.

    char and byte tokenizers have no transformers class: their lmforge files go to
    `out/lmforge_tokenizer/` (load with `lmforge.data.load_tokenizer`); returns what was saved.
    """
    hf_tok = getattr(tokenizer, "tok", None)
    if hf_tok is None:
        tokenizer.save(out / "lmforge_tokenizer")
        return f"lmforge {tokenizer.type} tokenizer in lmforge_tokenizer/ (no transformers equivalent)"
    from transformers import PreTrainedTokenizerFast

    eos = hf_tok.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    PreTrainedTokenizerFast(tokenizer_object=hf_tok, eos_token=eos).save_pretrained(str(out))
    return "tokenizer.json (PreTrainedTokenizerFast)"


def export_hf(model: GPT, tokenizer: object, out: Path | str) -> str:
    """Write a `from_pretrained`-loadable folder; returns the architecture name and the tokenizer note."""
    out = Path(out)
    hf = to_hf_model(model)
    if tokenizer.eos_id is not None:
        hf.config.eos_token_id = tokenizer.eos_id
        hf.generation_config.eos_token_id = tokenizer.eos_id
    hf.save_pretrained(str(out))
    note = save_hf_tokenizer(tokenizer, out)
    return f"{type(hf).__name__}; {note}"
