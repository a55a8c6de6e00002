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
