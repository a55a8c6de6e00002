"""Optimizers, registered by name: `train.optimizer: {"name": ..., ...}`.

Every builder returns an object with torch's optimizer interface (`param_groups`, `step`, `zero_grad`,
`state_dict`, `load_state_dict`); each param group carries two keys the trainer reads:
- `lr_scale`: the group's LR is `train.lr x schedule(step) x stage lr x lr_scale` (Muon's groups may differ);
- `base_weight_decay`: what a schedule's `weight_decay_multiplier` scales (BitNet b1.58 turns decay off);
- `decay`: whether the group is decayed at all (a stage's `optimizer.weight_decay` sets only those).

The shared hyper-parameters live in `train` (`weight_decay`, `beta1`, `beta2`, `eps`), so switching the
optimizer keeps a preset's values; each optimizer's own options live in its section.

Parameters that are frozen (`requires_grad` off, e.g. by a stage's `trainable`) are still in the groups
but have no gradient, so torch's optimizers skip them: no update, no weight decay, no state created.
"""
from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field

from lmforge.config_base import Section
from lmforge.errors import PresetError
from lmforge.protocols import Optimizer
from lmforge.registry import OPTIMIZERS
from lmforge.runtime import Runtime


def decay_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """nanoGPT's rule: decay matrices (dim >= 2: linear and embedding weights); never biases or norm gains,
    whose decay would only pull scales and offsets toward zero."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "decay": True},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "decay": False},
    ]


def _finish(groups: list[dict], lr_scale: float = 1.0) -> list[dict]:
    """Drop empty groups; record the keys the trainer reads."""
    groups = [g for g in groups if g["params"]]
    for group in groups:
        group["base_weight_decay"] = group["weight_decay"]
        group.setdefault("lr_scale", lr_scale)
    return groups


def _fused(runtime: Runtime, params: list[nn.Parameter], wanted: bool | None) -> bool:
    ok = "fused" in inspect.signature(torch.optim.AdamW).parameters and runtime.fused_adamw_supported()
    ok = ok and all(p.dtype.is_floating_point for p in params)
    if wanted and not ok:
        raise ValueError(f"train.optimizer.fused: no fused AdamW kernel for these parameters on {runtime.device}")
    return ok if wanted is None else wanted


class AdamWConfig(Section):
    """AdamW (decoupled weight decay) on matrices only; today's default."""

    name: Literal["adamw"] = "adamw"
    fused: bool | None = Field(None, description="one fused kernel for all params; None = where the device has one (~9% faster on CPU)")


@OPTIMIZERS.register("adamw", config=AdamWConfig)
def adamw(cfg: AdamWConfig, model: nn.Module, train_cfg: Any, runtime: Runtime) -> torch.optim.Optimizer:
    return _adamw(cfg, list(model.parameters()), train_cfg, runtime)


def _adamw(cfg: AdamWConfig, params: list[nn.Parameter], train_cfg: Any, runtime: Runtime) -> torch.optim.AdamW:
    return _adam_family(torch.optim.AdamW, _finish(decay_groups(params, train_cfg.weight_decay)), cfg.fused, train_cfg, runtime)


def _adam_family(cls: type, groups: list[dict], fused: bool | None, train_cfg: Any, runtime: Runtime) -> torch.optim.Optimizer:
    """Adam or AdamW over `groups` with the shared train.* hyper-parameters, fused where asked and possible."""
    kwargs: dict[str, Any] = dict(lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)
    if _fused(runtime, [p for g in groups for p in g["params"]], fused):
        kwargs["fused"] = True
    return cls(groups, **kwargs)


class AdamConfig(Section):
    """Adam with coupled L2 weight decay (the decay enters the gradient): what the Grokfast paper's code runs."""

    name: Literal["adam"] = "adam"
    weight_decay_on: Literal["all", "matrices"] = Field(
        "all", description="all = every parameter, as torch.optim.Adam(model.parameters(), weight_decay=...) in the Grokfast code"
    )
    fused: bool | None = Field(None, description="as adamw's")


@OPTIMIZERS.register("adam", config=AdamConfig)
def adam(cfg: AdamConfig, model: nn.Module, train_cfg: Any, runtime: Runtime) -> torch.optim.Optimizer:
    params = list(model.parameters())
    wd = train_cfg.weight_decay
    groups = _finish([{"params": params, "weight_decay": wd, "decay": True}] if cfg.weight_decay_on == "all" else decay_groups(params, wd))
    return _adam_family(torch.optim.Adam, groups, cfg.fused, train_cfg, runtime)


class SGDConfig(Section):
    """SGD with momentum; `train.weight_decay` is L2 (coupled), on matrices only."""

    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    dampening: float = Field(0.0, ge=0, lt=1)


@OPTIMIZERS.register("sgd", config=SGDConfig)
def sgd(cfg: SGDConfig, model: nn.Module, train_cfg: Any, runtime: Runtime) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.nesterov and (cfg.momentum == 0 or cfg.dampening != 0):
        raise ValueError("train.optimizer.nesterov needs momentum > 0 and dampening 0")
    groups = _finish(decay_groups(params, train_cfg.weight_decay))
    return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, dampening=cfg.dampening)


class MuonConfig(Section):
    """torch.optim.Muon for the 2-D hidden matrices, AdamW for the rest (modded-nanogpt's split)."""

    name: Literal["muon"] = "muon"
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, description="Newton-Schulz iterations of torch's Muon")
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = Field(
        "match_rms_adamw",
        description="match_rms_adamw (Moonlight): updates scaled to AdamW's RMS, so train.lr tuned for AdamW carries over; "
        "original (Keller Jordan): sqrt(max(1, rows/cols)), with a Muon LR ~10-50x AdamW's (set muon_lr_scale)",
    )
    muon_lr_scale: float = Field(1.0, gt=0, description="the Muon groups' LR as a multiple of train.lr")


def muon_eligible(model: nn.Module) -> set[int]:
    """ids of the hidden matrices Muon orthogonalizes: 2-D weights of every module except embeddings and output
    heads (a module whose name ends in 'head': lm_head, classification_head, ...), which stay on AdamW with the
    norms and biases, as in modded-nanogpt. A tied lm_head is the embedding matrix, so it is excluded too."""
    excluded: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1].endswith("head"):
            excluded.update(id(p) for p in module.parameters())
    return {id(p) for p in model.parameters() if p.dim() == 2 and id(p) not in excluded}


class OptimizerChain:
    """Several optimizers stepped as one (torchtitan's OptimizersContainer), with one state dict.

    `param_groups` is read from the members each time: their load_state_dict replaces the group dicts, and a
    list copied once would then point at dicts no optimizer reads."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure: None = None) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    @property
    def state(self) -> dict:
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"chain": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state.get("chain", ())) != len(self.optimizers):
            raise ValueError(f"optimizer state holds {len(state.get('chain', ()))} optimizer(s), this optimizer has {len(self.optimizers)}")
        for o, s in zip(self.optimizers, state["chain"]):
            o.load_state_dict(s)


@OPTIMIZERS.register("muon", config=MuonConfig)
def muon(cfg: MuonConfig, model: nn.Module, train_cfg: Any, runtime: Runtime) -> OptimizerChain:
    if not hasattr(torch.optim, "Muon"):
        raise ValueError(f"train.optimizer.name 'muon' needs torch.optim.Muon (torch >= 2.9); this torch is {torch.__version__}")
    params, hidden = list(model.parameters()), muon_eligible(model)
    matrices = [p for p in params if id(p) in hidden]
    rest = [p for p in params if id(p) not in hidden]
    optimizers: list[torch.optim.Optimizer] = []
    if matrices:
        groups = _finish([{"params": matrices, "weight_decay": train_cfg.weight_decay, "decay": True}], lr_scale=cfg.muon_lr_scale)
        optimizers.append(torch.optim.Muon(
            groups, lr=train_cfg.lr * cfg.muon_lr_scale, momentum=cfg.momentum, nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps, adjust_lr_fn=cfg.adjust_lr_fn, weight_decay=train_cfg.weight_decay,
        ))
    if rest:
        optimizers.append(_adamw(AdamWConfig(), rest, train_cfg, runtime))
    return OptimizerChain(optimizers)


def set_hyperparameters(optimizer: Optimizer, lr: float, weight_decay_multiplier: float) -> None:
    """This step's LR (times each group's lr_scale) and weight decay (each group's base times the schedule's multiplier)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = group["base_weight_decay"] * weight_decay_multiplier


def build_optimizer(model: nn.Module, train_cfg: Any, runtime: Runtime):
    """The optimizer `train.optimizer` names, over every parameter of `model` (frozen ones are skipped per step)."""
    cfg = train_cfg.optimizer
    try:
        return OPTIMIZERS.get(cfg.name)(cfg, model, train_cfg, runtime)
    except ValueError as err:
        raise PresetError(str(err)) from None
