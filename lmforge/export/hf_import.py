"""Import a Hugging Face Llama, Qwen3 (qk_norm), GPT-2 or dense DeepseekV3 (MLA) checkpoint as an lmforge `gpt`: export/hf.py backwards.

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

from lmforge.export.hf import ExportError, _flip_rope_half, _flip_rope_rows
from lmforge.models.gpt import GPT, GPTConfig


class HFImportError(ExportError):
    """A checkpoint that lmforge's `gpt` cannot reproduce exactly."""


def _refuse(message: str) -> None:
    raise HFImportError(f"cannot import as an lmforge gpt: {message}")


def _rope(hf: object) -> tuple[float, float]:
    """(rope_theta, lmforge's rope_scale) of a Llama-style config; other RoPE types are refused."""
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") == "linear":
        return theta, 1.0 / rope["factor"]
    if rope.get("rope_type", "default") != "default":
        _refuse(f"rope_type {rope.get('rope_type')!r} (lmforge has default and linear RoPE)")
    return theta, 1.0


def llama_gpt_config(hf: object) -> GPTConfig:
    """GPTConfig computing what LlamaConfig `hf` does."""
    if hf.hidden_act != "silu":
        _refuse(f"hidden_act {hf.hidden_act!r} (lmforge's swiglu uses silu)")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    if head_dim * hf.num_attention_heads != hf.hidden_size:
        _refuse(f"head_dim {head_dim} * {hf.num_attention_heads} heads != hidden_size {hf.hidden_size}")
    theta, scale = _rope(hf)
    return GPTConfig(
        vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
        n_kv_head=hf.num_key_value_heads, n_embd=hf.hidden_size, block_size=hf.max_position_embeddings,
        bias=bool(hf.attention_bias or getattr(hf, "mlp_bias", False)), pos_embedding="rope", rope_theta=theta,
        rope_scale=scale, norm="rmsnorm", mlp="swiglu",
        # swiglu_hidden_dim rounds int(2/3 * ratio * n_embd) up to multiple_of: this makes it intermediate_size exactly
        mlp_ratio=1.5 * hf.intermediate_size / hf.hidden_size, multiple_of=hf.intermediate_size,
        tie_embeddings=bool(hf.tie_word_embeddings), norm_eps=hf.rms_norm_eps,
    )


def qwen3_gpt_config(hf: object) -> GPTConfig:
    """GPTConfig (qk_norm) computing what a Qwen3Config `hf` does; sliding-window layers are refused."""
    if getattr(hf, "use_sliding_window", False):
        _refuse("use_sliding_window true (lmforge's gpt attends to the whole context)")
    return GPTConfig(**{**llama_gpt_config(hf).model_dump(), "qk_norm": True})


def deepseek_v3_gpt_config(hf: object) -> GPTConfig:
    """GPTConfig (attention mla) computing what a dense DeepseekV3Config `hf` does; MoE layers are refused."""
    if hf.first_k_dense_replace < hf.num_hidden_layers:
        _refuse(f"{hf.num_hidden_layers - hf.first_k_dense_replace} MoE layers (lmforge imports dense DeepseekV3: "
                "first_k_dense_replace = num_hidden_layers)")
    if hf.rope_interleave:
        _refuse("rope_interleave true (lmforge's RoPE rotates channel halves; export sets it false)")
    if hf.attention_bias:
        _refuse("attention_bias true (lmforge's MLP would need biases DeepseekV3's has not)")
    if hf.hidden_act != "silu":
        _refuse(f"hidden_act {hf.hidden_act!r} (lmforge's swiglu uses silu)")
    if hf.hidden_size % hf.num_attention_heads:
        _refuse(f"hidden_size {hf.hidden_size} not divisible by {hf.num_attention_heads} heads")
    theta, scale = _rope(hf)
    return GPTConfig(
        vocab_size=hf.vocab_size, n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads, n_embd=hf.hidden_size,
        block_size=hf.max_position_embeddings, bias=False, pos_embedding="rope", rope_theta=theta, rope_scale=scale,
        norm="rmsnorm", mlp="swiglu", mlp_ratio=1.5 * hf.intermediate_size / hf.hidden_size, multiple_of=hf.intermediate_size,
        tie_embeddings=bool(hf.tie_word_embeddings), norm_eps=hf.rms_norm_eps, attention="mla",
        mla={"kv_lora_rank": hf.kv_lora_rank, "q_lora_rank": hf.q_lora_rank, "qk_nope_head_dim": hf.qk_nope_head_dim,
             "qk_rope_head_dim": hf.qk_rope_head_dim, "v_head_dim": hf.v_head_dim},
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


def qwen3_gpt_state(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state from Qwen3ForCausalLM's: Llama's mapping plus q_norm/k_norm (no flip: it commutes with RMSNorm)."""
    out = llama_gpt_state(sd, c)
    for i in range(c.n_layer):
        p = f"model.layers.{i}.self_attn."
        out[f"blocks.{i}.attn.q_norm.weight"] = sd[p + "q_norm.weight"]
        out[f"blocks.{i}.attn.k_norm.weight"] = sd[p + "k_norm.weight"]
    return out


def deepseek_v3_gpt_state(sd: dict[str, torch.Tensor], c: GPTConfig) -> dict[str, torch.Tensor]:
    """lmforge state from a dense DeepseekV3ForCausalLM's: export's mapping run backwards (the flips undo themselves)."""
    m, nh = c.mla_sizes, c.n_head
    nope, rd = m["qk_nope_head_dim"], m["qk_rope_head_dim"]

    def flip_q(w: torch.Tensor) -> torch.Tensor:
        w = w.clone().view(nh, nope + rd, *w.shape[1:])
        w[:, nope + rd // 2 :] *= -1
        return w.view(nh * (nope + rd), *w.shape[2:])

    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        at = p + "self_attn."
        out[q + "ln_1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "ln_2.weight"] = sd[p + "post_attention_layernorm.weight"]
        if m["q_lora_rank"] is None:
            out[q + "attn.q_proj.weight"] = flip_q(sd[at + "q_proj.weight"])
        else:
            out[q + "attn.q_a_proj.weight"] = sd[at + "q_a_proj.weight"]
            out[q + "attn.q_a_norm.weight"] = sd[at + "q_a_layernorm.weight"]
            out[q + "attn.q_b_proj.weight"] = flip_q(sd[at + "q_b_proj.weight"])
        out[q + "attn.kv_a_proj.weight"] = _flip_rope_rows(sd[at + "kv_a_proj_with_mqa.weight"], m["kv_lora_rank"], rd)
        out[q + "attn.kv_a_norm.weight"] = sd[at + "kv_a_layernorm.weight"]
        out[q + "attn.kv_b_proj.weight"] = sd[at + "kv_b_proj.weight"]
        out[q + "attn.c_proj.weight"] = sd[at + "o_proj.weight"]
        out[q + "mlp.c_fc.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[q + "mlp.c_proj.weight"] = sd[p + "mlp.down_proj.weight"]
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
    kinds = {"llama": (llama_gpt_config, llama_gpt_state), "gpt2": (gpt2_gpt_config, gpt2_gpt_state),
             "deepseek_v3": (deepseek_v3_gpt_config, deepseek_v3_gpt_state), "qwen3": (qwen3_gpt_config, qwen3_gpt_state)}
    if hf_config.model_type not in kinds:
        _refuse(f"model_type {hf_config.model_type!r} (supported: {', '.join(kinds)})")
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
