"""Number formats for fake quantization: FP8 (e4m3, e5m2), FP4 e2m1 in MX and NVFP4 blocks, and NF4.

Each `fake_*` function rounds a tensor to the format's grid and back (fp32 out), exactly as the reference
libraries do, which the tests check bit for bit:
- FP8, per tensor or per row: scale = amax / fmax (torchao's `Float8FakeQuantizer`), x/scale saturated to
  +-fmax and cast (round to nearest even);
- MX FP4 (OCP Microscaling v1.0): blocks of 32 along the last dim share an e8m0 power-of-two scale
  2^(floor(log2 amax) - 2) (torchao `to_mx`, FLOOR mode; RCEIL rounds the exponent up instead), elements e2m1;
- NVFP4: blocks of 16 with an e4m3 scale amax/6 over a per-tensor fp32 scale amax/(448*6) (torchao
  `nvfp4_quantize` with a per-tensor scale);
- NF4 (QLoRA, Dettmers et al. 2023): 16 normal quantiles, absmax per block of 64, two codes per byte with the
  first in the high nibble (bitsandbytes `quantize_4bit(quant_type="nf4")`, bit-exact without double
  quantization). Double quantization stores the fp32 absmaxes as int8 around their mean with one fp32 factor per 256
  (torchao's NF4Tensor, bit-exact; bitsandbytes uses a dynamic 8-bit map there instead).
Kept in lmforge rather than imported: torchao and bitsandbytes are optional extras, and these are a few tensor
ops that run on any device and under FSDP.
"""
from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
E2M1_MAX = 6.0
E2M1_EMAX = 2  # floor(log2(6))
E4M3_MAX = 448.0
E4M3_EPS = torch.finfo(torch.float8_e4m3fn).tiny  # smallest normal e4m3: torchao's clamp for NVFP4 block scales
F32_MIN_NORMAL = torch.finfo(torch.float32).tiny
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])


def fake_fp8(x: torch.Tensor, fmt: str = "e4m3", per_row: bool = True) -> torch.Tensor:
    """x rounded to FP8 `fmt` with an amax scale per row (last dim) or per tensor; fp32 out."""
    dtype = FP8_DTYPES[fmt]
    fmax = torch.finfo(dtype).max
    x = x.float()
    amax = x.abs().amax(dim=-1, keepdim=True) if per_row else x.abs().amax()
    scale = amax.clamp(min=F32_MIN_NORMAL) / fmax  # an all-zero row keeps scale > 0 (torchao would give NaN there)
    return (x / scale).clamp(-fmax, fmax).to(dtype).float() * scale


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """x (already scaled) saturated to +-6 and rounded to nearest even on the e2m1 grid 0, .5, 1, 1.5, 2, 3, 4, 6."""
    a = x.abs().clamp(max=E2M1_MAX)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.copysign(torch.round(a / step) * step, x)  # ties to even code == ties to even multiple of the step


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    if x.size(-1) % block:
        raise ValueError(f"the last dimension ({x.size(-1)}) is not a multiple of the block size {block}")
    return x.float().reshape(*x.shape[:-1], x.size(-1) // block, block)


def mx_scale_exponent(amax: torch.Tensor, rounding: str = "floor") -> torch.Tensor:
    """The unbiased e8m0 exponent of each block's scale: floor(log2 amax) - emax(e2m1) (torchao FLOOR), or for
    `rceil` ceil(log2(amax / 6)) (no element saturates)."""
    if rounding == "floor":
        exponent = ((amax.view(torch.int32) >> 23) & 0xFF) - 127
        unbiased = exponent - E2M1_EMAX
    elif rounding == "rceil":
        unbiased = torch.ceil(torch.log2(amax / E2M1_MAX))
        unbiased = torch.nan_to_num(unbiased, neginf=-127.0).to(torch.int32)
    else:
        raise ValueError(f"MX scale rounding {rounding!r}; allowed: floor, rceil")
    return unbiased.clamp(-127, 128)


def fake_mxfp4(x: torch.Tensor, block: int = 32, rounding: str = "floor") -> torch.Tensor:
    """x in MX FP4: e2m1 elements over a shared power-of-two (e8m0) scale per `block` values; fp32 out."""
    blocks = _blocks(x, block)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = torch.exp2(mx_scale_exponent(amax, rounding).float()).clamp(min=F32_MIN_NORMAL)
    return (round_e2m1(blocks / scale) * scale).reshape(x.shape)


def fake_nvfp4(x: torch.Tensor, block: int = 16) -> torch.Tensor:
    """x in NVFP4: e2m1 elements, an e4m3 scale per 16 values, one fp32 scale per tensor; fp32 out."""
    blocks = _blocks(x, block)
    tensor_scale = (blocks.abs().amax() / (E4M3_MAX * E2M1_MAX)).clamp(min=F32_MIN_NORMAL)
    block_scale = blocks.abs().amax(dim=-1, keepdim=True) / E2M1_MAX
    block_scale = (block_scale / tensor_scale).clamp(E4M3_EPS, E4M3_MAX).to(torch.float8_e4m3fn).float()
    codes = round_e2m1(blocks * ((1.0 / tensor_scale) / block_scale))
    return (codes * (block_scale * tensor_scale)).reshape(x.shape)


def quantize_nf4(weight: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 codes, fp32 absmax per block) of `weight` flattened: bitsandbytes' NF4 layout."""
    flat = weight.detach().float().reshape(-1)
    if flat.numel() % (2 * block):
        raise ValueError(f"NF4 needs a multiple of {2 * block} values; this weight has {flat.numel()}")
    blocks = flat.reshape(-1, block)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp(min=F32_MIN_NORMAL).unsqueeze(1)
    code = NF4_CODE.to(weight.device)
    midpoints = (code[1:] + code[:-1]) / 2
    index = torch.bucketize(normed.reshape(-1), midpoints, right=True).to(torch.uint8)  # a tie goes up, as bitsandbytes does
    return (index[0::2] << 4) | index[1::2], absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size | tuple[int, ...], block: int = 64) -> torch.Tensor:
    """The fp32 weight of `quantize_nf4`'s output."""
    index = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    values = NF4_CODE.to(packed.device)[index].reshape(-1, block) * absmax.float().unsqueeze(1)
    return values.reshape(shape)


def quantize_absmax_int8(absmax: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization as torchao's NF4Tensor does it: (int8 codes, fp32 factor 128/max|a - mean| per `block`
    absmaxes, their fp32 mean); a last partial block is padded with zeros."""
    offset = absmax.mean()
    centred = absmax - offset
    pad = (-centred.numel()) % block
    padded = torch.cat([centred, centred.new_zeros(pad)]).reshape(-1, block)
    factor = 256 / (2 * padded.abs().amax(dim=1).clamp(min=F32_MIN_NORMAL))
    codes = torch.round(padded * factor.unsqueeze(1)).clamp(-128, 127).to(torch.int8)
    return codes.reshape(-1)[: absmax.numel()], factor, offset


def dequantize_absmax_int8(codes: torch.Tensor, factor: torch.Tensor, offset: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The fp32 absmaxes of `quantize_absmax_int8`'s output."""
    pad = (-codes.numel()) % block
    padded = torch.cat([codes.float(), codes.new_zeros(pad, dtype=torch.float32)]).reshape(-1, block)
    return (padded / factor.unsqueeze(1)).reshape(-1)[: codes.numel()] + offset
