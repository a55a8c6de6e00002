"""The grokking task of the Grokfast paper (Lee et al. 2024, after Power et al. 2022): x·y mod p.

Each equation is five tokens `x op y = c` with x in [0, p), y in [1, p) (the
official code's range), `op` = p and `=` = p + 1. The model reads the first
four tokens and is scored on one prediction: the answer `c` from the last
position (the one that has seen `=`); loss and accuracy count that token only.
With p = 97 there are 97·96 = 9,312 equations; the paper trains on a random 50%.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.models.gpt import GPTConfig


@dataclass(frozen=True)
class ModularTask:
    """Token ids of the task for modulus `p`: 0..p-1 are numbers, then the operator and the equals sign."""

    p: int = 97

    @property
    def op_token(self) -> int:
        return self.p

    @property
    def eq_token(self) -> int:
        return self.p + 1

    @property
    def vocab_size(self) -> int:
        return self.p + 2

    def equations(self) -> torch.Tensor:
        """All equations, (p·(p-1), 5) int64 rows `x op y = x·y mod p`, in (x, y) order."""
        x, y = torch.cartesian_prod(torch.arange(self.p), torch.arange(1, self.p)).T
        op, eq = torch.full_like(x, self.op_token), torch.full_like(x, self.eq_token)
        return torch.stack([x, op, y, eq, (x * y) % self.p], dim=1)

    def split(self, train_fraction: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) rows: a seeded random permutation cut at `train_fraction`; disjoint, together all equations."""
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        rows = self.equations()
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        n_train = int(len(rows) * train_fraction)
        return rows[perm[:n_train]], rows[perm[n_train:]]


def paper_model_config(task: ModularTask, n_layer: int = 2, n_embd: int = 128, n_head: int = 4) -> GPTConfig:
    """lmforge's `gpt` shaped like the paper's decoder: 2 layers, width 128, 4 heads, learned positions,
    LayerNorm, GELU MLP (4x), biases, untied head, no dropout, 4-token context."""
    return GPTConfig(
        vocab_size=task.vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=4,
        pos_embedding="learned", norm="layernorm", mlp="gelu", mlp_ratio=4.0, bias=True,
        tie_embeddings=False, dropout=0.0,
    )


def torch_default_init(model: nn.Module) -> nn.Module:
    """Re-initialize every submodule with its PyTorch default (`reset_parameters`), as the paper's decoder was:
    Embedding N(0, 1), Linear Kaiming-uniform, LayerNorm (1, 0), instead of lmforge's GPT-2 N(0, 0.02).
    The weight norm at init changes how long grokking takes (Liu et al. 2023, Omnigrok), so the bench offers both."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if reset is not None and module is not model:
            reset()
    return model


def answer_logits(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) for the answer token: the model's prediction at the last of `x op y =`."""
    return model(rows[:, :4]).logits[:, -1]


def answer_loss(model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy on the answer token, number of correct answers) for a batch of rows."""
    logits = answer_logits(model, rows)
    target = rows[:, 4]
    return F.cross_entropy(logits.float(), target), (logits.argmax(-1) == target).sum()


def answer_accuracy(logits: torch.Tensor, rows: torch.Tensor) -> float:
    """Fraction of rows whose answer token is the argmax of `logits` (B, V)."""
    return (logits.argmax(-1) == rows[:, 4]).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, rows: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Answer-token loss and accuracy over `rows`, in eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for chunk in rows.split(batch_size):
        loss, right = answer_loss(model, chunk)
        loss_sum += loss.item() * len(chunk)
        correct += int(right)
    model.train(was_training)
    return {"loss": loss_sum / len(rows), "accuracy": correct / len(rows)}


def steps_to_accuracy(steps: list[int], accuracies: list[float], threshold: float = 0.95) -> int | None:
    """The first logged step whose accuracy reaches `threshold`; None if none does."""
    return next((s for s, a in zip(steps, accuracies) if a >= threshold), None)
