"""The `model` section for `arch: agiformer` (fields documented in lmforge.models.agiformer)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config_base import Section
from lmforge.models.layers import swiglu_hidden_dim


class AgiformerConfig(Section):
    """A byte-level patch model: causal soft patching -> hybrid attention/memory blocks -> ACT -> local decoder."""

    arch: Literal["agiformer"] = Field("agiformer", description="registered model name")
    vocab_size: int | None = Field(None, ge=1, le=16_777_216, description="byte vocabulary (256 with the byte tokenizer); None = from the tokenizer")
    n_embd: int = Field(128, ge=8, le=131072, description="width of byte embeddings, patch latents and decoder states")
    n_layer: int = Field(2, ge=1, le=4096, description="HybridBlocks over the patch sequence")
    n_head: int = Field(4, ge=1, le=4096, description="heads of the windowed attention and of the Hebbian memory")
    block_size: int = Field(512, ge=4, le=16_777_216, description="context window in bytes (training seq_length default, generation window)")
    patch_size: int = Field(4, ge=1, description="bytes per patch = conv stride (seed: 4)")
    patch_kernel: int = Field(6, ge=1, description="conv kernel in bytes; kernel - stride bytes of the previous patch overlap (seed: 6)")
    attn_window: int = Field(32, ge=1, description="sliding attention window in patches (the current one included)")
    memory_chunk: int = Field(32, ge=1, description="chunk length (patches) of the chunkwise-parallel memory form")
    per_key_decay: bool = Field(False, description="one decay per head and key dimension (GLA) instead of one per head")
    plasticity: float = Field(
        1.0, gt=0, le=1,
        description="initial plasticity alpha: log-decay is divided by alpha (alpha=0.1 forgets 10x faster); "
        "a buffer afterwards (saved in checkpoints, changed by set_plasticity)",
    )
    act_max_steps: int = Field(4, ge=1, description="ACT: most reasoning steps per patch")
    act_eps: float = Field(0.01, gt=0, lt=1, description="ACT: a position halts once its halting sum reaches 1 - eps")
    ponder_tau: float = Field(0.01, ge=0, description="ACT: weight tau of the ponder cost tau * mean(N + R); 0 = off")
    local_decoder: Literal["parallel", "autoregressive"] = Field(
        "autoregressive",
        description="parallel: the seed's MLP head, a patch's bytes predicted independently; "
        "autoregressive: a GRU over the patch, byte j conditioned on bytes < j of its patch",
    )
    mlp_ratio: float = Field(4.0, gt=0, description="SwiGLU hidden = 2/3 * mlp_ratio * n_embd, rounded up to multiple_of")
    multiple_of: int = Field(32, ge=1, description="round SwiGLU hidden widths up to a multiple of this")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of every RMSNorm")
    init_std: float = Field(0.02, gt=0, description="std of the normal init of Linear weights")

    @model_validator(mode="after")
    def _check_shapes(self) -> "AgiformerConfig":
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) / n_head ({self.n_head}) must be an even integer (RoPE)")
        if not self.patch_size <= self.patch_kernel <= 2 * self.patch_size:
            raise ValueError(f"patch_kernel ({self.patch_kernel}) must be in [patch_size, 2 * patch_size] (overlap only with the previous patch)")
        return self

    @property
    def mlp_hidden_dim(self) -> int:
        return swiglu_hidden_dim(self.n_embd, self.mlp_ratio, self.multiple_of)

    @property
    def max_patches(self) -> int:
        return self.block_size // self.patch_size + 1
