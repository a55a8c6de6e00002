"""Stage plans: a run as ordered stages, each with its own end, training data and model settings.

The preset's `stages` list (schema in lmforge/config.py) drives it: a curriculum (AGIFORMER's dictionary ->
stories -> encyclopedia with plasticity 0.1 -> 0.5 -> 0.99), a data schedule for any model, ... The trainer asks
the plan which stage a step belongs to, rebuilds its train DataPipeline on the stage's data at a boundary and
lets the plan apply the stage's model settings through the model's own `set_<name>(value)` methods, so it
never names a recipe. A preset without `stages` is a plan of one implicit stage: the data section, no settings.

What is shared by all stages:
- the tokenizer, built once from the union of every stage's sources (char/bpe learn from all of them);
- the validation set, fixed for the whole run so val metrics compare across boundaries: `data.val_sources`
  when set, else the held-out split (data.validation) of each distinct stage data, `eval_batches` batches
  each. `val_loss`/`val_bpb`/`val_bpc` pool them (token-weighted); `val_loss/<stage>`, `val_bpb/<stage>`,
  `val_bpc/<stage>` report each (named after the first stage that trains on that data).
A stage's model settings hold until a later stage changes them; they are applied on entering a stage
(and on resuming into one), and tried on a copy of the model at setup so a bad value fails at once.

StackWise's plans (lmforge/stackwise.py writes them) add what a stage does once, when a live run crosses into it
(`enter_live`: grow the model, a fresh head, back up the stage that ended; never on a resume, whose checkpoint
holds the result) and a cache of the frozen lower layers' outputs for stages that ask for one.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from pydantic import BaseModel

from lmforge.config import GrowthConfig, Preset, resolve_stage_ends
from lmforge.data.config import DataConfig
from lmforge.errors import PresetError
from lmforge.models.activation_cache import ActivationCache
from lmforge.protocols import LayerwiseModel, Optimizer
from lmforge.training.growth import fresh_head, grow, midas_moves, write_backup
from lmforge.training.run_dir import run_id
from lmforge.training.schedules import Schedule, build_schedule

Batches = list[dict[str, torch.Tensor]]
# param-group hyper-parameters a stage may set (where the optimizer has them); kernel switches (fused, foreach,
# capturable, decoupled_weight_decay) are not among them: changing those mid-run breaks or silently changes the method
STAGE_OPTIMIZER_OPTIONS = {"weight_decay", "betas", "eps", "momentum", "nesterov", "dampening", "ns_steps"}


@dataclass(frozen=True)
class Stage:
    """One resolved stage: it trains the steps `start_step` < step <= `end_step` (1-based)."""

    index: int
    name: str | None  # None: the implicit single stage of a preset without `stages`
    start_step: int
    end_step: int
    data: DataConfig
    settings: dict[str, Any] = field(default_factory=dict)
    objective: BaseModel | None = None  # None: the run's objective
    trainable: list[str] | None = None  # None: every parameter
    lr: float = 1.0
    schedule: Schedule | None = None  # None: the run's schedule at the run's step
    optimizer: dict[str, Any] = field(default_factory=dict)
    growth: GrowthConfig | None = None  # entry actions of a live boundary (lmforge/training/growth.py)
    reset_head: bool = False
    activation_cache: str = "off"
    activation_cache_gb: float = 4.0
    backup: bool = False

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


def carried(per_stage: list[dict[str, Any]], index: int) -> dict[str, Any]:
    """What is in force in stage `index`: its own entries over those of the stages before it (an entry a stage
    leaves out keeps its earlier value, as in an uninterrupted run, also after a resume)."""
    merged: dict[str, Any] = {}
    for entries in per_stage[: index + 1]:
        merged.update(entries)
    return merged


def apply_model_settings(model: torch.nn.Module, index: int, settings: dict[str, Any]) -> None:
    """`set_<name>(value)` for each of stage `index`'s model settings (`causal`, `depth`, ...)."""
    for key, value in settings.items():
        setter = getattr(model, f"set_{key}", None)
        if setter is None:
            raise PresetError(f"stages.{index}.model_settings.{key}: the model ({type(model).__name__}) has no set_{key}")
        try:
            setter(value)
        except (TypeError, ValueError) as err:
            raise PresetError(f"stages.{index}.model_settings.{key}: {err}") from None


def settings_of_stage(preset: Preset, index: int) -> dict[str, Any]:
    """The model settings of a preset's stage `index`, for a model loaded from a checkpoint of that stage."""
    return carried([dict(stage.model_settings) for stage in preset.stages or []], index)


class StagePlan:
    """The stages of one run, resolved against its step count, with the run's LR schedule."""

    def __init__(self, preset: Preset, total_steps: int, run_dir: Path | None = None):
        self.run_dir = run_dir  # where disk activation caches and stage backups go
        self.cache: ActivationCache | None = None
        self._crossing = False  # between enter_live and apply of a live boundary
        self.explicit = preset.stages is not None
        self.base = preset.data
        self._built_trainable: dict[int, bool] | None = None  # requires_grad as the model was built (see apply)
        self.run_schedule = build_schedule(preset.train.lr_schedule, total_steps)
        if not self.explicit:
            self.stages = [Stage(0, None, 0, total_steps, preset.data)]
            return
        try:
            ends = resolve_stage_ends(preset.stages, total_steps)
        except ValueError as err:
            raise PresetError(str(err)) from None
        self.stages = [
            Stage(
                i, s.name, start, end, s.data.apply_to(preset.data) if s.data is not None else preset.data, dict(s.model_settings),
                s.objective, s.trainable, s.lr, build_schedule(s.lr_schedule, end - start) if s.lr_schedule is not None else None,
                dict(s.optimizer), s.growth, s.reset_head, s.activation_cache, s.activation_cache_gb, s.backup,
            )
            for i, (s, start, end) in enumerate(zip(preset.stages, [0, *ends[:-1]], ends))
        ]

    def __len__(self) -> int:
        return len(self.stages)

    def index_at(self, step: int) -> int:
        """The stage that trains optimizer step `step` (0-based: the number of steps taken before it)."""
        for stage in self.stages:
            if step < stage.end_step:
                return stage.index
        return self.stages[-1].index

    def data(self, index: int) -> DataConfig:
        return self.stages[index].data

    def union_data(self) -> DataConfig:
        """The data section over every stage's sources (each once, in stage order): what the tokenizer learns from."""
        return union_stage_data(self.base, [stage.data for stage in self.stages]) if self.explicit else self.base

    def val_parts(self) -> list[tuple[str | None, DataConfig]]:
        """(label, data) per val set: one unlabelled part when data.val_sources is set or every stage trains on the same
        data, else one per distinct stage data, labelled with the first stage that uses it."""
        if self.base.val_sources is not None:
            return [(None, self.base)]
        parts: list[tuple[str | None, DataConfig]] = []
        seen: list[list[dict]] = []
        for stage in self.stages:
            key = [s.model_dump() for s in stage.data.sources]
            if key not in seen:
                seen.append(key)
                parts.append((stage.name, stage.data))
        return parts if len(parts) > 1 else [(None, parts[0][1])]

    def settings(self, index: int) -> dict[str, Any]:
        """The model settings in force in stage `index`: its own over those of the stages before it (a setting a stage
        leaves out keeps its earlier value, as in an uninterrupted run, also after a resume)."""
        return self._carried(index, "settings")

    def optimizer_options(self, index: int) -> dict[str, Any]:
        """The optimizer options in force in stage `index` (carried over like model settings)."""
        return self._carried(index, "optimizer")

    def _carried(self, index: int, attribute: str) -> dict[str, Any]:
        return carried([getattr(stage, attribute) for stage in self.stages], index)

    def schedule_at(self, step: int) -> tuple[Schedule, int, float]:
        """(schedule, the step to ask it for, the stage's LR multiplier) for optimizer step `step` (0-based)."""
        stage = self.stages[self.index_at(step)]
        if stage.schedule is not None:
            return stage.schedule, step - stage.start_step, stage.lr
        return self.run_schedule, step, stage.lr

    def check_settings(self, model: torch.nn.Module) -> None:
        """Try every stage's model settings on a copy of the model (before FSDP shards it: a sharded module cannot be
        copied), so a bad value fails at setup, not at a boundary hours in."""
        if any(stage.settings for stage in self.stages):
            trial = copy.deepcopy(model)
            for stage in self.stages:
                self._set(trial, stage.index, stage.settings)

    def check(self, model: torch.nn.Module, optimizer: Optimizer, sharded: bool = False) -> None:
        """Check every stage's `trainable` globs, optimizer options and entry actions against the model at setup."""
        names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        for stage in self.stages:
            self._check_layerwise(model, stage, sharded)
            for i, pattern in enumerate(stage.trainable or ()):
                if not fnmatch.filter(names, pattern):
                    raise PresetError(f"stages.{stage.index}.trainable.{i}: {pattern!r} matches no parameter; "
                                      f"names look like {', '.join(names[:4])}, ... ({len(names)} in all)")
            allowed = sorted({k for g in optimizer.param_groups for k in g} & STAGE_OPTIMIZER_OPTIONS)
            for key in stage.optimizer:
                if key not in allowed:
                    raise PresetError(f"stages.{stage.index}.optimizer.{key}: not an option of this optimizer; allowed: {', '.join(allowed)}")

    def _check_layerwise(self, model: torch.nn.Module, stage: Stage, sharded: bool) -> None:
        where = f"stages.{stage.index}"
        wanted = [f for f, on in (("growth", stage.growth is not None), ("reset_head", stage.reset_head),
                                  ("activation_cache", stage.activation_cache != "off")) if on]
        if wanted and not isinstance(model, LayerwiseModel):
            raise PresetError(f"{where}.{wanted[0]}: the model ({type(model).__name__}) cannot run a prefix of its blocks (arch gpt can)")
        if wanted and sharded and (stage.growth is not None or stage.activation_cache != "off"):
            raise PresetError(f"{where}: growth and activation caches are not available under train.parallel 'fsdp' (use ddp)")
        if stage.reset_head and model.config.tie_embeddings:
            raise PresetError(f"{where}.reset_head: a fresh head per stage needs model.tie_embeddings false")
        if stage.growth is not None:
            old, new = self.settings(stage.index - 1).get("depth") if stage.index else None, self.settings(stage.index).get("depth")
            if old is None or new is None or new <= old:
                raise PresetError(f"{where}.growth: a growing stage sets a larger model_settings.depth than the stage before it "
                                  f"(depth {old} -> {new})")
            if stage.growth.method == "midas":
                try:
                    midas_moves(old, new, stage.growth.block_size)
                except ValueError as err:
                    raise PresetError(f"{where}.growth: {err}") from None
            elif stage.growth.method == "copy" and old == 0:
                raise PresetError(f"{where}.growth: 'copy' needs a trained block to copy; a zero-layer model grows with 'random' or 'zero'")
        if stage.backup and self.run_dir is None:
            raise PresetError(f"{where}.backup: stage backups need a run dir")

    def describe_cache(self) -> dict[str, Any]:
        """Activation cache facts for a metrics row (nothing when no cache is active)."""
        if self.cache is None:
            return {}
        return {"act_cache_rows": self.cache.rows, "act_cache_hit_rate": round(self.cache.hit_rate, 4)}

    @property
    def has_own_objectives(self) -> bool:
        """Whether some stage trains with an objective of its own (its head is then unused in the other stages)."""
        return any(stage.objective is not None for stage in self.stages)

    def check_resumed_stage(self, stage: int, step: int, slot: str) -> None:
        """A checkpoint of `stage` at `step` must fall in that stage under this plan (or end it exactly); a new
        max_steps or token budget moves `until_fraction` ends and would replay or skip a stage's data."""
        if stage >= len(self.stages):
            raise PresetError(f"checkpoint {slot} is in stage {stage}, but the preset has {len(self.stages)} stage(s)")
        s = self.stages[stage]
        if not s.start_step <= step <= s.end_step:
            raise PresetError(f"checkpoint {slot} (step {step}) is in stage {stage} ({s.name}), which now spans steps "
                              f"{s.start_step + 1}-{s.end_step}: the stage ends moved (max_steps or train_tokens changed with "
                              "until_fraction ends); keep the run's length or give the stages until_step ends")

    def apply(self, model: torch.nn.Module, index: int) -> None:
        """Put the model in stage `index`'s settings (`set_<name>(value)`) and freeze what the stage does not train.

        A stage without `trainable` trains what the model trains as built (all of it, or only the adapters after
        an nf4_lora swap): those flags are read on the first call, before any stage changed them."""
        self._set(model, index, self.settings(index))
        globs = self.stages[index].trainable
        if self._built_trainable is None:
            self._built_trainable = {id(p): p.requires_grad for _, p in _parameters_by_tensor(model)}
        for names, p in _parameters_by_tensor(model):
            if globs is None:
                p.requires_grad_(self._built_trainable.get(id(p), True))
            else:
                p.requires_grad_(any(fnmatch.fnmatchcase(n, g) for n in names for g in globs))
        self._install_cache(model, index, deepen=self._crossing)
        self._crossing = False

    def _install_cache(self, model: torch.nn.Module, index: int, deepen: bool = False) -> None:
        """An activation cache over the frozen prefix for a stage that asks for one (none otherwise). Crossing live
        from a cached stage into one that freezes at least as much (`deepen`), the cache is kept and deepened."""
        stage = self.stages[index]
        depth = model.frozen_prefix_depth() if isinstance(model, LayerwiseModel) and stage.activation_cache != "off" else 0
        if deepen and self.cache is not None and depth >= self.cache.depth:
            self.cache.deepen(depth)
        else:
            if self.cache is not None:
                self.cache.close()
                self.cache = None
            if depth:
                disk = stage.activation_cache == "disk" and self.run_dir is not None
                path = self.run_dir / "activation_cache" / f"stage{index}.bin" if disk else None
                self.cache = ActivationCache(depth, int(stage.activation_cache_gb * 2**30), path)
        if isinstance(model, LayerwiseModel):
            model.use_activation_cache(self.cache)

    def enter_live(self, model: torch.nn.Module, optimizer: Optimizer, index: int, is_main: bool = True) -> None:
        """What a stage does once, when a live run crosses into it (never on a resume into it): back up the stage
        that ended, grow the model to this stage's depth, give it a fresh head; the next `apply` may keep the
        activation cache (the stage before was cached: its entries advance through the newly frozen block)."""
        self._crossing = True
        if index > 0 and self.stages[index - 1].backup:
            self.write_backup(model, index - 1, is_main)
        stage = self.stages[index]
        if stage.growth is not None:
            old, new = self.settings(index - 1).get("depth"), self.settings(index).get("depth")
            grow(model, optimizer, stage.growth.method, old, new, stage.growth.block_size)
        if stage.reset_head:
            fresh_head(model, optimizer)

    def finish(self, model: torch.nn.Module, completed: bool, is_main: bool = True) -> None:
        """At the end of training: the last stage's backup (when it ran to its end); the activation cache freed."""
        if completed and self.stages[-1].backup:
            self.write_backup(model, len(self.stages) - 1, is_main)
        if self.cache is not None:
            self.cache.close()
            self.cache = None
            if isinstance(model, LayerwiseModel):
                model.use_activation_cache(None)

    def write_backup(self, model: torch.nn.Module, index: int, is_main: bool = True) -> None:
        """Stage `index`'s trained parameters (fp32) as backups/<run id>/stage<index>-<name>.safetensors (every process
        calls it: an FSDP parameter is gathered; the main process writes)."""
        stage = self.stages[index]
        globs = stage.trainable
        names = [n for n, p in model.named_parameters()
                 if (globs is None and self._built_trainable.get(id(p), True)) or any(fnmatch.fnmatchcase(n, g) for g in globs or ())]
        path = self.run_dir / "backups" / run_id(self.run_dir) / f"stage{index}-{stage.name}.safetensors" if is_main else None
        write_backup(model, names, path)

    def apply_optimizer_options(self, optimizer: Optimizer, index: int) -> None:
        """Set the stage's optimizer options on every param group; weight_decay only on the groups that decay."""
        for key, value in self.optimizer_options(index).items():
            for group in optimizer.param_groups:
                if key == "weight_decay":
                    if group.get("decay", True):
                        group["base_weight_decay"] = group["weight_decay"] = value
                elif key in group:
                    group[key] = tuple(value) if isinstance(group[key], tuple) else value

    @staticmethod
    def _set(model: torch.nn.Module, index: int, settings: dict[str, Any]) -> None:
        apply_model_settings(model, index, settings)

    def describe(self, index: int) -> dict[str, Any]:
        """Fields for a metrics row: the stage index and name (nothing for a preset without stages)."""
        if not self.explicit:
            return {}
        return {"stage": index, "stage_name": self.stages[index].name, **self.describe_cache()}


def union_stage_data(base: DataConfig, stage_data: list[DataConfig]) -> DataConfig:
    """`base` with the sources of every stage's data, each once, in stage order."""
    sources: list[Any] = []
    for data in stage_data:
        for source in data.sources:
            if all(source.model_dump() != s.model_dump() for s in sources):
                sources.append(source)
    return base.model_copy(update={"sources": sources, "mix": "round_robin", "source_weights": None, "adaptive": None})


def preset_union_data(preset: Preset) -> DataConfig:
    """The union data of a preset's stage plan, before the run's length is known (the tokenizer needs it first)."""
    if preset.stages is None:
        return preset.data
    return union_stage_data(preset.data, [s.data.apply_to(preset.data) if s.data is not None else preset.data for s in preset.stages])


def _parameters_by_tensor(model: torch.nn.Module) -> Iterator[tuple[list[str], torch.nn.Parameter]]:
    """Each parameter once, with every name it has (a tied lm_head.weight is also wte.weight)."""
    names: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    for key, p in params.items():
        yield names[key], p


def evaluate_parts(evaluate: Callable[[Batches], dict[str, float]], parts: list[tuple[str | None, Batches]]) -> dict[str, float]:
    """Evaluate each val part; pool them token-weighted into the usual keys and add `<key>/<label>` per labelled part.

    `evaluate` returns evaluate_lm's keys (val_loss, val_tokens, val_accuracy, optionally val_bpb / val_bpc); pooling
    sums the NLL, tokens, correct predictions, bytes and characters the parts' numbers stand for.
    """
    results = [(label, evaluate(batches)) for label, batches in parts]
    if len(results) == 1:
        return results[0][1]
    nll = sum(r["val_loss"] * r["val_tokens"] for _, r in results)
    tokens = sum(r["val_tokens"] for _, r in results)
    out: dict[str, float] = {
        "val_loss": nll / tokens, "val_ppl": math.exp(min(nll / tokens, 700.0)),
        "val_accuracy": sum(r["val_accuracy"] * r["val_tokens"] for _, r in results) / tokens, "val_tokens": tokens,
    }
    for key in ("val_bpb", "val_bpc"):
        if all(key in r for _, r in results):  # units (bytes / chars) = nll / (ln 2 * bits per unit)
            units = sum(r["val_loss"] * r["val_tokens"] / (math.log(2) * r[key]) for _, r in results)
            out[key] = nll / (math.log(2) * units)
    for label, r in results:
        for key in ("val_loss", "val_bpb", "val_bpc"):
            if key in r:
                out[f"{key}/{label}"] = r[key]
    return out
