"""Kernelized linear attention: softmax(q k^T) v replaced by phi(q) (phi(k)^T v), O(T) in time and memory.

Feature maps: `elu` = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs"), and `favor`, Performer's
FAVOR+ positive orthogonal random features (Choromanski et al. 2021): phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m)
with x' = x d^-1/4, so E[phi(q) . phi(k)] = exp(q . k / sqrt(d)), the softmax kernel. The random matrix is a fixed
buffer drawn from the layer's seed (saved with the weights); Performer's periodic redraw is not done.

Output: o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps), with S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum phi(k_s)
(causal), or the sums over every position (bidirectional). The causal form is computed chunk by chunk: within a
chunk of `chunk_size` positions a masked (C x C) product, across chunks the running (S, z) prefix sums, so no
T x T matrix is ever formed. The same running state, carried between calls, is the recurrent form generation
uses (`LinearAttentionCache`). RoPE is not applied: the feature maps need the raw q and k; the causal prefix sum
itself tells positions apart, and `pos_embedding: learned` adds absolute ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.dropout import Dropout

EPS = 1e-6


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def favor_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool) -> torch.Tensor:
    """FAVOR+ positive random features of x (..., d) with projection (m, d). A query's per-row stabilizer cancels in
    its own numerator and denominator; keys get none (a shared one would make the cache depend on later keys)."""
    d, m = x.size(-1), projection.size(0)
    x = x * d ** -0.25
    wx = x @ projection.T  # (..., m)
    logits = wx - 0.5 * (x * x).sum(-1, keepdim=True)
    if is_query:
        logits = logits - logits.amax(-1, keepdim=True).detach()
    return torch.exp(logits) / math.sqrt(m)


def orthogonal_gaussian(m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(m, d) rows: blocks of orthogonal directions with chi(d)-distributed norms (Performer's ORF).

    Q of a Gaussian's QR is uniformly (Haar) distributed only after its columns take the signs of R's diagonal;
    without that the estimate is biased (measured: ~0.7% low, not shrinking with more features).
    """
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, r = torch.linalg.qr(torch.randn(d, d, generator=generator))
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, chunk_size: int = 64,
    state: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Attention of feature-mapped q, k (B, H, T, m) over v (B, H, T, d); returns o (B, H, T, d) and the final
    (S (B, H, m, d), z (B, H, m)), which a later causal call continues from (`state`). Computed in fp32."""
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    B, H, T, m = q.shape
    d = v.size(-1)
    S0 = state[0].float() if state is not None else q.new_zeros(B, H, m, d)
    z0 = state[1].float() if state is not None else q.new_zeros(B, H, m)
    if not causal:
        S = S0 + k.transpose(-1, -2) @ v
        z = z0 + k.sum(2)
        o = (q @ S) / ((q @ z.unsqueeze(-1)) + EPS)
        return o.to(dtype), (S, z)
    C = min(chunk_size, T)
    pad = (-T) % C
    if pad:  # zero keys add nothing to any sum; the padded queries are cut off below
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    N = (T + pad) // C
    qc, kc, vc = (t.view(B, H, N, C, -1) for t in (q, k, v))
    kv = kc.transpose(-1, -2) @ vc  # (B, H, N, m, d): each chunk's sum of k v^T
    ksum = kc.sum(3)  # (B, H, N, m)
    S_before = S0.unsqueeze(2) + torch.cumsum(kv, dim=2) - kv  # the state entering each chunk
    z_before = z0.unsqueeze(2) + torch.cumsum(ksum, dim=2) - ksum
    scores = (qc @ kc.transpose(-1, -2)).tril()  # (B, H, N, C, C): within the chunk, s <= t only
    num = qc @ S_before + scores @ vc  # (B, H, N, C, d)
    den = (qc @ z_before.unsqueeze(-1)) + scores.sum(-1, keepdim=True)
    o = (num / (den + EPS)).view(B, H, N * C, d)[:, :, :T]
    return o.to(dtype), (S_before[:, :, -1] + kv[:, :, -1], z_before[:, :, -1] + ksum[:, :, -1])


class LinearAttentionCache:
    """Per layer the running (S, z) of causal linear attention: a fixed size whatever the length."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, n_features: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None):
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.shape = (batch_size, n_head, n_features, head_dim)
        self.batch_size, self.max_len, self.device = batch_size, max_len, device
        self.length = 0

    def update(self, layer: int, state: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.states[layer] = state

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.states = [None] * len(self.states)
        self.length = 0

    def state_bytes(self) -> int:
        """Bytes of the whole state (fp32 S and z of every layer), independent of the length."""
        B, H, m, d = self.shape
        return len(self.states) * B * H * (m * d + m) * 4


class LinearAttention(nn.Module):
    """Multi-head linear attention with a fused q/k/v projection; `c_proj` is the output projection."""

    def __init__(self, n_embd: int, n_head: int, layer_idx: int, feature_map: str = "elu", n_features: int | None = None,
                 chunk_size: int = 64, causal: bool = True, bias: bool = False, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.n_head, self.head_dim, self.layer_idx = n_head, n_embd // n_head, layer_idx
        self.feature_map, self.chunk_size, self.causal = feature_map, chunk_size, causal
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.n_features = self.head_dim if feature_map == "elu" else (n_features or 2 * self.head_dim)
        if feature_map == "favor":
            g = torch.Generator().manual_seed(seed * 1000 + layer_idx)
            self.register_buffer("projection", orthogonal_gaussian(self.n_features, self.head_dim, g))

    def features(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        if self.feature_map == "elu":
            return elu_feature_map(x.float())
        return favor_features(x.float(), self.projection.float(), is_query)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LinearAttentionCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_dim
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=-1))  # (B, nh, T, hs)
        state = cache.states[self.layer_idx] if cache is not None else None
        with torch.autocast(x.device.type, enabled=False):  # exp features and running sums stay fp32 under bf16 autocast
            y, new_state = linear_attention(self.features(q, True), self.features(k, False), v, self.causal, self.chunk_size, state)
        if cache is not None:
            cache.update(self.layer_idx, new_state)
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))
