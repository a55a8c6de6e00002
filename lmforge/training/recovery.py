"""What the trainer does after a skipped step: log it with its data position, and after a run of them, roll back.

The rollback is PaLM's remedy for loss spikes (Chowdhery et al. 2022, section 5.1): restart from the newest
checkpoint and skip the batches that were being trained on when it went wrong. Steps never repeat in
metrics.jsonl: the rows after the checkpoint's step give way to one `rollback_from_step` row.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterator

from lmforge.training.step_guard import Verdict

if TYPE_CHECKING:
    from lmforge.training.trainer import Trainer


def log_skip(trainer: "Trainer", verdict: Verdict) -> None:
    """A skipped step: its own metrics row and one line on stderr, with the data position that caused it.

    Under torchrun the verdict comes from the all-reduced loss and grad norm, so any rank's batch may hold the bad
    value; the ranks draw in lockstep, so one batch index names the batch of every rank."""
    position = trainer.train_data.position()
    if trainer.runtime.distributed:
        position = {"batches_consumed": position["batches_consumed"], "ranks": trainer.runtime.world_size}
    trainer.metrics.log({
        "step": trainer.step, "tokens": trainer.tokens, "skipped_step": verdict.skip_reason, "loss": verdict.loss,
        "grad_norm": verdict.grad_norm, "skipped_steps": trainer.guard.skipped_steps, "data_position": position,
    })
    if trainer.runtime.is_main:
        print(f"step {trainer.step} skipped: {verdict.skip_reason} (data position {position}; the update was not applied)",
              file=sys.stderr)


def roll_back(trainer: "Trainer", data_iter: Iterator, verdict: Verdict) -> Iterator:
    """Back to the newest checkpoint, then on past the batches trained since it; returns the iterator to go on with.

    The skipped-step count survives. A run that has rolled back `train.max_rollbacks` times in a row with no good
    step between, or has no checkpoint, is asked to stop with the step and data position in the reason.
    """
    guard, bad_at, position = trainer.guard, trainer.step, trainer.train_data.position()
    trainer.writer.wait()  # an async save still being written is the newest checkpoint
    ckpt = trainer.load_latest_checkpoint()
    if ckpt is None or guard.rollbacks_in_a_row >= trainer.preset.train.max_rollbacks:
        why = "no checkpoint to roll back to" if ckpt is None else f"{guard.rollbacks_in_a_row} rollbacks in a row did not get past it"
        trainer.request_stop(f"stuck: {guard.consecutive_bad} bad steps in a row up to step {bad_at} at data position "
                             f"{position} ({verdict.skip_reason}); {why}")
        return data_iter
    elapsed, consumed, stage = trainer.elapsed(), trainer.train_data.batches_consumed, trainer.stage_index
    trainer.restore(ckpt)
    trainer.elapsed_before += elapsed - trainer.elapsed()  # wall time goes on; the counters go back
    # every batch drawn since the checkpoint, including those of earlier rollbacks to it (a stage's data restarts
    # at the stage, so a checkpoint from an earlier stage has nothing to skip: stage entries save one)
    skipped = consumed - trainer.train_data.batches_consumed if trainer.stage_index == stage else 0
    data_iter = iter(trainer.train_data)
    for _ in range(skipped):
        next(data_iter)
    guard.rolled_back()
    trainer.metrics.truncate_after(trainer.step)
    trainer.metrics.log({
        "step": trainer.step, "rollback_from_step": bad_at, "rollback_reason": verdict.skip_reason,
        "rollback_batches_skipped": skipped, "rollbacks": guard.rollbacks, "skipped_steps": guard.skipped_steps,
    })
    if trainer.runtime.is_main:
        print(f"rolled back from step {bad_at} ({verdict.skip_reason}) to {ckpt.slot} at step {trainer.step}, "
              f"skipping {skipped} batches past data position {position}", file=sys.stderr)
    return data_iter
