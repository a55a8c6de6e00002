"""Layer swap `bitlinear`: turn any model's inner Linear (and GRU) layers into BitNet b1.58 layers.

The swap finds its targets generically, so it works for every architecture:
every nn.Linear (and, with `gru`, every single-layer nn.GRU) whose qualified
name matches `include` and none of `exclude`, except
- the token embedding and the LM head: a Linear whose weight is shared with
  another module (a tied head) or whose output width is the vocabulary size
  stays full precision, as in the paper;
- anything already swapped.
The latent fp weights are copied, so a full-precision checkpoint (`train.init_from`)
fine-tunes into b1.58.

With `reg_weight > 0` a forward hook on the model adds
`aux_losses["bitnet_reg"] = reg_weight * mean over quantized tensors of mean((W/s - round_ternary(W/s))^2)`,
which every objective adds to the loss and logs by name.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from lmforge.config_base import Section
from lmforge.models.output import ModelOutput
from lmforge.quant.bitlayers import BitGRU, BitLinear, TernaryWeights
from lmforge.quant.targets import find_targets, no_targets_error, replace_module
from lmforge.quant.ternary import grid_distance
from lmforge.registry import LAYER_SWAPS


class BitLinearSwapConfig(Section):
    """A `layer_swaps` entry: `{"name": "bitlinear", ...}`."""

    name: Literal["bitlinear"] = "bitlinear"
    include: list[str] = Field(default_factory=lambda: ["*"], description="fnmatch patterns of module names to swap")
    exclude: list[str] = Field(
        default_factory=lambda: ["lm_head", "*.lm_head"],
        description="fnmatch patterns kept full precision (the head and embeddings are also detected without names)",
    )
    gru: bool = Field(True, description="also swap single-layer nn.GRU modules (recurrent archs such as vgt)")
    eps: float = Field(1e-5, gt=0, description="added to the weight absmean scale; floor of the activation absmax")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of the RMSNorm inside each BitLinear")
    reg_weight: float = Field(0.0, ge=0, description="weight of the ternary-grid regularizer (aux loss bitnet_reg); 0 = off")


def find_swap_targets(model: nn.Module, cfg: BitLinearSwapConfig) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer the swap would replace, in model order."""
    return find_targets(model, cfg.include, cfg.exclude, gru=cfg.gru, skip=(TernaryWeights,))


class QuantizationRegularizer:
    """Forward hook adding `bitnet_reg` to a training forward's ModelOutput.aux_losses.

    It holds no module references (it finds the ternary layers on the module it
    is called with), so deep-copying or pickling the model stays correct.
    """

    def __init__(self, weight: float, eps: float):
        self.weight, self.eps = weight, eps

    def __call__(self, module: nn.Module, args, output):
        if not (module.training and torch.is_grad_enabled() and isinstance(output, ModelOutput)):
            return None
        terms = [
            grid_distance(getattr(m, n), self.eps)
            for m in module.modules() if isinstance(m, TernaryWeights)
            for n in m.quantized_names() if not m.is_frozen(n)
        ]
        if terms:
            output.aux_losses["bitnet_reg"] = self.weight * torch.stack(terms).mean()
        return output


def swap_to_bitnet(model: nn.Module, cfg: BitLinearSwapConfig) -> nn.Module:
    """Replace the targets in place (and return the model); raise if the model has none."""
    targets = find_swap_targets(model, cfg)
    if not targets:
        raise no_targets_error("bitlinear", model, cfg.include, cfg.exclude, "nn.Linear/nn.GRU" if cfg.gru else "nn.Linear")
    for name, module in targets:
        if isinstance(module, nn.Linear):
            new: nn.Module = BitLinear.from_linear(module, cfg.eps, cfg.norm_eps)
        else:
            new = BitGRU.from_gru(module, cfg.eps, cfg.norm_eps)
        replace_module(model, name, new)
    if cfg.reg_weight > 0:
        model.register_forward_hook(QuantizationRegularizer(cfg.reg_weight, cfg.eps))
    return model


@LAYER_SWAPS.register("bitlinear", config=BitLinearSwapConfig)
def bitlinear(model: nn.Module, cfg: BitLinearSwapConfig) -> nn.Module:
    """The registered swap: `LAYER_SWAPS.get("bitlinear")(model, cfg)`."""
    return swap_to_bitnet(model, cfg)


def ternary_layers(model: nn.Module) -> list[tuple[str, TernaryWeights]]:
    """(qualified name, layer) of every b1.58 layer in `model`."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryWeights)]
