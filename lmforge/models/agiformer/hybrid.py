"""HybridBlock: sliding-window causal attention and the Hebbian memory side by side, fused by a sigmoid gate.

    a = SlidingWindowAttention(RMSNorm(x)),  m = HebbianMemory(RMSNorm(x)),  z = sigmoid(W_g RMSNorm(x))
    x = x + z * a + (1 - z) * m
    x = x + SwiGLU(RMSNorm(x))

Attention sees the last `window` patches exactly (RoPE positions); the memory carries everything older
in a fixed-size state. Incremental decoding keeps, per block, a `LayerState`: the memory matrix and the
keys/values of the last window - 1 patches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.agiformer.memory import HebbianMemory
from lmforge.models.layers import RMSNorm, SwiGLU, apply_rotary


@dataclass
class LayerState:
    """One block's incremental state: memory matrix (B, H, dk, dv) and the attention window's keys/values."""

    memory: torch.Tensor | None = None
    k: torch.Tensor | None = None  # (B, H, <= window - 1, hd) after RoPE
    v: torch.Tensor | None = None


def band_mask(T: int, window: int, offset: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, offset + T): query i (position offset + i) sees keys j with 0 <= (offset + i) - j < window."""
    q = torch.arange(offset, offset + T, device=device)[:, None]
    k = torch.arange(offset + T, device=device)[None, :]
    return (k <= q) & (q - k < window)


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention restricted to the last `window` positions (SDPA with a band mask)."""

    def __init__(self, dim: int, n_head: int, window: int):
        super().__init__()
        self.n_head, self.head_dim, self.window = n_head, dim // n_head, window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], state: LayerState | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        offset = 0
        if state is not None and state.k is not None:
            offset = state.k.size(2)
            k = torch.cat([state.k.to(k.dtype), k], dim=2)
            v = torch.cat([state.v.to(v.dtype), v], dim=2)
        if state is not None:  # keep what the next position's window needs
            keep = max(self.window - 1, 0)
            start = max(k.size(2) - keep, 0)
            state.k, state.v = k[:, :, start:], v[:, :, start:]
        mask = band_mask(T, self.window, offset, x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class HybridBlock(nn.Module):
    """Pre-norm residual block: gated fusion of windowed attention and Hebbian memory, then a SwiGLU MLP."""

    def __init__(self, dim: int, n_head: int, window: int, mlp_hidden: int, per_key_decay: bool,
                 chunk_size: int, norm_eps: float = 1e-5):
        super().__init__()
        self.norm_mix = RMSNorm(dim, norm_eps)
        self.attn = SlidingWindowAttention(dim, n_head, window)
        self.memory = HebbianMemory(dim, n_head, per_key_decay, chunk_size, norm_eps)
        self.gate = nn.Linear(dim, dim)
        self.norm_mlp = RMSNorm(dim, norm_eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], alpha: torch.Tensor,
        state: LayerState | None = None, memory_form: str = "chunked",
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); with a state, T new positions after the ones it holds (and it is updated)."""
        h = self.norm_mix(x)
        a = self.attn(h, rope, state)
        m, mem_state = self.memory(h, alpha, state.memory if state is not None else None, memory_form)
        if state is not None:
            state.memory = mem_state
        z = torch.sigmoid(self.gate(h))
        x = x + z * a + (1 - z) * m
        return x + self.mlp(self.norm_mlp(x))
