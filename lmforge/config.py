"""Presets: the schema of a run, loading from JSON/YAML, dotted overrides, readable errors.

A preset has sections `model`, `data`, `train`, `objective`, `samples`, and lists
`grad_filters`, `layer_swaps` and `stages` (a stage plan: lmforge/training/stages.py).
Sections whose schema depends on a registered component (`model` by `arch`,
`objective` by `name`, each grad filter / layer swap by `name`) are validated with
that component's own config class, so a recipe brings its own fields and the core
does not list them.
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

import lmforge.components  # noqa: F401  (fills the registries the preset is validated against)
from lmforge.code_policy import code_policy
from lmforge.config_base import Section
from lmforge.data.config import DataConfig
from lmforge.errors import PresetError  # noqa: F401  (re-exported: lmforge.config.PresetError)
from lmforge.objectives.auxiliary import AuxiliaryConfig
from lmforge.preset_compat import translate_seed002
from lmforge.registry import GRAD_FILTERS, LAYER_SWAPS, MODELS, OBJECTIVES, OPTIMIZERS, SCHEDULES, Registry
from lmforge.run_point import at_step
from lmforge.stackwise import StackwiseConfig, expand as expand_stackwise

CONFIG_DIR_NAME = "configs"
DEFAULT_PRESET = "quickstart_cpu"  # what `python main.py` trains when Enter is pressed or there is no terminal


class SkipSpikesConfig(Section):
    """OLMo-core-style spike skipping: a step whose loss or grad norm is `sigma` std above the last `window` steps."""

    window: int = Field(128, ge=2, description="recent steps whose finite loss and grad norm give the mean and std")
    sigma: float = Field(6.0, gt=0, description="a value this many std above the window's mean is a spike")
    min_history: int = Field(64, ge=2, description="steps in the window before any step counts as a spike (OLMo-core: max(20, window / 2))")

    @model_validator(mode="after")
    def _history_fits(self) -> "SkipSpikesConfig":
        if self.min_history > self.window:
            raise ValueError(f"min_history ({self.min_history}) must be at most window ({self.window})")
        return self


class WandbConfig(Section):
    """Weights & Biases as a metrics sink beside metrics.jsonl; `mode: offline` writes under the run dir, no network."""

    project: str = Field("lmforge", min_length=1)
    entity: str | None = None
    name: str | None = Field(None, description="the W&B run name; None = the preset's name")
    mode: Literal["online", "offline", "disabled"] = "online"
    tags: list[str] = Field(default_factory=list)


class TrainConfig(Section):
    """The optimisation loop: budget, optimiser, precision, logging and checkpoint cadence."""

    batch_size: int = Field(12, ge=1, le=1_048_576, description="micro-batch size per process, in sequences")
    grad_accum_steps: int = Field(1, ge=1, le=65_536, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None = derive from train_tokens or train_flops")
    train_tokens: int | None = Field(None, ge=1, description="token budget (all processes); used when max_steps is None")
    train_flops: float | None = Field(
        None, gt=0, description="training FLOP budget (all processes), counted by the model's own flops_per_token; used when "
        "max_steps and train_tokens are None"
    )
    max_seconds: float | None = Field(
        None, gt=0, description="wall-clock budget: stop (with a final eval and save) once the run has trained this long, "
        "across resumes; the LR schedule still spans the step budget"
    )
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    lr_schedule: Any = Field(
        default_factory=lambda: {"name": "warmup_cosine"},
        description="LR multiplier schedule by registered name, with its own options",
    )
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    optimizer: Any = Field(
        default_factory=lambda: {"name": "adamw"},
        description="optimizer by registered name (adamw, adam, sgd, muon), with its own options; weight_decay, beta1, beta2, eps above are shared",
    )
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")
    skip_nonfinite: bool = Field(True, description="skip (count, log, never apply) a step whose loss or grad norm is inf/NaN on any rank")
    skip_spikes: SkipSpikesConfig | None = Field(None, description="also skip loss / grad-norm spikes (z-score over a rolling window); None = off")
    rollback_after: int = Field(
        5, ge=0, description="consecutive skipped steps after which the run reloads its newest checkpoint and skips past those batches; 0 = never"
    )
    max_rollbacks: int = Field(3, ge=1, description="rollbacks in a row (no good step between them) before the run stops as stuck")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    compile: bool = Field(False, description="torch.compile the model (pays off on long runs)")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (replicated weights) or fsdp (FSDP2 fully_shard per block and on the root; "
        "sharded torch.distributed.checkpoint slots that resume on any number of processes)"
    )
    fsdp_cpu_offload: bool = Field(False, description="fsdp: keep the sharded parameters, gradients and optimizer state in host memory")
    activation_checkpointing: Literal["none", "blocks", "selective"] = Field(
        "none", description="recompute activations in backward: none, blocks (each block's whole forward) or selective "
        "(keep matmul and attention outputs, recompute the rest, as torchtitan's op-level SAC)"
    )
    seed: int = 1337
    deterministic: bool = Field(False, description="torch deterministic algorithms (bitwise-reproducible resume on GPU)")
    log_interval: int = Field(10, ge=1, description="steps between metrics rows")
    eval_interval: int = Field(250, ge=1, description="steps between validations")
    eval_batches: int = Field(20, ge=1, le=1_000_000, description="validation batches per evaluation")
    save_interval: int = Field(250, ge=1, description="steps between rolling checkpoints")
    early_stopping_patience: int = Field(0, ge=0, description="evaluations without val improvement before stopping; 0 = off")
    early_stopping_min_delta: float = Field(0.0, ge=0)
    early_stopping_metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="what early stopping watches: val_loss (lower is better) or val_accuracy (higher is better)"
    )
    peak_flops: float | None = Field(None, gt=0, description="device peak FLOP/s for MFU; None = data sheet or probe")
    tensorboard: bool = Field(False, description="also write TensorBoard event files to <run_dir>/tensorboard")
    wandb: WandbConfig | None = Field(None, description="also log metrics to Weights & Biases (pip install wandb); None = off")
    milestone_interval: int = Field(0, ge=0, description="steps between milestone snapshots kept beside the rolling slots; 0 = off")
    milestone_prefix: str = Field("step_", min_length=1, description="milestone slot name = prefix + step, e.g. 'vgt_8L_step_' (seed 000)")
    keep_milestones: int = Field(3, ge=1, description="newest milestone snapshots kept")
    progress_bar: bool = True
    async_save: bool = Field(
        False, description="snapshot checkpoints into host memory and write them in a background thread (same files, same crash-safety)"
    )
    legacy_weights_file: str | None = Field(
        "simple_lm_trained.pth", description="also mirror the newest weights to this file in the run dir (seed 002); None = off"
    )
    init_from: str | None = Field(
        None, description='initial weights for a fresh run: "hf:DIR" (transformers Llama/GPT-2), "RUN_DIR", "RUN_DIR:SLOT" or a .safetensors file; None = random init'
    )

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.max_steps is None and self.train_tokens is None and self.train_flops is None:
            raise ValueError("set train.max_steps, train.train_tokens or train.train_flops")
        return self

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _none_is_off(cls, value: Any) -> Any:
        return "none" if value is None else value  # `--train.activation_checkpointing none` parses as null

    @model_validator(mode="after")
    def _fsdp(self) -> "TrainConfig":
        if self.parallel != "fsdp":
            if self.fsdp_cpu_offload:
                raise ValueError("train.fsdp_cpu_offload needs train.parallel 'fsdp'")
            return self
        if self.async_save:
            raise ValueError("train.async_save is not available with train.parallel 'fsdp' (its slots are written by every "
                             "process through torch.distributed.checkpoint); set one of them off")
        if isinstance(self.optimizer, dict) and self.optimizer.get("name") == "muon":
            raise ValueError("train.optimizer 'muon' needs whole weight matrices for its Newton-Schulz step and fsdp shards "
                             "them; use train.parallel 'ddp' or another optimizer")
        return self


class SamplesConfig(Section):
    """Text samples printed and saved to <run_dir>/samples during and after training."""

    prompts: list[str] = Field(default_factory=lambda: ["\n"])
    max_new_tokens: int = Field(200, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(200, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    no_repeat_ngram_size: int = Field(0, ge=0)
    interval: int = Field(0, ge=0, description="steps between samples; 0 = only at the end")


class StageDataConfig(Section):
    """A stage's own training data: replaces data.sources, and data.mix / data.source_weights when given."""

    sources: list[Any] = Field(min_length=1, description="source configs (each with a registered `type`) this stage trains on")
    mix: Literal["round_robin", "sequential", "weighted"] | None = Field(None, description="None = data.mix")
    source_weights: list[float] | None = Field(
        None, description="mix 'weighted': one weight per entry of this stage's sources (data.source_weights is never inherited)"
    )

    @field_validator("sources")
    @classmethod
    def _validate_sources(cls, value: list[Any]) -> list[BaseModel]:
        return DataConfig._validate_sources(value)

    def apply_to(self, base: DataConfig) -> DataConfig:
        """The data section this stage trains with: the base one with sources (and mix, weights) replaced, revalidated."""
        raw = base.model_dump()
        raw.update(sources=[s.model_dump() for s in self.sources], source_weights=self.source_weights)
        if self.mix is not None:
            raw["mix"] = self.mix
        return DataConfig.model_validate(raw)


class GrowthConfig(Section):
    """How a stage initialises the blocks its deeper model adds."""

    method: Literal["random", "copy", "zero", "midas"] = Field(description="random: as built; copy: of the trained blocks, "
                                                                           "cyclically; zero: output projections zeroed "
                                                                           "(function preserving); midas: duplicate the middle group")
    block_size: int = Field(1, ge=1, description="midas: layers per group")


class StageConfig(Section):
    """One stage of a stage plan: where it ends, what it trains on and with what, which settings it sets on entry.

    A stage ends after step round(until_fraction * total_steps) or after step until_step; only the last
    stage may leave both unset (it then runs to the end of the run). `model_settings` and `optimizer` options
    carry over to later stages that do not set them; `objective`, `trainable`, `lr` and `lr_schedule` belong
    to the stage alone (a stage without them trains with the run's).
    """

    name: str = Field(min_length=1, description="shown in metrics rows (stage_name) and per-stage val metrics (val_loss/<name>)")
    until_fraction: float | None = Field(None, gt=0, le=1, description="the stage ends at this fraction of train.max_steps (or the token budget)")
    until_step: int | None = Field(None, ge=1, description="the stage ends after this optimizer step (1-based, like metrics rows)")
    data: StageDataConfig | None = Field(None, description="this stage's training data; None = the data section's sources")
    model_settings: dict[str, Any] = Field(
        default_factory=dict, description="name -> value, applied on entering the stage via the model's set_<name>(value) (agiformer: plasticity)"
    )
    objective: Any = Field(None, description="this stage's objective (a registered objective spec), built for the stage; None = the preset's")
    trainable: list[str] | None = Field(
        None, min_length=1, description='fnmatch globs over parameter names, e.g. ["blocks.3.*", "lm_head.*"]; the rest is frozen; None = all'
    )
    lr: float = Field(1.0, gt=0, description="multiplier on train.lr (times the schedule) in this stage")
    lr_schedule: Any = Field(None, description="this stage's own LR schedule over its steps (a registered schedule spec); None = the run's")
    optimizer: dict[str, Any] = Field(
        default_factory=dict, description="optimizer param-group options set on entering the stage (weight_decay, betas, eps, momentum, ...)"
    )
    growth: GrowthConfig | None = Field(None, description="on entering the stage, initialise the blocks its deeper `depth` "
                                                          "adds (lmforge/training/growth.py)")
    reset_head: bool = Field(False, description="on entering the stage, re-initialise the final norm and LM head (a head per stage)")
    activation_cache: Literal["off", "memory", "disk"] = Field(
        "off", description="serve the frozen embeddings and lower blocks from a per-sequence cache (memory, or a file under the run dir)")
    activation_cache_gb: float = Field(4.0, gt=0, description="most bytes the activation cache stores (GiB)")
    backup: bool = Field(False, description="at the stage's end, write its trained parameters (fp32) under backups/<run id>/")

    @model_validator(mode="after")
    def _one_boundary(self) -> "StageConfig":
        if self.until_fraction is not None and self.until_step is not None:
            raise ValueError("set until_fraction or until_step, not both")
        return self


def resolve_stage_ends(stages: list[StageConfig], total_steps: int) -> list[int]:
    """Each stage's end as a step count (the stage trains steps end[i-1] < step <= end[i], 1-based).

    Raises ValueError naming the field when the ends do not increase or the last stage does not reach the end.
    """
    ends, problems = [], []
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        if stage.until_step is not None:
            end, field = at_step(stage.until_step, total_steps), "until_step"
        elif stage.until_fraction is not None:
            end, field = at_step(float(stage.until_fraction), total_steps), "until_fraction"
        else:
            end, field = total_steps, None
        where = f"stages.{i}.{field}" if field else f"stages.{i}"
        previous = ends[-1] if ends else 0
        if end <= previous:
            problems.append(f"{where}: stage {stage.name!r} ends at step {end}, not after the previous stage's end ({previous}) "
                            f"in a run of {total_steps} steps; stage ends must increase")
        elif not last and end >= total_steps:
            problems.append(f"{where}: stage {stage.name!r} ends at step {end}, so the stages after it never run "
                            f"(the run has {total_steps} steps)")
        elif last and end < total_steps:
            problems.append(f"{where}: the last stage {stage.name!r} ends at step {end}, before the run's end ({total_steps}); "
                            "give it until_fraction 1.0 or no boundary")
        ends.append(max(end, previous + 1) if not last else max(end, total_steps))
    if problems:
        raise ValueError("\n".join(problems))
    ends[-1] = total_steps
    return ends


def model_settings(model_cls: type) -> list[str]:
    """Settings a model exposes to stage plans: its own `set_<name>(value)` methods (torch's set_* excluded)."""
    import torch.nn as nn

    return sorted(n[4:] for n in dir(model_cls) if n.startswith("set_") and not hasattr(nn.Module, n) and callable(getattr(model_cls, n)))


class ComponentSpec(Section):
    """A registered component chosen by name; the rest of the keys are its own config."""

    model_config = Section.model_config | {"extra": "allow"}
    name: str


class Preset(Section):
    """A complete run description."""

    name: str | None = None
    description: str = ""
    # Typed as Any here; validate_preset() replaces each with its component's own config object.
    model: Any = Field(default_factory=lambda: {"arch": "gpt"})
    data: DataConfig
    train: TrainConfig
    objective: Any = Field(default_factory=lambda: {"name": "clm"})
    grad_filters: list[Any] = Field(default_factory=list)
    layer_swaps: list[Any] = Field(default_factory=list)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    auxiliary: AuxiliaryConfig = Field(default_factory=AuxiliaryConfig, description="seed 002's auxiliary heads (all off by default)")
    stages: list[StageConfig] | None = Field(
        None, min_length=1, description="a stage plan (curriculum): ordered stages, each with its own end, data and model settings; None = one stage"
    )
    stackwise: StackwiseConfig | None = Field(None, description="seed 004's training modes (layerwise, blockwise, fusion, progressive, "
                                                                "midas), written out as `stages` when the preset loads")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------- errors


def _allowed_keys(model_cls: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names valid at `loc` (used to say what was meant after an unknown key)."""
    cls = model_cls
    for part in loc[:-1]:
        if cls is None or isinstance(part, int):
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:  # list[Model]
            for c in candidates:
                for inner in getattr(c, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        cls = inner
    return sorted(cls.model_fields) if cls is not None else []


def _format_errors(err: ValidationError, prefix: tuple, model_cls: type[BaseModel] | None) -> list[str]:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(preset)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model_cls, tuple(e["loc"]))
            msg = "unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error") and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{path}: {msg}")
    return lines


def _validate_component(registry: Registry, key: str, spec: Any, path: tuple, problems: list[str]) -> BaseModel | None:
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if not isinstance(spec, dict) or key not in spec:
        problems.append(f"{'.'.join(map(str, path))}: must be an object with a {key!r} key")
        return None
    name = spec[key]
    if not isinstance(name, str) or name not in registry:
        problems.append(f"{'.'.join(map(str, path + (key,)))}: unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}")
        return None
    cls = registry.config_class(name)
    if cls is None:
        extra = sorted(set(spec) - {key})
        if extra:
            problems.append(f"{'.'.join(map(str, path))}: {registry.kind} {name!r} takes no options (got {', '.join(extra)})")
        return ComponentSpec.model_validate({"name": name}) if key == "name" else None
    try:
        return cls.model_validate(spec)
    except ValidationError as err:
        problems.extend(_format_errors(err, path, cls))
        return None


def validate_preset(raw: dict[str, Any]) -> Preset:
    """Validate a preset dict; raise PresetError naming every bad field and what is allowed."""
    if not isinstance(raw, dict):
        raise PresetError("(preset): must be a JSON/YAML object with sections model, data, train")
    problems: list[str] = []
    raw = _expand_stackwise(raw, problems)
    raw, filled = _fill_stage_sources(raw)
    try:
        preset: Preset | None = Preset.model_validate(raw)
    except ValidationError as err:
        problems.extend(_format_errors(err, (), Preset))
        preset = None
    # Component sections are checked from the raw dict too, so every problem is reported at once.
    defaults = Preset.model_fields
    model = _validate_component(MODELS, "arch", raw.get("model", defaults["model"].get_default(call_default_factory=True)), ("model",), problems)
    objective = _validate_component(
        OBJECTIVES, "name", raw.get("objective", defaults["objective"].get_default(call_default_factory=True)), ("objective",), problems
    )
    filters = [_validate_component(GRAD_FILTERS, "name", s, ("grad_filters", i), problems) for i, s in enumerate(_as_list(raw.get("grad_filters")))]
    swaps = [_validate_component(LAYER_SWAPS, "name", s, ("layer_swaps", i), problems) for i, s in enumerate(_as_list(raw.get("layer_swaps")))]
    train_raw = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    schedule = _validate_component(
        SCHEDULES, "name", train_raw.get("lr_schedule", {"name": "warmup_cosine"}), ("train", "lr_schedule"), problems
    )
    optimizer = _validate_component(
        OPTIMIZERS, "name", train_raw.get("optimizer", {"name": "adamw"}), ("train", "optimizer"), problems
    )
    if filled:  # a bad stage source is reported at the stage, not again at the data.sources made from it
        problems = [p for p in problems if not p.startswith("data.sources")]
    elif isinstance(raw.get("stages"), list) and raw["stages"]:
        problems = [p + "; stages without their own data.sources train on it" if p.startswith("data.sources: required") else p for p in problems]
    if preset is not None and preset.stages is not None and model is not None:
        _validate_stages(preset, model, problems)
    if preset is not None and preset.auxiliary.enable_span_contrastive and preset.train.batch_size < 2:
        problems.append("auxiliary.enable_span_contrastive: InfoNCE scores each row's span against the other rows' spans; "
                        f"train.batch_size must be >= 2 (got {preset.train.batch_size})")
    if problems or preset is None:
        raise PresetError("\n".join(problems))
    preset.model, preset.objective, preset.grad_filters, preset.layer_swaps = model, objective, filters, swaps
    preset.train.lr_schedule, preset.train.optimizer = schedule, optimizer
    return preset


def _expand_stackwise(raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A `stackwise` section becomes the preset's `stages` (a resolved preset holds both: its stages must match)."""
    if raw.get("stackwise") is None:
        return raw
    try:
        cfg = StackwiseConfig.model_validate(raw["stackwise"])
    except ValidationError as err:
        problems.extend(_format_errors(err, ("stackwise",), StackwiseConfig))
        return {k: v for k, v in raw.items() if k != "stackwise"}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if model.get("arch", "gpt") != "gpt":
        problems.append(f"stackwise: its modes run a prefix of a GPT's blocks; model.arch is {model.get('arch')!r} (allowed: gpt)")
        return raw
    defaults = MODELS.config_class("gpt").model_fields
    n_layer = model.get("n_layer", defaults["n_layer"].default)
    learned = model.get("pos_embedding", defaults["pos_embedding"].default) == "learned"
    objective = raw.get("objective") if isinstance(raw.get("objective"), dict) else None
    try:
        stages = expand_stackwise(cfg, int(n_layer), learned, objective)
    except (TypeError, ValueError) as err:
        problems.append(str(err))
        return raw
    if raw.get("stages") is not None and _validated_stages(raw["stages"]) != _validated_stages(stages):
        problems.append("stages: this preset has a stackwise section, which writes the stages; remove one of the two")
        return raw
    return {**raw, "stages": stages}


def _validated_stages(stages: Any) -> Any:
    """Stages compared as validated, their objective and LR schedule too (a resolved preset's carry every default)."""
    try:
        dumped = [StageConfig.model_validate(s).model_dump(mode="json") for s in stages]
        for stage in dumped:
            for key, registry in (("objective", OBJECTIVES), ("lr_schedule", SCHEDULES)):
                spec = stage.get(key)
                if isinstance(spec, dict) and spec.get("name") in registry and registry.config_class(spec["name"]):
                    stage[key] = registry.config_class(spec["name"]).model_validate(spec).model_dump(mode="json")
        return dumped
    except (ValidationError, TypeError):
        return stages


def _fill_stage_sources(raw: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """With stages that all bring their own sources, data.sources may be omitted: it becomes their union."""
    stages, data = raw.get("stages"), raw.get("data")
    if not isinstance(stages, list) or not stages or not isinstance(data, dict) or "sources" in data:
        return raw, False
    own = [s["data"].get("sources") if isinstance(s, dict) and isinstance(s.get("data"), dict) else None for s in stages]
    if any(not isinstance(o, list) for o in own):
        return raw, False
    union: list[Any] = []
    for spec in (spec for o in own for spec in o):
        if spec not in union:
            union.append(spec)
    return {**raw, "data": {**data, "sources": union}}, True


def _validate_stages(preset: Preset, model: Any, problems: list[str]) -> None:
    """A stage plan's rules across stages: unique names, increasing ends covering the run, known model settings (and
    the model config valid with them in force), and each stage's data valid once merged into the data section."""
    arch = model.arch
    stages, before = preset.stages or [], len(problems)
    names = [s.name for s in stages]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"stages.{names.index(n, names.index(n) + 1)}.name: {n!r} is used by an earlier stage; names must be unique")
    for i, stage in enumerate(stages[:-1]):
        if stage.until_fraction is None and stage.until_step is None:
            problems.append(f"stages.{i}: stage {stage.name!r} needs until_fraction or until_step (only the last stage may run to the end)")
    last = stages[-1]
    if last.until_fraction is not None and last.until_fraction != 1:
        problems.append(f"stages.{len(stages) - 1}.until_fraction: the last stage must cover the run (1.0 or no boundary), got {last.until_fraction}")
    for i, (a, b) in enumerate(zip(stages, stages[1:])):
        for field in ("until_fraction", "until_step"):
            x, y = getattr(a, field), getattr(b, field)
            if x is not None and y is not None and y <= x:
                problems.append(f"stages.{i + 1}.{field}: {y} must be greater than the previous stage's {x}; stage ends must increase")
    bad_plan = len(problems) > before
    supported = model_settings(MODELS.get(arch))
    for i, stage in enumerate(stages):
        for key in stage.model_settings:
            if key not in supported:
                problems.append(f"stages.{i}.model_settings.{key}: model arch {arch!r} has no setting {key!r}; "
                                f"supported: {', '.join(supported) or '(none: it has no set_<name> methods)'}")
        in_force = {k: v for st in stages[: i + 1] for k, v in st.model_settings.items() if k in type(model).model_fields}
        if in_force and stage.model_settings:  # the model config as this stage leaves it must be valid too
            try:
                type(model).model_validate({**model.model_dump(), **in_force})
            except ValidationError as err:
                problems.extend(f"stages.{i}.model_settings{''.join('.' + str(k) for k in e['loc'])}: "
                                f"{e['msg'].removeprefix('Value error, ')}" + (f", got {e['input']!r}" if e["loc"] else "")
                                for e in err.errors())
        if stage.objective is not None:
            stage.objective = _validate_component(OBJECTIVES, "name", stage.objective, ("stages", i, "objective"), problems)
        if stage.lr_schedule is not None:
            stage.lr_schedule = _validate_component(SCHEDULES, "name", stage.lr_schedule, ("stages", i, "lr_schedule"), problems)
        if stage.data is not None:
            try:
                stage.data.apply_to(preset.data)
            except ValidationError as err:
                problems.extend(_format_errors(err, ("stages", i, "data"), DataConfig))
    if preset.train.max_steps is not None and not bad_plan:  # with a token budget the trainer checks the ends
        try:
            resolve_stage_ends(preset.stages or [], preset.train.max_steps)
        except ValueError as err:
            problems.extend(str(err).splitlines())


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------------------- loading


def parse_override_value(text: str) -> Any:
    """`--train.lr 3e-4` gives a float, `--model.bias true` a bool, `'[1,2]'` a list; otherwise a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`train.lr`, `data.sources.0.path`) in a copy of the raw preset."""
    out = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise PresetError(f"{'.'.join(parts[:i + 1])}: no list item {part!r} to override")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise PresetError(f"{'.'.join(parts[:i + 1])}: is a value, not a section; cannot set {dotted}")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise PresetError(f"{dotted}: no list item {last!r} to override")
            node[int(last)] = value
        else:
            node[last] = value
    return out


def read_preset_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PresetError(f"cannot read preset {path}: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise PresetError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {err}") from None
    if isinstance(raw, dict) and "name" not in raw:
        raw["name"] = path.stem
    return translate_seed002(raw)  # seed 002's key names, each mapping printed once


def config_dir() -> Path:
    """`configs/` in the current directory if it exists, else the one shipped beside the package."""
    local = Path.cwd() / CONFIG_DIR_NAME
    return local if local.is_dir() else Path(__file__).resolve().parent.parent / CONFIG_DIR_NAME


def list_presets(directory: Path | None = None) -> list[Path]:
    directory = directory or config_dir()
    return sorted(p for p in directory.glob("*") if p.suffix in (".json", ".yaml", ".yml"))


def preset_description(path: Path) -> str:
    """The first sentence of a preset file's `description` ("" when it has none or does not parse)."""
    try:
        raw = read_preset_file(path)
    except PresetError:
        return ""
    text = " ".join(str(raw.get("description") or "").split())
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)(?<!\bcf)[.!?](?=\s+[A-Z(`\"]|$)")


def resolve_preset_path(name_or_path: str) -> Path:
    """A preset given as a path, or as a name looked up in configs/."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for candidate in list_presets():
        if candidate.stem == name_or_path or candidate.name == name_or_path:
            return candidate
    names = ", ".join(p.stem for p in list_presets())
    raise PresetError(f"preset {name_or_path!r} is neither a file nor a preset in {config_dir()}; available: {names}")


def load_preset(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None, trust_code: bool = False) -> Preset:
    """Load a preset from a path, a name in configs/, or a dict; apply overrides; validate.

    A preset that names Python code (objective `python`) is refused unless `trust_code` (lmforge.code_policy).
    """
    if isinstance(source, dict):
        raw = translate_seed002(source)  # seed 002's key names (read_preset_file translates a file's)
    else:
        raw = read_preset_file(resolve_preset_path(str(source)))
    if overrides:
        raw = apply_overrides(raw, overrides)
    with code_policy("trust") if trust_code else contextlib.nullcontext():  # else: the caller's policy, by default refuse
        return validate_preset(raw)
