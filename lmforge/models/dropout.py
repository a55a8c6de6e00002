"""Dropout whose random mask is cheap on CPU, for the residual branches and inside attention.

On CPU, torch's dropout draws one 32-bit random number per element (`bernoulli_`, ~12 ns an element here) and
`scaled_dot_product_attention` with `dropout_p > 0` leaves its flash kernel for the math one, which draws such a
mask over every B x H x T x T score: on nanoGPT's 10.65M shakespeare_char config that is a sixth of the step
(docs/performance.md). Here one 64-bit random word gives four 16-bit lanes, each lane one element's draw
(~2 ns an element). The drop probability is p rounded to a multiple of 1/65536 (0.2 -> 0.19999695) and the kept
values are scaled by 1 / (1 - that), so the expectation is unchanged. The lanes come from the device's default
generator, so `torch.manual_seed`, checkpointed RNG state and activation-checkpoint recomputation replay them.

CUDA keeps torch's own kernels: there dropout is one fused kernel and SDPA's flash kernels fuse attention
dropout, both faster than anything built from separate ops.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LANES = 65536  # values of one 16-bit lane


def cheap_masks_pay(x: torch.Tensor) -> bool:
    """Whether this tensor's backend lacks a fused dropout (CPU), so the 16-bit-lane mask is the faster one."""
    return x.device.type == "cpu"


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str | None = None) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True where an element is kept (probability 1 - p, p rounded to 1/65536), and the
    scale 1 / (1 - p_rounded) that keeps the expectation."""
    drops = min(round(p * LANES), LANES - 1)  # out of LANES; never all: the scale stays finite
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # all 64 bits random
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return lanes >= drops - LANES // 2, LANES / (LANES - drops)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with the cheap mask where it pays."""
    if not training or p == 0.0 or not cheap_masks_pay(x):
        return F.dropout(x, p, training)
    keep, scale = keep_mask(x.shape, p, x.device)
    # where() reads the bool mask as it is (a multiply by it casts it to a float copy first, each way); autograd
    # saves only the mask
    return torch.where(keep, x, 0.0).mul_(scale)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same repr, no state) drawing its mask with `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention`; with dropout on CPU, torch's math kernel as it computes it (reduced
    precision upcast to fp32, scores scaled by `scale` (default 1/sqrt(head_dim)), a top-left causal mask or a bool
    or additive `attn_mask`, GQA by repeating each KV head) with the cheap mask on the probabilities."""
    if dropout_p == 0.0 or not cheap_masks_pay(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
    dtype = q.dtype
    with torch.autocast(q.device.type, enabled=False):  # SDPA runs its math in fp32 under autocast too
        q, k, v = q.float(), k.float(), v.float()
        if enable_gqa and k.size(-3) != q.size(-3):
            repeat = q.size(-3) // k.size(-3)
            k, v = k.repeat_interleave(repeat, dim=-3), v.repeat_interleave(repeat, dim=-3)
        scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
        *lead, T, E = q.shape
        S = k.size(-2)
        q3, k3, v3 = q.reshape(-1, T, E), k.reshape(-1, S, E), v.reshape(-1, S, v.size(-1))
        if is_causal:
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # as SDPA does: a bool mask becomes -inf added
            attn_mask = torch.zeros(attn_mask.shape, device=q.device).masked_fill_(attn_mask.logical_not(), float("-inf"))
        # No in-place op on a matmul's output: selective activation checkpointing keeps those outputs and would see
        # the change twice when it recomputes the block. baddbmm adds the mask inside the matmul instead.
        if attn_mask is None:
            scores = torch.bmm(q3 * scale, k3.transpose(1, 2))  # (B*H, T, S)
        else:
            bias = attn_mask.float().expand(*lead, T, S).reshape(-1, T, S) if attn_mask.dim() > 2 else attn_mask.float()
            scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
        keep, kept_scale = keep_mask(scores.shape, dropout_p, q.device)
        # the dropout scale goes on the (T, head_dim) output, not the (T, T) probabilities: one pass over them each way
        out = torch.bmm(torch.where(keep, scores.softmax(dim=-1), 0.0), v3) * kept_scale
        return out.view(*lead, T, v.size(-1)).to(dtype)
