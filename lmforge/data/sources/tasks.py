"""Algorithmic-task sources a preset can name: `modular_arithmetic`, `mqar`, `needle` (generators in lmforge/data/tasks.py).

Each yields one sample per document with answer-only labels, for `data.task: "labeled"`:
- modular_arithmetic and mqar: `tokens` and aligned `labels` (ids of the task's own vocabulary; -100 = no loss);
- needle: `segments` of text (the prompt over real filler, untrained; the value and its period, trained),
  encoded by the run's tokenizer.
Every task has its own seeded train/val split, so `data.validation` does not apply to it: modular arithmetic
cuts one seeded permutation of all equations at `train_fraction`; mqar draws the val samples from a seed
stream the train samples never use; needle builds its val haystacks from the tail of the filler file.
A document's position in an epoch is the whole resume state, and each sample is a pure function of
(seed, split, epoch, index), so a resumed run sees exactly the samples it would have.
These are research tasks: they are used only where a preset names them.
"""
from __future__ import annotations

import random
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar, Iterator, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, FileSourceConfig, Source, SourceConfig
from lmforge.data.splits import Split, ValidationConfig
from lmforge.data.tasks import IGNORE, MQARSetting, ModularOp, ModularTask, build_prompt, expand_tokens, make_needle, mqar_batch
from lmforge.registry import SOURCES

SPLIT_CODE = {"train": 0, "val": 1}


class TaskSourceConfig(SourceConfig):
    """A task source: its documents carry labels, so the data section must use data.task 'labeled'."""

    requires_task: ClassVar[str] = "labeled"

    def ids_needed(self) -> int | None:
        """The vocabulary its token ids need (None: text encoded by the run's tokenizer)."""
        return None


class TaskSource(Source):
    """A finite list of samples per epoch, indexed; the state is the next index."""

    def __init__(self, config: SourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=ValidationConfig(method="none"), seed=seed)

    @abstractmethod
    def __len__(self) -> int:
        """Samples per epoch of this split."""

    @abstractmethod
    def sample(self, index: int, epoch: int) -> Document:
        """Sample `index` of `epoch`: a pure function of (seed, split, epoch, index)."""

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        for i in range(int(state["index"]) if state else 0, len(self)):
            yield self.sample(i, epoch), {"index": i + 1}


def _labeled(source: str, tokens: list[int], labels: list[int]) -> Document:
    return {"text": "", "source": source, "eos": False, "tokens": tokens, "labels": labels}


# ---------------------------------------------------------------------------- modular arithmetic


class ModularArithmeticConfig(TaskSourceConfig):
    """The Grokfast paper's `x op y = c` mod p: the model reads `x op y =` and is scored on c only."""

    type: Literal["modular_arithmetic"] = "modular_arithmetic"
    p: int = Field(97, ge=3, description="the modulus (the paper: 97)")
    op: ModularOp = Field("*", description="the operation (the paper's headline: *)")
    train_fraction: float = Field(0.5, gt=0, lt=1, description="share of all p*(p-1) equations in the train split (the paper: 0.5)")
    split_seed: int = Field(0, description="seed of the train/val permutation")
    shuffle: bool = Field(True, description="train: a new order of the train equations each epoch, as the paper's loader")

    @model_validator(mode="after")
    def _prime_for_division(self) -> "ModularArithmeticConfig":
        if self.op == "/" and any(self.p % d == 0 for d in range(2, int(self.p ** 0.5) + 1)):
            raise ValueError(f"op '/' needs a prime p (x / y = x * y^(p-2) mod p), got {self.p}")
        return self

    def ids_needed(self) -> int:
        return self.p + 2


@SOURCES.register("modular_arithmetic", config=ModularArithmeticConfig)
class ModularArithmeticSource(TaskSource):
    def __init__(self, config: ModularArithmeticConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.task = ModularTask(config.p, config.op)
        train, val = self.task.split(config.train_fraction, config.split_seed)
        self.rows = train if split == "train" else val
        self.shuffle = config.shuffle and split == "train"
        self._order_epoch: int | None = None
        self._order_cache = torch.arange(0)

    def __len__(self) -> int:
        return len(self.rows)

    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's order of the rows, computed once per epoch (not per sample)."""
        if self._order_epoch != epoch:
            n = len(self.rows)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order_cache = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
            self._order_epoch = epoch
        return self._order_cache

    def sample(self, index: int, epoch: int) -> Document:
        row = self.rows[self._order(epoch)[index]].tolist()
        return _labeled(self.name, row[:4], [IGNORE, IGNORE, IGNORE, row[4]])


# ---------------------------------------------------------------------------- MQAR


class MQARSourceConfig(TaskSourceConfig):
    """Zoology's multi-query associative recall: key-value pairs, then queries; labels only at the queries."""

    type: Literal["mqar"] = "mqar"
    seq_len: int = Field(64, ge=4, description="tokens per sample (before patch expansion)")
    num_kv_pairs: int | list[int] = Field(8, description="pairs per sample; a list = one drawn per sample")
    vocab_size: int = Field(256, ge=8, description="keys from 1..V/2-1, values from V/2..V-1")
    power_a: float = Field(0.01, gt=0, description="query gaps ~ g^(a-1) (Zoology's default 0.01)")
    random_non_queries: bool = Field(True, description="non-query slots of the query region hold random tokens (Zoology)")
    patch_size: int = Field(1, ge=1, description="each token written as this many copies (byte-patch models: 4 = one agiformer patch)")
    train_samples: int = Field(100_000, ge=1, description="train samples per epoch (every epoch draws new ones)")
    val_samples: int = Field(512, ge=1, description="held-out samples, the same every evaluation")

    @field_validator("num_kv_pairs")
    @classmethod
    def _pairs(cls, value: int | list[int]) -> list[int]:
        value = [value] if isinstance(value, int) else value
        if not value or any(v < 1 for v in value):
            raise ValueError("needs positive pair counts")
        return value

    @model_validator(mode="after")
    def _fits(self) -> "MQARSourceConfig":
        for kv in self.num_kv_pairs:
            MQARSetting(self.seq_len, kv, self.vocab_size, self.power_a, self.random_non_queries)  # raises ValueError
        return self

    def ids_needed(self) -> int:
        return self.vocab_size


@SOURCES.register("mqar", config=MQARSourceConfig)
class MQARSource(TaskSource):
    def __init__(self, config: MQARSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.cfg = config

    def __len__(self) -> int:
        return self.cfg.train_samples if self.split == "train" else self.cfg.val_samples

    def sample(self, index: int, epoch: int) -> Document:
        c = self.cfg
        rng = np.random.default_rng([self.seed, SPLIT_CODE[self.split], epoch if self.split == "train" else 0, index])
        kv = int(rng.choice(c.num_kv_pairs))
        x, y = mqar_batch(MQARSetting(c.seq_len, kv, c.vocab_size, c.power_a, c.random_non_queries), 1, rng)
        if c.patch_size > 1:
            x, y = expand_tokens(x, y, c.patch_size)
        return _labeled(self.name, x[0].tolist(), y[0].tolist())


# ---------------------------------------------------------------------------- needle


class NeedleSourceConfig(FileSourceConfig, TaskSourceConfig):
    """The needle evaluator's prompts over real filler text (`path`), the value and its period as the only targets."""

    type: Literal["needle"] = "needle"
    haystack_chars: list[int] = Field(default_factory=lambda: [32, 64, 128, 192], min_length=1,
                                      description="haystack lengths in characters, one drawn per sample")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="the tail of the filler file the val haystacks are cut from")
    train_samples: int = Field(50_000, ge=1, description="train samples per epoch (fresh needles every epoch)")
    val_samples: int = Field(256, ge=1, description="held-out samples, the same every evaluation")

    @field_validator("haystack_chars")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("haystack lengths must be positive")
        return value


@SOURCES.register("needle", config=NeedleSourceConfig)
class NeedleSource(TaskSource):
    def __init__(self, config: NeedleSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.cfg = config
        paths = [config.path] if isinstance(config.path, str) else config.path
        try:
            text = "\n".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in paths)
        except OSError as err:
            raise DataError(f"data source {self.name!r}: cannot read the filler: {err}") from None
        cut = int(len(text) * (1 - config.val_fraction))
        self.filler = text[:cut] if split == "train" else text[cut:]
        longest = max(config.haystack_chars)
        if len(self.filler) < longest:
            raise DataError(f"data source {self.name!r}: the {split} filler has {len(self.filler)} characters, "
                            f"fewer than the longest haystack ({longest})")

    def __len__(self) -> int:
        return self.cfg.train_samples if self.split == "train" else self.cfg.val_samples

    def sample(self, index: int, epoch: int) -> Document:
        rng = random.Random(f"{self.seed}/{self.split}/{epoch if self.split == 'train' else 0}/{index}")
        key, value = make_needle(rng)
        length = rng.choice(self.cfg.haystack_chars)
        prompt = build_prompt(self.filler, length, rng.random(), key, value, rng)
        answer = value + "."
        return {"text": prompt + answer, "source": self.name, "eos": False,  # text: for tokenizers that learn, dedupe, filters
                "segments": [{"text": prompt, "train": False}, {"text": answer, "train": True}]}
