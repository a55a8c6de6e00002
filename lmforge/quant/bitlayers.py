"""BitNet b1.58 layers: drop-in replacements for nn.Linear and nn.GRU with ternary weights and int8 inputs.

BitLinear(x) = Wq · Q8(RMSNorm(x)) (+ bias), with Wq = clamp(round(W/s), -1, 1) · s,
s = mean|W| + eps per tensor, and Q8 the per-token absmax int8 grid; both
quantizers pass gradients straight through to the latent fp weights and to
the normed input. Each layer keeps its latent weight under the original
parameter name, so a full-precision checkpoint loads into it unchanged (the
new RMSNorm gain, which such a checkpoint lacks, starts at 1).

`freeze_ternary` swaps a latent weight for its int8 codes and fp32 scale:
that is how a packed export is loaded back for inference.
"""
from __future__ import annotations

import abc

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.protocols import QuantizedLayer
from lmforge.quant.ternary import quantize_activation, quantize_weight, ste


class TernaryWeights(QuantizedLayer):
    """Mixin: weights named in `quantized_names()` are used as ternary codes * scale in the forward pass."""

    eps: float
    norm: nn.Module

    @abc.abstractmethod
    def quantized_names(self) -> list[str]:
        """Names of the weight tensors this layer quantizes (each layer type knows its own)."""

    def is_frozen(self, name: str) -> bool:
        return hasattr(self, name + "_codes")

    def quantized_weight(self, name: str) -> torch.Tensor:
        """fp32 Wq: from frozen codes when loaded from a packed export, else fake-quantized with STE."""
        if self.is_frozen(name):
            return getattr(self, name + "_codes").float() * getattr(self, name + "_scale")
        w = getattr(self, name)
        return ste(w.float(), quantize_weight(w, self.eps))

    def freeze_ternary(self, name: str, codes: torch.Tensor, scale: torch.Tensor) -> None:
        """Replace the latent weight `name` by int8 `codes` and an fp32 0-d `scale` (inference only)."""
        device = self.norm.weight.device
        if hasattr(self, name) and isinstance(getattr(self, name), nn.Parameter):
            delattr(self, name)
        self.register_buffer(name + "_codes", codes.to(device=device, dtype=torch.int8))
        self.register_buffer(name + "_scale", scale.to(device=device, dtype=torch.float32).reshape(()))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm (learnable gain, fp32) then per-token int8 fake-quant with STE; returned in x's dtype."""
        gain = self.norm.weight
        xn = F.rms_norm(x.float(), (x.size(-1),), gain.float(), self.norm.eps)
        return ste(xn, quantize_activation(xn, self.eps)).to(x.dtype)

    def _fill_missing_norm(self, state_dict, prefix, *args) -> None:
        """A full-precision checkpoint has the latent weights but no BitLinear norm gain: start that gain at 1."""
        key = prefix + "norm.weight"
        if key not in state_dict and any(prefix + n in state_dict for n in self.quantized_names()):
            state_dict[key] = torch.ones_like(self.norm.weight)


class BitRMSNorm(nn.Module):
    """Holds the gain of BitLinear's input RMSNorm (applied in fp32 by `TernaryWeights.quantize_input`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))


class BitLinear(nn.Linear, TernaryWeights):
    """nn.Linear with b1.58 ternary weights and int8 activations (fake-quantized for training)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, eps: float = 1e-5, norm_eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.eps = eps
        self.norm = BitRMSNorm(in_features, norm_eps).to(device=device, dtype=dtype)
        self._register_load_state_dict_pre_hook(self._fill_missing_norm)

    @classmethod
    def from_linear(cls, linear: nn.Linear, eps: float, norm_eps: float) -> "BitLinear":
        """A BitLinear whose latent weight (and bias) are copies of `linear`'s."""
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, eps, norm_eps, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.train(linear.training)
        return new

    def quantized_names(self) -> list[str]:
        return ["weight"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.quantize_input(x)  # (..., in)
        w = self.quantized_weight("weight").to(xq.dtype)  # (out, in)
        bias = self.bias.to(xq.dtype) if self.bias is not None else None
        return F.linear(xq, w, bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ternary, eps={self.eps}"


class BitGRU(nn.GRU, TernaryWeights):
    """nn.GRU whose input and recurrent matrices are ternary and whose input is int8-quantized.

    The recurrence runs in the backend's fused GRU kernel, so the hidden
    state fed back into W_hh is not activation-quantized (that would need a
    Python loop over time); the matrices themselves are ternary, which is
    what the packed export stores.
    """

    def __init__(self, *args, eps: float = 1e-5, norm_eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_layers != 1 or self.proj_size:
            raise ValueError("BitGRU supports single-layer GRUs without proj_size (stack nn.GRU modules instead)")
        self.eps = eps
        w = self.weight_ih_l0
        self.norm = BitRMSNorm(self.input_size, norm_eps).to(device=w.device, dtype=w.dtype)
        self._register_load_state_dict_pre_hook(self._fill_missing_norm)

    @classmethod
    def from_gru(cls, gru: nn.GRU, eps: float, norm_eps: float) -> "BitGRU":
        w = gru.weight_ih_l0
        new = cls(gru.input_size, gru.hidden_size, num_layers=gru.num_layers, bias=gru.bias, batch_first=gru.batch_first,
                  dropout=gru.dropout, bidirectional=gru.bidirectional, eps=eps, norm_eps=norm_eps,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in gru._flat_weights_names:
                getattr(new, name).copy_(getattr(gru, name))
        new.train(gru.training)
        return new

    def quantized_names(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith("weight_")]

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3:
            raise ValueError("BitGRU expects batched input (B, T, C) or (T, B, C)")
        xq = self.quantize_input(x)
        weights = [
            self.quantized_weight(n).to(xq.dtype) if n.startswith("weight_") else getattr(self, n).to(xq.dtype)
            for n in self._flat_weights_names
        ]
        batch = xq.size(0) if self.batch_first else xq.size(1)
        if hx is None:
            hx = torch.zeros(self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size, dtype=xq.dtype, device=xq.device)
        out, h_n = torch._VF.gru(xq, hx.to(xq.dtype), weights, self.bias, self.num_layers, float(self.dropout),
                                 self.training, self.bidirectional, self.batch_first)
        return out, h_n
