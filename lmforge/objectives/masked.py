"""Masked objectives for bidirectional models (`model.causal: false`): BERT's `mlm` and MDLM's `mask_diffusion`.

Both take the batch's clean tokens x = input_ids (B, L), hide some behind the [MASK] id (the run's last id:
the vocabulary is the tokenizer's plus one, `ReservingObjectiveConfig`), run the model on the corrupted input and
score the hidden tokens.

`mask_diffusion` is MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models") with the
linear schedule alpha_t = 1 - t: t ~ U(eps, 1) drawn antithetically across the batch (t_b = eps + (1 - eps) *
((u + b / B) mod 1), one u per batch: lower variance, same mean), each token masked with probability t, the
SUBS parameterisation (the [MASK] logit is -inf, so the model never predicts a mask; unmasked tokens are copied
through and carry no loss), and loss = sum over masked tokens of CE / t, divided by the number of tokens: a
Monte-Carlo estimate of the NELBO per token. Summed over every mask set M of a length-L sequence, its
expectation is sum_M (|M|-1)! (L-|M|)! / L! * sum_{i in M} -log p(x_i | x_without_M) (tests/test_masked_objectives.py
enumerates it). Seed 004 drew its masking rate from 15%-90%; `mask_range: [0.15, 0.9]` does that (t ~ U(lo, hi),
still weighted by 1/t, which is then no longer the NELBO: say so when comparing).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from lmforge.objectives.base import ReservingObjectiveConfig, StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms
from lmforge.protocols import Objective
from lmforge.registry import OBJECTIVES


class MaskDiffusionConfig(ReservingObjectiveConfig):
    name: Literal["mask_diffusion"] = "mask_diffusion"
    eps: float = Field(1e-3, gt=0, lt=1, description="t ~ U(eps, 1): keeps the 1/t weight finite (MDLM: 1e-3)")
    antithetic: bool = Field(True, description="stratify t across the batch (MDLM's low-discrepancy sampler)")
    mask_range: tuple[float, float] | None = Field(
        None, description="seed 004's variable masking rate: t ~ U(lo, hi), e.g. [0.15, 0.9]; None = MDLM's U(eps, 1)"
    )

    @model_validator(mode="after")
    def _range(self) -> "MaskDiffusionConfig":
        if self.mask_range is not None and not 0 < self.mask_range[0] < self.mask_range[1] <= 1:
            raise ValueError(f"mask_range must be 0 < lo < hi <= 1, got {list(self.mask_range)}")
        return self


def draw_t(batch: int, cfg: MaskDiffusionConfig, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(B,) masking rates: antithetic (stratified) or independent uniforms on [lo, hi]."""
    lo, hi = cfg.mask_range or (cfg.eps, 1.0)
    u = torch.rand((), generator=generator) if cfg.antithetic else torch.rand(batch, generator=generator)
    if cfg.antithetic:
        u = (u + torch.arange(batch) / batch) % 1.0
    return (lo + (hi - lo) * u).to(device)


def subs_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: log-probabilities over the vocabulary with the [MASK] id removed (its logit -inf), in fp32."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")
    return F.log_softmax(logits, dim=-1)


def mdlm_loss(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, mask_id: int):
    """(loss per token, masked-token NLL (B, L), model output): sum over masked positions of -log p(x_i) / t_b,
    divided by B * L, with the model run on x where `masked` is True replaced by [MASK]."""
    out = model(x.masked_fill(masked, mask_id))
    logp = subs_log_probs(out.logits, mask_id)
    nll = -logp.gather(-1, x.unsqueeze(-1)).squeeze(-1) * masked  # (B, L): 0 where the token was kept
    return (nll / t[:, None]).sum() / x.numel(), nll, out


@OBJECTIVES.register("mask_diffusion", config=MaskDiffusionConfig)
class MaskDiffusion(Objective):
    left_to_right = False

    def __init__(self, cfg: MaskDiffusionConfig):
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["input_ids"]
        t = draw_t(x.size(0), self.cfg, None, x.device)
        masked = torch.rand(x.shape, device=x.device) < t[:, None]
        loss, nll, out = mdlm_loss(model, x, t, masked, model_vocab(model) - 1)
        metrics = {"nelbo": loss.detach(), "mask_rate": masked.float().mean().detach(),
                   "masked_ce": nll.sum().detach() / masked.sum().clamp(min=1)}
        return add_model_terms(loss, out, metrics), metrics


def model_vocab(model: torch.nn.Module) -> int:
    """The vocabulary size of a (possibly DDP- or compile-wrapped) model: its token embedding's rows."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return inner.get_input_embeddings().num_embeddings


class MLMConfig(ReservingObjectiveConfig):
    name: Literal["mlm"] = "mlm"
    mask_rate: float = Field(0.15, gt=0, lt=1, description="share of tokens chosen for prediction (BERT: 15%)")
    replace_mask: float = Field(0.8, ge=0, le=1, description="of the chosen: replaced by [MASK] (BERT: 80%)")
    replace_random: float = Field(0.1, ge=0, le=1, description="of the chosen: replaced by a random token (BERT: 10%); the rest stay")

    @model_validator(mode="after")
    def _shares(self) -> "MLMConfig":
        if self.replace_mask + self.replace_random > 1:
            raise ValueError("replace_mask + replace_random must be at most 1 (the rest keep their token)")
        return self


@OBJECTIVES.register("mlm", config=MLMConfig)
class MaskedLM(Objective):
    """BERT (Devlin et al. 2019): choose `mask_rate` of the tokens; of those 80% -> [MASK], 10% -> a random token,
    10% unchanged; cross-entropy on the chosen positions only, mean over them."""

    left_to_right = False

    def __init__(self, cfg: MLMConfig):
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, x = self.cfg, batch["input_ids"]
        vocab = model_vocab(model)
        mask_id = vocab - 1
        chosen = torch.rand(x.shape, device=x.device) < cfg.mask_rate
        roll = torch.rand(x.shape, device=x.device)
        to_mask = chosen & (roll < cfg.replace_mask)
        to_random = chosen & (roll >= cfg.replace_mask) & (roll < cfg.replace_mask + cfg.replace_random)
        corrupted = x.masked_fill(to_mask, mask_id)
        corrupted = torch.where(to_random, torch.randint(0, mask_id, x.shape, device=x.device), corrupted)
        out = model(corrupted)
        targets = x.masked_fill(~chosen, IGNORE_INDEX)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        ce = ce / chosen.sum().clamp(min=1)  # mean over the chosen positions (none chosen: 0, not NaN)
        metrics = {"mlm_ce": ce.detach(), "chosen_rate": chosen.float().mean().detach()}
        return add_model_terms(ce, out, metrics), metrics
