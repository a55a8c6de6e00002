"""RecurrentReasoningBlock: a shared position-wise residual step applied a variable number of times (Graves' ACT).

Adaptive Computation Time (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"):
at step n each position's state s_n = F(s_{n-1}) emits a halting probability h_n = sigmoid(w . s_n + b).
The position stops at N = min{n : h_1 + ... + h_n >= 1 - eps} (or at max_steps); its remainder is
R = 1 - (h_1 + ... + h_{N-1}), the step weights are p_n = h_n (n < N), p_N = R, and its output is
sum_n p_n s_n. The ponder cost tau * (N + R), averaged over positions, is added to the loss; N is
piecewise constant, so its gradient reaches the halting unit through R.

Compute really stops: a halted position is dropped from the working set, later steps run F only on
positions still thinking, and the loop ends when none is left. F is position-wise, so incremental
decoding (one patch at a time) gives the same result as the full forward.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models.layers import RMSNorm, SwiGLU


class RecurrentReasoningBlock(nn.Module):
    """s -> s + SwiGLU(RMSNorm(s + step_embedding[n])) up to max_steps times, with a halting unit per position."""

    def __init__(self, dim: int, hidden: int, max_steps: int = 4, eps: float = 0.01, norm_eps: float = 1e-5):
        super().__init__()
        self.max_steps, self.eps = max_steps, eps
        self.step_embedding = nn.Parameter(torch.zeros(max_steps, dim))  # Graves' "first step" flag, per step
        self.norm = RMSNorm(dim, norm_eps)
        self.mlp = SwiGLU(dim, hidden)
        self.halt = nn.Linear(dim, 1)
        self.halt_norm = RMSNorm(dim, norm_eps)
        self.reset_halting()

    @torch.no_grad()
    def reset_halting(self) -> None:
        """Unit-scale halting logits (so halting varies with the input), bias -1: h ~ 0.27, a few steps at first."""
        nn.init.normal_(self.halt.weight, std=self.halt.in_features ** -0.5)
        nn.init.constant_(self.halt.bias, -1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> output (B, T, C), steps N (B, T) and remainders R (B, T)."""
        shape = x.shape
        s = x.reshape(-1, shape[-1])  # (M, C) every position
        M = s.size(0)
        out = torch.zeros_like(s)
        acc = torch.promote_types(s.dtype, torch.float32)  # halting sums in fp32 under autocast
        cum = s.new_zeros(M, dtype=acc)  # sum of h over the steps taken so far
        steps = torch.zeros(M, dtype=torch.long, device=s.device)
        remainder = s.new_zeros(M, dtype=acc)
        active = torch.arange(M, device=s.device)  # positions still thinking
        for n in range(self.max_steps):
            if active.numel() == 0:
                break
            cur = s.index_select(0, active)
            cur = cur + self.mlp(self.norm(cur + self.step_embedding[n]))
            h = torch.sigmoid(self.halt(self.halt_norm(cur)).to(acc).squeeze(-1))  # (A,)
            prev = cum.index_select(0, active)
            stop = (prev + h >= 1 - self.eps) if n < self.max_steps - 1 else torch.ones_like(h, dtype=torch.bool)
            p = torch.where(stop, 1 - prev, h)  # remainder for those halting now
            # index_copy of read-modify-write rows (index_add's scatter is far slower on CPU); rows are unique
            out = out.index_copy(0, active, out.index_select(0, active) + p[:, None].to(cur.dtype) * cur)
            cum = cum.index_copy(0, active, prev + h)
            steps = steps.index_fill(0, active[stop], n + 1)
            remainder = remainder.index_copy(0, active[stop], (1 - prev)[stop])
            s = s.index_copy(0, active, cur)
            active = active[~stop]
        return out.view(shape), steps.view(shape[:-1]), remainder.view(shape[:-1])
