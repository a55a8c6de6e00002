"""BitNet b1.58 quantizers (Ma et al. 2024, arXiv 2402.17764): ternary weights, int8 activations, STE.

All three functions work in fp32 whatever the input dtype, so they give the
same grid under bf16 autocast as in an fp32 run; callers cast afterwards.
"""
from __future__ import annotations

import torch

ACT_LEVELS = 127.0  # int8: per-token absmax maps to +-127; the grid's lowest level is -128


def weight_scale(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-tensor absmean scale s = mean(|W|) + eps (fp32 0-d tensor)."""
    return w.detach().float().abs().mean() + eps


def ternarize(w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, 1} as int8, scale s): W ~ codes * s with codes = clamp(round(W / s), -1, 1)."""
    s = weight_scale(w, eps)
    codes = torch.clamp(torch.round(w.detach().float() / s), -1, 1).to(torch.int8)
    return codes, s


def quantize_weight(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Fake-quantized weight codes * s in fp32 (no gradient: wrap with `ste`)."""
    codes, s = ternarize(w, eps)
    return codes.float() * s


def quantize_activation(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-token (last dim) absmax int8: clamp(round(x * 127 / max|x|), -128, 127) * max|x| / 127, in fp32."""
    x = x.detach().float()
    step = x.abs().amax(dim=-1, keepdim=True).clamp(min=eps) / ACT_LEVELS  # (..., 1) value of one int8 level
    return torch.clamp(torch.round(x / step), -128, 127) * step


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward gives q, backward passes the gradient to x unchanged.

    Without a gradient to carry, q itself is returned, so inference computes
    exactly codes * s (bit-identical to a model rebuilt from packed weights).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x + (q - x).detach()
    return q


def grid_distance(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean squared distance of W/s to its nearest value in {-1, 0, 1} (the scale is held fixed).

    The seed's regularizer pulled weights toward sign(W) (binary, unscaled);
    for b1.58 the grid is ternary and lives at the tensor's own scale.
    """
    u = w.float() / weight_scale(w, eps)
    return (u - torch.clamp(torch.round(u.detach()), -1, 1)).pow(2).mean()
