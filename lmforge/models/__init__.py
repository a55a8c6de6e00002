"""Models: registered by `arch`, built from their own config section by `build_model`."""
from __future__ import annotations

import torch.nn as nn
from pydantic import BaseModel

from lmforge.models.agiformer import Agiformer, AgiformerConfig  # registers "agiformer"
from lmforge.models.gpt import GPT, GPTConfig  # importing gpt registers "gpt" in MODELS
from lmforge.models.layers import KVCache
from lmforge.models.output import ModelOutput
from lmforge.models.vgt import VGT, GRUCache, VGTConfig  # registers "vgt"
from lmforge.registry import MODELS


def build_model(config: BaseModel) -> nn.Module:
    """Construct the model registered under `config.arch` from its validated config."""
    return MODELS.get(config.arch)(config)


__all__ = ["Agiformer", "AgiformerConfig", "GPT", "GPTConfig", "GRUCache", "KVCache", "ModelOutput", "VGT", "VGTConfig", "build_model"]
