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
        sized = preset.model_copy(update={"model": model.model_copy(update={"vocab_size": vocab})})
        per_token = training_flops_per_token(sized, seq)
        if not per_token:
            raise PresetError(f"train.train_flops: model arch {model.arch!r} does not count its FLOPs; set train.max_steps or train.train_tokens")
        total = max(1, math.ceil(tc.train_flops / (per_token * per_step)))
        if preset.stages:  # a stage plan's shallow stages cost less: find the steps its FLOPs fill (stage ends move with them)
            costs = stage_flops_per_token(sized, seq)
            for _ in range(8):
                total = max(len(preset.stages), math.ceil(tc.train_flops / (run_flops_per_token(sized, seq, total, costs) * per_step)))
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


def stage_flops_per_token(resolved: Preset, seq_length: int) -> list[float]:
    """Training FLOPs per token in each stage of the run's plan (one entry without `stages`).

    A stage that trains only some blocks of a shallower model (StackWise's layer-wise, block-wise and progressive
    plans) costs less than the full model. From the model's own count (`training_flops_per_token`): the head's
    matmul (6 * n_embd * vocab) and an even share of the rest per block, where a trained block costs all of its
    share (forward 1/3, backward 2/3), a frozen block that gradients pass through 2/3, a frozen block below every
    trained one 1/3 (forward only), and a cached one nothing once cached: a stage that keeps the previous stage's
    cache runs each sequence through the one block it froze, a stage that starts a cache through its whole prefix
    (each sequence met once per stage: an upper bound when sequences repeat within a stage).
    """
    import fnmatch

    import torch

    from lmforge.assembly import build_run_model
    from lmforge.protocols import LayerwiseModel

    full = training_flops_per_token(resolved, seq_length)
    if not resolved.stages or not full:
        return [full] * max(1, len(resolved.stages or ()))
    with torch.device("meta"):
        model = build_run_model(resolved)
    if not isinstance(model, LayerwiseModel):
        return [full] * len(resolved.stages)
    n_layer = len(model.blocks)
    head = 6.0 * model.get_input_embeddings().embedding_dim * model.get_input_embeddings().num_embeddings
    block = (full - head) / n_layer
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    costs, depth, cached_depth = [], n_layer, 0
    for stage in resolved.stages:
        depth = stage.model_settings.get("depth", depth)

        def trains(prefixes: tuple[str, ...]) -> bool:
            inside = [n for n in names if n.startswith(prefixes)]
            return stage.trainable is None or any(fnmatch.fnmatchcase(n, g) for n in inside for g in stage.trainable)

        trained = [trains((f"blocks.{i}.",)) for i in range(depth)]
        first = 0 if trains(("wte.", "wpe.")) else next((i for i, t in enumerate(trained) if t), depth)  # gpt's names
        cached = stage.activation_cache != "off" and first > 0
        frozen_forward = first - cached_depth if cached and 0 < cached_depth <= first else first  # blocks run forward only
        above = sum(block if t else 2 * block / 3 for t in trained[first:])
        costs.append(frozen_forward * block / 3 + above + (head if trains(("ln_f.", "lm_head.")) else 2 * head / 3))
        cached_depth = first if cached else 0
    return costs


def run_flops_per_token(resolved: Preset, seq_length: int, total_steps: int, costs: list[float] | None = None) -> float:
    """The run's training FLOPs per token averaged over its stages (weighted by their steps); `costs`: the stages'
    `stage_flops_per_token`, when already computed."""
    from lmforge.config import resolve_stage_ends

    costs = costs or stage_flops_per_token(resolved, seq_length)
    if not resolved.stages:
        return costs[0]
    ends = resolve_stage_ends(resolved.stages, total_steps)
    return sum(c * (end - start) for c, start, end in zip(costs, [0, *ends[:-1]], ends)) / total_steps
