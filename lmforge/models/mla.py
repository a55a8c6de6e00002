"""Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434, section 2.1), as transformers' DeepseekV3Attention.

Keys and values come from one compressed latent c = RMSNorm(W_dkv x) of `kv_lora_rank` channels, up-projected
per head (W_ukv -> k_nope, v). Position enters through a separate, decoupled RoPE key of `qk_rope_head_dim`
channels shared by all heads (W_kr x, rotated), concatenated to each head's k_nope; queries likewise get
[q_nope, rotate(q_rope)], optionally through their own low-rank bottleneck (`q_lora_rank`). Scores use the
scale 1/sqrt(qk_nope_head_dim + qk_rope_head_dim). The cache holds only c and the rotated shared key:
(kv_lora_rank + qk_rope_head_dim) numbers per token and layer, against 2 * n_kv_head * head_dim for MHA/GQA.

This up-projects the cached latents at every step (no weight absorption): the cache is what MLA saves; the
absorbed form (W_uk folded into W_q) is a decode-speed optimisation we did not need for correctness.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models.dropout import Dropout, scaled_dot_product_attention
from lmforge.models.layers import RMSNorm, apply_rotary

LATENT_NORM_EPS = 1e-6  # DeepseekV3RMSNorm's default, which transformers uses for q_a_layernorm and kv_a_layernorm


class LatentKVCache:
    """Per layer, the normalized KV latent (B, L, kv_lora_rank) and the rotated shared RoPE key (B, L, rope_dim).

    Same protocol as KVCache for the generation loop: `length`, `max_len`, `advance(n)`, `reset()`.
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.latent = [torch.zeros(batch_size, max_len, kv_lora_rank, dtype=dtype, device=device) for _ in range(n_layer)]
        self.k_rope = [torch.zeros(batch_size, max_len, rope_dim, dtype=dtype, device=device) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0

    def update(self, layer: int, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, T, r) and (B, T, d_rope) after the cached positions; return everything cached so far."""
        end = self.length + latent.size(1)
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} + {latent.size(1)} positions > max_len {self.max_len}")
        self.latent[layer][:, self.length : end] = latent
        self.k_rope[layer][:, self.length : end] = k_rope
        return self.latent[layer][:, :end], self.k_rope[layer][:, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0

    def bytes_per_token(self) -> int:
        """Cache bytes per token, all layers together."""
        return sum(t.element_size() * t.size(-1) for t in (*self.latent, *self.k_rope))


class MultiHeadLatentAttention(nn.Module):
    """MLA with a causal mask; `c_proj` is the output projection (named so the GPT-2 residual init scales it)."""

    def __init__(self, n_embd: int, n_head: int, layer_idx: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, q_lora_rank: int | None = None, bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.n_head, self.layer_idx, self.dropout = n_head, layer_idx, dropout
        self.kv_lora_rank, self.nope, self.rope, self.v_dim = kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        qk_dim = qk_nope_head_dim + qk_rope_head_dim
        self.low_rank_q = q_lora_rank is not None
        if q_lora_rank is None:
            self.q_proj = nn.Linear(n_embd, n_head * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(n_embd, q_lora_rank, bias=bias)
            self.q_a_norm = RMSNorm(q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(q_lora_rank, n_head * qk_dim, bias=False)
        self.kv_a_proj = nn.Linear(n_embd, kv_lora_rank + qk_rope_head_dim, bias=bias)  # latent and shared RoPE key
        self.kv_a_norm = RMSNorm(kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_head * (qk_nope_head_dim + v_head_dim), bias=False)
        self.c_proj = nn.Linear(n_head * v_head_dim, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.scale = qk_dim ** -0.5
        self.causal = True  # False: bidirectional; GPT.set_causal

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.low_rank_q:
            return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        return self.q_proj(x)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LatentKVCache | None = None) -> torch.Tensor:
        if rope is None:
            raise ValueError("MLA needs rotary positions (its decoupled RoPE key): pos_embedding 'rope'")
        B, T, _ = x.shape
        nh, nope, rd, vd = self.n_head, self.nope, self.rope, self.v_dim
        q = self._queries(x).view(B, T, nh, nope + rd).transpose(1, 2)  # (B, nh, T, nope+rope)
        q_nope, q_rope = q.split([nope, rd], dim=-1)
        latent, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, rd], dim=-1)  # (B, T, r), (B, T, rope)
        latent = self.kv_a_norm(latent)
        q_rope = apply_rotary(q_rope, *rope)
        k_rope = apply_rotary(k_rope.unsqueeze(1), *rope).squeeze(1)  # one key shared by every head
        offset = 0
        if cache is not None:
            offset = cache.length
            latent, k_rope = cache.update(self.layer_idx, latent, k_rope)  # (B, offset+T, ...)
            latent, k_rope = latent.to(q.dtype), k_rope.to(q.dtype)
        S = latent.size(1)
        kv = self.kv_b_proj(latent).view(B, S, nh, nope + vd).transpose(1, 2)  # (B, nh, S, nope+v)
        k_nope, v = kv.split([nope, vd], dim=-1)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, nh, S, rd)], dim=-1)  # (B, nh, S, nope+rope)
        q = torch.cat([q_nope, q_rope], dim=-1)
        mask = None
        if self.causal and offset > 0 and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=offset)
        y = scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and offset == 0 and T > 1, scale=self.scale,
        )  # (B, nh, T, v)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * vd)
        return self.resid_dropout(self.c_proj(y))
