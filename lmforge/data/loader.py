"""Batches for the trainer: a torch DataLoader over per-reader streams, with exact resume.

Readers: each of `world_size` processes runs max(num_workers, 1) readers; reader r of R reads its own
shard of every source. torch's DataLoader takes worker outputs round-robin from worker 0, so the state
records which reader comes next and a resumed loader rotates the worker -> reader mapping to match.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Literal, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmforge.data.adaptive import AdaptiveWeights
from lmforge.data.config import DataConfig
from lmforge.data.errors import DataError
from lmforge.data.mixer import RoundRobin
from lmforge.data.sharding import ShardedDocuments
from lmforge.data.splits import Split
from lmforge.data.state import plain
from lmforge.data.stream import Batch, ReaderStream, build_sources, merge_reader_state
from lmforge.data.tokenizers import limited


class ReaderFailed(NamedTuple):
    """Sent in place of a batch when a reader hits a DataError, so the main process raises it with a clean message."""

    message: str


class TokenBatches(IterableDataset):
    """Yields (batch, reader_index, state update after the batch) from the reader this worker plays.

    `states` maps reader index -> full reader state to resume from; `rotation` shifts which logical reader
    each worker plays (logical = (worker_id + rotation) % workers).
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        split: Split,
        batch_size: int,
        seq_length: int,
        rank: int = 0,
        world_size: int = 1,
        states: dict[int, dict] | None = None,
        rotation: int = 0,
        labels: Any = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer, self.split = cfg, tokenizer, split
        self.batch_size, self.seq_length = batch_size, seq_length
        self.rank, self.world_size = rank, world_size
        self.workers = max(cfg.num_workers, 1)
        self.num_readers = world_size * self.workers
        self.states = dict(states or {})
        self.rotation = rotation
        self.labels = labels  # data.task classification: the run's LabelVocab
        self.sources = build_sources(cfg, split)
        self.adaptive_weights: torch.Tensor | None = None  # data.adaptive: the shared tensor every reader draws by

    def reader_index(self, worker_id: int) -> int:
        return self.rank * self.workers + (worker_id + self.rotation) % self.workers

    def __iter__(self) -> Iterator[tuple[Batch | ReaderFailed, int, dict | None]]:
        info = get_worker_info()
        reader = self.reader_index(info.id if info is not None else 0)
        train = self.split == "train"
        stream = ReaderStream(
            self.sources, self.tokenizer, seq_length=self.seq_length, batch_size=self.batch_size,
            reader=reader, num_readers=self.num_readers, loop=train,
            shuffle_buffer=self.cfg.shuffle_buffer if train else 0, seed=self.cfg.seed, state=self.states.get(reader),
            mix=self.cfg.mix, source_weights=self.cfg.source_weights, adaptive_weights=self.adaptive_weights,
            task=self.cfg.task, labels=self.labels, per_document=train and self.cfg.packing == "per_document",
        )
        try:
            for batch, update in stream.batches():
                yield batch, reader, update
        except DataError as err:
            yield ReaderFailed(str(err)), reader, None


class DataPipeline:
    """Iterate to get {"input_ids", "labels"} batches; `state_dict()` after any batch resumes on the very next one."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Any,
        *,
        split: Split = "train",
        batch_size: int,
        seq_length: int,
        rank: int = 0,
        world_size: int = 1,
        labels: Any = None,
    ):
        self.cfg, self.split, self.seq_length = cfg, split, seq_length
        self.rank, self.world_size = rank, world_size
        self.dataset = TokenBatches(cfg, tokenizer, split, batch_size, seq_length, rank, world_size, labels=labels)
        self.workers = self.dataset.workers
        self.readers: dict[int, dict] = {}  # reader index -> full state after its last consumed batch
        self.next_reader = 0  # logical local reader whose batch comes next
        self.batches_consumed = 0
        self._iter: Iterator | None = None
        self.adaptive: AdaptiveWeights | None = None
        if cfg.adaptive is not None and split == "train":
            names = [sc.name or sc.type for sc in cfg.sources]
            self.adaptive = AdaptiveWeights(cfg.adaptive, names, cfg.source_weights)
            self.dataset.adaptive_weights = self.adaptive.weights  # shared memory, created before any worker starts

    def observe_losses(self, source_ids: torch.Tensor, per_sequence_losses: torch.Tensor, tokens: int) -> None:
        """data.adaptive: the trainer reports each trained sequence's loss (B,) and source (B,), and the tokens trained."""
        if self.adaptive is not None:
            self.adaptive.observe(source_ids, per_sequence_losses, tokens)

    def adaptive_metrics(self) -> dict[str, float]:
        """`loss/<source>` and `weight/<source>` for the metrics log; empty when data.adaptive is off."""
        return self.adaptive.metrics() if self.adaptive is not None else {}

    def skip_metrics(self) -> dict[str, int]:
        """`data_skipped/<source>/<reason>`: bad records met so far, for the metrics log.

        Every reader reads all of a source's records (sharding picks documents after parsing), so each
        reader meets every bad record; the count is the furthest reader's, not a sum over readers.
        """
        totals: dict[str, int] = {}
        for state in self.readers.values():
            for source, reasons in state.get("skipped", {}).items():
                for reason, n in reasons.items():
                    key = f"data_skipped/{source}/{reason}"
                    totals[key] = max(totals.get(key, 0), int(n))
        return totals

    def _start(self) -> Iterator:
        self.dataset.states = dict(self.readers)
        self.dataset.rotation = self.next_reader
        workers = self.cfg.num_workers
        if workers > 0:
            # The Rust tokenizers warn (and turn off threads) in every forked worker otherwise.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # One endless iterator per loader: a resume builds a new loader, so workers need not persist.
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=workers, persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            # A private generator: DataLoader draws a base seed from it on every iter(); with the
            # global one, creating the iterator after a resume would shift the training RNG (dropout).
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        return iter(loader)

    def __iter__(self) -> "DataPipeline":
        return self

    def __next__(self) -> Batch:
        if self._iter is None:
            self._iter = self._start()
        batch, reader, update = next(self._iter)
        if isinstance(batch, ReaderFailed):
            self.close()
            raise DataError(batch.message)
        self.readers[reader] = merge_reader_state(self.readers.get(reader), update)
        self.next_reader = (reader - self.rank * self.workers + 1) % self.workers
        self.batches_consumed += 1
        return batch

    def position(self) -> dict[str, int]:
        """Where this rank's stream is, for messages about a batch: the batches it has handed out so far."""
        return {"rank": self.rank, "batches_consumed": self.batches_consumed}

    def close(self) -> None:
        """Stop worker processes; iterating again continues from the current state."""
        self._iter = None

    def state_dict(self) -> dict:
        """Plain Python containers only (loadable with torch.load(weights_only=True))."""
        return {
            "readers": {reader: plain(state) for reader, state in sorted(self.readers.items())},
            "next_reader": self.next_reader,
            "batches_consumed": self.batches_consumed,
            "workers": self.workers,
            "world_size": self.world_size,
            "seq_length": self.seq_length,
            "split": self.split,
            **({"adaptive": self.adaptive.state_dict()} if self.adaptive is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Make the next batch the one an uninterrupted run would have produced after the saved one."""
        saved = (state.get("workers"), state.get("world_size"))
        if saved != (self.workers, self.world_size):
            raise DataError(
                f"the saved data position comes from {saved[1]} process(es) x {saved[0]} reader(s) each "
                f"(data.num_workers={saved[0] if saved[0] != 1 else '0 or 1'}); this run has {self.world_size} x {self.workers}. "
                "Resume with the same data.num_workers and number of processes."
            )
        if state.get("seq_length") != self.seq_length:
            raise DataError(f"the saved data position is for seq_length {state.get('seq_length')}, this run uses {self.seq_length}")
        self.close()
        self.readers = {int(reader): reader_state for reader, reader_state in state["readers"].items()}
        self.next_reader = int(state["next_reader"])
        self.batches_consumed = int(state["batches_consumed"])
        if self.adaptive is not None and "adaptive" in state:
            self.adaptive.load_state_dict(state["adaptive"])


def build_val_batches(
    cfg: DataConfig,
    tokenizer: Any,
    batch_size: int,
    seq_length: int,
    max_batches: int,
    rank: int = 0,
    world_size: int = 1,
    labels: Any = None,
) -> list[Batch]:
    """This rank's share of the first `max_batches * world_size` val batches: unshuffled, padded at the end, the same every call,
    and the same count on every rank (a remainder that would leave ranks uneven is dropped; fewer batches than
    ranks are repeated).

    Every rank reads the val split as one reader and keeps batches rank, rank + world_size, ...:
    val sets are small, and sharding by document would leave ranks empty when there are fewer
    val documents than ranks. The split being empty is raised on every rank alike, so none hangs.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    stream = ReaderStream(
        build_sources(cfg, "val"), tokenizer, seq_length=seq_length, batch_size=batch_size,
        reader=0, num_readers=1, loop=False, shuffle_buffer=0, seed=cfg.seed, task=cfg.task, labels=labels,
    )
    batches = []
    for batch, _ in stream.batches():
        batches.append(batch)
        if len(batches) >= max_batches * world_size:
            break
    if not batches:
        names = ", ".join(repr(sc.name) for sc in (cfg.val_sources or cfg.sources))
        raise DataError(
            f"the validation split is empty: sources {names} give no val text with "
            f"validation.method={cfg.validation.method!r}, fraction={cfg.validation.fraction}; raise the fraction or add data"
        )
    if world_size > 1:  # every rank the same number of batches: a sharded (FSDP) model runs collectives per forward
        whole = len(batches) // world_size * world_size
        batches = batches[:whole] if whole else [batches[i % len(batches)] for i in range(world_size)]
    return batches[rank::world_size]


def iter_texts(cfg: DataConfig, split: Literal["train", "val", "all"], limit_chars: int | None = None) -> Iterator[str]:
    """Document texts of a split (sources interleaved round-robin, one pass) for building a tokenizer.

    "all" reads the train split then the val split (nanoGPT builds its char vocab from the whole file).
    """
    splits: tuple[Split, ...] = ("train", "val") if split == "all" else (split,)

    def texts() -> Iterator[str]:
        for s in splits:
            mixer = RoundRobin([ShardedDocuments(src, 0, 1, loop=False) for src in build_sources(cfg, s)])
            for doc, _ in mixer.documents(None):
                yield doc["text"]

    return limited(texts(), limit_chars) if limit_chars is not None else texts()
