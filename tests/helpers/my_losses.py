"""Loss functions that tests name by import path ("helpers.my_losses:...") for the `python` objective."""
import torch
import torch.nn.functional as F


def ce_only(logits, targets, h_states, embedding_layer, vocab_size, alpha):
    """The seed's signature with no regularizer: must give exactly objective clm's loss."""
    ce = F.cross_entropy(logits.float().view(-1, vocab_size), targets.view(-1), ignore_index=-100)
    return ce, {"ce": ce.detach(), "h_rms": torch.sqrt(torch.mean(h_states.detach().float() ** 2))}


def returns_a_number(logits, targets, h_states, embedding_layer, vocab_size, alpha):
    """A broken loss: not the (loss, metrics) pair the trainer needs."""
    return 1.0


_CALLS: dict[str, int] = {}


def flaky(logits, targets, h_states, embedding_layer, vocab_size, alpha, tag="", bad_calls=(), bad_from=None, kind="nan",
          only_rank=None):
    """ce_only, except on the listed calls (1-based, counted per `tag`) or on every call from `bad_from` on, and
    only on process `only_rank` when set: kind "nan" returns a NaN loss, "inf_grad" a finite loss whose gradient
    is infinite, "spike" 50x the loss."""
    import os

    n = _CALLS[tag] = _CALLS.get(tag, 0) + 1
    ce, metrics = ce_only(logits, targets, h_states, embedding_layer, vocab_size, alpha)
    mine = only_rank is None or int(os.environ.get("RANK", "0")) == only_rank
    if mine and (n in bad_calls or (bad_from is not None and n >= bad_from)):
        if kind == "nan":
            ce = ce * float("nan")
        elif kind == "inf_grad":
            u = logits.float().flatten()[0]
            ce = ce + (u - u.detach()).abs().sqrt()  # value 0, d/du sqrt(|u|) at 0 is inf
        elif kind == "spike":
            ce = ce * 50
    return ce, metrics


def fills_the_disk(logits, targets, h_states, embedding_layer, vocab_size, alpha, max_file_bytes=65536):
    """ce_only; from call $FILL_DISK_AT_CALL on (when set), no file this process writes may grow past `max_file_bytes`
    (RLIMIT_FSIZE): the next checkpoint write fails with EFBIG, inside torch.save/safetensors, as a full disk fails
    with ENOSPC."""
    import os
    import resource
    import signal

    fills_the_disk.calls = getattr(fills_the_disk, "calls", 0) + 1
    if fills_the_disk.calls == int(os.environ.get("FILL_DISK_AT_CALL", "0")):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return ce_only(logits, targets, h_states, embedding_layer, vocab_size, alpha)
