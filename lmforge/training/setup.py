"""What a run builds once before training: its tokenizer, its label vocabulary, its model (rank 0 writes, the others read)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmforge.assembly import build_run_model
from lmforge.config import Preset, PresetError
from lmforge.data import build_tokenizer, iter_texts
from lmforge.data.config import DataConfig
from lmforge.data.stream import train_documents
from lmforge.data.supervised import LabelVocab, setup_label_vocab
from lmforge.data.tokenizers import Tokenizer
from lmforge.runtime import Runtime
from lmforge.training.activation_checkpointing import apply_activation_checkpointing
from lmforge.training.fsdp import shard_model
from lmforge.training.init_from import init_weights_from, load_source, misfits
from lmforge.training.state import seed_everything


def setup_tokenizer(data: DataConfig, run_dir: Path, runtime: Runtime) -> Tokenizer:
    """Built (or trained) once by rank 0 and saved in the run dir; the other ranks load it.

    `data` covers every stage's sources. A char vocab covers all the data, as nanoGPT's does; BPE is trained
    on the train split only.
    """
    vocab_split = "all" if data.tokenizer.type == "char" else "train"

    def texts():
        return iter_texts(data, vocab_split, data.tokenizer.train_chars)

    tokenizer = build_tokenizer(data.tokenizer, run_dir, texts) if runtime.is_main else None
    runtime.barrier()
    return tokenizer or build_tokenizer(data.tokenizer, run_dir, texts)


def setup_labels(preset: Preset, run_dir: Path, runtime: Runtime) -> LabelVocab | None:
    """data.task classification: the label vocabulary, built by rank 0 from the train split and saved in the run dir."""
    if preset.data.task != "classification":
        return None
    if runtime.is_main:
        setup_label_vocab(run_dir, lambda: train_documents(preset.data))
    runtime.barrier()
    return LabelVocab.load(run_dir)


TRAINING_BYTES_PER_PARAM = 16  # fp32 weights, fp32 gradients, AdamW's two fp32 moments


def check_model_fits(resolved: Preset, runtime: Runtime) -> None:
    """A model too big for the device is a PresetError that says so, not an allocator crash or the OOM killer.

    The model is built on the meta device (no memory, no RNG) to count its parameters; activations come on top,
    so this only catches what can never fit.
    """
    free = runtime.available_memory()
    if free is None:
        return
    with torch.device("meta"):
        params = sum(p.numel() for p in build_run_model(resolved).parameters())
    need = params * TRAINING_BYTES_PER_PARAM
    if runtime.sharded:  # FSDP: each process holds 1/world of it
        need //= runtime.world_size
    if need > free:
        raise PresetError(
            f"model: {params:,} parameters need about {need / 2**30:,.1f} GiB for weights, gradients and optimizer "
            f"state, and {runtime.device} has {free / 2**30:,.1f} GiB free; make the model smaller (model.n_layer, "
            "model.n_embd, ...)"
        )


def setup_model(resolved: Preset, runtime: Runtime) -> torch.nn.Module:
    """The run's model from its resolved preset, the same init on every rank (seeded), with `train.init_from`'s
    weights when set (a checkpoint of this run, if any, replaces them on resume)."""
    check_model_fits(resolved, runtime)
    seed_everything(resolved.train.seed)
    model = build_run_model(resolved)
    spec = resolved.train.init_from
    if spec:
        state = load_source(spec)
        if any(misfits(model, state)) and resolved.layer_swaps:
            # a full-precision source for a swap that renames weights (nf4_lora's NF4 codes): load it into the arch,
            # then swap, so the swap quantizes the pretrained weights
            seed_everything(resolved.train.seed)
            model = build_run_model(resolved, before_swaps=lambda arch: init_weights_from(arch, spec, state))
        else:
            init_weights_from(model, spec, state)
    return model.to(runtime.device)


def prepare_for_training(model: torch.nn.Module, train_cfg: Any, runtime: Runtime) -> None:
    """In place, before the optimizer sees the parameters: activation checkpointing, then FSDP sharding."""
    apply_activation_checkpointing(model, train_cfg.activation_checkpointing)
    if runtime.sharded and runtime.distributed:
        shard_model(model, runtime, train_cfg.fsdp_cpu_offload)
