"""The whole chain for one reader: sources (+ filters) -> shard -> mix (data.mix) -> tokenize + pack -> shuffle -> batches.

A reader's state is {"mixer": ..., "leftover": tokens, "shuffle": {"rng", "buffer", "exhausted"} | None,
"skipped": {source: {reason: count}}}.
After each batch the stream reports an update in which the shuffle part is only a delta (see shuffle.py);
`merge_reader_state` folds updates into the full state.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from lmforge.data.config import DataConfig, ValidationConfig
from lmforge.data.dedupe import DedupedSource, deduped
from lmforge.data.filters import FilteredSource, filtered
from lmforge.data.mixer import MixMode, RoundRobin, Sequential, Weighted
from lmforge.data.packer import IGNORE_INDEX, Packer
from lmforge.data.sharding import ShardedDocuments
from lmforge.data.shuffle import ShuffleBuffer, apply_delta
from lmforge.data.sources.base import Source
from lmforge.data.splits import Split
from lmforge.data.supervised import LabelVocab, SupervisedPacker, Task, collate_supervised
from lmforge.registry import SOURCES

Batch = dict[str, torch.Tensor]


def build_sources(cfg: DataConfig, split: Split) -> list[Source | FilteredSource | DedupedSource]:
    """One Source per configured entry, behind the quality filter and the duplicate filter when they are set;
    raises DataError here for missing paths and the like."""
    specs, validation = cfg.sources, cfg.validation
    if cfg.val_sources is not None:  # separate val data: each side is read whole
        specs, validation = (cfg.val_sources if split == "val" else cfg.sources), ValidationConfig(method="none")
    sources = [SOURCES.get(sc.type)(sc, split=split, validation=validation, seed=cfg.seed) for sc in specs]
    for source in sources:
        source.use_cache(cfg.cache_size)
    return [deduped(filtered(source, cfg.quality_threshold, cfg.min_text_length), cfg.dedupe) for source in sources]


def base_source(source: Source | FilteredSource | DedupedSource) -> Source:
    """The Source under the quality and duplicate filters (all skips are counted there)."""
    while not isinstance(source, Source):
        source = source.base if isinstance(source, DedupedSource) else source.source
    return source


def collate(blocks: list[np.ndarray], tagged: bool = False) -> Batch:
    """Stack blocks of seq_length + 1 into input_ids/labels [B, seq_length]; padding gets input 0, label -100.

    `tagged` blocks carry their source index as one extra last id (data.adaptive), returned as source_ids (B,).
    """
    arr = np.stack(blocks)
    out: Batch = {}
    if tagged:
        out["source_ids"] = torch.from_numpy(np.ascontiguousarray(arr[:, -1]))
        arr = arr[:, :-1]
    labels = arr[:, 1:]
    inputs = np.where(labels == IGNORE_INDEX, 0, arr[:, :-1])
    return {"input_ids": torch.from_numpy(np.ascontiguousarray(inputs)), "labels": torch.from_numpy(np.ascontiguousarray(labels)), **out}


def build_mixer(
    sources: list[Source], reader: int, num_readers: int, loop: bool, mix: MixMode = "round_robin",
    source_weights: list[float] | None = None, seed: int = 0, adaptive_weights: torch.Tensor | None = None,
) -> RoundRobin | Sequential | Weighted:
    """The mixer over this reader's shard of each source; `sequential` owns the epochs itself, so its shards are one pass each.

    With `adaptive_weights` (data.adaptive) every mode draws by those live weights.
    """
    if adaptive_weights is not None:
        return Weighted([ShardedDocuments(s, reader, num_readers, loop) for s in sources], adaptive_weights, seed=seed)
    if mix == "sequential":
        return Sequential([ShardedDocuments(s, reader, num_readers, loop=False) for s in sources], loop=loop)
    shards = [ShardedDocuments(s, reader, num_readers, loop) for s in sources]
    if mix == "weighted":
        if source_weights is None:
            raise ValueError("mix 'weighted' needs source_weights")
        return Weighted(shards, source_weights, seed=seed)
    return RoundRobin(shards)


class ReaderStream:
    """`loop=True` for train (epochs forever, shuffled); `loop=False` for one padded pass (val)."""

    def __init__(
        self,
        sources: list[Source],
        tokenizer: Any,
        *,
        seq_length: int,
        batch_size: int,
        reader: int,
        num_readers: int,
        loop: bool,
        shuffle_buffer: int,
        seed: int,
        state: dict | None = None,
        mix: MixMode = "round_robin",
        source_weights: list[float] | None = None,
        adaptive_weights: torch.Tensor | None = None,
        task: Task = "lm",
        labels: LabelVocab | None = None,
        per_document: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.sources = [base_source(s) for s in sources]
        self.mixer = build_mixer(sources, reader, num_readers, loop, mix, source_weights, seed, adaptive_weights)
        self.tagged = adaptive_weights is not None
        self.task = task
        if task == "lm":
            self.packer = Packer(tokenizer.encode, tokenizer.eos_id, seq_length, finite=not loop, tag_source=self.tagged,
                                 per_document=per_document)
        else:  # one row per sample, the target kept with its input (data/supervised.py)
            self.packer = SupervisedPacker(task, tokenizer.encode, tokenizer.eos_id, seq_length, labels, tag_source=self.tagged)
        self.shuffle = ShuffleBuffer(shuffle_buffer, seed, reader) if shuffle_buffer > 0 else None
        if state is not None:
            self.packer.load_state_dict({"upstream": state["mixer"], "leftover": state["leftover"]})
            if self.shuffle is not None and state.get("shuffle") is not None:
                self.shuffle.load_state_dict(state["shuffle"])
            for source in self.sources:  # in place: an auto source shares its counter with its delegates
                source.running_skips.clear()
                source.running_skips.update(state.get("skipped", {}).get(source.name, {}))

    def _update(self) -> dict:
        packed = self.packer.state_dict()
        return {
            "mixer": packed["upstream"],
            "leftover": packed["leftover"],
            "shuffle": self.shuffle.delta() if self.shuffle is not None else None,
            "skipped": {s.name: dict(s.running_skips) for s in self.sources if s.running_skips},
        }

    def batches(self) -> Iterator[tuple[Batch, dict]]:
        """(batch, state update after it); a finite stream ends with a possibly smaller batch."""
        blocks = self.packer.blocks(self.mixer.documents)
        if self.shuffle is not None:
            blocks = self.shuffle.blocks(blocks)
        rows: list[np.ndarray] = []
        for block in blocks:
            rows.append(block)
            if len(rows) == self.batch_size:
                yield self._collate(rows), self._update()
                rows = []
        if rows:
            yield self._collate(rows), self._update()

    def _collate(self, rows: list[np.ndarray]) -> Batch:
        return collate(rows, self.tagged) if self.task == "lm" else collate_supervised(self.task, rows, self.tagged)


def merge_reader_state(full: dict | None, update: dict) -> dict:
    """The reader's full state after a batch, from the state before it and the batch's update."""
    shuffle = None
    if update["shuffle"] is not None:
        shuffle = apply_delta(full.get("shuffle") if full else None, update["shuffle"])
    return {"mixer": update["mixer"], "leftover": update["leftover"], "shuffle": shuffle, "skipped": update.get("skipped", {})}


def train_documents(cfg: Any) -> Iterator[dict]:
    """One unshuffled pass over the train split's documents (sources in turn), for the label vocabulary."""
    mixer = RoundRobin([ShardedDocuments(src, 0, 1, loop=False) for src in build_sources(cfg, "train")])
    for doc, _ in mixer.documents(None):
        yield doc
