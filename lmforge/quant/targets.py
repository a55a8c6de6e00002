"""Which layers a layer swap replaces: every nn.Linear (and optionally single-layer nn.GRU) by name pattern, except
the token embedding and the LM head (a Linear whose weight is shared with another module, or whose output width
is the vocabulary size), which stay full precision as in BitNet, QLoRA and FP8 training recipes."""
from __future__ import annotations

import fnmatch
from collections import Counter

import torch.nn as nn


def _vocab_size(model: nn.Module) -> int | None:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def find_targets(model: nn.Module, include: list[str], exclude: list[str], gru: bool = False,
                 skip: tuple[type, ...] = ()) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer a swap would replace, in model order; modules of a `skip` type
    (already swapped) are left alone."""
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    vocab = _vocab_size(model)
    targets = []
    for name, module in model.named_modules():
        if (skip and isinstance(module, skip)) or not name:
            continue
        is_linear = isinstance(module, nn.Linear)
        is_gru = gru and isinstance(module, nn.GRU) and module.num_layers == 1 and not module.proj_size
        if not (is_linear or is_gru):
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in include) or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if any(owners[id(p)] > 1 for p in module.parameters(recurse=False)):
            continue  # tied to another module (an LM head sharing the embedding): leave both untouched
        if is_linear and vocab is not None and module.out_features == vocab:
            continue  # a vocabulary head under another name
        targets.append((name, module))
    return targets


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def no_targets_error(swap: str, model: nn.Module, include: list[str], exclude: list[str], what: str = "nn.Linear") -> ValueError:
    kinds = sorted({type(m).__name__ for m in model.modules()})
    return ValueError(f"layer swap {swap} found no {what} to replace (include={include}, exclude={exclude}); "
                      f"the model has: {', '.join(kinds)}")
