"""A run's sizes, computed once from the preset, the tokenizer and the process count; everything reads them here."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lmforge.config import Preset
from lmforge.errors import PresetError
from lmforge.objectives.base import ReservingObjectiveConfig


@dataclass(frozen=True)
class RunShape:
    seq_length: int  # tokens per training sequence (data.seq_length, else the model's block_size)
    vocab_size: int  # the model's vocabulary (model.vocab_size, else the tokenizer's)
    batch_size: int  # sequences per micro-batch per process
    grad_accum_steps: int
    world_size: int
    total_steps: int  # train.max_steps, else the token (or FLOP) budget over tokens (FLOPs) per step, rounded up

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_length * self.grad_accum_steps * self.world_size


def sequence_length(preset: Preset) -> int:
    return preset.data.seq_length or preset.model.block_size


def reserved_ids(preset: Preset) -> int:
    """Token ids the run's objectives (its own and its stages') need beyond the tokenizer's, e.g. a [MASK]."""
    objectives = [preset.objective] + [s.objective for s in preset.stages or [] if s.objective is not None]
    own = max((o.reserved_ids for o in objectives if isinstance(o, ReservingObjectiveConfig)), default=0)
    return max(own, preset.auxiliary.reserved_ids)  # one [MASK] (vocab - 1) serves both


def run_shape(preset: Preset, world_size: int, tokenizer_vocab: int) -> RunShape:
    """The shape of `preset` trained by `world_size` processes with a tokenizer of `tokenizer_vocab` ids."""
    model, tc = preset.model, preset.train
    needed = tokenizer_vocab + reserved_ids(preset)
    vocab = model.vocab_size if model.vocab_size is not None else needed
    if vocab < needed:
        extra = f" plus the objective's {needed - tokenizer_vocab} reserved id (its [MASK])" if needed > tokenizer_vocab else ""
        raise PresetError(f"model.vocab_size ({vocab}) is smaller than the tokenizer's {tokenizer_vocab}{extra}; remove it to use {needed}")
    seq = sequence_length(preset)
    if seq > model.block_size:
        raise PresetError(f"data.seq_length ({seq}) exceeds model.block_size ({model.block_size})")
    per_step = tc.batch_size * seq * tc.grad_accum_steps * world_size
    if tc.max_steps:
        total = tc.max_steps
    elif tc.train_tokens:
        total = math.ceil(tc.train_tokens / per_step)
    else:
        per_token = training_flops_per_token(preset.model_copy(update={"model": model.model_copy(update={"vocab_size": vocab})}), seq)
        if not per_token:
            raise PresetError(f"train.train_flops: model arch {model.arch!r} does not count its FLOPs; set train.max_steps or train.train_tokens")
        total = max(1, math.ceil(tc.train_flops / (per_token * per_step)))
    return RunShape(seq, vocab, tc.batch_size, tc.grad_accum_steps, world_size, total)


def training_flops_per_token(resolved: Preset, seq_length: int) -> float:
    """Training FLOPs per token of the run: its model's own count (layer swaps included) plus what the auxiliary
    heads add. Built on the meta device: no memory, no RNG draws, so a run's init is the same whether or not this
    was asked. 0 for an arch that does not count its FLOPs."""
    import torch

    from lmforge.assembly import build_run_model
    from lmforge.objectives.auxiliary import auxiliary_flops_per_token
    from lmforge.objectives.heads import hidden_size

    with torch.device("meta"):
        model = build_run_model(resolved)
        trunk = model.flops_per_token(seq_length)
        if not trunk or not resolved.auxiliary.enabled:
            return trunk
        vocab = model.get_input_embeddings().num_embeddings
        return trunk + auxiliary_flops_per_token(resolved.auxiliary, hidden_size(model), vocab, trunk)


def resolved_preset(preset: Preset, shape: RunShape) -> Preset:
    """A copy of the preset with what the run resolved filled in (the vocabulary size), as saved beside the run and
    in every checkpoint slot; the validated preset itself is left as the user wrote it."""
    resolved = preset.model_copy(deep=True)
    resolved.model = resolved.model.model_copy(update={"vocab_size": shape.vocab_size})
    return resolved
