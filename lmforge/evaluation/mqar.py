"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al. 2023).

A sequence opens with `num_kv_pairs` key/value pairs (keys from the lower half of the vocabulary,
values from the upper half, keys distinct within a sequence), then every key is queried once, later,
at a gap drawn from a power law (small gaps likely: `p(g) ~ g ** (power_a - 1)`). Only the answer
positions carry labels: `labels[t]` is the value that must follow the query key `inputs[t]`; the
value itself never appears after the query, so nothing can be copied from the query region. The
other query-region tokens are random (`random_non_queries`), as in Zoology.

Byte-level patch models (agiformer, 4-byte patches) see the same task through `expand_tokens`: every
token becomes `patch_size` copies of its byte, so one token = one patch, and the one label sits on
the last byte of the query patch, i.e. it predicts the first byte of the next patch from a latent
that has read the whole query key. Accuracy is per query (one answer position each).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.data.tasks import IGNORE, MQARSetting, expand_tokens, mqar_batch  # noqa: F401  (the task's generators)


def masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the answer positions only (fp32 even under autocast)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], autocast: Callable | None = None) -> float:
    """Fraction of answer positions whose argmax is the value (greedy, one prediction per query)."""
    was = model.training
    model.eval()
    hits = total = 0
    for x, y in batches:
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(x).logits
        mask = y != IGNORE
        hits += int((logits.argmax(-1)[mask] == y[mask]).sum())
        total += int(mask.sum())
    model.train(was)
    return hits / max(total, 1)
