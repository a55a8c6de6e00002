"""Layer swaps `fp8` and `fp4`: quantization-aware training of every inner Linear in FP8 or FP4 (fake quant).

Each swapped layer rounds its weight (per output row or per tensor for FP8; in blocks along the input dim
for FP4) and, with `activations`, its input (per token; FP4 in blocks along the features) to the format's grid
in the forward pass; the straight-through estimator passes the gradient to the full-precision latent weight and
input unchanged (torchao's QAT `FakeQuantizer`s do the same). The latent weight keeps the name `weight`, so a
full-precision checkpoint fine-tunes into the format (`train.init_from`) and the trained one exports as a plain
model. The grids are in lmforge/quant/formats.py, checked bit for bit against torchao in the tests.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from lmforge.config_base import Section
from lmforge.protocols import QuantizedLayer
from lmforge.quant.formats import fake_fp8, fake_mxfp4, fake_nvfp4
from lmforge.quant.targets import find_targets, no_targets_error, replace_module
from lmforge.registry import LAYER_SWAPS

Quantizer = Callable[[torch.Tensor], torch.Tensor]


class _SwapTargets(Section):
    include: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns of module names to swap")
    exclude: list[str] = Field(
        default_factory=lambda: ["lm_head", "*.lm_head"],
        description="fnmatch patterns kept full precision (the head and embeddings are also detected without names)",
    )
    activations: bool = Field(True, description="also fake-quantize each layer's input (per token), not only its weight")


class Fp8SwapConfig(_SwapTargets):
    """A `layer_swaps` entry: `{"name": "fp8", "format": "e4m3", "granularity": "row"}`."""

    name: Literal["fp8"] = "fp8"
    format: Literal["e4m3", "e5m2"] = Field("e4m3", description="e4m3 (max 448, the forward format) or e5m2 (max 57344)")
    granularity: Literal["row", "tensor"] = Field("row", description="one amax scale per row (weight output row, "
                                                                     "input token) or one per tensor")


class Fp4SwapConfig(_SwapTargets):
    """A `layer_swaps` entry: `{"name": "fp4", "format": "mx"}` (MXFP4) or `"nvfp4"`."""

    name: Literal["fp4"] = "fp4"
    format: Literal["mx", "nvfp4"] = Field("mx", description="mx: e2m1 in blocks of 32 with e8m0 scales; nvfp4: blocks "
                                                             "of 16 with e4m3 scales over a per-tensor fp32 scale")
    mx_rounding: Literal["floor", "rceil"] = Field("floor", description="MX scale exponent: floor(log2 amax) - 2 (OCP "
                                                                       "spec) or rounded up so no element saturates")


def ste(x: torch.Tensor, quantize: Quantizer) -> torch.Tensor:
    """quantize(x) in the forward pass, identity in the backward pass; x's dtype kept."""
    return x + (quantize(x).to(x.dtype) - x).detach()


class FakeQuantLinear(nn.Linear, QuantizedLayer):
    """nn.Linear whose weight (and input) are rounded to a low-precision grid in the forward pass."""

    def __init__(self, in_features: int, out_features: int, bias: bool, weight_quantizer: Quantizer,
                 input_quantizer: Quantizer | None, label: str, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight_quantizer, self.input_quantizer, self.label = weight_quantizer, input_quantizer, label

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_quantizer: Quantizer, input_quantizer: Quantizer | None, label: str) -> "FakeQuantLinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_quantizer, input_quantizer, label,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = ste(x, self.input_quantizer)
        return F.linear(x, ste(self.weight, self.weight_quantizer), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.label}"


def _fp8_quantizers(cfg: Fp8SwapConfig) -> tuple[Quantizer, Quantizer | None, str]:
    per_row = cfg.granularity == "row"
    quantize = lambda t: fake_fp8(t, cfg.format, per_row)  # noqa: E731
    return quantize, quantize if cfg.activations else None, f"fp8 {cfg.format} per {cfg.granularity}"


def _fp4_quantizers(cfg: Fp4SwapConfig) -> tuple[Quantizer, Quantizer | None, str]:
    if cfg.format == "mx":
        quantize: Quantizer = lambda t: fake_mxfp4(t, 32, cfg.mx_rounding)  # noqa: E731
    else:
        quantize = fake_nvfp4
    return quantize, quantize if cfg.activations else None, f"fp4 {cfg.format}"


def fp4_block(cfg: Fp4SwapConfig) -> int:
    return 32 if cfg.format == "mx" else 16


def swap_to_fake_quant(model: nn.Module, cfg: Fp8SwapConfig | Fp4SwapConfig) -> nn.Module:
    """Replace the targets in place (and return the model); raise if there are none or a width does not fit a block."""
    targets = find_targets(model, cfg.include, cfg.exclude, skip=(FakeQuantLinear,))
    if not targets:
        raise no_targets_error(cfg.name, model, cfg.include, cfg.exclude)
    if isinstance(cfg, Fp4SwapConfig):
        block = fp4_block(cfg)
        misfit = [f"{n} ({m.in_features})" for n, m in targets if m.in_features % block]
        if misfit:
            raise ValueError(f"layer swap fp4 {cfg.format} quantizes in blocks of {block} input features; these widths "
                             f"are not multiples: {', '.join(misfit[:3])}")
        weight_q, input_q, label = _fp4_quantizers(cfg)
    else:
        weight_q, input_q, label = _fp8_quantizers(cfg)
    for name, module in targets:
        replace_module(model, name, FakeQuantLinear.from_linear(module, weight_q, input_q, label))
    return model


@LAYER_SWAPS.register("fp8", config=Fp8SwapConfig)
def fp8(model: nn.Module, cfg: Fp8SwapConfig) -> nn.Module:
    """FP8 fake-quant QAT: `LAYER_SWAPS.get("fp8")(model, cfg)`."""
    return swap_to_fake_quant(model, cfg)


@LAYER_SWAPS.register("fp4", config=Fp4SwapConfig)
def fp4(model: nn.Module, cfg: Fp4SwapConfig) -> nn.Module:
    """FP4 (MXFP4 / NVFP4) fake-quant QAT: `LAYER_SWAPS.get("fp4")(model, cfg)`."""
    return swap_to_fake_quant(model, cfg)
