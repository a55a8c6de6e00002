"""Seed 001's Python API: `create_training_pipeline(...)`, `pipeline.setup()`, `result = await pipeline.train()`.

A thin layer over the one Trainer: keyword arguments become a preset (seed names mapped onto lmforge's,
see `SEED_OPTIONS`), training runs in a worker thread so the caller's event loop keeps running, and
named events reach user callbacks (sync functions, or coroutines scheduled on the caller's loop).
Every failure (bad path, bad option, an exception mid-training, one raised by a callback) comes back as
`PipelineResult(success=False, error=...)`; nothing is raised out of `setup()` or `train()`.

An epoch is one pass over the train split: the number of optimizer steps it takes is counted once in
`setup()` by reading the split (rows for supervised tasks, packed blocks for language modelling),
so `epochs=N` trains N * steps_per_epoch steps. Validation runs once per epoch unless `eval_interval`
(in steps, as in lmforge presets) is given.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import math
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

GIVEN_MODEL_FILE = "given_model.safetensors"  # model=nn.Module: its weights, read by train.init_from
EVENTS = ("train_start", "step_end", "epoch_end", "eval", "checkpoint", "train_end")

# seed 001 option -> dotted preset key (values pass through unchanged)
SEED_OPTIONS = {
    "batch_size": "train.batch_size",
    "learning_rate": "train.lr",
    "weight_decay": "train.weight_decay",
    "eval_interval": "train.eval_interval",
    "checkpoint_interval": "train.save_interval",
    "log_interval": "train.log_interval",
    "eval_batches": "train.eval_batches",
    "early_stopping_metric": "train.early_stopping_metric",
    "device": "train.device",
    "seed": "train.seed",
    "max_steps": "train.max_steps",
    "grad_accum_steps": "train.grad_accum_steps",
    "num_workers": "data.num_workers",
    "cache_size": "data.cache_size",
    "quality_threshold": "data.quality_threshold",
    "validation_split": "data.validation.fraction",
    "seq_length": "data.seq_length",
    "task": "data.task",
    "shuffle_buffer": "data.shuffle_buffer",
    "warmup_steps": "train.lr_schedule.warmup_steps",
}
# Seed options handled by hand below (they change more than one key, or are not preset keys).
HANDLED = {
    "epochs", "use_amp", "gradient_clipping", "max_grad_norm", "early_stopping", "patience", "objective",
    "tokenizer", "source_type", "source_options", "overrides", "preset", "run_dir",
    "use_grokfast", "grokfast_alpha", "grokfast_lambda", "use_bitnet", "grad_filters", "layer_swaps",
    "weight_bits", "quantization_mode", "streaming",
}
# Seed options lmforge does not take, with the reason given back to the caller.
REFUSED: dict[str, str] = {}
# Seed 001's BitNet options: its documented values select the `bitlinear` swap (b1.58: ternary weights, absmean
# scale, deterministic round-to-nearest); any other value is refused with why.
BITNET_WEIGHT_BITS = (1, 1.58)  # the seed writes weight_bits=1 for BitNet b1.58's ternary weights
BITNET_MODES = ("deterministic",)


class PipelineError(ValueError):
    """A pipeline option that cannot be turned into a valid preset."""


@dataclass
class PipelineResult:
    """What `train()` returns: `success`, the trained `model` (None on failure), `metrics`, and `error` when it failed."""

    success: bool
    model: torch.nn.Module | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    run_dir: Path | None = None
    tokenizer: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Seed 001's output shape for the next phase: {'success', 'model', 'metrics'} (plus 'error')."""
        return {"success": self.success, "model": self.model, "metrics": dict(self.metrics), "error": self.error}


def create_training_pipeline(
    model: Any = "gpt",
    train_data_path: str | Path | None = None,
    val_data_path: str | Path | None = None,
    experiment_name: str = "phase5_training",
    **config: Any,
) -> "TrainingPipeline":
    """A pipeline for `model` (an arch name, a model config dict, or a run dir whose weights start training)
    on `train_data_path` (any file or folder the `auto` source reads: .txt, .jsonl, seed 001 .json samples, .h5, ...).

    `val_data_path` (optional) is the validation set, read whole; without it `validation_split` of the train
    documents (hashed) is held out. Other options: see SEED_OPTIONS / HANDLED and docs/phase5_training.md.
    """
    return TrainingPipeline(model, train_data_path, val_data_path, experiment_name, config)


class TrainingPipeline:
    def __init__(self, model: Any, train_data_path: Any, val_data_path: Any, experiment_name: str, config: dict[str, Any]):
        self.model_spec, self.train_data_path, self.val_data_path = model, train_data_path, val_data_path
        self.experiment_name, self.config = experiment_name, dict(config)
        self.callbacks: dict[str, list[Callable]] = {e: [] for e in EVENTS}
        self.trainer = None
        self.steps_per_epoch: int | None = None
        self.error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ callbacks

    def register_callback(self, event: str, fn: Callable) -> None:
        """`fn` runs on `event`; it may be `async def`. Signatures: train_start(info), step_end(step, metrics),
        epoch_end(epoch, metrics), eval(step, metrics), checkpoint(step, slot), train_end(metrics)."""
        if event not in self.callbacks:
            raise ValueError(f"unknown event {event!r}; allowed: {', '.join(EVENTS)}")
        if not callable(fn):
            raise TypeError(f"callback for {event!r} is not callable: {fn!r}")
        self.callbacks[event].append(fn)

    def emit(self, event: str, *args: Any) -> None:
        """Run the event's callbacks in the training thread; a coroutine runs on the caller's loop and is awaited."""
        for fn in self.callbacks[event]:
            try:
                out = fn(*args)
                if inspect.isawaitable(out):
                    if self._loop is None:
                        raise RuntimeError("an async callback needs pipeline.train() to be awaited on an event loop")
                    asyncio.run_coroutine_threadsafe(_as_coroutine(out), self._loop).result()
            except Exception as err:
                raise CallbackError(f"callback {getattr(fn, '__name__', fn)!r} for {event!r} raised {type(err).__name__}: {err}") from err

    # ------------------------------------------------------------------ setup

    def setup(self) -> "TrainingPipeline":
        """Validate the options, build the run (tokenizer, labels, model, data) and count steps per epoch.

        Never raises: a problem is kept in `self.error` and `train()` returns it as a failed result.
        """
        self.error = None
        try:
            self._setup()
        except Exception as err:  # noqa: BLE001  every failure is reported through the result
            self.error = _describe(err)
            self.trainer = None
        return self

    def build_preset(self) -> dict[str, Any]:
        """The raw preset these options describe (validated later, with every problem listed)."""
        from lmforge.config import apply_overrides, read_preset_file, resolve_preset_path

        cfg = dict(self.config)
        unknown = set(cfg) - set(SEED_OPTIONS) - HANDLED - set(REFUSED)
        if unknown:
            allowed = ", ".join(sorted(set(SEED_OPTIONS) | HANDLED))
            raise PipelineError(f"unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}")
        for key in set(cfg) & set(REFUSED):
            raise PipelineError(f"option {key!r} is not supported: {REFUSED[key]}")
        base = cfg.get("preset")
        raw: dict[str, Any] = json.loads(json.dumps(read_preset_file(resolve_preset_path(str(base))))) if base else {}
        raw["name"] = self.experiment_name
        raw.setdefault("train", {})
        raw.setdefault("data", {})
        raw["model"] = self._model_section(raw.get("model"))
        if self.train_data_path is None and "sources" not in raw["data"]:
            raise PipelineError("train_data_path is required (or a preset whose data section has sources)")
        if self.train_data_path is not None:
            raw["data"]["sources"] = [self._source(self.train_data_path)]
            # hash split: every source type can do it ('tail' cannot cut one JSON object of samples)
            fraction = raw["data"].get("validation", {}).get("fraction", 0.1)
            raw["data"]["validation"] = {"method": "hash", "fraction": fraction}
        if self.val_data_path is not None:
            raw["data"]["val_sources"] = [self._source(self.val_data_path)]
            raw["data"].pop("validation", None)
        if "tokenizer" in cfg:
            tok = cfg["tokenizer"]
            raw["data"]["tokenizer"] = {"type": tok} if isinstance(tok, str) else tok
        raw["data"].setdefault("tokenizer", {"type": "byte"})
        if self._init_run is not None:  # continue from a run: its tokenizer, or ids would mean other tokens
            raw["data"]["tokenizer"] = self._init_run_preset["data"]["tokenizer"]
        train = raw["train"]
        train.setdefault("max_steps", 1)  # replaced from `epochs` once the data has been counted
        train.setdefault("log_interval", 1)
        train.setdefault("progress_bar", False)
        if "use_amp" in cfg:
            train["precision"] = "auto" if cfg["use_amp"] else "fp32"
        if "max_grad_norm" in cfg:
            train["grad_clip"] = cfg["max_grad_norm"]
        if cfg.get("gradient_clipping") is False:
            train["grad_clip"] = 0.0
        if cfg.get("early_stopping", "patience" in cfg):
            train["early_stopping_patience"] = cfg.get("patience", 5)
        elif cfg.get("early_stopping") is False:
            train["early_stopping_patience"] = 0
        if self._init_run is not None:
            train["init_from"] = str(self._init_run)
        task = cfg.get("task", raw["data"].get("task", "lm"))
        if "objective" in cfg:
            obj = cfg["objective"]
            raw["objective"] = {"name": obj} if isinstance(obj, str) else obj
        elif "objective" not in raw:
            raw["objective"] = {"name": "classification" if task == "classification" else "clm"}
        raw["grad_filters"] = list(cfg.get("grad_filters", raw.get("grad_filters", [])))
        raw["layer_swaps"] = list(cfg.get("layer_swaps", raw.get("layer_swaps", [])))
        if cfg.get("use_grokfast"):  # a base preset's own grokfast_ema takes the options' alpha / lambda instead
            own = next((f for f in raw["grad_filters"] if f.get("name") == "grokfast_ema"), None)
            spec = _grokfast_spec(cfg)
            if own is None:
                raw["grad_filters"].append(spec)
            else:
                own.update(spec)
        if _wants_bitnet(cfg) and not any(s.get("name") == "bitlinear" for s in raw["layer_swaps"]):
            raw["layer_swaps"].append(_registered_spec("LAYER_SWAPS", "bitlinear", "use_bitnet"))
        if "streaming" in cfg:  # every lmforge source reads its files as a stream; nothing to switch
            _note(f"streaming={cfg['streaming']!r}: lmforge's sources always stream their files (data.cache_size "
                  "bounds what is held in memory)")
        if "warmup_steps" in cfg:
            train.setdefault("lr_schedule", {"name": "warmup_cosine"})
        overrides = {SEED_OPTIONS[k]: v for k, v in cfg.items() if k in SEED_OPTIONS}
        overrides.update(cfg.get("overrides") or {})
        return apply_overrides(raw, overrides)

    def _model_section(self, from_preset: Any) -> dict[str, Any]:
        """An arch name, a model config dict, or a run dir (its model config; its weights via train.init_from)."""
        from lmforge.registry import MODELS
        import lmforge.components  # noqa: F401

        spec = self.model_spec
        self._init_run, self._init_run_preset = None, None
        self._module = None
        if isinstance(spec, torch.nn.Module):  # Phase 4's output: trained as given (its config, then its weights)
            config = getattr(spec, "config", None)
            arch = next((n for n in MODELS.names() if config is not None and MODELS.config_class(n) is type(config)), None)
            if arch is None:
                raise PipelineError(
                    f"model=: a {type(spec).__name__} has no config of a registered arch ({', '.join(MODELS.names())}), so "
                    "lmforge's checkpoints could not rebuild it; pass an lmforge model (lmforge.models.build_model, or a "
                    "trained run's model), or register its arch with lmforge.registry.MODELS.register"
                )
            self._module = spec
            return config.model_dump(mode="json")
        if spec is None:
            if not from_preset:
                raise PipelineError("model= is required (an arch name, a model config dict or a run dir)")
            return from_preset
        if isinstance(spec, dict):
            if "arch" not in spec:
                raise PipelineError(f"model config dict needs an 'arch' key; allowed: {', '.join(MODELS.names())}")
            return dict(spec)
        if isinstance(spec, (str, Path)):
            if str(spec) in MODELS:
                return {**(from_preset or {}), "arch": str(spec)} if (from_preset or {}).get("arch") == str(spec) else {"arch": str(spec)}
            run = Path(spec)
            if (run / "preset.json").is_file():
                self._init_run = run
                self._init_run_preset = json.loads((run / "preset.json").read_text())
                return self._init_run_preset["model"]
            raise PipelineError(f"model={spec!r} is neither a registered arch ({', '.join(MODELS.names())}) nor a run dir with preset.json")
        raise PipelineError(f"model= must be an arch name, a model config dict or a run dir, got {type(spec).__name__}")

    def _source(self, path: Any) -> dict[str, Any]:
        p = Path(path)
        if not p.exists():
            raise PipelineError(f"data path {str(path)!r} does not exist")
        spec = {"type": self.config.get("source_type", "auto"), "path": str(p)}
        spec.update(self.config.get("source_options") or {})
        return spec

    def _setup(self) -> None:
        from lmforge.config import load_preset
        from lmforge.data import build_tokenizer, iter_texts
        from lmforge.data.stream import train_documents
        from lmforge.data.supervised import setup_label_vocab
        from lmforge.training import run_dir as run_dir_lib
        from lmforge.training.trainer import Trainer

        raw = self.build_preset()
        preset = load_preset(raw)
        run_dir = Path(self.config.get("run_dir") or run_dir_lib.default_run_dir(preset))
        run_dir_lib.prepare(run_dir)
        if self._module is not None:  # the given module's weights start the run (train.init_from reads the file)
            from safetensors.torch import save_file

            from lmforge.training.checkpoint import unique_state_dict

            weights = run_dir / GIVEN_MODEL_FILE
            save_file({k: v.detach().cpu().contiguous() for k, v in unique_state_dict(self._module).items()}, str(weights))
            preset.train.init_from = str(weights)
        data = preset.data
        if self._init_run is not None:
            from lmforge.data import load_tokenizer

            load_tokenizer(self._init_run).save(run_dir)
        vocab_split = "all" if data.tokenizer.type == "char" else "train"
        tokenizer = build_tokenizer(data.tokenizer, run_dir, lambda: iter_texts(data, vocab_split, data.tokenizer.train_chars))
        labels = setup_label_vocab(run_dir, lambda: train_documents(data)) if data.task == "classification" else None
        seq_length = data.seq_length or preset.model.block_size
        tc = preset.train
        self.steps_per_epoch = count_steps_per_epoch(data, tokenizer, labels, tc.batch_size * tc.grad_accum_steps, seq_length)
        if "max_steps" not in self.config and "max_steps" not in (self.config.get("overrides") or {}):
            tc.max_steps = max(1, int(self.config.get("epochs", 1)) * self.steps_per_epoch)
        if "lr_schedule" not in raw["train"] and hasattr(tc.lr_schedule, "warmup_steps"):
            # the default warmup (100 steps) would swallow a run of a few epochs: warm up over its first 5%
            tc.lr_schedule.warmup_steps = max(1, tc.max_steps // 20)
        if "eval_interval" not in self.config:
            tc.eval_interval = self.steps_per_epoch
        if "checkpoint_interval" not in self.config:
            tc.save_interval = self.steps_per_epoch
        self.preset = preset
        self.trainer = Trainer(preset, run_dir, [_EventBridge(self)])

    # ------------------------------------------------------------------ train

    async def train(self) -> PipelineResult:
        """Train in a worker thread; the caller's loop keeps running. Cancelling the await asks training to stop and save."""
        if self.trainer is None and self.error is None:
            self.setup()
        if self.error is not None or self.trainer is None:
            return PipelineResult(False, error=self.error or "setup() did not build a trainer")
        self._loop = asyncio.get_running_loop()
        try:
            return await asyncio.to_thread(self._train_blocking)
        except asyncio.CancelledError:
            self.trainer.request_stop("cancelled by the caller")
            raise

    def _train_blocking(self) -> PipelineResult:
        trainer = self.trainer
        try:
            result = trainer.fit()
            metrics = self._final_metrics(result)
            self.emit("train_end", metrics)
            trainer.model.eval()
            return PipelineResult(True, trainer.model, metrics, None, trainer.run_dir, trainer.tokenizer)
        except Exception as err:  # noqa: BLE001  reported through the result, never raised into the caller's loop
            return PipelineResult(False, None, self._partial_metrics(), _describe(err), trainer.run_dir, trainer.tokenizer)
        finally:
            trainer.metrics.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.runtime.shutdown()

    def _final_metrics(self, result) -> dict[str, Any]:
        bridge = self._bridge()
        return {
            "final_loss": result.final_loss,
            "best_val_loss": result.best_val_loss,
            "best_accuracy": bridge.best_accuracy,
            "final_accuracy": bridge.final_accuracy,
            "epochs_completed": result.steps // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "steps": result.steps,
            "tokens": result.tokens,
            "training_time_hours": result.elapsed / 3600.0,
            "stop_reason": result.stop_reason,
            "last_val": dict(result.last_val),
        }

    def _partial_metrics(self) -> dict[str, Any]:
        bridge = self._bridge()
        step = self.trainer.step if self.trainer is not None else 0
        return {"steps": step, "best_accuracy": bridge.best_accuracy, "final_accuracy": bridge.final_accuracy,
                "epochs_completed": step // self.steps_per_epoch if self.steps_per_epoch else 0}

    def _bridge(self) -> "_EventBridge":
        return next(cb for cb in self.trainer.callbacks if isinstance(cb, _EventBridge))


class CallbackError(RuntimeError):
    """A user callback raised; training stops and the result carries this message."""


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


def _describe(err: BaseException) -> str:
    """The reason for a failed result: the message, with the exception type when the message alone is unclear."""
    from lmforge.config import PresetError

    if isinstance(err, (PipelineError, PresetError, CallbackError)):
        return str(err)
    where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return f"{type(err).__name__}: {err}{at}"


def _registered_spec(registry_name: str, name: str, option: str) -> dict[str, Any]:
    import lmforge.components  # noqa: F401
    from lmforge import registry

    reg = getattr(registry, registry_name)
    if name not in reg:
        raise PipelineError(f"{option}=True needs the {reg.kind} {name!r}, which this lmforge build lacks; registered: {', '.join(reg.names()) or '(none)'}")
    return {"name": name}


def _wants_bitnet(cfg: dict[str, Any]) -> bool:
    """use_bitnet, or seed 001's weight_bits / quantization_mode, checked against what BitNet b1.58 is."""
    bits, mode = cfg.get("weight_bits"), cfg.get("quantization_mode")
    if bits is not None and bits not in BITNET_WEIGHT_BITS:
        raise PipelineError(f"weight_bits={bits!r}: lmforge's BitNet is b1.58, ternary weights (weight_bits=1 or 1.58); "
                            "for 8/4-bit weights train without it and quantize the export")
    if mode is not None and mode not in BITNET_MODES:
        raise PipelineError(f"quantization_mode={mode!r}: BitNet b1.58 rounds to the nearest ternary value "
                            f"({', '.join(map(repr, BITNET_MODES))}); stochastic rounding is not part of it")
    if cfg.get("use_bitnet") is False and (bits is not None or mode is not None):
        raise PipelineError("weight_bits / quantization_mode configure BitNet, but use_bitnet=False; drop them or set use_bitnet=True")
    return bool(cfg.get("use_bitnet") or bits is not None or mode is not None)


_noted: set[str] = set()


def _note(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        warnings.warn(message, stacklevel=3)


def _grokfast_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """use_grokfast -> the `grokfast_ema` gradient filter; the seed's grokfast_alpha/grokfast_lambda become its alpha/lamb.

    The preset validates the values (GrokfastEMAConfig), so a bad alpha comes back as a failed result naming the field.
    """
    spec = _registered_spec("GRAD_FILTERS", "grokfast_ema", "use_grokfast")
    if "grokfast_alpha" in cfg:
        spec["alpha"] = cfg["grokfast_alpha"]
    if "grokfast_lambda" in cfg:
        spec["lamb"] = cfg["grokfast_lambda"]
    return spec


def count_steps_per_epoch(data, tokenizer, labels, rows_per_step: int, seq_length: int) -> int:
    """Optimizer steps in one pass over the train split: its rows (samples, or packed LM blocks) / rows per step."""
    from lmforge.data.stream import ReaderStream, build_sources

    stream = ReaderStream(
        build_sources(data, "train"), tokenizer, seq_length=seq_length, batch_size=rows_per_step,
        reader=0, num_readers=1, loop=False, shuffle_buffer=0, seed=data.seed, task=data.task, labels=labels,
    )
    steps = sum(1 for _ in stream.batches())
    if steps == 0:
        raise PipelineError("the train split is empty: nothing to train on")
    return steps


from lmforge.training.callbacks import Callback  # noqa: E402  (after the API above, which needs no torch training import)


class _EventBridge(Callback):
    """Turns Trainer callbacks into pipeline events and tracks the epoch boundary and best/final accuracy."""

    def __init__(self, pipeline: TrainingPipeline):
        self.pipeline = pipeline
        self.best_accuracy: float | None = None
        self.final_accuracy: float | None = None
        self.epochs_done = 0
        self.epoch_losses: list[float] = []
        self.epoch_accuracies: list[float] = []
        self.pending: dict[str, Any] | None = None  # an epoch ended at this step; sent after its eval, if one follows

    def on_train_start(self, trainer) -> None:
        p = self.pipeline
        self.epochs_done = trainer.step // p.steps_per_epoch
        p.emit("train_start", {"run_dir": str(trainer.run_dir), "total_steps": trainer.total_steps, "steps_per_epoch": p.steps_per_epoch,
                               "epochs": math.ceil(trainer.total_steps / p.steps_per_epoch), "resumed_from": trainer.resumed_from})

    def on_step_end(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        self._flush()
        self.pipeline.emit("step_end", step, metrics)
        self.epoch_losses.append(metrics["loss"])
        if "accuracy" in metrics:
            self.epoch_accuracies.append(metrics["accuracy"])
        self._close_epoch(step)

    def _close_epoch(self, step: int) -> None:
        """At the first logged step or evaluation past an epoch boundary: hold its row until its validation is known."""
        epoch = step // self.pipeline.steps_per_epoch
        if epoch <= self.epochs_done:
            return
        self.epochs_done = epoch
        row: dict[str, Any] = {"epoch": epoch, "step": step}
        if self.epoch_losses:  # mean of the logged train losses of the epoch
            row["loss"] = sum(self.epoch_losses) / len(self.epoch_losses)
        if self.epoch_accuracies:
            row["train_accuracy"] = sum(self.epoch_accuracies) / len(self.epoch_accuracies)
            row["accuracy"] = row["train_accuracy"]
        self.epoch_losses, self.epoch_accuracies = [], []
        self.pending = row

    def on_eval(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        self._close_epoch(step)  # the eval at an epoch's last step may come before that step is logged
        acc = metrics.get("val_accuracy")
        if acc is not None:
            self.final_accuracy = acc
            self.best_accuracy = acc if self.best_accuracy is None else max(self.best_accuracy, acc)
        self.pipeline.emit("eval", step, metrics)
        if self.pending is not None and self.pending["step"] == step:
            self.pending.update({k: v for k, v in metrics.items() if k.startswith("val_")})
            if acc is not None:
                self.pending["accuracy"] = acc
            self._flush()

    def on_save(self, trainer, step: int, slot: str) -> None:
        self.pipeline.emit("checkpoint", step, slot)

    def on_train_end(self, trainer, result) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.pending is not None:
            row, self.pending = self.pending, None
            self.pipeline.emit("epoch_end", row["epoch"], row)
