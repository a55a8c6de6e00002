"""What a comparison trains: named runs (a preset plus overrides), one budget, the seeds; from the CLI or a spec file.

A spec file (JSON or YAML, `configs/compare/<recipe>.json` for the recipes' verdicts):

    {"name": "forge", "description": "...", "budget": {"kind": "steps", "value": 300}, "seeds": [1337],
     "overrides": {"train.eval_batches": 50},
     "runs": [{"name": "vgt_forge", "preset": "forge_vgt_cpu"},
              {"name": "vgt_ce", "preset": "forge_vgt_cpu", "overrides": {"objective": {"name": "clm"}}}]}

Overrides are dotted keys as on the command line (`train.lr`); a key without a dot replaces that whole section.
The first run is the baseline the table's deltas are taken against.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from lmforge.config import apply_overrides, config_dir, read_preset_file, resolve_preset_path, validate_preset
from lmforge.config_base import Section
from lmforge.errors import PresetError

BUDGET_KINDS = ("steps", "tokens", "flops", "seconds")


class Budget(Section):
    """How much each run trains: optimizer steps, tokens, FLOPs (the model's own count) or wall-clock seconds."""

    kind: Literal["steps", "tokens", "flops", "seconds"]
    value: float = Field(gt=0)

    def overrides(self) -> dict[str, Any]:
        """The train.* fields that set this budget and clear the others (seconds keep the preset's step budget, which
        the LR schedule spans)."""
        if self.kind == "steps":
            return {"train.max_steps": math.ceil(self.value), "train.max_seconds": None}
        if self.kind == "tokens":
            return {"train.max_steps": None, "train.train_tokens": math.ceil(self.value), "train.train_flops": None,
                    "train.max_seconds": None}
        if self.kind == "flops":
            return {"train.max_steps": None, "train.train_tokens": None, "train.train_flops": float(self.value),
                    "train.max_seconds": None}
        return {"train.max_seconds": float(self.value)}

    def describe(self) -> str:
        return f"{self.value:,.0f} {self.kind}" if self.kind != "flops" else f"{self.value:.3g} FLOPs"


class RunSpec(Section):
    """One side of the comparison."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    preset: str = Field(min_length=1, description="a preset name in configs/ or a path")
    overrides: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None


class CompareSpec(Section):
    name: str = "compare"
    description: str | None = None
    budget: Budget | None = Field(None, description="None = each preset's own budget")
    seeds: list[int] = Field(default_factory=lambda: [1337], min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every run, before its own")
    runs: list[RunSpec] = Field(min_length=1)
    verdict: str | None = Field(None, description="what the recipe's README verdict says this comparison shows")

    @field_validator("runs")
    @classmethod
    def _unique_names(cls, runs: list[RunSpec]) -> list[RunSpec]:
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be unique, got {names}")
        return runs


@dataclass(frozen=True)
class PlannedRun:
    """One (run, seed) of a comparison, with the raw preset it trains and the folder it trains in."""

    name: str
    seed: int
    raw: dict[str, Any]

    @property
    def key(self) -> str:
        """`<name>_s<seed>_<hash>`: the same preset and budget reuse the folder; any change that can change the
        training gets a new one (the description cannot)."""
        trained = {k: v for k, v in self.raw.items() if k != "description"}
        digest = hashlib.sha256(json.dumps(trained, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.name}_s{self.seed}_{digest}"


def plan_runs(spec: CompareSpec) -> list[PlannedRun]:
    """Every (run, seed), validated as a preset now, so a typo fails before anything trains."""
    planned = []
    for run in spec.runs:
        try:
            base = read_preset_file(resolve_preset_path(run.preset))
        except PresetError as err:
            raise PresetError(f"compare run {run.name!r}: {err}") from None
        for seed in spec.seeds:
            raw = apply_overrides(apply_overrides(base, spec.overrides), run.overrides)  # a key without a dot: a whole section
            raw = apply_overrides(raw, {"train.seed": seed, "data.seed": seed, **(spec.budget.overrides() if spec.budget else {})})
            raw["name"] = run.name
            try:
                validate_preset(raw)
            except PresetError as err:
                raise PresetError(f"compare run {run.name!r} (seed {seed}):\n  " + str(err).replace("\n", "\n  ")) from None
            planned.append(PlannedRun(run.name, seed, raw))
    return planned


def spec_from_presets(presets: list[str], budget_kind: str | None, budget_value: float | None, seeds: list[int],
                      overrides: dict[str, Any]) -> CompareSpec:
    """`lmforge compare A B --budget steps 30`: each preset a run named after it (a repeat gets a suffix)."""
    runs, seen = [], {}
    for preset in presets:
        stem = Path(preset).stem if preset.endswith((".json", ".yaml", ".yml")) else preset
        seen[stem] = seen.get(stem, 0) + 1
        runs.append({"name": stem if seen[stem] == 1 else f"{stem}_{seen[stem]}", "preset": preset})
    raw: dict[str, Any] = {"name": "compare", "runs": runs, "seeds": seeds, "overrides": overrides}
    if budget_kind is not None:
        raw["budget"] = {"kind": budget_kind, "value": budget_value}
    return validate_spec(raw, "the command line")


def validate_spec(raw: dict[str, Any], where: str) -> CompareSpec:
    try:
        return CompareSpec.model_validate(raw)
    except ValidationError as err:
        problems = [f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise PresetError(f"compare spec {where}:\n  " + "\n  ".join(problems)) from None


def recipe_dir() -> Path:
    return config_dir() / "compare"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.json")) + sorted(p.stem for p in recipe_dir().glob("*.y*ml"))


def load_spec(name_or_path: str) -> CompareSpec:
    """A spec file by path, or a recipe's by name (`configs/compare/<name>.json|yaml`)."""
    path = Path(name_or_path)
    if not path.exists():
        found = [p for p in (recipe_dir() / f"{name_or_path}{ext}" for ext in (".json", ".yaml", ".yml")) if p.exists()]
        if not found:
            raise PresetError(f"no compare spec {name_or_path!r}; the recipes are: {', '.join(recipe_names())}")
        path = found[0]
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise PresetError(f"compare spec {path}: not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(raw, dict):
        raise PresetError(f"compare spec {path}: the top level must be an object")
    return validate_spec(raw, str(path))
