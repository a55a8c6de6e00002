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

import math
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from lmforge.objectives.base import ReservingObjectiveConfig, StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms
from lmforge.protocols import Objective
from lmforge.registry import OBJECTIVES
from lmforge.runtime import Runtime


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

    def evaluate(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], runtime: Runtime) -> dict[str, float]:
        """val_nelbo (= val_loss) on a fixed t-grid and seed (`evaluate_nelbo`), not the causal CE."""
        return evaluate_nelbo(model, batches, runtime, eps=self.cfg.eps)


def model_vocab(model: torch.nn.Module) -> int:
    """The vocabulary size of a (possibly DDP- or compile-wrapped) model: its token embedding's rows."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return inner.get_input_embeddings().num_embeddings


@torch.no_grad()
def evaluate_nelbo(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], runtime: Runtime,
                   token_bytes: torch.Tensor | None = None, grid: int = 8, eps: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """The NELBO of a masked diffusion model (MDLM) on validation batches: a bound to compare runs by, not a sample.

    NELBO per token = integral over t in (0, 1] of E_M[ sum_{i in M} -log p(x_i | x without M) / t ] / L, with M
    each token masked with probability t (linear schedule). It is estimated on a fixed grid of `grid` midpoints of
    [eps, 1] with masks from a fixed seed, so two runs (or two checkpoints) are scored on the same draws. Bits per byte
    divide the summed bound by ln 2 and the UTF-8 bytes of the tokens scored, as val_bpb does for AR models.
    """
    was_training = model.training
    model.eval()
    device = runtime.device
    mask_id = model.get_input_embeddings().num_embeddings - 1
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # bound (nats), tokens, bytes
    for batch in batches:
        x = batch["input_ids"].to(device)
        real = (batch["labels"] != -100).to(device)  # padding at the end of the last val batch is not scored
        for j in range(grid):
            t = torch.full((x.size(0),), eps + (1 - eps) * (j + 0.5) / grid, device=device)
            masked = (torch.rand(x.shape, generator=generator).to(device) < t[:, None]) & real
            with runtime.autocast():
                _, nll, _ = mdlm_loss(model, x, t, masked, mask_id)
            totals[0] += (nll / t[:, None]).sum().double() / grid
        totals[1] += real.sum()
        if token_bytes is not None:
            totals[2] += (token_bytes.to(device)[x] * real).sum()
    if runtime.distributed:
        import torch.distributed as dist

        dist.all_reduce(totals)
    model.train(was_training)
    bound, tokens, nbytes = totals.tolist()
    if tokens == 0:
        raise ValueError("validation set has no tokens")
    out = {"val_nelbo": bound / tokens, "val_loss": bound / tokens, "val_tokens": tokens, "nelbo_grid": grid}
    if nbytes > 0:
        out["val_bpb"] = bound / nbytes / math.log(2)
    return out


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


class CLMMaskedInputsConfig(ReservingObjectiveConfig):
    name: Literal["clm_masked_inputs"] = "clm_masked_inputs"
    input_mask_rate: float = Field(0.15, ge=0, lt=1, description="share of input tokens replaced by [MASK]; the targets stay whole")


@OBJECTIVES.register("clm_masked_inputs", config=CLMMaskedInputsConfig)
class CLMMaskedInputs(Objective):
    """Next-token CE on inputs with `input_mask_rate` of their tokens replaced by [MASK] (the targets untouched): the
    regularised AR baseline for data-constrained comparisons with diffusion (arXiv 2510.04071); with model dropout it
    is their "fair" AR. Still causal and sampled left to right (nothing is masked at generation)."""

    def __init__(self, cfg: CLMMaskedInputsConfig):
        self.cfg = cfg

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = batch["input_ids"]
        hidden = torch.rand(x.shape, device=x.device) < self.cfg.input_mask_rate
        out = model(x.masked_fill(hidden, model_vocab(model) - 1))
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        metrics = {"ce": ce.detach()}
        return add_model_terms(ce, out, metrics), metrics
