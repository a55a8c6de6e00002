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
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lmforge.config import Preset, PresetError, resolve_stage_ends
from lmforge.data.config import DataConfig

Batches = list[dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Stage:
    """One resolved stage: it trains the steps `end_step` of the previous stage < step <= `end_step` (1-based)."""

    index: int
    name: str | None  # None: the implicit single stage of a preset without `stages`
    end_step: int
    data: DataConfig
    settings: dict[str, Any] = field(default_factory=dict)


class StagePlan:
    """The stages of one run, resolved against its step count."""

    def __init__(self, preset: Preset, total_steps: int):
        self.explicit = preset.stages is not None
        self.base = preset.data
        if not self.explicit:
            self.stages = [Stage(0, None, total_steps, preset.data)]
            return
        try:
            ends = resolve_stage_ends(preset.stages, total_steps)
        except ValueError as err:
            raise PresetError(str(err)) from None
        self.stages = [
            Stage(i, s.name, end, s.data.apply_to(preset.data) if s.data is not None else preset.data, dict(s.model_settings))
            for i, (s, end) in enumerate(zip(preset.stages, ends))
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
        if not self.explicit:
            return self.base
        sources: list[Any] = []
        for stage in self.stages:
            for source in stage.data.sources:
                if all(source.model_dump() != s.model_dump() for s in sources):
                    sources.append(source)
        return self.base.model_copy(update={"sources": sources, "mix": "round_robin", "source_weights": None, "adaptive": None})

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
        merged: dict[str, Any] = {}
        for stage in self.stages[: index + 1]:
            merged.update(stage.settings)
        return merged

    def check_settings(self, model: torch.nn.Module) -> None:
        """Try every stage's settings on a copy of the model, so a bad value fails at setup, not at a boundary hours in."""
        if any(stage.settings for stage in self.stages):
            trial = copy.deepcopy(model)
            for stage in self.stages:
                self._set(trial, stage.index, stage.settings)

    def apply(self, model: torch.nn.Module, index: int) -> None:
        """Put the model in stage `index`'s settings through its `set_<name>(value)` methods."""
        self._set(model, index, self.settings(index))

    @staticmethod
    def _set(model: torch.nn.Module, index: int, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            setter = getattr(model, f"set_{key}", None)
            if setter is None:
                raise PresetError(f"stages.{index}.model_settings.{key}: the model ({type(model).__name__}) has no set_{key}")
            try:
                setter(value)
            except (TypeError, ValueError) as err:
                raise PresetError(f"stages.{index}.model_settings.{key}: {err}") from None

    def describe(self, index: int) -> dict[str, Any]:
        """Fields for a metrics row: the stage index and name (nothing for a preset without stages)."""
        if not self.explicit:
            return {}
        return {"stage": index, "stage_name": self.stages[index].name}


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
