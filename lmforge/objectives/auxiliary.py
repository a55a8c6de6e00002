"""Seed 002's auxiliary heads (policy, value, dynamics, span-contrastive), with targets that see only what they may.

The preset's `auxiliary` section turns them on; the run's objective (clm, or any objective with `terms`) is then
wrapped so that loss = CE (mean over non-pad targets) + sum_i weight_i * aux_i, one forward, every term logged.
Every prediction made at position t reads only the final hidden state h_t, which in a causal model has seen
tokens 0..t and nothing after:
- policy: a next-token distribution from h_t; KL(p_LM || p_policy) with the LM distribution detached;
- value: from h_t, the mean NLL of the next `value_horizon` targets (labels t .. t+H-1, i.e. tokens t+1 .. t+H,
  none of which h_t has seen), the NLLs detached;
- dynamics: z_0 = h_t, z_k = z_{k-1} + f(z_{k-1}) for k = 1..K ("chained 2-3 step rollouts"), each z_k scored by
  cosine distance to the detached h_{t+k}, and (with the value head on) value(z_k) against the value target of
  t+k ("value aggregation"). The seed's "final hidden + token context" would feed token t+1 as an action; that is
  a token after t, so the token context here is what h_t already holds;
- span-contrastive: a span of each row is replaced by [MASK] (an id reserved past the tokenizer's, as mlm's) in a
  second copy of the input; the mean masked-forward state over the span (the masked-context representation) is
  scored by InfoNCE against the mean token embedding of the true span, the other rows' spans being the
  negatives. The key is the span's own tokens, not the clean forward's states: those also encode the shared
  prefix, which would let the query match its key without predicting the span.
The public code's versions leaked (../shared/CORRECTIONS.md): its value and dynamics targets were computed from
states that had seen the future, its span was never masked, and its CE was a sum, so 0.05 weights meant nothing.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from lmforge.config_base import Section
from lmforge.errors import PresetError
from lmforge.objectives.base import StepContext
from lmforge.objectives.clm import IGNORE_INDEX, add_model_terms, per_sequence_cross_entropy
from lmforge.objectives.heads import hidden_size, unwrap
from lmforge.protocols import Batch, Metrics, Objective, RunContext

HEADS_NAME = "aux_heads"  # the module's name on the model: its weights are `aux_heads.*` in every checkpoint


class AuxiliaryConfig(Section):
    """The preset's `auxiliary` section: seed 002's names and defaults (every head off)."""

    enable_policy: bool = False
    enable_value: bool = False
    enable_dynamics: bool = False
    enable_span_contrastive: bool = False
    policy_kl_weight: float = Field(0.05, ge=0)
    value_weight: float = Field(0.05, ge=0)
    dynamics_weight: float = Field(0.05, ge=0)
    span_contrastive_weight: float = Field(0.05, ge=0)
    span_mask_fraction: float = Field(0.15, gt=0, lt=1, description="share of each row's tokens masked as one span")
    span_contrastive_temperature: float = Field(0.07, gt=0)
    span_l2_normalize: bool = Field(True, description="cosine InfoNCE (normalized query and key); false = dot products")
    value_horizon: int = Field(8, ge=1, description="the value target: mean NLL of the next value_horizon tokens")
    dynamics_rollout_steps: int = Field(3, ge=1, le=16, description="chained latent steps K of the dynamics rollout")

    @property
    def enabled(self) -> bool:
        return self.enable_policy or self.enable_value or self.enable_dynamics or self.enable_span_contrastive

    @property
    def reserved_ids(self) -> int:
        """The span-contrastive term masks with an id past the tokenizer's (shared with mlm's [MASK]: vocab - 1)."""
        return 1 if self.enable_span_contrastive else 0


def _mlp(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out))


class AuxiliaryHeads(nn.Module):
    """The enabled heads over a model of hidden width `width` and vocabulary `vocab_size`."""

    def __init__(self, cfg: AuxiliaryConfig, width: int, vocab_size: int):
        super().__init__()
        self.policy = _mlp(width, vocab_size) if cfg.enable_policy else None
        self.value = _mlp(width, 1) if cfg.enable_value else None
        self.dynamics = _mlp(width, width) if cfg.enable_dynamics else None
        self.span_query = nn.Linear(width, width) if cfg.enable_span_contrastive else None
        self.span_key = nn.Linear(width, width) if cfg.enable_span_contrastive else None

    def predict_value(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (...): the predicted mean NLL of the next value_horizon tokens."""
        return self.value(hidden).squeeze(-1)

    def rollout(self, hidden: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """[z_1, ..., z_steps], z_k the latent predicted k steps ahead of each position (residual steps)."""
        z, out = hidden, []
        for _ in range(steps):
            z = z + self.dynamics(z)
            out.append(z)
        return out


def _num_params(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def auxiliary_flops_per_token(cfg: AuxiliaryConfig, width: int, vocab_size: int, trunk_flops_per_token: float) -> float:
    """Training FLOPs per token the heads add (6 per weight per use): policy and value once per position, the
    dynamics step K times (and the value head on each rolled-out latent), the span term a second forward and
    backward of the trunk on the masked copy plus its two projections."""
    with torch.device("meta"):
        heads = AuxiliaryHeads(cfg, width, vocab_size)
    flops = 6 * (_num_params(heads.policy) + _num_params(heads.value))
    flops += 6 * cfg.dynamics_rollout_steps * (_num_params(heads.dynamics) + _num_params(heads.value)) if cfg.enable_dynamics else 0
    if cfg.enable_span_contrastive:
        flops += trunk_flops_per_token + 6 * (_num_params(heads.span_query) + _num_params(heads.span_key))
    return float(flops)


def attach_auxiliary_heads(model: nn.Module, cfg: AuxiliaryConfig) -> AuxiliaryHeads:
    """`model.aux_heads` (kept if already there), on the model's device and dtype."""
    raw = unwrap(model)
    if isinstance(getattr(raw, HEADS_NAME, None), AuxiliaryHeads):
        return getattr(raw, HEADS_NAME)
    param = next(raw.parameters())
    heads = AuxiliaryHeads(cfg, hidden_size(raw), raw.get_input_embeddings().num_embeddings)
    raw.add_module(HEADS_NAME, heads.to(device=param.device, dtype=param.dtype))
    return heads


def heads_of(model: nn.Module) -> AuxiliaryHeads | None:
    """The auxiliary heads a model carries (a run trained with them), else None."""
    heads = getattr(unwrap(model), HEADS_NAME, None)
    return heads if isinstance(heads, AuxiliaryHeads) else None


# ---------------------------------------------------------------------------- targets and terms


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) detached NLL of each target (0 where none) and the (B, T) mask of positions with a target."""
    valid = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits.detach().float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return nll.view(labels.shape) * valid, valid


def value_targets(nll: torch.Tensor, valid: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) mean NLL of targets t .. t+horizon-1 and the mask of positions whose whole window has targets."""
    B, T = nll.shape
    pad = nll.new_zeros(B, 1)
    csum = torch.cat([pad, nll.cumsum(1)], 1)
    ccount = torch.cat([pad, valid.to(nll.dtype).cumsum(1)], 1)
    end = torch.clamp(torch.arange(T, device=nll.device) + horizon, max=T)
    window = csum[:, end] - csum[:, :T]
    count = ccount[:, end] - ccount[:, :T]
    full = count == horizon
    return window / horizon, full


def policy_kl(heads: AuxiliaryHeads, hidden: torch.Tensor, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(p_LM || p_policy) averaged over positions with a target; the LM distribution is detached (the teacher)."""
    log_policy = F.log_softmax(heads.policy(hidden[valid]).float(), dim=-1)
    log_lm = F.log_softmax(logits.detach()[valid].float(), dim=-1)
    return F.kl_div(log_policy, log_lm, log_target=True, reduction="batchmean")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def value_loss(heads: AuxiliaryHeads, hidden: torch.Tensor, target: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    return _masked_mean((heads.predict_value(hidden).float() - target) ** 2, full)


def dynamics_losses(heads: AuxiliaryHeads, hidden: torch.Tensor, valid: torch.Tensor, steps: int,
                    value_target: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean over k = 1..steps of the cosine distance of z_k (rolled out from h_t) to the detached h_{t+k}, and of the
    value head's error on z_k against the value target of t+k (None without a value head)."""
    T = hidden.shape[1]
    target_states = hidden.detach()
    latent, value = [], []
    for k, z in enumerate(heads.rollout(hidden, min(steps, T - 1)), start=1):
        # position t+k holds a real token iff label t+k-1 (= token t+k) is one
        mask = valid[:, :T - k] & valid[:, k - 1:T - 1]
        cos = F.cosine_similarity(z[:, :T - k].float(), target_states[:, k:].float(), dim=-1)
        latent.append(_masked_mean(1 - cos, mask))
        if value_target is not None:
            target, full = value_target
            err = (heads.predict_value(z[:, :T - k]).float() - target[:, k:]) ** 2
            value.append(_masked_mean(err, full[:, k:]))
    if not latent:
        zero = hidden.sum() * 0
        return zero, (zero if value_target is not None else None)
    return torch.stack(latent).mean(), (torch.stack(value).mean() if value else None)


def span_positions(labels: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int, torch.Tensor]:
    """One span per row: (B,) start, the span length L, and the (B,) mask of rows long enough to hold one after at
    least one token of context. Drawn from the torch RNG (saved in checkpoints, so a resume draws the same)."""
    B, T = labels.shape
    length = max(1, round(fraction * T))
    n_tokens = (labels != IGNORE_INDEX).sum(1) + 1  # input tokens of each (left-aligned) row
    room = (n_tokens - length).clamp(min=1)  # starts 1 .. n_tokens - length
    start = 1 + (torch.rand(B, device=labels.device) * room).long().clamp(max=T - length - 1)
    return start, length, n_tokens >= length + 1


def mask_span(input_ids: torch.Tensor, start: torch.Tensor, length: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of input_ids with each row's span replaced by mask_id, and the (B, T) span mask."""
    T = input_ids.shape[1]
    pos = torch.arange(T, device=input_ids.device)
    span = (pos >= start[:, None]) & (pos < start[:, None] + length)
    return input_ids.masked_fill(span, mask_id), span


def span_infonce(heads: AuxiliaryHeads, masked_hidden: torch.Tensor, span_embeddings: torch.Tensor, span: torch.Tensor,
                 rows: torch.Tensor, temperature: float, l2_normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of each row's masked-context query against its own span key, the other rows' spans as negatives;
    also the share of rows whose own key scores highest."""
    weights = span.to(masked_hidden.dtype)[..., None]
    query = heads.span_query((masked_hidden * weights).sum(1) / weights.sum(1))[rows].float()
    key = heads.span_key((span_embeddings * weights).sum(1) / weights.sum(1))[rows].float()
    if l2_normalize:
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    scores = query @ key.T / temperature
    target = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, target), (scores.argmax(1) == target).float().mean()


# ---------------------------------------------------------------------------- the objective


class AuxiliaryObjective(Objective):
    """The run's objective plus the enabled heads: its CE from one forward, then every auxiliary term from it."""

    def __init__(self, base: Objective, cfg: AuxiliaryConfig, name: str):
        if not base.left_to_right:
            raise PresetError(f"auxiliary: the heads predict from causal states; objective {name!r} trains a bidirectional model")
        if not callable(getattr(type(base), "terms", None)):
            raise PresetError(f"auxiliary: objective {name!r} has no terms(model, out, batch, ctx) to add the heads to; use clm")
        self.base, self.cfg, self.mask_id = base, cfg, -1

    def bind(self, model: nn.Module, run: RunContext) -> None:
        self.base.bind(model, run)
        attach_auxiliary_heads(model, self.cfg)
        self.mask_id = unwrap(model).get_input_embeddings().num_embeddings - 1  # the reserved id (run_shape.reserved_ids)

    def __call__(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, Metrics]:
        cfg, ids, labels = self.cfg, batch["input_ids"], batch["labels"]
        span_rows = None
        if cfg.enable_span_contrastive:  # the masked copy rides in the same forward (one DDP forward per backward)
            start, length, span_rows = span_positions(labels, cfg.span_mask_fraction)
            masked, span = mask_span(ids, start, length, self.mask_id)
            out = model(torch.cat([ids, masked]))
            B = ids.shape[0]
            logits, hidden, masked_hidden = out.logits[:B], out.hidden_states[:B], out.hidden_states[B:]
            out.logits, out.hidden_states = logits, hidden
        else:
            out = model(ids)
            logits, hidden = out.logits, out.hidden_states
        ce, metrics = self.base.terms(model, out, batch, ctx)
        terms = self.terms_from(model, hidden, logits, labels)
        if span_rows is not None:
            embeddings = unwrap(model).get_input_embeddings()(ids)
            terms["span_infonce"], metrics["span_accuracy"] = span_infonce(
                heads_of(model), masked_hidden, embeddings, span, span_rows, cfg.span_contrastive_temperature, cfg.span_l2_normalize)
            metrics["span_accuracy"] = metrics["span_accuracy"].detach()
        loss = ce
        for name, term in terms.items():
            loss = loss + self._weight(name) * term
            metrics[name] = term.detach()
        loss = add_model_terms(loss, out, metrics)
        if "source_ids" in batch:  # data.adaptive: per-source CE, as clm reports it
            metrics["per_sequence_loss"] = per_sequence_cross_entropy(logits.detach(), labels)
        return loss, metrics

    def terms_from(self, model: nn.Module, hidden: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The policy, value and dynamics terms of one clean forward."""
        cfg, heads = self.cfg, heads_of(model)
        terms: dict[str, torch.Tensor] = {}
        valid = labels != IGNORE_INDEX
        if cfg.enable_policy:
            terms["policy_kl"] = policy_kl(heads, hidden, logits, valid)
        target = value_targets(token_nll(logits, labels)[0], valid, cfg.value_horizon) if cfg.enable_value else None  # per-token NLL only for the value target
        if target is not None:
            terms["value_mse"] = value_loss(heads, hidden, *target)
        if cfg.enable_dynamics:
            latent, value = dynamics_losses(heads, hidden, valid, cfg.dynamics_rollout_steps, target)
            terms["dynamics_latent"] = latent
            if value is not None:
                terms["dynamics_value"] = value
        return terms

    def _weight(self, term: str) -> float:
        cfg = self.cfg
        return {"policy_kl": cfg.policy_kl_weight, "value_mse": cfg.value_weight, "dynamics_latent": cfg.dynamics_weight,
                "dynamics_value": cfg.dynamics_weight, "span_infonce": cfg.span_contrastive_weight}[term]

    def evaluate(self, model: nn.Module, batches: list[Batch], runtime: Any) -> dict[str, float] | None:
        return self.base.evaluate(model, batches, runtime)  # val_loss stays the objective's own (CE), comparable to a plain run

    def state_dict(self) -> dict[str, Any] | None:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


def with_auxiliary(objective: Objective, cfg: AuxiliaryConfig, name: str) -> Objective:
    """The objective, wrapped with the heads when the preset's `auxiliary` section enables any."""
    return AuxiliaryObjective(objective, cfg, name) if cfg.enabled else objective
