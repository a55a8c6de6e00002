"""A decoder-only GPT: nanoGPT's model with the common modern options (RoPE, RMSNorm, SwiGLU, GQA).

`forward(input_ids, cache=None)` returns a `ModelOutput`; `step` is the same
call with a `KVCache`, which is the hook `lmforge.generation` uses.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from lmforge.config_base import Section
from lmforge.models.activation_cache import ActivationCache
from lmforge.models.dropout import Dropout
from lmforge.models.flops import flops_per_token
from lmforge.models.layers import (
    Block,
    CausalSelfAttention,
    KVCache,
    RotaryEmbedding,
    build_mlp,
    build_norm,
    swiglu_hidden_dim,
)
from lmforge.models.linear_attention import LinearAttention, LinearAttentionCache
from lmforge.models.mla import LatentKVCache, MultiHeadLatentAttention
from lmforge.models.output import ModelOutput
from lmforge.registry import MODELS


class MLAConfig(Section):
    """`model.mla`, for `attention: "mla"` (DeepSeek-V2's names); None = scaled like DeepSeek-V2 from head_dim."""

    kv_lora_rank: int | None = Field(None, ge=1, le=131072, description="KV latent width (the cache); None = 4 * head_dim (V2: 512 = 4 * 128)")
    q_lora_rank: int | None = Field(None, ge=1, le=131072, description="query bottleneck width; None = no query compression (V2-Lite)")
    qk_nope_head_dim: int | None = Field(None, ge=1, le=4096, description="per-head key/query channels without position; None = head_dim")
    qk_rope_head_dim: int | None = Field(None, ge=2, le=4096, description="decoupled RoPE key/query channels, shared key; even; None = head_dim / 2")
    v_head_dim: int | None = Field(None, ge=1, le=4096, description="per-head value channels; None = head_dim")

    @field_validator("qk_rope_head_dim")
    @classmethod
    def _even(cls, value: int | None) -> int | None:
        if value is not None and value % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates channel pairs), got {value}")
        return value


class LinearAttentionConfig(Section):
    """`model.linear`, for `attention: "linear"` (lmforge/models/linear_attention.py)."""

    feature_map: Literal["elu", "favor"] = Field("elu", description="elu: elu(x)+1 (Katharopoulos 2020); favor: Performer FAVOR+ random features")
    n_features: int | None = Field(None, ge=1, le=65536, description="favor: random features per head; None = 2 * head_dim")
    chunk_size: int = Field(64, ge=1, le=4096, description="positions per chunk of the causal prefix-sum form")


class GPTConfig(Section):
    """The `model` section of a preset for `arch: gpt`. Defaults are a tiny CPU-sized Llama-style model."""

    arch: Literal["gpt"] = Field("gpt", description="registered model name")
    vocab_size: int | None = Field(None, ge=1, le=16_777_216, description="token count; None = taken from the tokenizer by the trainer")
    n_layer: int = Field(4, ge=1, le=4096, description="transformer blocks")
    n_head: int = Field(4, ge=1, le=4096, description="query heads per attention layer")
    n_kv_head: int | None = Field(None, ge=1, le=4096, description="key/value heads (GQA); must divide n_head; None = n_head")
    n_embd: int = Field(128, ge=1, le=131072, description="residual width; divisible by n_head")
    attention: Literal["mha", "gqa", "mla", "linear"] = Field(
        "mha", description="mha (n_kv_head = n_head, or GQA when n_kv_head is set), gqa (n_kv_head required), "
        "mla (DeepSeek-V2 multi-head latent attention, options in `mla`), linear (kernelized O(T) attention, options in `linear`)"
    )
    causal: bool = Field(True, description="false = bidirectional (BERT-style, no mask: for mlm and mask_diffusion); "
                         "a stage can switch it with model_settings {\"causal\": ...}")
    mla: MLAConfig = Field(default_factory=MLAConfig, description="MLA sizes (attention: mla)")
    linear: LinearAttentionConfig = Field(default_factory=LinearAttentionConfig, description="linear attention options (attention: linear)")
    block_size: int = Field(256, ge=1, le=16_777_216, description="maximum context length in tokens")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on embeddings, attention and residual branches")
    bias: bool = Field(False, description="biases in Linear layers and LayerNorm")
    pos_embedding: Literal["rope", "learned"] = Field("rope", description="rotary (RoPE) or a learned position table")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base: larger = slower-rotating low frequencies")
    rope_scale: float = Field(
        1.0, gt=0, le=1,
        description="RoPE position multiplier (position interpolation); extend_max_seq_len sets it, 1 = none",
    )
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="normalization layer")
    mlp: Literal["swiglu", "gelu", "relu2"] = Field(
        "swiglu", description="feed-forward type: swiglu (Llama), gelu (GPT-2), relu2 (Primer's relu(x)^2, modded-nanogpt)")
    mlp_ratio: float = Field(
        4.0, gt=0,
        description="MLP width / n_embd for gelu and relu2; swiglu uses 2/3 of that (same parameter count), rounded up to multiple_of",
    )
    qk_norm: bool = Field(False, description="normalise each head's queries and keys before RoPE with the model's `norm` "
                          "(rmsnorm: Qwen3, OLMo 2; layernorm: Dehghani et al. 2023); attention mha/gqa only")
    multiple_of: int = Field(64, ge=1, description="round the swiglu hidden width up to a multiple of this")
    tie_embeddings: bool = Field(True, description="lm_head shares the token embedding matrix")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of every norm")
    init_std: float = Field(0.02, gt=0, description="std of the normal init (residual projections get /sqrt(2*n_layer))")
    init: Literal["gpt2", "pytorch"] = Field(
        "gpt2", description="gpt2: N(0, init_std) (nanoGPT); pytorch: each layer's own default (Embedding N(0, 1), Linear "
        "Kaiming-uniform), as the Grokfast paper's decoder: the larger weight norm is part of what makes grokking slow"
    )
    zero_init_proj: bool = Field(
        False, description="start every block's output projections (attention and MLP c_proj) at zero, so each block "
        "begins as the identity and the first steps train the embeddings and head (modded-nanogpt)"
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> "GPTConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.attention == "gqa" and (self.n_kv_head is None or self.n_kv_head == self.n_head):
            raise ValueError("attention 'gqa' needs n_kv_head smaller than n_head")
        if self.attention == "mla":
            if self.pos_embedding != "rope":
                raise ValueError("attention 'mla' needs pos_embedding 'rope' (its decoupled RoPE key carries position); "
                                 "for a preset with learned positions add --model.pos_embedding rope")
            if self.n_kv_head is not None:
                raise ValueError("attention 'mla' has no n_kv_head: every head reads the shared latent (set mla.kv_lora_rank)")
        elif self.mla != MLAConfig():
            raise ValueError(f"model.mla is set but attention is {self.attention!r}; set attention 'mla'")
        if self.qk_norm and self.attention in ("mla", "linear"):
            raise ValueError(f"qk_norm applies to attention mha/gqa, not {self.attention!r}")
        if self.attention == "linear" and self.n_kv_head is not None:
            raise ValueError("attention 'linear' has no n_kv_head")
        if self.attention == "linear" and not self.causal and self.pos_embedding != "learned":
            raise ValueError("attention 'linear' with causal false needs pos_embedding 'learned': linear attention "
                             "applies no RoPE and, without the causal prefix sum, nothing else tells positions apart")
        if self.attention != "linear" and self.linear != LinearAttentionConfig():
            raise ValueError(f"model.linear is set but attention is {self.attention!r}; set attention 'linear'")
        if self.pos_embedding == "rope" and self.rope_dim % 2:
            raise ValueError(f"pos_embedding 'rope' needs an even rotary size (got {self.rope_dim})")
        return self

    @property
    def rope_dim(self) -> int:
        """Channels RoPE rotates per head: the head size, or MLA's decoupled RoPE part."""
        return self.mla_sizes["qk_rope_head_dim"] if self.attention == "mla" else self.head_dim

    @property
    def mla_sizes(self) -> dict[str, int | None]:
        """MLA's sizes with DeepSeek-V2's ratios filled in (its 128-channel heads: nope 128, rope 64, latent 512)."""
        m, hs = self.mla, self.head_dim
        return {
            "kv_lora_rank": m.kv_lora_rank or 4 * hs, "q_lora_rank": m.q_lora_rank,
            "qk_nope_head_dim": m.qk_nope_head_dim or hs, "qk_rope_head_dim": m.qk_rope_head_dim or max(2, hs // 2 // 2 * 2),
            "v_head_dim": m.v_head_dim or hs,
        }

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden_dim(self) -> int:
        if self.mlp in ("gelu", "relu2"):
            return int(self.mlp_ratio * self.n_embd)
        return swiglu_hidden_dim(self.n_embd, self.mlp_ratio, self.multiple_of)


@MODELS.register("gpt", config=GPTConfig)
class GPT(nn.Module):
    """Token embedding -> (learned positions) -> blocks -> final norm -> lm_head.

    The model keeps its own copy of the config: `extend_max_seq_len` updates
    `model.config`, and building a fresh GPT from that config gives the same
    shapes and rotary tables, so its checkpoints load.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set: the trainer fills it from the tokenizer; set it when building by hand")
        self.config = config = config.model_copy(deep=True)
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C) if config.pos_embedding == "learned" else None
        self.rotary = (
            RotaryEmbedding(config.rope_dim, config.block_size, config.rope_theta, config.rope_scale)
            if config.pos_embedding == "rope" else None
        )
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(self._make_block(i) for i in range(config.n_layer))
        self.depth = config.n_layer  # blocks the forward runs (a stage plan's `depth` setting trains a shallower model)
        self.activation_cache: ActivationCache | None = None  # set by a stage plan whose lower layers are frozen
        self.set_causal(config.causal)
        self.ln_f = build_norm(config.norm, C, config.norm_eps, config.bias)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix: saves V*C params, and tends to help small models
        self.apply(self._init_weights)
        # GPT-2: each residual branch adds variance, so scale its output projection by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))
        if config.init == "pytorch":
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                    module.reset_parameters()
        if config.zero_init_proj:
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.zeros_(p)

    def _make_block(self, i: int) -> Block:
        c = self.config
        if c.attention == "mla":
            attn: nn.Module = MultiHeadLatentAttention(c.n_embd, c.n_head, i, bias=c.bias, dropout=c.dropout, **c.mla_sizes)
        elif c.attention == "linear":
            attn = LinearAttention(c.n_embd, c.n_head, i, c.linear.feature_map, c.linear.n_features, c.linear.chunk_size,
                                   bias=c.bias, dropout=c.dropout)
        else:
            attn = CausalSelfAttention(c.n_embd, c.n_head, c.kv_heads, layer_idx=i, bias=c.bias, dropout=c.dropout,
                                       qk_norm=c.norm if c.qk_norm else None, norm_eps=c.norm_eps)
        return Block(
            attn=attn,
            mlp=build_mlp(c.mlp, c.n_embd, c.mlp_hidden_dim, c.bias, c.dropout),
            ln_1=build_norm(c.norm, c.n_embd, c.norm_eps, c.bias),
            ln_2=build_norm(c.norm, c.n_embd, c.norm_eps, c.bias),
        )

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def set_causal(self, causal: bool) -> None:
        """Causal (each position sees the ones before it) or bidirectional attention, in every layer; a stage's
        `model_settings: {"causal": false}` calls this, so one run can pretrain one way and fine-tune the other."""
        if not causal and self.config.attention == "linear" and self.config.pos_embedding != "learned":
            raise ValueError("attention 'linear' with causal false needs pos_embedding 'learned' (no RoPE in linear attention)")
        self.config.causal = bool(causal)
        for block in self.blocks:
            block.attn.causal = bool(causal)

    def set_depth(self, depth: int) -> None:
        """Run only the first `depth` blocks (0 = embeddings straight into the head): layer-wise and progressive
        stage plans train a shallow model first; the blocks above wait, untrained, until a stage grows into them."""
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= self.config.n_layer:
            raise ValueError(f"depth must be an integer from 0 to n_layer ({self.config.n_layer}), got {depth!r}")
        self.depth = depth

    def use_activation_cache(self, cache: ActivationCache | None) -> None:
        """Serve the frozen prefix (embeddings and the first `cache.depth` blocks) from `cache` in training forwards."""
        if cache is not None and not 0 < cache.depth <= self.depth:
            raise ValueError(f"an activation cache over {cache.depth} blocks needs 1 to depth ({self.depth}) frozen blocks")
        self.activation_cache = cache

    def frozen_prefix_depth(self) -> int:
        """How many leading active blocks (with the embeddings) have no trainable parameter: what a cache may serve."""
        embeddings = [self.wte] + ([self.wpe] if self.wpe is not None else [])
        if any(p.requires_grad for m in embeddings for p in m.parameters()):
            return 0
        depth = 0
        while depth < self.depth and not any(p.requires_grad for p in self.blocks[depth].parameters()):
            depth += 1
        return depth

    @torch.no_grad()
    def reset_head(self) -> list[nn.Parameter]:
        """Re-initialise ln_f and lm_head as built (a stage plan's fresh head per stage); untied heads only."""
        if self.config.tie_embeddings:
            raise ValueError("a fresh head per stage needs model.tie_embeddings false (the tied head is the token embedding)")
        if isinstance(self.ln_f, nn.LayerNorm):
            self.ln_f.reset_parameters()
        else:
            self.ln_f.weight.fill_(1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=self.config.init_std)
        if self.config.init == "pytorch":
            self.lm_head.reset_parameters()
        return [*self.ln_f.parameters(), *self.lm_head.parameters()]

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (objectives that align hidden states with it, e.g. forge, read it here)."""
        return self.wte

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> ModelOutput:
        """Logits for every position of input_ids (B, T); with a cache, T new tokens after the cached ones."""
        B, T = input_ids.shape
        if cache is not None and not self.config.causal:
            raise ValueError("a bidirectional model (model.causal false) has no left-to-right decoding: every position "
                             "reads the ones after it; sample it with diffusion sampling (a mask_diffusion run)")
        offset = cache.length if cache is not None else 0
        if offset + T > self.config.block_size:
            raise ValueError(f"sequence of {offset + T} tokens exceeds block_size ({self.config.block_size})")
        rope = self.rotary(offset, T) if self.rotary is not None else None  # (T, hs/2) x2
        start = 0
        if self.activation_cache is not None and cache is None and self.training:
            start = self.activation_cache.depth
            x = self.activation_cache.lookup(input_ids, lambda ids, h, first, stop: self._frozen_prefix(ids, h, first, stop, rope))
        else:
            x = self._embed(input_ids, offset)
        for block in self.blocks[start : self.depth]:
            x = block(x, rope, cache)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        h = self.ln_f(x)  # (B, T, C)
        return ModelOutput(logits=self.lm_head(h), hidden_states=h, cache=cache)  # logits (B, T, V)

    def _embed(self, input_ids: torch.Tensor, offset: int) -> torch.Tensor:
        x = self.wte(input_ids)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(offset, offset + input_ids.size(1), device=input_ids.device))  # (T, C) broadcast
        return self.drop(x)

    @torch.no_grad()
    def _frozen_prefix(self, input_ids: torch.Tensor, x: torch.Tensor | None, first: int, stop: int, rope) -> torch.Tensor:
        """blocks[first:stop] on x (on the embeddings when x is None) as at inference (dropout off): the activation
        cache's values, one sequence at a time."""
        modules = [self.drop, *self.blocks[first:stop]]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            x = self._embed(input_ids, 0) if x is None else x
            for block in self.blocks[first:stop]:
                x = block(x, rope, None)
            return x
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)

    def step(self, input_ids: torch.Tensor, cache: KVCache) -> ModelOutput:
        """One incremental decoding step: `forward` with a cache (the generation hook every arch provides)."""
        return self(input_ids, cache=cache)

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache | LatentKVCache:
        """An empty KV cache for up to `max_len` (default block_size) positions, on the weights' dtype/device
        (MLA: the latent cache)."""
        c = self.config
        max_len = min(max_len or c.block_size, c.block_size)
        ref = self.wte.weight
        if c.attention == "linear":
            attn = self.blocks[0].attn
            return LinearAttentionCache(c.n_layer, batch_size, c.n_head, attn.n_features, c.head_dim, max_len, device=ref.device)
        if c.attention == "mla":
            m = c.mla_sizes
            return LatentKVCache(c.n_layer, batch_size, max_len, m["kv_lora_rank"], m["qk_rope_head_dim"],
                                 dtype=dtype or ref.dtype, device=device if device is not None else ref.device)
        return KVCache(
            c.n_layer, batch_size, c.kv_heads, max_len, c.head_dim,
            dtype=dtype or ref.dtype, device=device if device is not None else ref.device,
        )

    # ------------------------------------------------------------------ accounting

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counts once); optionally without token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token at context `seq_len` (see `lmforge.models.flops.flops_per_token`)."""
        return flops_per_token(self.config, self.num_params(exclude_embeddings=True), seq_len)

    # ------------------------------------------------------------------ context extension

    @torch.no_grad()
    def extend_max_seq_len(self, new_block_size: int, interpolate: bool = True) -> None:
        """Grow the context to `new_block_size` tokens (call before building the optimizer: params may be replaced).

        - learned positions, interpolate=True: the table is resampled linearly
          along positions, so the new first and last rows equal the old ones and
          row i is the old table at i * (old-1)/(new-1) (seed 002's extension).
          interpolate=False keeps the old rows and initializes the new ones.
        - rope, interpolate=True: linear position interpolation (Chen et al.
          2023, "Extending Context Window of Large Language Models via
          Positional Interpolation"): positions are multiplied by old/new, so
          the model only sees rotation angles it was trained on; a short
          fine-tune then adapts it. interpolate=False just extends the rotary
          tables (plain extrapolation to unseen angles).

        `config.block_size` (and `config.rope_scale` for rope) are updated.
        """
        old = self.config.block_size
        if new_block_size < old:
            raise ValueError(f"new_block_size ({new_block_size}) is smaller than block_size ({old})")
        if new_block_size == old:
            return
        if self.wpe is not None:
            w = self.wpe.weight  # (old, C)
            if interpolate:
                grown = F.interpolate(w.float().T.unsqueeze(0), size=new_block_size, mode="linear", align_corners=True)
                grown = grown.squeeze(0).T.to(w.dtype)  # (new, C)
            else:
                grown = torch.empty(new_block_size, w.size(1), dtype=w.dtype, device=w.device)
                nn.init.normal_(grown, mean=0.0, std=self.config.init_std)
                grown[:old] = w
            self.wpe = nn.Embedding(new_block_size, w.size(1), device=w.device, dtype=w.dtype)
            self.wpe.weight.copy_(grown)
        else:
            if interpolate:
                self.config.rope_scale = self.config.rope_scale * old / new_block_size
            self.rotary.resize(new_block_size, self.config.rope_scale)
        self.config.block_size = new_block_size
