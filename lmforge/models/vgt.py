"""VGT-8L (seed 000, Forge-VGT): a stack of pre-norm GRU residual blocks with a separate output head.

Each block is `x + dropout(GRU(LayerNorm(x)))`, with the backend's fused
`nn.GRU` over the whole sequence (no Python loop over time). Incremental
decoding carries each layer's GRU hidden state in a `GRUCache`, so a new token
costs O(1) instead of re-reading the context.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from lmforge.config_base import Section
from lmforge.models.dropout import Dropout
from lmforge.models.output import ModelOutput
from lmforge.registry import MODELS


class VGTConfig(Section):
    """The `model` section for `arch: vgt`: the seed's depth and dropout; a CPU-sized default width (the seed's 768 is in configs/forge_vgt.json)."""

    arch: Literal["vgt"] = Field("vgt", description="registered model name")
    vocab_size: int | None = Field(None, ge=1, le=16_777_216, description="token count; None = taken from the tokenizer by the trainer")
    n_layer: int = Field(8, ge=1, le=4096, description="GRU residual blocks (the seed's '8L')")
    n_embd: int = Field(256, ge=1, le=131072, description="residual width = GRU input and hidden size")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on each block's GRU output (seed: 0.05)")
    block_size: int = Field(
        256, ge=1, le=16_777_216,
        description="context window in tokens: the default training seq_length, and how much history generation keeps "
        "(the GRU itself has no length limit)",
    )
    tie_embeddings: bool = Field(False, description="lm_head shares the token embedding matrix (seed: a separate head)")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of every LayerNorm")


class GRUCache:
    """Every layer's GRU hidden state after the tokens seen so far: the whole history of a recurrent model.

    Duck-types `KVCache` for `lmforge.generation`: `length` and `max_len`
    bound the window (generation re-prefills from the last `max_len` tokens
    when it would overflow, the window a cacheless pass sees), `reset()`
    forgets everything, `advance(n)` counts new tokens.
    """

    def __init__(self, n_layer: int, batch_size: int, n_embd: int, max_len: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.n_layer, self.batch_size, self.n_embd, self.max_len = n_layer, batch_size, n_embd, max_len
        self.dtype, self.device = dtype, device
        self.h: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        """Zero states: a GRU started from zeros, exactly what a forward without a cache uses."""
        shape = (1, self.batch_size, self.n_embd)  # (num_layers of one nn.GRU, B, C)
        self.h = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layer)]
        self.length = 0

    def advance(self, n: int) -> None:
        self.length += n


class VGTBlock(nn.Module):
    """Pre-norm residual GRU: x + dropout(GRU(LayerNorm(x)))."""

    def __init__(self, n_embd: int, dropout: float, norm_eps: float):
        super().__init__()
        self.ln = nn.LayerNorm(n_embd, eps=norm_eps)
        self.gru = nn.GRU(n_embd, n_embd, batch_first=True)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C), h0 (1, B, C) or None = zeros; returns the new x and the last hidden state (1, B, C)."""
        y = self.ln(x)
        if h0 is not None:
            h0 = h0.to(y.dtype)
        out, h_n = self.gru(y, h0)  # (B, T, C), (1, B, C)
        return x + self.drop(out), h_n


@MODELS.register("vgt", config=VGTConfig)
class VGT(nn.Module):
    """Token embedding -> n_layer GRU residual blocks -> final LayerNorm -> lm_head (with bias, as the seed's `fc`).

    Weights keep PyTorch's default init, as in the seed (embedding N(0, 1),
    GRU and head uniform(±1/sqrt(n_embd))). With a tied head the shared matrix
    is drawn N(0, 1/n_embd) instead: an N(0, 1) head on unit-scale LayerNorm
    outputs would start with logits of std sqrt(n_embd).
    """

    def __init__(self, config: VGTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set: the trainer fills it from the tokenizer; set it when building by hand")
        self.config = config = config.model_copy(deep=True)
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        self.blocks = nn.ModuleList(VGTBlock(C, config.dropout, config.norm_eps) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(C, eps=config.norm_eps)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=True)
        if config.tie_embeddings:
            nn.init.normal_(self.wte.weight, mean=0.0, std=1.0 / math.sqrt(C))
            self.lm_head.weight = self.wte.weight

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding: the forge objective aligns hidden states with it."""
        return self.wte

    def forward(self, input_ids: torch.Tensor, cache: GRUCache | None = None) -> ModelOutput:
        """Logits for every position of input_ids (B, T); with a cache, T new tokens after the ones it has seen."""
        T = input_ids.size(1)
        if cache is not None and cache.length + T > cache.max_len:
            raise ValueError(f"GRU cache window is full: {cache.length} + {T} tokens > max_len {cache.max_len}")
        x = self.wte(input_ids)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x, h_n = block(x, cache.h[i] if cache is not None else None)  # (B, T, C), (1, B, C)
            if cache is not None:
                cache.h[i] = h_n
        if cache is not None:
            cache.advance(T)
        h = self.ln_f(x)  # (B, T, C)
        return ModelOutput(logits=self.lm_head(h), hidden_states=h, cache=cache)  # logits (B, T, V)

    def step(self, input_ids: torch.Tensor, cache: GRUCache) -> ModelOutput:
        """Feed new tokens (B, T) after the cached ones: O(1) per token, the generation hook every arch provides."""
        return self(input_ids, cache=cache)

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> GRUCache:
        """Zero hidden states for a window of up to `max_len` tokens (default and cap: block_size).

        The cap keeps cached and cacheless generation identical: both see at most
        the last block_size tokens, the cached path by re-prefilling once full.
        """
        c = self.config
        max_len = min(max_len or c.block_size, c.block_size)
        ref = self.wte.weight
        return GRUCache(c.n_layer, batch_size, c.n_embd, max_len, dtype=dtype or ref.dtype,
                        device=device if device is not None else ref.device)

    # ------------------------------------------------------------------ accounting

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counts once); optionally without the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6·N over non-embedding weights, plus a tied head's matmul.

        A GRU layer does 3 gates × (input matmul W_i·x + hidden matmul W_h·h) per
        token: each of its weights is used in one multiply-add per token, like a
        dense layer's, so forward (2) + backward (4) = 6 FLOPs per weight, as in
        PaLM's 6·N. The gate nonlinearities and elementwise products are O(C) and
        left out. There is no attention, so `seq_len` does not enter. A tied head
        is real compute that N no longer holds (its weight is the embedding):
        add 6·n_embd·vocab_size, as for `gpt`.
        """
        c = self.config
        head = 6 * c.n_embd * c.vocab_size if c.tie_embeddings else 0
        return float(6 * self.num_params(exclude_embeddings=True) + head)
