"""ByteLatentEncoder: byte embeddings -> one latent per patch by a causal, overlapping strided convolution.

Soft patching as in the seed (kernel 6, stride 4: each patch's window also covers the last 2 bytes of
the patch before it), but only to the LEFT: the encoding of patch p covers bytes [4p - 2, 4p + 4) and
never a byte of patch p + 1 (the sequence is left-padded with kernel - stride zero vectors). The model
then uses the backbone output of patch p to predict the bytes of patch p + 1, so the latent that
predicts a byte has seen no byte of that byte's patch (the seed's version leaked targets through the
overlap).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ByteLatentEncoder(nn.Module):
    """(B, 4N) byte ids -> (B, N, C) patch encodings; optional left context bytes replace the zero padding."""

    def __init__(self, vocab_size: int, dim: int, patch_size: int = 4, kernel_size: int = 6):
        super().__init__()
        if kernel_size < patch_size:
            raise ValueError(f"patch_kernel ({kernel_size}) must be >= patch_size ({patch_size})")
        self.patch_size, self.kernel_size = patch_size, kernel_size
        self.overlap = kernel_size - patch_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, stride=patch_size)

    def forward(self, byte_ids: torch.Tensor, left_context: torch.Tensor | None = None) -> torch.Tensor:
        """Encode whole patches of byte_ids (B, N*patch_size); left_context (B, overlap) bytes that precede
        them (None = the start of the sequence, zero vectors, exactly what a full forward pads with)."""
        B, L = byte_ids.shape
        if L % self.patch_size:
            raise ValueError(f"encoder input length {L} is not a multiple of patch_size {self.patch_size}")
        x = self.embed(byte_ids)  # (B, L, C)
        if left_context is None:
            x = F.pad(x, (0, 0, self.overlap, 0))  # (B, overlap + L, C)
        else:
            x = torch.cat([self.embed(left_context), x], dim=1)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, N, C)
