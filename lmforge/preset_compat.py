"""Seed 002's preset key names, translated to lmforge's when a preset loads, so its users bring their files as written.

One table, `SEED002_KEYS`, and a few rules that change more than a name; every mapping applied is printed once
per process (`preset uses seed 002's model.hidden_size: read as model.n_embd`). Writing both a seed name and
its lmforge name with different values is a PresetError (which one was meant is not ours to guess).
- a seed 002 model section (no `arch`) is a `gpt`; `model.seq_length` is `model.block_size` (the packed sequence length follows it, as in lmforge);
- `train.eval_tokens` becomes `train.eval_batches` = ceil(eval_tokens / (batch_size x seq_length));
- a bare source name (`"wikipedia"`, any of lmforge.data.sources.hf.HF_ALIASES) becomes `{"type": "hf", "dataset": name}`;
- `auxiliary.enable_adaptive_sources` with `adaptive_*` becomes `data.adaptive` (dropped when false);
- `train.fixed_token_budget: true` is seed 002's rule that every run trains exactly 100,000,000 tokens whatever
  else the preset says: it sets `train.train_tokens` to 100M and drops `train.max_steps`.
"""
from __future__ import annotations

import copy
import math
import sys
from typing import Any

from lmforge.errors import PresetError

SEED002_TOKENS = 100_000_000

# (section, seed 002 key) -> lmforge key in the same section
SEED002_KEYS: dict[tuple[str, str], str] = {
    ("model", "hidden_size"): "n_embd",
    ("model", "num_layers"): "n_layer",
    ("model", "num_heads"): "n_head",
    ("model", "seq_length"): "block_size",
    ("train", "per_gpu_batch_size"): "batch_size",
    ("train", "accumulation_steps"): "grad_accum_steps",
    ("data", "mix_strategy"): "mix",
}
ADAPTIVE_KEYS = ("adaptive_interval_tokens", "adaptive_min_weight", "adaptive_max_weight", "adaptive_smoothing")
_told: set[str] = set()


def _tell(message: str) -> None:
    if message not in _told:
        _told.add(message)
        print(f"preset uses {message}", file=sys.stderr, flush=True)


def _rename(section: dict[str, Any], name: str, seed_key: str, key: str) -> None:
    if seed_key not in section:
        return
    value = section.pop(seed_key)
    if key in section and section[key] != value:
        raise PresetError(f"{name}.{seed_key} (seed 002's name for {name}.{key}) is {value!r} but {name}.{key} is "
                          f"{section[key]!r}; keep one of them")
    section[key] = value
    _tell(f"seed 002's {name}.{seed_key}: read as {name}.{key}")


def translate_seed002(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with seed 002's names replaced by lmforge's (the input itself when it has none)."""
    from lmforge.data.sources.hf import HF_ALIASES

    if not isinstance(raw, dict):
        return raw
    out = copy.deepcopy(raw)
    sections = {name: out.get(name) for name in ("model", "train", "data", "auxiliary")}
    model, train, data, aux = (s if isinstance(s, dict) else None for s in sections.values())
    if model is not None and "arch" not in model and any(k in model for (sec, k) in SEED002_KEYS if sec == "model"):
        model["arch"] = "gpt"  # seed 002 has one architecture: a GPT-style decoder
        _tell("seed 002's model section without an arch: read as model.arch 'gpt'")
    for (name, seed_key), key in SEED002_KEYS.items():
        section = sections[name]
        if isinstance(section, dict):
            _rename(section, name, seed_key, key)
    if train is not None and "eval_tokens" in train:
        tokens = train.pop("eval_tokens")
        seq = (data or {}).get("seq_length") or (model or {}).get("block_size")
        if seq is None:
            raise PresetError("train.eval_tokens: needs model.seq_length (or model.block_size) to count tokens per batch")
        per_batch = int(train.get("batch_size", 12)) * int(seq)
        if not isinstance(tokens, int) or tokens < 1:
            raise PresetError(f"train.eval_tokens: must be a positive number of tokens, got {tokens!r}")
        train["eval_batches"] = math.ceil(tokens / per_batch)
        _tell(f"seed 002's train.eval_tokens {tokens:,}: read as train.eval_batches {train['eval_batches']} "
              f"({per_batch:,} tokens per batch)")
    if train is not None and train.pop("fixed_token_budget", False):
        train["train_tokens"] = SEED002_TOKENS
        train.pop("max_steps", None)
        _tell("seed 002's fixed token budget: train.train_tokens = 100,000,000 (train.max_steps dropped)")
    if data is not None and isinstance(data.get("sources"), list):
        for i, spec in enumerate(data["sources"]):
            if isinstance(spec, str):
                if spec not in HF_ALIASES:
                    raise PresetError(f"data.sources.{i}: {spec!r} is not a built-in source name; built-in: "
                                      f"{', '.join(HF_ALIASES)} (or write a source object with a 'type')")
                data["sources"][i] = {"type": "hf", "dataset": spec}
                _tell(f"seed 002's bare source name {spec!r}: read as {{\"type\": \"hf\", \"dataset\": \"{spec}\"}}")
    if aux is not None and ("enable_adaptive_sources" in aux or any(k in aux for k in ADAPTIVE_KEYS)):
        enabled = aux.pop("enable_adaptive_sources", False)
        knobs = {k: aux.pop(k) for k in ADAPTIVE_KEYS if k in aux}
        if enabled:
            if data is None:
                raise PresetError("auxiliary.enable_adaptive_sources: the preset has no data section to reweight")
            if data.get("adaptive") not in (None, knobs):
                raise PresetError("auxiliary.enable_adaptive_sources and data.adaptive are both set; keep data.adaptive")
            data["adaptive"] = knobs
            _tell("seed 002's auxiliary.enable_adaptive_sources / adaptive_*: read as data.adaptive")
    return out
