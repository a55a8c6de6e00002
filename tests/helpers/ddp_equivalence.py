"""Run K optimizer steps on a fixed global batch, split across however many processes run this.

usage: [torchrun --nproc_per_node=N] ddp_equivalence.py PRESET_JSON RUN_DIR OUT_FILE STEPS GLOBAL_BATCH
Rank 0 writes the initial and final parameters (gathered whole under FSDP) and each step's gradient norm (the
global one, across ranks and shards, as clipping sees it) to OUT_FILE.
"""
import json
import sys

import torch

from lmforge.config import load_preset
from lmforge.training.step_guard import global_norm
from lmforge.training.trainer import Trainer


def full_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The whole weights on every process (a collective under FSDP, where each holds a shard)."""
    if trainer.runtime.sharded and trainer.runtime.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


if __name__ == "__main__":
    preset_path, run_dir, out_file, steps, global_batch = sys.argv[1:6]
    steps, global_batch = int(steps), int(global_batch)
    trainer = Trainer(load_preset(json.loads(open(preset_path).read())), run_dir)
    rt = trainer.runtime
    per_rank = global_batch // rt.world_size
    init = full_state(trainer)
    model = trainer.wrapped_model()
    model.train()
    gen = torch.Generator().manual_seed(0)
    grad_norms = []
    vocab, seq = trainer.tokenizer.vocab_size, trainer.seq_length
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (global_batch, seq + 1), generator=gen)
        mine = tokens[rt.rank * per_rank:(rt.rank + 1) * per_rank]
        batch = {"input_ids": mine[:, :-1].contiguous(), "labels": mine[:, 1:].contiguous()}
        _, _, grad_norm, _ = trainer.train_step(model, iter([batch]))
        grad_norms.append(float(global_norm(grad_norm)))
    final = full_state(trainer)
    if rt.is_main:
        torch.save({"init": init, "final": final, "grad_norms": grad_norms}, out_file)
    rt.shutdown()
