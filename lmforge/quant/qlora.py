"""Layer swap `nf4_lora` (QLoRA, Dettmers et al. 2023): a frozen NF4 base with trained LoRA adapters.

Each targeted nn.Linear becomes `NF4LoRALinear`: its weight is stored as NF4 codes (absmax per block of 64,
optionally double-quantized: lmforge/quant/formats.py) and is no longer a parameter; the layer computes
    y = x @ dequant(W)^T + b + (alpha / r) * B(A(dropout(x)))
with A (r x in, Kaiming-uniform) and B (out x r, zeros) trained, as peft's LoRA does (the tests check the forward
against peft's). Every other parameter of the model (embeddings, norms, head) is frozen too, so only the
adapters train; a stage's `trainable` may unfreeze more by name. `train.init_from` loads a full-precision run
into the model before the swap, so the swap quantizes the pretrained weights.

`merge()`/`unmerge()` fold the adapter into the NF4 base and back (re-quantizing, as peft does for a
bitsandbytes 4-bit layer, so each costs NF4 rounding); `merged_linear()` gives a plain fp32 nn.Linear with
dequant(W) + (alpha / r) B A, which `merge_adapters(model)` puts in place of every adapter layer for export.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from lmforge.config_base import Section
from lmforge.protocols import QuantizedLayer
from lmforge.quant.formats import dequantize_absmax_int8, dequantize_nf4, quantize_absmax_int8, quantize_nf4
from lmforge.quant.targets import find_targets, no_targets_error, replace_module
from lmforge.registry import LAYER_SWAPS

NF4_BLOCK = 64
SCALER_BLOCK = 256


class NF4LoRASwapConfig(Section):
    """A `layer_swaps` entry: `{"name": "nf4_lora", "rank": 8, "alpha": 16, "target_modules": ["*"]}`."""

    name: Literal["nf4_lora"] = "nf4_lora"
    rank: int = Field(8, ge=1, le=4096, description="LoRA rank r")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns of the Linear layers "
                                                                                  "that get an NF4 base and an adapter")
    exclude: list[str] = Field(default_factory=lambda: ["lm_head", "*.lm_head"],
                               description="fnmatch patterns kept full precision (the head and embeddings are also detected without names)")
    double_quant: bool = Field(True, description="store the per-block absmaxes as int8 (one fp32 factor per 256 blocks)")


class NF4LoRALinear(nn.Module, QuantizedLayer):
    """A frozen NF4 weight (buffers) plus a trained rank-r adapter; drop-in for nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float, dropout: float,
                 double_quant: bool, device=None):
        super().__init__()
        if (in_features * out_features) % (2 * NF4_BLOCK):
            raise ValueError(f"NF4 quantizes in blocks of {NF4_BLOCK} values; a {out_features}x{in_features} weight does not fit")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.double_quant = double_quant
        self.merged = False
        n_blocks = in_features * out_features // NF4_BLOCK
        self.register_buffer("weight_nf4", torch.zeros(in_features * out_features // 2, dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax_codes", torch.zeros(n_blocks, dtype=torch.int8, device=device))
            self.register_buffer("absmax_factor", torch.ones(math.ceil(n_blocks / SCALER_BLOCK), device=device))
            self.register_buffer("absmax_offset", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.ones(n_blocks, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=device)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's init: the update starts at zero
        nn.init.zeros_(self.lora_B.weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: NF4LoRASwapConfig) -> "NF4LoRALinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, cfg.rank, cfg.alpha, cfg.dropout,
                  cfg.double_quant, device=linear.weight.device)
        new.quantize_(linear.weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
        return new

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Store `weight` (out x in, any float dtype) as the NF4 base."""
        packed, absmax = quantize_nf4(weight.to(self.weight_nf4.device), NF4_BLOCK)
        self.weight_nf4.copy_(packed)
        if self.double_quant:
            codes, factor, offset = quantize_absmax_int8(absmax, SCALER_BLOCK)
            self.absmax_codes.copy_(codes)
            self.absmax_factor.copy_(factor)
            self.absmax_offset.copy_(offset)
        else:
            self.absmax.copy_(absmax)

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return dequantize_absmax_int8(self.absmax_codes, self.absmax_factor, self.absmax_offset, SCALER_BLOCK)
        return self.absmax

    def dequantized_weight(self) -> torch.Tensor:
        """The base weight in fp32 (out x in)."""
        return dequantize_nf4(self.weight_nf4, self.block_absmax(), (self.out_features, self.in_features), NF4_BLOCK)

    def delta_weight(self) -> torch.Tensor:
        """The adapter's update (alpha / r) * B @ A (out x in)."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.merged:
            return base
        return base + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the NF4 base (re-quantized); the forward then skips the adapter."""
        if not self.merged:
            self.quantize_(self.dequantized_weight() + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapter back out of the base (re-quantized)."""
        if self.merged:
            self.quantize_(self.dequantized_weight() - self.delta_weight())
            self.merged = False

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain fp32 nn.Linear computing what this layer computes (base + adapter), for export."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight_nf4.device)
        weight = self.dequantized_weight()
        linear.weight.copy_(weight if self.merged else weight + self.delta_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4 block {NF4_BLOCK}{' double-quantized' if self.double_quant else ''}, rank={self.rank}, alpha={self.alpha}")


def adapter_layers(model: nn.Module) -> list[tuple[str, NF4LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NF4LoRALinear)]


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every NF4LoRALinear by its merged fp32 nn.Linear (in place): a plain model to export."""
    for name, layer in adapter_layers(model):
        replace_module(model, name, layer.merged_linear())
    return model


def swap_to_nf4_lora(model: nn.Module, cfg: NF4LoRASwapConfig) -> nn.Module:
    """Quantize the targets to NF4 with adapters and freeze every other parameter (in place)."""
    targets = find_targets(model, cfg.target_modules, cfg.exclude, skip=(NF4LoRALinear,))
    if not targets:
        raise no_targets_error("nf4_lora", model, cfg.target_modules, cfg.exclude)
    for name, module in targets:
        replace_module(model, name, NF4LoRALinear.from_linear(module, cfg))
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in f".{name}" or ".lora_B." in f".{name}")
    return model


@LAYER_SWAPS.register("nf4_lora", config=NF4LoRASwapConfig)
def nf4_lora(model: nn.Module, cfg: NF4LoRASwapConfig) -> nn.Module:
    """QLoRA: `LAYER_SWAPS.get("nf4_lora")(model, cfg)`."""
    return swap_to_nf4_lora(model, cfg)
