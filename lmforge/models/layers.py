"""Transformer building blocks: norms, rotary positions, attention with a KV cache, MLPs, the block.

Each module does one job and takes plain numbers, not a run config, so other
architectures (and layer swaps that replace `nn.Linear`s) can reuse them.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.dropout import Dropout, scaled_dot_product_attention


# ---------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): LayerNorm without centring or bias; one fused kernel."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def build_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """`rmsnorm` or `layernorm` (the latter with a bias only when the model uses biases)."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; allowed: rmsnorm, layernorm")


# ---------------------------------------------------------------------------- rotary positions


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) with precomputed cos/sin tables.

    The tables are non-persistent buffers: they are a pure function of
    (head_dim, theta, scale, length), so checkpoints don't carry them and
    `resize` can rebuild them for a longer context. `scale` < 1 multiplies
    positions (linear position interpolation, Chen et al. 2023), so a model
    trained on L positions sees positions in [0, L) again at length L/scale.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0, scale: float = 1.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim (got {head_dim})")
        self.head_dim, self.theta = head_dim, theta
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.resize(max_len, scale)

    def resize(self, max_len: int, scale: float = 1.0) -> None:
        """(Re)build the cos/sin tables for positions 0..max_len-1, each multiplied by `scale`."""
        self.max_len, self.scale = max_len, scale
        positions = torch.arange(max_len, dtype=torch.float32, device=self.inv_freq.device) * scale
        freqs = torch.outer(positions, self.inv_freq.float())  # (L, hs/2)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, offset: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions offset..offset+length-1, each (T, hs/2)."""
        if offset + length > self.max_len:
            raise ValueError(f"position {offset + length - 1} is beyond the rotary table ({self.max_len} positions)")
        return self.cos[offset : offset + length], self.sin[offset : offset + length]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (..., hs) by the angles behind cos/sin, which broadcast against
    x's other dims: (T, hs/2) for x (B, nh, T, hs), (T, 1, hs/2) for x (B, T, nh, hs)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # stay in x's dtype: no upcast under bf16 autocast
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


# ---------------------------------------------------------------------------- KV cache


class KVCache:
    """Preallocated keys/values of every layer, so each decoding step costs O(T) instead of O(T^2).

    `length` counts the positions already stored. Layers write their new
    keys/values at [length, length + T) through `update`; the model calls
    `advance(T)` once after all layers, so every layer sees the same offset.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]  # (B, nkv, L, hs) each
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) after the cached positions; return all keys/values (B, nkv, length+T, hs)."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} + {k.size(2)} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        """Forget every position (the buffers are reused, not zeroed: `length` bounds what is read)."""
        self.length = 0

    def bytes_per_token(self) -> int:
        """Cache bytes per token, all layers together (keys and values of every KV head)."""
        return sum(t.element_size() * t.size(1) * t.size(-1) for t in (*self.k, *self.v))


# ---------------------------------------------------------------------------- attention


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with grouped-query KV heads (GQA; n_kv_head == 1 is MQA).

    One fused projection makes q, k and v (fewer kernels than three Linears);
    `F.scaled_dot_product_attention` picks the flash/efficient/math kernel.
    `qk_norm` ("rmsnorm" or "layernorm") normalises each head's queries and keys before RoPE (Qwen3's RMSNorm
    q_norm/k_norm; Dehghani et al. 2023's LayerNorm): the attention logits stay bounded. Queries and keys are
    normalised and rotated as one (B, T, nh + nkv, hs) view of the fused projection: half the elementwise kernels
    of doing each apart, which is a measurable share of a small model's step on a CPU.
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int, layer_idx: int, bias: bool = False, dropout: float = 0.0,
                 qk_norm: str | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.layer_idx = layer_idx  # which slot of a KVCache this layer owns
        self.dropout = dropout
        self.causal = True  # False: bidirectional (BERT-style, every position sees every other); GPT.set_causal
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * self.head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.qk_norm, self.norm_eps = qk_norm, norm_eps
        self.q_norm = build_norm(qk_norm, self.head_dim, norm_eps, bias=False) if qk_norm else None  # weights only:
        self.k_norm = build_norm(qk_norm, self.head_dim, norm_eps, bias=False) if qk_norm else None  # read in forward

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        qk, v = self.c_attn(x).split([(nh + nkv) * hs, nkv * hs], dim=-1)
        qk = qk.view(B, T, nh + nkv, hs)  # every query head, then every key head
        if self.qk_norm is not None:
            qk = self._norm_heads(qk)
        if rope is not None:
            cos, sin = rope
            qk = apply_rotary(qk, cos[:, None], sin[:, None])  # (T, 1, hs/2): broadcast over the heads
        q, k = qk.transpose(1, 2).split([nh, nkv], dim=1)  # (B, nh, T, hs), (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)

        offset = 0
        if cache is not None:
            offset = cache.length
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, offset+T, hs)
            k, v = k.to(q.dtype), v.to(q.dtype)  # an fp32 cache read under bf16 autocast
        # is_causal aligns the mask top-left, which is right only when queries and keys start together.
        # With cached keys: one query sees everything; several need the mask shifted by the offset.
        mask = None
        if self.causal and offset > 0 and T > 1:
            mask = torch.ones(T, offset + T, dtype=torch.bool, device=q.device).tril(diagonal=offset)  # (T, offset+T)
        y = scaled_dot_product_attention(  # torch's, or its math with a cheap dropout mask on CPU
            q, k, v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and offset == 0 and T > 1,
            enable_gqa=nkv != nh,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _norm_heads(self, qk: torch.Tensor) -> torch.Tensor:
        """q_norm on the query heads and k_norm on the key heads of qk (B, T, nh + nkv, hs), in one norm kernel."""
        hs = self.head_dim
        if self.qk_norm == "rmsnorm":
            normed = F.rms_norm(qk, (hs,), None, self.norm_eps)
        else:
            normed = F.layer_norm(qk, (hs,), None, None, self.norm_eps)
        weight = torch.cat([self.q_norm.weight.expand(self.n_head, hs), self.k_norm.weight.expand(self.n_kv_head, hs)])
        return normed * weight.to(normed.dtype)  # (nh + nkv, hs) broadcast over (B, T)


# ---------------------------------------------------------------------------- MLPs


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """Primer's activation (So et al. 2021): relu(x)^2, sparser than GELU; it trained faster than GELU and SwiGLU in
    the paper's and modded-nanogpt's small-model runs."""
    return F.relu(x).square()


class MLP(nn.Module):
    """Linear -> activation -> Linear: GPT-2's MLP with GELU, Primer's with relu^2."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0,
                 activation: Callable[[torch.Tensor], torch.Tensor] = F.gelu):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = Dropout(dropout)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class SwiGLU(nn.Module):
    """Gated MLP silu(x W1) * (x W3) -> W2 (Shazeer 2020), with W1 and W3 fused into one matmul."""

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 2 * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.dropout(self.c_proj(F.silu(gate) * up))


MLP_KINDS = {"swiglu": SwiGLU, "gelu": functools.partial(MLP, activation=F.gelu),
             "relu2": functools.partial(MLP, activation=relu_squared)}


def build_mlp(kind: str, n_embd: int, hidden: int, bias: bool, dropout: float) -> nn.Module:
    if kind not in MLP_KINDS:
        raise ValueError(f"unknown mlp {kind!r}; allowed: {', '.join(MLP_KINDS)}")
    return MLP_KINDS[kind](n_embd, hidden, bias, dropout)


def swiglu_hidden_dim(n_embd: int, mlp_ratio: float, multiple_of: int) -> int:
    """2/3 of the GELU width, so SwiGLU's three matrices cost what GELU's two do; rounded up for matmul tiles."""
    hidden = int(2 * mlp_ratio * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# ---------------------------------------------------------------------------- block


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, attn: CausalSelfAttention, mlp: nn.Module, ln_1: nn.Module, ln_2: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))
