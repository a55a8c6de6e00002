"""The preset section `stackwise` (seed 004): StackWise's training modes written out as a stage plan.

Every mode trains on the run's real objective through the model's head, and ends (except `progressive`/`midas`,
whose last stage already trains everything) with a joint stage over the whole model:
- `layerwise` / `blockwise`: stage i trains blocks [i*k, (i+1)*k) (k = block_size; 1 for layerwise) and the head,
  on a model `depth` (i+1)*k deep; the embeddings train in stage 0 only, the blocks below are frozen and their
  outputs come from the activation cache;
- `fusion`: the same groups, with `backbone` frozen (seed 004's train_with_frozen_backbone, = blockwise) or
  trainable (every active layer trains: stacking random new groups on a trained backbone);
- `progressive`: zero/one-layer progressive training (arXiv 2511.04981): a `start_depth` (0 or 1) model trains
  until `grow_at` of the steps, then grows once to full depth (`grow_init`); use a WSD schedule, as the paper;
- `midas`: MIDAS gradual middle stacking (arXiv 2409.19044): depth block_size, 2*block_size, ... n_layer, each
  stage duplicating the middle group; stage lengths proportional to the stage index (the paper's PROP-1) or equal.
`mask_schedule` [lo, hi] is seed 004's time-step masking for `mask_diffusion`: the masking range rises across the
stages (stage i of n masks with t in the i-th of n equal slices of [lo, hi]; a joint stage uses all of it).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config_base import Section

MODES = ("layerwise", "blockwise", "fusion", "progressive", "midas")


class StackwiseConfig(Section):
    """`stackwise`: a StackWise training mode, expanded into `stages` when the preset is loaded."""

    mode: Literal["layerwise", "blockwise", "fusion", "progressive", "midas"]
    block_size: int = Field(1, ge=1, description="layers per stage (blockwise, fusion) or per MIDAS group; layerwise uses 1")
    backbone: Literal["frozen", "trainable"] = Field("frozen", description="fusion: whether the blocks below the new group train too")
    head: Literal["shared", "per_stage"] = Field("shared", description="one head trained in every stage, or a fresh head "
                                                                        "each stage (needs model.tie_embeddings false)")
    joint_fraction: float = Field(0.2, ge=0, lt=1, description="share of the steps for the final joint stage (0 = none); "
                                                                "layerwise, blockwise and fusion")
    activation_cache: Literal["off", "memory", "disk"] = Field("memory", description="serve the frozen layers' outputs from "
                                                                                     "memory, a memory-mapped file under the run dir, or not at all")
    activation_cache_gb: float = Field(4.0, gt=0, description="most bytes the cache stores (GiB)")
    start_depth: Literal[0, 1] = Field(1, description="progressive: layers of the model trained before growth")
    grow_at: float = Field(0.8, gt=0, lt=1, description="progressive: the fraction of the steps at which the model grows")
    grow_init: Literal["auto", "random", "copy", "zero"] = Field(
        "auto", description="progressive: new layers' init (auto: random from 0 layers, copy of the one layer from 1)")
    stage_lengths: Literal["proportional", "equal"] = Field("proportional", description="midas: stage i runs in proportion "
                                                                                        "to i (PROP-1) or all alike")
    mask_schedule: tuple[float, float] | None = Field(None, description="mask_diffusion: masking range rising across the stages")
    stage_lr_schedule: dict[str, Any] | None = Field(None, description="an LR schedule spec each stage runs over its own "
                                                                       "steps (a fresh warm-up per stage); None = the run's schedule")
    backups: bool = Field(True, description="write each stage's trained blocks (fp32) under the run dir (seed 004's backups)")

    @model_validator(mode="after")
    def _check(self) -> "StackwiseConfig":
        if self.mode == "layerwise" and self.block_size != 1:
            raise ValueError("layerwise trains one layer per stage: block_size must be 1 (use blockwise for more)")
        if self.mask_schedule is not None and not 0 < self.mask_schedule[0] < self.mask_schedule[1] <= 1:
            raise ValueError(f"mask_schedule must be 0 < lo < hi <= 1, got {list(self.mask_schedule)}")
        return self


def _fractions(weights: list[float], total: float, start: float = 0.0) -> list[float]:
    ends, acc = [], start
    for w in weights:
        acc += total * w / sum(weights)
        ends.append(round(acc, 6))
    return ends


def _cache(cfg: StackwiseConfig) -> dict[str, Any]:
    return {"activation_cache": cfg.activation_cache, "activation_cache_gb": cfg.activation_cache_gb}


def expand(cfg: StackwiseConfig, n_layer: int, learned_positions: bool, objective: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The stage dicts of `cfg` for a model of `n_layer` blocks (raises ValueError naming the field that does not fit)."""
    k = cfg.block_size
    head = ["ln_f.*", "lm_head.*"]
    embeddings = ["wte.*", "wpe.*"] if learned_positions else ["wte.*"]
    if cfg.mode == "progressive":
        if cfg.start_depth >= n_layer:
            raise ValueError(f"stackwise.start_depth: {cfg.start_depth} is not shallower than model.n_layer ({n_layer})")
        init = cfg.grow_init if cfg.grow_init != "auto" else ("random" if cfg.start_depth == 0 else "copy")
        stages = [
            {"name": f"depth{cfg.start_depth}", "until_fraction": cfg.grow_at, "model_settings": {"depth": cfg.start_depth},
             "trainable": embeddings + [f"blocks.{j}.*" for j in range(cfg.start_depth)] + head},
            {"name": f"depth{n_layer}", "model_settings": {"depth": n_layer}, "growth": {"method": init}},
        ]
    elif cfg.mode == "midas":
        if n_layer % k or n_layer == k:
            raise ValueError(f"stackwise.block_size: midas grows by groups of {k} layers to model.n_layer ({n_layer}); "
                             "n_layer must be a multiple of at least two groups")
        depths = list(range(k, n_layer + 1, k))
        weights = [float(i + 1) if cfg.stage_lengths == "proportional" else 1.0 for i in range(len(depths))]
        ends = _fractions(weights, 1.0)
        stages = [{"name": f"depth{d}", "until_fraction": end, "model_settings": {"depth": d},
                   "trainable": embeddings + [f"blocks.{j}.*" for j in range(d)] + head} for d, end in zip(depths, ends)]
        for stage in stages[1:]:
            stage["growth"] = {"method": "midas", "block_size": k}
        del stages[-1]["trainable"], stages[-1]["until_fraction"]  # the full model: every parameter, to the end
    else:
        if n_layer % k:
            raise ValueError(f"stackwise.block_size: {k} does not divide model.n_layer ({n_layer})")
        groups = n_layer // k
        ends = _fractions([1.0] * groups, 1.0 - cfg.joint_fraction)
        stages = []
        for i in range(groups):
            frozen_below = not (cfg.mode == "fusion" and cfg.backbone == "trainable")
            blocks = [f"blocks.{j}.*" for j in range(i * k, (i + 1) * k)] if frozen_below else [f"blocks.{j}.*" for j in range((i + 1) * k)]
            trainable = (embeddings if i == 0 or not frozen_below else []) + blocks + head
            stage = {"name": f"blocks{i * k}-{(i + 1) * k - 1}" if k > 1 else f"layer{i}", "until_fraction": ends[i],
                     "model_settings": {"depth": (i + 1) * k}, "trainable": trainable, **(_cache(cfg) if i and frozen_below else {})}
            if cfg.head == "per_stage" and i:
                stage["reset_head"] = True
            stages.append(stage)
        if cfg.joint_fraction > 0:
            stages.append({"name": "joint", "model_settings": {"depth": n_layer}})
        else:
            stages[-1]["until_fraction"] = None
    for stage in stages:
        stage["backup"] = cfg.backups
        if cfg.stage_lr_schedule is not None:
            stage["lr_schedule"] = dict(cfg.stage_lr_schedule)
    if cfg.mask_schedule is not None:
        if not objective or objective.get("name") != "mask_diffusion":
            raise ValueError("stackwise.mask_schedule: time-step masking is for objective mask_diffusion "
                             f"(the preset's is {(objective or {}).get('name', 'clm')!r})")
        lo, hi = cfg.mask_schedule
        ramp = [s for s in stages if s["name"] != "joint"]
        for i, stage in enumerate(ramp):
            stage["objective"] = {**objective, "mask_range": [lo + (hi - lo) * i / len(ramp), lo + (hi - lo) * (i + 1) / len(ramp)]}
        for stage in stages[len(ramp):]:
            stage["objective"] = {**objective, "mask_range": [lo, hi]}
    return stages
