"""Local decoders: from a patch latent (and, autoregressively, the patch's earlier bytes) to per-byte hidden states.

`parallel` is the seed's MLP head: the P bytes of a patch are predicted independently from the patch
latent plus a position embedding, so byte j of a patch cannot depend on bytes 0..j-1 of the same patch.
`autoregressive` conditions byte j on the latent AND bytes 0..j-1 of its patch: a small GRU runs over
the patch, started from the latent, fed the previous byte (a learned start vector for j = 0); training
uses teacher forcing (the true previous bytes), generation the sampled ones.

Both map latents (B, M, C) and the patches' bytes (B, M, P) to hidden states (B, M, P, C); the
model's shared lm_head turns them into logits. Byte j's hidden state never reads byte j or later.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models.layers import RMSNorm, SwiGLU


class ParallelPatchDecoder(nn.Module):
    """hidden_j = SwiGLU(RMSNorm(latent + position_j)): all bytes of a patch at once, independently."""

    def __init__(self, dim: int, hidden: int, patch_size: int, norm_eps: float = 1e-5):
        super().__init__()
        self.position = nn.Parameter(torch.randn(patch_size, dim) * 0.02)
        self.norm = RMSNorm(dim, norm_eps)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, latents: torch.Tensor, patch_bytes: torch.Tensor) -> torch.Tensor:
        x = latents[:, :, None, :] + self.position  # (B, M, P, C)
        return x + self.mlp(self.norm(x))


class AutoregressivePatchDecoder(nn.Module):
    """A GRU over each patch: h_0 from the latent, input j = embed(byte j-1) + W latent, teacher forcing."""

    def __init__(self, dim: int, hidden: int, patch_size: int, byte_embedding: nn.Embedding, norm_eps: float = 1e-5):
        super().__init__()
        self.byte_embedding = byte_embedding  # shared with the encoder (the model's input embeddings)
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        self.latent_in = nn.Linear(dim, dim, bias=False)
        self.latent_h0 = nn.Linear(dim, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.norm = RMSNorm(dim, norm_eps)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, latents: torch.Tensor, patch_bytes: torch.Tensor) -> torch.Tensor:
        B, M, C = latents.shape
        P = patch_bytes.size(-1)
        prev = self.byte_embedding(patch_bytes[:, :, :-1])  # (B, M, P-1, C): byte j-1 feeds step j
        inputs = torch.cat([self.start.expand(B, M, 1, C).to(prev.dtype), prev], dim=2) + self.latent_in(latents)[:, :, None]
        h0 = torch.tanh(self.latent_h0(latents)).reshape(1, B * M, C)
        out, _ = self.gru(inputs.reshape(B * M, P, C), h0.to(inputs.dtype))  # (B*M, P, C)
        x = out.reshape(B, M, P, C) + latents[:, :, None]
        return x + self.mlp(self.norm(x))
