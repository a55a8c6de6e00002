"""Preset schema of the `data` section: sources, tokenizer, validation split, packing and loading.

Each entry of `sources` is validated by the config class its `type` registered in
`lmforge.registry.SOURCES`, so a new source brings its own fields and this file never lists them.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lmforge.config_base import Section
from lmforge.data.adaptive import AdaptiveConfig
from lmforge.data.splits import ValidationConfig  # noqa: F401  (re-exported: lmforge.data.config.ValidationConfig)
import lmforge.data.sources  # noqa: F401  (fills SOURCES: the schema validates each source with its own config)
from lmforge.registry import SOURCES


class TokenizerConfig(Section):
    """Which tokenizer turns text into ids; char and bpe are built from the data once per run dir."""

    type: Literal["byte", "char", "bpe", "pretrained", "ids"] = "byte"
    vocab_size: int = Field(8192, ge=2, le=16_777_216, description="bpe: target vocabulary size (256 bytes + eos + merges, >= 259); ids: the task's ids")
    path: str | None = Field(
        None, description="char: vocab.json, loaded if it exists, else built from the data and written there; pretrained: tokenizer.json"
    )
    train_chars: int = Field(20_000_000, ge=1, description="max characters of text used to train bpe / build the char vocab")

    @model_validator(mode="after")
    def _path_fits_type(self) -> "TokenizerConfig":
        if self.type == "pretrained" and not self.path:
            raise ValueError("tokenizer.type 'pretrained' needs tokenizer.path (a tokenizer.json file)")
        if self.type in ("byte", "bpe", "ids") and self.path:
            raise ValueError(f"tokenizer.path is only used by 'char' and 'pretrained', not {self.type!r}")
        if self.type == "bpe" and self.vocab_size < 259:
            raise ValueError(f"tokenizer.vocab_size: bpe needs at least 259 (256 bytes, eos, a merge), got {self.vocab_size}")
        if self.type == "ids" and "vocab_size" not in self.model_fields_set:
            raise ValueError("tokenizer.type 'ids' (token ids of an algorithmic task) needs tokenizer.vocab_size")
        return self


class DataConfig(Section):
    """Everything between files on disk and (input_ids, labels) batches."""

    sources: list[Any] = Field(min_length=1, description="source configs, each with a registered `type`")
    val_sources: list[Any] | None = Field(
        None, description="separate validation data: when set, these sources (read whole) are the val split and `sources` "
        "(read whole) the train split, and data.validation is not used; None = split each source by data.validation"
    )
    mix: Literal["round_robin", "sequential", "weighted"] = Field(
        "round_robin",
        description="round_robin: one document per source in turn; sequential: each source's epoch in order; "
        "weighted: each document from a source drawn with probability proportional to source_weights (seeded, resumable)",
    )
    source_weights: list[float] | None = Field(
        None, description="mix 'weighted' only: one positive weight per entry of `sources`, in the same order (need not sum to 1)"
    )
    adaptive: AdaptiveConfig | None = Field(
        None, description="reweight sources by their recent training loss (higher loss -> drawn more); every mix mode then "
        "draws by weight, see data/adaptive.py; None = off"
    )
    task: Literal["lm", "classification", "seq2seq", "labeled"] = Field(
        "lm", description="lm: pack documents into blocks; classification: one sample per row, its target a class id "
        "(class_labels); seq2seq: input then target in one row, loss on the target tokens only; labeled: one sample per "
        "row with its own per-token labels (the algorithmic task sources) (see data/supervised.py)"
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    seq_length: int | None = Field(None, ge=1, le=16_777_216, description="tokens per training sequence; None = the model's block_size")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    quality_threshold: float | None = Field(
        None, description="drop documents whose metadata.quality is below this (documents without a quality are kept); None = off"
    )
    min_text_length: int = Field(0, ge=0, description="drop text documents with fewer characters than this (token documents are kept); 0 = off")
    dedupe: bool = Field(
        False, description="drop a document whose exact content (text, or token ids) already appeared in this epoch of its source; "
        "holds ~70 bytes per distinct document per reader, and a resume re-reads the epoch so far (see data/dedupe.py)"
    )
    cache_size: int = Field(
        1000, ge=0, description="decoded samples kept per map-style source (binary windows, hdf5 rows) in an LRU cache, per reader; 0 = off"
    )
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes per rank; 0 = read in the training process")
    packing: Literal["concat", "per_document"] = Field(
        "concat", description="train blocks: concat = documents joined, blocks span them (nanoGPT); per_document = each "
        "document cut on its own, its last block padded, so a document always gives the same blocks (an activation cache "
        "then meets them again each epoch)")
    shuffle_buffer: int = Field(1024, ge=0, le=16_777_216, description="packed blocks held for shuffling; 0 = no shuffling")
    seed: int = 1337

    @model_validator(mode="after")
    def _weights_fit_mix(self) -> "DataConfig":
        if self.mix == "weighted":
            if self.source_weights is None or len(self.source_weights) != len(self.sources):
                raise ValueError(f"data.mix 'weighted' needs data.source_weights with one weight per source ({len(self.sources)})")
            if any(w <= 0 for w in self.source_weights):
                raise ValueError(f"data.source_weights must all be > 0, got {self.source_weights}")
        elif self.source_weights is not None:
            raise ValueError("data.source_weights is only used with data.mix 'weighted'")
        if self.validation.method == "none" and self.val_sources is None:
            raise ValueError("data.validation.method 'none' puts every document in both splits; it is only for data.val_sources")
        self._check_task_sources()
        return self

    def _check_task_sources(self) -> None:
        """Sources whose documents carry labels (the algorithmic tasks) and data.task 'labeled' go together, and a task's
        token ids must fit the tokenizer's vocabulary."""
        specs = [*self.sources, *(self.val_sources or [])]
        labeled = [getattr(type(s), "requires_task", None) == "labeled" for s in specs]
        if self.task == "labeled" and not all(labeled):
            names = ", ".join(s.type for s, lab in zip(specs, labeled) if not lab)
            raise ValueError(f"data.task 'labeled' needs sources that bring their own labels (modular_arithmetic, mqar, needle); not {names}")
        if self.task != "labeled" and any(labeled):
            names = ", ".join(s.type for s, lab in zip(specs, labeled) if lab)
            raise ValueError(f"source type {names} brings answer-only labels: set data.task 'labeled' (data.task is {self.task!r})")
        vocab = {"ids": self.tokenizer.vocab_size, "byte": 256}.get(self.tokenizer.type)
        for s, lab in zip(specs, labeled):
            needed = s.ids_needed() if lab else None  # TaskSourceConfig.ids_needed: None for text tasks
            if needed is not None and (vocab is None or needed > vocab):
                raise ValueError(f"source {s.name!r} uses token ids 0..{needed - 1}: use tokenizer type 'ids' with vocab_size >= {needed}"
                                 + (f" (tokenizer {self.tokenizer.type!r} has {vocab})" if vocab else f", not {self.tokenizer.type!r}"))

    @field_validator("sources", "val_sources")
    @classmethod
    def _validate_sources(cls, value: list[Any] | None) -> list[BaseModel] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("needs at least one source")

        allowed = ", ".join(SOURCES.names())
        out: list[BaseModel] = []
        errors: list[dict[str, Any]] = []
        for i, spec in enumerate(value):
            if isinstance(spec, BaseModel):
                spec = spec.model_dump()
            if not isinstance(spec, dict) or "type" not in spec:
                errors.append({
                    "type": PydanticCustomError("source_spec", "must be an object with a 'type' key; allowed types: {allowed}", {"allowed": allowed}),
                    "loc": (i,), "input": spec,
                })
                continue
            kind = spec["type"]
            if not isinstance(kind, str) or kind not in SOURCES:
                errors.append({
                    "type": PydanticCustomError(
                        "unknown_source_type", "unknown source type {kind}; allowed: {allowed}", {"kind": repr(kind), "allowed": allowed}
                    ),
                    "loc": (i, "type"), "input": kind,
                })
                continue
            config_cls = SOURCES.config_class(kind)
            try:
                out.append(config_cls.model_validate(spec))
            except ValidationError as err:
                errors.extend(_nested_errors(err, i, config_cls))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out


def _nested_errors(err: ValidationError, index: int, config_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Re-root a source config's errors under `sources.<index>`; an unknown key also lists the allowed ones."""
    out = []
    for e in err.errors():
        kind: Any = e["type"]
        if kind == "extra_forbidden":
            kind = PydanticCustomError("unknown_key", "unknown key; allowed: {allowed}", {"allowed": ", ".join(sorted(config_cls.model_fields))})
        elif kind in ("value_error", "assertion_error"):
            kind = PydanticCustomError("source_value", "{message}", {"message": e["msg"].removeprefix("Value error, ")})
        detail: dict[str, Any] = {"type": kind, "loc": (index, *e["loc"]), "input": e.get("input")}
        if isinstance(e["type"], str) and e["type"] not in ("extra_forbidden", "value_error", "assertion_error") and "ctx" in e:
            detail["ctx"] = e["ctx"]
        out.append(detail)
    return out
