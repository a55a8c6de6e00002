"""Sampling a masked diffusion model (a `mask_diffusion` run): start from [MASK]s after the prompt, unmask in steps.

- `ancestral` (MDLM, Sahoo et al. 2024): going from time t to s = t - 1/steps, each still-masked position is revealed
  with probability (t - s) / t, its token drawn from the model's SUBS distribution; at the last step every
  remaining mask is revealed.
- `low_confidence` (LLaDA, Nie et al. 2025): each step draws a token for every masked position and keeps the
  most confident ones (the model's probability of the drawn token), an equal share of the block per step;
  the others are masked again.
- `block_size` (semi-autoregressive, LLaDA): the continuation is unmasked block by block, left to right, `steps`
  split evenly over the blocks; each block sees the prompt, the blocks before it and the masks after it.
Categorical draws are Gumbel-max with the noise in fp64: in fp32 the noise's tail is cut short, which lowers the
effective temperature and the samples' diversity (Zheng et al. 2024, arXiv 2409.02908); the samples' token
entropy is reported so a collapse shows.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from lmforge.objectives.masked import subs_log_probs


@dataclass
class DiffusionSampling:
    steps: int = 64
    block_size: int | None = None  # None: the whole continuation is one block
    remasking: Literal["ancestral", "low_confidence"] = "ancestral"
    temperature: float = 1.0  # 0 = the most likely token at each reveal
    seed: int | None = None


def gumbel_draw(log_probs: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Token ids (...,) drawn from softmax(log_probs / temperature) by Gumbel-max, the noise in fp64."""
    if temperature == 0:
        return log_probs.argmax(-1)
    u = torch.rand(log_probs.shape, dtype=torch.float64, generator=generator).clamp_(min=1e-300).to(log_probs.device)
    gumbel = -torch.log(-torch.log(u))
    return (log_probs.double() / temperature + gumbel).argmax(-1)


def token_entropy(tokens: list[int]) -> float:
    """Entropy (bits) of the tokens' empirical distribution in one sample: low values flag repetitive text."""
    if not tokens:
        return 0.0
    counts = Counter(tokens)
    n = len(tokens)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@torch.no_grad()
def diffusion_generate(model: torch.nn.Module, prompt: list[int], length: int, cfg: DiffusionSampling) -> list[int]:
    """`length` new tokens after `prompt` (one sequence), unmasked as `cfg` says; returns only the new tokens."""
    if length < 1:
        return []
    mask_id = model.get_input_embeddings().num_embeddings - 1
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(cfg.seed if cfg.seed is not None else torch.seed() % 2**63)
    x = torch.tensor([prompt + [mask_id] * length], device=device)
    block = cfg.block_size or length
    starts = list(range(len(prompt), len(prompt) + length, block))
    steps = max(1, cfg.steps // len(starts))
    for start in starts:
        end = min(start + block, len(prompt) + length)
        for k in range(steps):
            masked = x[0, start:end] == mask_id
            if not masked.any():
                break
            logp = subs_log_probs(model(x).logits[0, start:end], mask_id)  # (n, V)
            draw = gumbel_draw(logp, cfg.temperature, generator)
            if cfg.remasking == "ancestral":
                t, s = 1 - k / steps, 1 - (k + 1) / steps
                reveal = masked & (torch.rand(masked.shape, generator=generator).to(device) < (t - s) / t)
            else:
                share = math.ceil(int(masked.sum()) / (steps - k))  # an equal share of what is left, per step left
                confidence = logp.gather(-1, draw.unsqueeze(-1)).squeeze(-1).masked_fill(~masked, float("-inf"))
                reveal = torch.zeros_like(masked)
                reveal[confidence.topk(share).indices] = True
                reveal &= masked
            x[0, start:end] = torch.where(reveal, draw, x[0, start:end])
    return x[0, len(prompt):].tolist()
