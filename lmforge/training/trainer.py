"""The one training loop. It knows plug points, not recipes.

setup -> resume -> repeat(train_step, log, eval, sample, save) -> final save.
Everything recipe-specific arrives through the registries: the model by `arch`,
the objective by name, the LR schedule, gradient filters and layer swaps.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from lmforge.config import Preset, PresetError
from lmforge.data import DataPipeline, build_val_batches
from lmforge.evaluation import evaluate_lm
from lmforge.inference import LoadedRun, load_run
from lmforge.objectives import StepContext
from lmforge.objectives.auxiliary import with_auxiliary
from lmforge.protocols import Objective
from lmforge.registry import GRAD_FILTERS, OBJECTIVES
from lmforge.runtime import Runtime, setup_runtime
from lmforge.training import run_dir as run_dir_lib
from lmforge.training.callbacks import Callback, EarlyStopping, TrainResult
from lmforge.training.checkpoint import BEST, Checkpoint, CheckpointManager, CheckpointWriteError, is_sharded
from lmforge.training.checkpoint_writer import CheckpointWriter
from lmforge.training.fsdp import load_latest_sharded, rederive_position
from lmforge.training.metrics import MetricsLogger, mfu_peak_flops, progress_bar, train_row
from lmforge.training.optim import build_optimizer, set_hyperparameters
from lmforge.training.recovery import log_skip, roll_back
from lmforge.training.resume_check import check_run_dir
from lmforge.training.samples import write_samples
from lmforge.training.setup import prepare_for_training, setup_labels, setup_model, setup_tokenizer
from lmforge.run_shape import RunShape, resolved_preset, run_shape, stage_flops_per_token
from lmforge.training.signals import graceful_stop
from lmforge.training.step_guard import StepGuard, Verdict
from lmforge.training.update import apply_update
from lmforge.training.stages import StagePlan, evaluate_parts, preset_union_data
from lmforge.training.state import gather_ranks, load_model_state, rng_state, set_rng_state


class Trainer:
    """Builds a run from a preset and trains it; `fit()` is the whole job."""

    def __init__(self, preset: Preset, run_dir: Path | str | None = None, callbacks: Iterable[Callback] = (), runtime: Runtime | None = None):
        self.preset = preset
        tc = preset.train
        self.runtime = runtime or setup_runtime(tc.device, tc.precision, tc.compile, preset.model.n_embd, tc.deterministic, tc.parallel)
        rt = self.runtime
        self.run_dir = Path(run_dir) if run_dir else run_dir_lib.default_run_dir(preset)
        if rt.is_main:
            run_dir_lib.prepare(self.run_dir)
        run_dir_lib.check_shared(self.run_dir, rt)  # every process sees the same folder (across nodes: a shared filesystem)
        self.callbacks: list[Callback] = list(callbacks)
        patience = tc.early_stopping_patience
        self.early_stopping = EarlyStopping(patience, tc.early_stopping_min_delta, tc.early_stopping_metric) if patience else None
        self.callbacks += [self.early_stopping] if self.early_stopping else []
        self._stop_reason: str | None = None

        self.tokenizer = setup_tokenizer(preset_union_data(preset), self.run_dir, rt)
        self.shape: RunShape = run_shape(preset, rt.world_size, self.tokenizer.vocab_size)
        self.resolved = resolved_preset(preset, self.shape)  # saved beside the run and in every checkpoint slot
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints")
        self.writer = CheckpointWriter(self.checkpoints, tc, self.run_dir, rt)
        check_run_dir(self.checkpoints, self.resolved, self.run_dir)  # before preset.json is rewritten
        if rt.is_main:
            run_dir_lib.save_preset(self.run_dir, self.resolved)
        self.stages = StagePlan(preset, self.shape.total_steps, self.run_dir)  # one implicit stage when the preset has no `stages`
        self.stage_index = 0
        self.labels = setup_labels(preset, self.run_dir, rt)
        self.model = setup_model(self.resolved, rt)
        self.objectives = self._setup_objectives()
        self.objective = self.objectives[self.stage_index]
        self.stages.check_settings(self.model)
        prepare_for_training(self.model, tc, rt)  # activation checkpointing, FSDP sharding: before the optimizer sees the parameters
        self.grad_filters = [GRAD_FILTERS.get(f.name)(f, self.model) for f in preset.grad_filters]
        self.optimizer = build_optimizer(self.model, tc, rt)
        self.scaler = rt.grad_scaler()
        self.guard = StepGuard(tc.skip_nonfinite, tc.skip_spikes, rt)
        self.stages.check(self.model, self.optimizer, rt.sharded)
        self.stages.apply(self.model, self.stage_index)
        self.stages.apply_optimizer_options(self.optimizer, self.stage_index)

        self.train_data = self._stage_pipeline(self.stage_index)
        self.val_parts = [
            (label, build_val_batches(
                data, self.tokenizer, batch_size=tc.batch_size, seq_length=self.seq_length,
                max_batches=tc.eval_batches, rank=rt.rank, world_size=rt.world_size, labels=self.labels,
            ))
            for label, data in self.stages.val_parts()
        ]
        self.val_batches = [b for _, batches in self.val_parts for b in batches]
        self.metrics = MetricsLogger(self.run_dir, rt.is_main, tc.tensorboard, tc.wandb, preset.name, self.resolved.to_dict())
        self.step, self.tokens = 0, 0
        self.elapsed_before = 0.0
        self._t_start = time.time()  # fit() restarts the clock; set here so a save before fit() works
        self.best_val_loss: float | None = None
        self.last_val: dict[str, float] = {}
        self.resumed_from: int | None = None
        self.stage_flops = stage_flops_per_token(self.resolved, self.seq_length)  # per token, per stage, the heads' cost included
        self.peak_flops = mfu_peak_flops(rt, tc.peak_flops, self.model, tc.batch_size * self.seq_length) if self.stage_flops[0] else None

    @property
    def seq_length(self) -> int:
        return self.shape.seq_length

    @property
    def total_steps(self) -> int:
        return self.shape.total_steps

    def _stage_pipeline(self, index: int) -> DataPipeline:
        """The train batches of stage `index`, from the start of its data (a resume then loads the saved position)."""
        rt = self.runtime
        return DataPipeline(
            self.stages.data(index), self.tokenizer, split="train", batch_size=self.preset.train.batch_size,
            seq_length=self.seq_length, rank=rt.rank, world_size=rt.world_size, labels=self.labels,
        )

    def _setup_objectives(self) -> list[Objective]:
        """One objective per stage, the run's or the stage's own (built here, so its heads are in the optimizer and checkpoints)."""
        build = lambda spec: with_auxiliary(OBJECTIVES.get(spec.name)(spec), self.preset.auxiliary, spec.name)  # noqa: E731
        run_objective = build(self.preset.objective)  # each with the preset's auxiliary heads, when it enables any
        objectives = [run_objective if s.objective is None else build(s.objective) for s in self.stages.stages]
        for objective in {id(o): o for o in objectives}.values():
            objective.bind(self.model, self)
        return objectives

    def _enter_stage(self, index: int) -> None:
        """At a stage boundary (or resuming into a later stage): the stage's data from its start, its objective,
        model settings, trainable parameters and optimizer options."""
        self.train_data.close()
        self.stage_index = index
        self.train_data = self._stage_pipeline(index)
        self.objective = self.objectives[index]
        self.stages.apply(self.model, index)
        self.stages.apply_optimizer_options(self.optimizer, index)
        if self.runtime.is_main and self.stages.explicit:
            print(f"stage {index} ({self.stages.stages[index].name}) from step {self.step + 1}", file=sys.stderr)

    def load_run(self, run_dir: str, slot: str | None = None) -> LoadedRun:
        """A finished run on this run's device (RunContext, for an objective's bind: a distillation teacher)."""
        return load_run(run_dir, slot, device=self.runtime.device)

    # ------------------------------------------------------------------ state

    def request_stop(self, reason: str) -> None:
        """Finish the current step, save, and return from fit()."""
        self._stop_reason = self._stop_reason or reason

    def _train_state(self) -> dict[str, Any]:
        """Optimizer, scaler, counters, and per-rank RNG + data position gathered onto rank 0."""
        per_rank = gather_ranks(self.runtime, {"rng": rng_state(), "data": self.train_data.state_dict()})
        sharded = self.runtime.sharded
        return {
            "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed(), "best_val_loss": self.best_val_loss,
            "stage": self.stage_index,  # the stage of the data position in `ranks`
            "scaler": self.scaler.state_dict(), "ranks": per_rank,
            # under FSDP these are in the slot's shards (training/fsdp.py)
            "optimizer": None if sharded else self.optimizer.state_dict(),
            "grad_filters": None if sharded else [f.state_dict() for f in self.grad_filters],
            "objective": self.objective.state_dict(),  # the current stage's objective
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "guard": self.guard.state_dict(),  # skipped steps, rollbacks, the spike window
        }

    def _meta(self) -> dict[str, Any]:
        return {
            "step": self.step, "tokens": self.tokens, "preset": self.preset.name, "arch": self.preset.model.arch,
            "val_loss": self.last_val.get("val_loss"), "world_size": self.runtime.world_size,
            "run_preset": self.resolved.to_dict(),  # what the slot was trained with (resume_check reads it)
        }

    def save(self, slot: str = "rolling") -> None:
        """Write a slot (every rank takes part); a failed write (disk full, read-only) raises CheckpointWriteError on every rank."""
        self.writer.save_run(slot, self.model, self.optimizer, self.grad_filters, self._train_state(), self._meta())
        for cb in self.callbacks:
            cb.on_save(self, self.step, slot)

    def load_latest_checkpoint(self) -> Checkpoint | None:
        """The newest loadable rolling slot; under FSDP its shards are already loaded into the model, optimizer and filters."""
        sharded = self.runtime.sharded
        return load_latest_sharded(self.checkpoints, self.runtime, self.model, self.optimizer, self.grad_filters) if sharded else self.checkpoints.load_latest()

    def resume(self) -> bool:
        """Load the newest loadable rolling checkpoint, if any; return whether one was found."""
        ckpt = self.load_latest_checkpoint()
        if ckpt is None:
            return False
        self.restore(ckpt)
        if ckpt.train_state.get("guard"):
            self.guard.load_state_dict(ckpt.train_state["guard"])
        self.metrics.truncate_after(self.step)
        self.resumed_from = self.step
        if self.runtime.is_main:
            print(f"resumed from {ckpt.slot} at step {self.step} ({self.tokens:,} tokens)", file=sys.stderr)
        return True

    def restore(self, ckpt: Checkpoint) -> None:
        """The weights, optimizer, scaler, counters, filters, stage, objective, data position and RNG of `ckpt`."""
        st = ckpt.train_state
        resharded = len(st["ranks"]) != self.runtime.world_size
        if resharded and not is_sharded(ckpt.meta):
            raise RuntimeError(f"checkpoint {ckpt.slot} was written by {len(st['ranks'])} processes; resume it with the same number "
                               f"(this run has {self.runtime.world_size}; train.parallel 'fsdp' checkpoints resume on any number)")
        if not is_sharded(ckpt.meta):  # an FSDP slot's weights, optimizer and filters are loaded with its shards
            load_model_state(self.model, ckpt.model_state)
            self.optimizer.load_state_dict(st["optimizer"])
            for f, s in zip(self.grad_filters, st["grad_filters"]):
                f.load_state_dict(s)
        if st["scaler"]:  # empty when it was off (bf16/fp32); a switch to fp16 starts a fresh scale
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.tokens, self.elapsed_before, self.best_val_loss = st["step"], st["tokens"], st["elapsed"], st["best_val_loss"]
        if self.early_stopping and st.get("early_stopping"):
            self.early_stopping.load_state_dict(st["early_stopping"])
        stage = int(st.get("stage", 0))  # checkpoints from before stage plans: stage 0
        self.stages.check_resumed_stage(stage, self.step, ckpt.slot)
        if stage != self.stage_index:
            self._enter_stage(stage)
        if st.get("objective") is not None:  # the state of the stage's objective
            self.objective.load_state_dict(st["objective"])
        if resharded:  # another number of processes: each one's data position re-derived (training/fsdp.py)
            rederive_position(self.train_data, st["ranks"], self.runtime, self.preset.train.seed, self.step)
            return
        mine = st["ranks"][self.runtime.rank]
        self.train_data.load_state_dict(mine["data"])
        set_rng_state(mine["rng"])

    # ------------------------------------------------------------------ loop

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return self.elapsed_before + (time.time() - self._t_start)

    def wrapped_model(self) -> torch.nn.Module:
        """The module the step runs: compiled and/or DDP-wrapped; `self.model` stays the raw one we save."""
        return self.runtime.wrap(self.model, find_unused_parameters=self.stages.has_own_objectives)  # a stage's head idles elsewhere

    def train_step(self, model: torch.nn.Module, data_iter) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None, Verdict | None]:
        """One optimizer step over `grad_accum_steps` micro-batches (or a skipped one: see the verdict); returns the
        detached loss, metrics, grad norm and the step guard's verdict (None with the guard off)."""
        rt, tc = self.runtime, self.preset.train
        accum = tc.grad_accum_steps
        stage = self.stages.stages[self.stage_index]
        own = stage.objective is not None  # a stage's own objective counts its steps from the stage's start
        ctx = StepContext(self.step - stage.start_step, stage.steps) if own else StepContext(self.step, self.total_steps)
        total_loss = torch.zeros((), device=rt.device)
        sums: dict[str, torch.Tensor] = {}
        observed = []  # data.adaptive's per-source losses, reported once the step is known to be good
        for micro in range(accum):
            batch = {k: v.to(rt.device, non_blocking=True) for k, v in next(data_iter).items()}
            with rt.gradient_sync(model, last_micro_batch=micro == accum - 1):
                with rt.autocast():
                    loss, metrics = self.objective(model, batch, ctx)
                self.scaler.scale(loss / accum).backward()
            per_sequence = metrics.pop("per_sequence_loss", None)
            if "source_ids" in batch:  # data.adaptive: each source's loss steers how often it is drawn
                if per_sequence is None:
                    raise PresetError(f"data.adaptive needs an objective that reports per_sequence_loss (clm does); {self.preset.objective.name!r} does not")
                observed.append((batch["source_ids"], per_sequence, int((batch["labels"] != -100).sum())))
            total_loss += loss.detach() / accum
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + torch.as_tensor(v, dtype=torch.float32).detach() / accum
        verdict, grad_norm = apply_update(self.model, self.optimizer, self.scaler, self.grad_filters, self.guard, tc.grad_clip, total_loss)
        if verdict is None or verdict.apply:
            for source_ids, per_sequence, tokens in observed:
                self.train_data.observe_losses(source_ids, per_sequence, tokens)
        return total_loss, sums, grad_norm, verdict

    def evaluate(self) -> dict[str, float]:
        """The objective's own `evaluate(model, val_batches, runtime)` when it has one (it must report val_loss), else LM metrics."""
        own = self.objective.evaluate(self.model, self.val_batches, self.runtime)
        if own is not None:
            return own
        tok = self.tokenizer
        token_bytes, token_chars = tok.token_byte_lengths(), tok.token_char_lengths()
        return evaluate_parts(lambda batches: evaluate_lm(self.model, batches, self.runtime, token_bytes, token_chars), self.val_parts)

    def fit(self) -> TrainResult:
        rt, tc = self.runtime, self.preset.train
        self._t_start = time.time()
        self.resume()
        if rt.is_main:
            for note in rt.notes:
                print(note, file=sys.stderr)
        model = self.wrapped_model()
        model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        data_iter = iter(self.train_data)
        bar = progress_bar(rt.is_main and tc.progress_bar, self.total_steps, self.step, self.preset.name)
        window_tokens, window_time, last_loss = 0, 0.0, None
        with graceful_stop(self.request_stop, lambda: self._stop_reason is not None):
            while self.step < self.total_steps and self._stop_reason is None:
                stage = self.stages.index_at(self.step)
                if stage != self.stage_index:
                    self.stages.enter_live(self.model, self.optimizer, stage, rt.is_main)  # growth, a fresh head, backups: once
                    self._enter_stage(stage)
                    data_iter = iter(self.train_data)
                    if rt.distributed and not rt.sharded:  # DDP fixes the trained parameters when it wraps: wrap again after `trainable` changed
                        model = self.wrapped_model()
                    self.guard.reset_window()
                    self.save("rolling")  # so a rollback never has to reach into an earlier stage
                schedule, at, stage_lr = self.stages.schedule_at(self.step)
                lr = tc.lr * stage_lr * schedule(at)
                set_hyperparameters(self.optimizer, lr, schedule.weight_decay_multiplier(at))
                t0 = time.perf_counter()
                loss, metrics, grad_norm, verdict = self.train_step(model, data_iter)
                self.step += 1
                if verdict is not None and not verdict.apply:
                    log_skip(self, verdict)
                    if tc.rollback_after and self.guard.consecutive_bad >= tc.rollback_after:
                        data_iter = roll_back(self, data_iter, verdict)
                        if bar is not None:
                            bar.n = self.step
                        continue
                self.tokens += self.shape.tokens_per_step
                window_tokens += self.shape.tokens_per_step
                last = self.step == self.total_steps or self._out_of_time()
                if self.step % tc.log_interval == 0 or last:
                    loss_value = rt.all_reduce_mean(loss.item())  # the loop's host sync (with the step guard's, when it is on)
                    rt.synchronize()
                    window_time += time.perf_counter() - t0
                    last_loss = loss_value
                    row = train_row(self, loss_value, lr, metrics, grad_norm, window_tokens, window_time)
                    self.metrics.log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{row['tokens_per_sec']:.0f}")
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step, row)
                    window_tokens, window_time = 0, 0.0
                    if not math.isfinite(loss_value) and not tc.skip_nonfinite:
                        self.request_stop(f"loss is {loss_value} at step {self.step} (train.skip_nonfinite is off)")
                else:
                    window_time += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                if self.step % tc.eval_interval == 0 or last:
                    self._run_eval()
                if self.preset.samples.interval and self.step % self.preset.samples.interval == 0 and rt.is_main:
                    write_samples(self, print_them=False)
                if self.step % tc.save_interval == 0 or last or self._stop_reason:
                    self.save("rolling")
                if tc.milestone_interval and self.step % tc.milestone_interval == 0:
                    self.save(f"{tc.milestone_prefix}{self.step}")
        if bar is not None:
            bar.close()
        self.writer.wait()  # an async save in flight is on disk before the run reports
        self.stages.finish(self.model, self.step >= self.total_steps, rt.is_main)  # the last stage's backup, the cache freed
        stop_reason = self._stop_reason or "completed"
        if rt.is_main:
            print(f"stopped at step {self.step}: {stop_reason}", file=sys.stderr)
            if stop_reason == "completed" or stop_reason.startswith(("early stopping", "time budget")):
                write_samples(self, print_them=True)
        result = TrainResult(self.run_dir, self.step, self.tokens, last_loss, dict(self.last_val), self.best_val_loss,
                             stop_reason, self.elapsed(), self.resumed_from)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        self.metrics.close()
        if rt.is_main:
            run_dir_lib.save_result(self.run_dir, result)
        return result

    def _out_of_time(self) -> bool:
        """`train.max_seconds` reached (the mean of the ranks' clocks decides, so all agree); sets the stop reason."""
        limit = self.preset.train.max_seconds
        if out := limit is not None and self.runtime.all_reduce_mean(self.elapsed()) >= limit:
            self.request_stop(f"time budget: train.max_seconds ({limit:g} s) reached")
        return out

    def _run_eval(self) -> None:
        t0 = time.perf_counter()
        val = self.evaluate()
        self.last_val = val
        row = {"step": self.step, "tokens": self.tokens, **self.stages.describe(self.stage_index), **val, "eval_seconds": time.perf_counter() - t0, "elapsed": self.elapsed()}
        self.metrics.log(row)
        improved = self.best_val_loss is None or val["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = val["val_loss"]
        for cb in self.callbacks:
            cb.on_eval(self, self.step, row)
        if improved:
            self.save(BEST)


def train(preset: Preset, run_dir: Path | str | None = None, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train a validated preset end to end (resuming if its run dir has checkpoints)."""
    trainer = Trainer(preset, run_dir, callbacks)
    try:
        return trainer.fit()
    finally:
        with contextlib.suppress(CheckpointWriteError):  # let a background write finish (its error is not the story)
            trainer.writer.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.runtime.shutdown()
