"""The plug points, as typed protocols: what the trainer, inference and export may call on a component.

A leaf module (it imports only torch and typing), so any layer can name these types without an import
cycle. A recipe's component implements the protocol of its registry; `Objective` is a base class with
no-op defaults for its optional hooks, so an objective that subclasses it states only what it has. The trainer calls these methods and never probes a component with getattr/hasattr.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn as nn

Batch = dict[str, torch.Tensor]
Metrics = dict[str, Any]


class StepContextLike(Protocol):
    step: int  # 0-based optimizer step (within the stage for a stage's own objective)
    total_steps: int


@runtime_checkable
class LanguageModel(Protocol):
    """What every registered model arch provides (gpt, vgt, agiformer)."""

    def forward(self, input_ids: torch.Tensor) -> Any:  # -> lmforge.models.output.ModelOutput
        ...

    def step(self, input_ids: torch.Tensor, cache: Any) -> Any:  # incremental decoding: next logits, updated cache
        ...

    def new_cache(self, batch_size: int, max_len: int | None = None, device: Any = None, dtype: Any = None) -> Any:
        ...

    def flops_per_token(self, seq_len: int) -> float:  # training FLOPs per token (6N-style), for MFU
        ...

    def get_input_embeddings(self) -> nn.Embedding:
        ...


@runtime_checkable
class BlockStack(Protocol):
    """A model whose body is a stack of repeated blocks (every registered arch): the unit FSDP shards and
    activation checkpointing recomputes."""

    blocks: nn.ModuleList


@runtime_checkable
class LayerwiseModel(Protocol):
    """A block stack that can run a prefix of its blocks and serve its frozen lower layers from an activation cache
    (gpt): what StackWise's layer-wise, block-wise and progressive stage plans need."""

    blocks: nn.ModuleList
    depth: int
    config: Any  # its config section (tie_embeddings is read)

    def set_depth(self, depth: int) -> None:
        ...

    def use_activation_cache(self, cache: Any) -> None:  # lmforge.models.activation_cache.ActivationCache | None
        ...

    def frozen_prefix_depth(self) -> int:
        ...

    def reset_head(self) -> list[nn.Parameter]:  # re-initialise the final norm and LM head; returns their parameters
        ...


class RunContext(Protocol):
    """What an objective's `bind` may read of the run it joins (the Trainer is one)."""

    runtime: Any  # lmforge.runtime.Runtime
    tokenizer: Any
    seq_length: int
    labels: Any  # the label vocabulary of data.task classification, else None

    def load_run(self, run_dir: str, slot: str | None = None) -> Any:
        """A finished run (preset, model, tokenizer) on this run's device: a distillation teacher, say."""
        ...


class Objective(ABC):
    """`objective(model, batch, ctx) -> (loss, metrics)`; the other methods are optional hooks with no-op defaults."""

    left_to_right: ClassVar[bool] = True  # False: it trains a model that is not sampled token by token (mlm, mask_diffusion)

    @abstractmethod
    def __call__(self, model: nn.Module, batch: Batch, ctx: StepContextLike) -> tuple[torch.Tensor, Metrics]:
        """The loss to backpropagate and the metrics to log for one micro-batch."""

    def bind(self, model: nn.Module, run: RunContext) -> None:
        """Called once before the optimizer is built: attach heads (they are then trained and checkpointed)."""

    def evaluate(self, model: nn.Module, batches: list[Batch], runtime: Any) -> dict[str, float] | None:
        """The objective's own validation metrics (must include val_loss); None = the trainer's LM metrics."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""


class GradientFilter(Protocol):
    """Rewrites gradients in place between backward (unscaled) and clipping; its state goes in checkpoints."""

    def __call__(self, model: nn.Module) -> None:
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class LRSchedule(Protocol):
    """step (0-based) -> multiplier of the peak LR; see lmforge.training.schedules.Schedule for the base class."""

    def __call__(self, step: int) -> float:
        ...

    def weight_decay_multiplier(self, step: int) -> float:
        ...

    def describe(self, step: int) -> dict[str, Any]:
        ...


class Optimizer(Protocol):
    """torch.optim.Optimizer's interface (an OptimizerChain of several optimizers has it too)."""

    param_groups: list[dict[str, Any]]

    def step(self) -> Any:
        ...

    def zero_grad(self, set_to_none: bool = True) -> None:
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class OptimizerBuilder(Protocol):
    """A registered optimizer: (its config, the model, the train section, the runtime) -> an Optimizer."""

    def __call__(self, cfg: Any, model: nn.Module, train_cfg: Any, runtime: Any) -> Optimizer:
        ...


class LayerSwap(Protocol):
    """Replaces layers of a built model (torchtitan's ModelConverter): `swap(model, cfg) -> model`.

    The swapped model's state dict holds the swap's own keys (e.g. BitNet's latent weights), so checkpoints,
    inference and export load it by applying the same swaps to a freshly built model first."""

    def __call__(self, model: nn.Module, cfg: Any) -> nn.Module:
        ...


class QuantizedLayer(ABC):
    """Marker base of a layer a swap put in whose matmuls run on quantized (or fake-quantized) weights: BitNet's
    ternary layers, FP8/FP4 QAT, NF4 + LoRA. A model holding one reports no MFU: its matmul rate is not measured
    against the fp32/bf16 peak (torchtitan skips MFU under FP8/MX for the same reason); TFLOP/s is still logged."""


def has_quantized_layers(model: nn.Module) -> bool:
    return any(isinstance(m, QuantizedLayer) for m in model.modules())
