"""Packed BitNet b1.58 export: ternary weights at 2 bits each, one fp32 scale per tensor, in safetensors.

Layout of `model.ternary.safetensors`:
- `<param>.packed` (uint8, ceil(numel/4) bytes) and `<param>.scale` (fp32, shape [1]) for every
  weight of a BitLinear/BitGRU layer (`<param>` is the latent weight's name, e.g.
  `blocks.0.attn.c_attn.weight`);
- every other tensor (embeddings, head, norms and their gains, biases) under its own name in
  `rest_dtype` (float32 by default: the rebuilt model then gives the fake-quantized model's logits
  exactly; float16 halves them);
- metadata: `format`, `ternary_shapes` (JSON name -> shape), `rest_dtype`.
Beside it: `preset.json` and the tokenizer files, as in the plain safetensors export.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmforge.assembly import build_run_model
from lmforge.code_policy import code_policy
from lmforge.config import Preset, validate_preset
from lmforge.quant.bitnet import ternary_layers
from lmforge.quant.packing import pack_ternary, packed_nbytes, unpack_ternary
from lmforge.quant.ternary import ternarize
from lmforge.training.checkpoint import unique_state_dict
from lmforge.training.state import load_model_state

FORMAT = "lmforge-bitnet-b1.58"
WEIGHTS_FILE = "model.ternary.safetensors"
RestDtype = Literal["float32", "float16"]


def _ternary_tensors(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Latent-weight name -> (int8 codes, fp32 scale) of every quantized tensor in the model."""
    out = {}
    for lname, layer in ternary_layers(model):
        for pname in layer.quantized_names():
            if layer.is_frozen(pname):
                codes, scale = getattr(layer, pname + "_codes"), getattr(layer, pname + "_scale")
            else:
                codes, scale = ternarize(getattr(layer, pname), layer.eps)
            out[f"{lname}.{pname}"] = (codes.cpu(), scale.float().cpu())
    return out


def export_ternary(model: torch.nn.Module, preset: Preset, tokenizer: object | None, out: Path | str,
                   rest_dtype: RestDtype = "float32") -> dict[str, float]:
    """Write the packed export to folder `out`; return its size accounting (bytes and ratios vs fp16)."""
    quantized = _ternary_tensors(model)
    if not quantized:
        raise ValueError("the model has no BitNet layers to pack: train it with layer_swaps [{\"name\": \"bitlinear\"}]")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    skip = set()
    for key, (codes, scale) in quantized.items():
        tensors[key + ".packed"] = pack_ternary(codes)
        tensors[key + ".scale"] = scale.reshape(1)
        shapes[key] = list(codes.shape)
        skip |= {key, key + "_codes", key + "_scale"}
    dtype = getattr(torch, rest_dtype)
    rest = {k: v for k, v in unique_state_dict(model).items() if k not in skip}
    for k, v in rest.items():
        tensors[k] = v.to(dtype) if v.is_floating_point() else v
    path = out / WEIGHTS_FILE
    save_file(tensors, str(path), metadata={"format": FORMAT, "ternary_shapes": json.dumps(shapes), "rest_dtype": rest_dtype})
    (out / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out)

    ternary_params = sum(c.numel() for c, _ in quantized.values())
    rest_params = sum(v.numel() for v in rest.values() if v.is_floating_point())
    packed_bytes = sum(packed_nbytes(c.numel()) + 4 for c, _ in quantized.values())  # + one fp32 scale each
    fp16_all = 2 * (ternary_params + rest_params)
    return {
        "ternary_params": ternary_params,
        "rest_params": rest_params,
        "rest_dtype": rest_dtype,
        "ternary_packed_bytes": packed_bytes,
        "ternary_fp16_bytes": 2 * ternary_params,
        "ternary_ratio_vs_fp16": 2 * ternary_params / packed_bytes,
        "file_bytes": path.stat().st_size,
        "model_fp16_bytes": fp16_all,
        "model_ratio_vs_fp16": fp16_all / path.stat().st_size,
    }


@dataclass
class TernaryModel:
    preset: Preset
    model: torch.nn.Module
    tokenizer: object | None


def load_ternary(folder: Path | str, device: str | torch.device = "cpu") -> TernaryModel:
    """Rebuild the model of a packed export for inference: ternary layers frozen to their stored codes and scales."""
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} export (format {meta.get('format')!r})")
    with code_policy("skip"):  # the export holds weights; its training objective never runs here
        preset = validate_preset(json.loads((folder / "preset.json").read_text()))
    model = build_run_model(preset)
    tensors = load_file(str(path))
    layers = dict(ternary_layers(model))
    for key, shape in json.loads(meta["ternary_shapes"]).items():
        lname, pname = key.rsplit(".", 1)
        codes = unpack_ternary(tensors.pop(key + ".packed"), tuple(shape))
        layers[lname].freeze_ternary(pname, codes, tensors.pop(key + ".scale"))
    own = model.state_dict()
    state = {k: v for k, v in own.items() if k.endswith(("_codes", "_scale"))}
    state.update({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    load_model_state(model, state)
    from lmforge.data import DataError, load_tokenizer

    try:
        tokenizer = load_tokenizer(folder)
    except DataError:  # weights exported without a tokenizer
        tokenizer = None
    return TernaryModel(preset, model.to(device).eval(), tokenizer)
