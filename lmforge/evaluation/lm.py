"""Token-level validation metrics that are comparable across tokenizers.

Bits per byte divides total nats by total UTF-8 bytes of the predicted tokens
(and ln 2), so a byte-, char- and BPE-level model can be compared; bits per
char does the same over characters where the tokenizer defines them.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from lmforge.runtime import Runtime


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    runtime: Runtime,
    token_bytes: torch.Tensor | None = None,
    token_chars: torch.Tensor | None = None,
) -> dict[str, float]:
    """Summed next-token NLL over all non-pad targets of `batches`, reduced over ranks."""
    was_training = model.training
    model.eval()
    device = runtime.device
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # nll, tokens, correct, bytes, chars
    tb = token_bytes.to(device) if token_bytes is not None else None
    tc = token_chars.to(device) if token_chars is not None else None
    for batch in batches:
        x = batch["input_ids"].to(device, non_blocking=True)
        y = batch["labels"].to(device, non_blocking=True)
        with runtime.autocast():
            logits = model(x).logits
        logits = logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
        mask = y != -100
        targets = y.clamp_min(0)
        totals[0] += nll.double()
        totals[1] += mask.sum()
        totals[2] += ((logits.argmax(-1) == y) & mask).sum()
        if tb is not None:
            totals[3] += (tb[targets] * mask).sum()
        if tc is not None:
            totals[4] += (tc[targets] * mask).sum()
    if runtime.distributed:
        import torch.distributed as dist

        dist.all_reduce(totals)
    model.train(was_training)
    nll, tokens, correct, nbytes, nchars = totals.tolist()
    if tokens == 0:
        raise ValueError("validation set has no target tokens")
    loss = nll / tokens
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_accuracy": correct / tokens, "val_tokens": tokens}
    if nbytes > 0:
        out["val_bpb"] = nll / (math.log(2) * nbytes)
    if nchars > 0:
        out["val_bpc"] = nll / (math.log(2) * nchars)
    return out
