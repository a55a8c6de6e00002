"""Import a Hugging Face Llama or GPT-2 checkpoint as an lmforge `gpt`: the inverse of export/hf.py's mapping.

The q/k sign flip of the RoPE convention is its own inverse, so the same
`_flip_rope_half` undoes it. GPT-2 always has biases and no GQA, so a GPT-2
folder imports as `bias=True` with plain multi-head attention (an exported
bias-free model's zero biases come back as zeros). Only configurations that
compute the same function in lmforge are accepted; anything else (e.g. GPT-2's
tanh `gelu_new`, Llama's RoPE scaling other than linear) is refused.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.export.hf import ExportError, _flip_rope_half
from lmforge.models.gpt import GPT, GPTConfig


class HFImportError(ExportError):
    """A checkpoint that lmforge's `gpt` cannot reproduce exactly."""


def _refuse(message: str) -> None:
    raise HFImportError(f"cannot import as an lmforge gpt: {message}")


def llama_gpt_config(hf: object) -> GPTConfig:
    """GPTConfig computing what LlamaConfig `hf` does."""
    if hf.hidden_act != "silu":
        _refuse(f"hidden_act {hf.hidden_act!r} (lmforge's swiglu uses silu)")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if head_dim * hf.num_attention_heads != hf.hidden_size:
        _refuse(f"head_dim {head_dim} * {hf.num_attention_heads} heads != hidden_size {hf.hidden_size}")
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    scale = 1.0
    if rope.get("rope_type", "default") == "linear":
        scale = 1.0 / rope["factor"]
    elif rope.get("rope_type", "default") != "default":
        _refuse(f"rope_type {rope.get('rope_type')!r} (lmforge has default and linear RoPE)")
    return GPTConfig(
        vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
        n_kv_head=hf.num_key_value_heads, n_embd=hf.hidden_size, block_size=hf.max_position_embeddings,
        bias=bool(hf.attention_bias or getattr(hf, "mlp_bias", False)), pos_embedding="rope", rope_theta=theta,
        rope_scale=scale, norm="rmsnorm", mlp="swiglu",
        # swiglu_hidden_dim rounds int(2/3 * ratio * n_embd) up to multiple_of: this makes it intermediate_size exactly
        mlp_ratio=1.5 * hf.intermediate_size / hf.hidden_size, multiple_of=hf.intermediate_size,
        tie_embeddings=bool(hf.tie_word_embeddings), norm_eps=hf.rms_norm_eps,
    )


def gpt2_gpt_config(hf: object) -> GPTConfig:
    """GPTConfig computing what GPT2Config `hf` does."""
    if hf.activation_function != "gelu":
        _refuse(f"activation_function {hf.activation_function!r} (lmforge's gelu is the exact erf form, 'gelu')")
    if not hf.scale_attn_weights or hf.scale_attn_by_inverse_layer_idx:
        _refuse("GPT-2 attention scaling other than 1/sqrt(head_dim)")
    inner = hf.n_inner or 4 * hf.n_embd
    return GPTConfig(
        vocab_size=hf.vocab_size, n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd, block_size=hf.n_positions,
        bias=True, pos_embedding="learned", norm="layernorm", mlp="gelu", mlp_ratio=inner / hf.n_embd,
        tie_embeddings=bool(hf.tie_word_embeddings), norm_eps=hf.layer_norm_epsilon,
    )


def llama_gpt_state(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state from LlamaForCausalLM's: q/k/v fused, gate/up fused, RoPE sign flip undone."""
    hs, nh, nkv = c.head_dim, c.n_head, c.kv_heads
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]

    def get(key: str, rows: int) -> torch.Tensor:
        return sd[key] if key in sd else torch.zeros(rows)  # a bias only one of attention/mlp has

    for i in range(c.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[q + "ln_1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "ln_2.weight"] = sd[p + "post_attention_layernorm.weight"]
        for name in ("weight", "bias") if c.bias else ("weight",):
            at, mlp = p + "self_attn.", p + "mlp."
            out[q + f"attn.c_attn.{name}"] = torch.cat([
                _flip_rope_half(get(at + f"q_proj.{name}", nh * hs), nh, hs),
                _flip_rope_half(get(at + f"k_proj.{name}", nkv * hs), nkv, hs),
                get(at + f"v_proj.{name}", nkv * hs),
            ])
            out[q + f"attn.c_proj.{name}"] = get(at + f"o_proj.{name}", c.n_embd)
            h = c.mlp_hidden_dim
            out[q + f"mlp.c_fc.{name}"] = torch.cat([get(mlp + f"gate_proj.{name}", h), get(mlp + f"up_proj.{name}", h)])
            out[q + f"mlp.c_proj.{name}"] = get(mlp + f"down_proj.{name}", c.n_embd)
    return out


def gpt2_gpt_state(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state from GPT2LMHeadModel's: Conv1D (in, out) weights transposed back to Linear (out, in)."""
    out = {
        "wte.weight": sd["transformer.wte.weight"], "wpe.weight": sd["transformer.wpe.weight"],
        "ln_f.weight": sd["transformer.ln_f.weight"], "ln_f.bias": sd["transformer.ln_f.bias"],
    }
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("attn.c_attn", "attn.c_attn"), ("attn.c_proj", "attn.c_proj"),
                             ("mlp.c_fc", "mlp.c_fc"), ("mlp.c_proj", "mlp.c_proj")):
            out[q + ours + ".weight"] = sd[p + theirs + ".weight"].T
            out[q + ours + ".bias"] = sd[p + theirs + ".bias"]
        for ln in ("ln_1", "ln_2"):
            out[q + ln + ".weight"], out[q + ln + ".bias"] = sd[p + ln + ".weight"], sd[p + ln + ".bias"]
    return out


def load_hf_state(path: Path | str) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The GPTConfig and lmforge state dict (fp32) of a transformers Llama or GPT-2 folder, loaded offline."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = str(path)
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    kinds = {"llama": (llama_gpt_config, llama_gpt_state), "gpt2": (gpt2_gpt_config, gpt2_gpt_state)}
    if hf_config.model_type not in kinds:
        _refuse(f"model_type {hf_config.model_type!r} (supported: llama, gpt2)")
    make_config, make_state = kinds[hf_config.model_type]
    cfg = make_config(hf_config)
    hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    return cfg, make_state(sd, cfg)


def import_hf(path: Path | str) -> GPT:
    """A GPT (fp32, eval mode) with the weights of a transformers Llama or GPT-2 folder."""
    from lmforge.training.state import load_model_state

    cfg, state = load_hf_state(path)
    model = GPT(cfg)
    load_model_state(model, state)
    return model.eval()
