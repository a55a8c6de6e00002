"""Ternary codes {-1, 0, 1} packed 2 bits each, 4 per byte.

Code c is stored as c + 1 (0, 1 or 2); element i lives in byte i // 4 at bit
offset 2 * (i % 4). The last byte is padded with code 0 (stored as 1), and
the element count comes from the shape stored beside the bytes.
"""
from __future__ import annotations

import math

import torch

_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Any-shaped int tensor of {-1, 0, 1} -> uint8 tensor of ceil(numel / 4) bytes."""
    flat = codes.detach().reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("pack_ternary: values must be in {-1, 0, 1}")
    n = flat.numel()
    padded = torch.zeros(math.ceil(n / 4) * 4, dtype=torch.uint8, device=flat.device) + 1
    padded[:n] = (flat + 1).to(torch.uint8)
    groups = padded.view(-1, 4) << _SHIFTS.to(flat.device)  # (n/4, 4), codes moved to their bit slots
    return (groups[:, 0] | groups[:, 1] | groups[:, 2] | groups[:, 3]).contiguous()


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """uint8 bytes from `pack_ternary` -> int8 tensor of `shape` with values in {-1, 0, 1}."""
    n = math.prod(shape)
    if packed.numel() != math.ceil(n / 4):
        raise ValueError(f"unpack_ternary: {packed.numel()} bytes cannot hold {n} codes (need {math.ceil(n / 4)})")
    codes = (packed.reshape(-1, 1) >> _SHIFTS.to(packed.device)) & 3  # (bytes, 4)
    return (codes.reshape(-1)[:n].to(torch.int8) - 1).reshape(tuple(shape))


def packed_nbytes(numel: int) -> int:
    return math.ceil(numel / 4)
