"""What every source shares: the document shape, the config base classes, split filtering and skip counts."""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections import Counter
import os
from typing import Any, BinaryIO, ClassVar, Iterator, NotRequired, TypedDict

from pydantic import Field, model_validator

from lmforge.config_base import Section
from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError, DataWarning
from lmforge.data.splits import Split, in_hash_split, line_start_at_or_after, tail_cut

# Human wording of the skip counters, used in the one summary warning per pass.
SKIP_WORDING = {
    "empty_file": "empty files skipped",
    "invalid_utf8": "invalid UTF-8 sequences replaced with U+FFFD",
    "not_json": "lines that are not JSON skipped",
    "not_object": "lines that are not a JSON object skipped",
    "missing_field": "lines without a string text field skipped",
    "empty_text": "empty texts skipped",
    "bad_record": "records of the wrong shape skipped",
    "encrypted_pdf": "encrypted PDFs skipped",
    "corrupt_pdf": "unreadable PDFs skipped",
    "no_text_pdf": "PDFs without extractable text (image-only?) skipped",
    "low_quality": "documents below data.quality_threshold skipped",
    "too_short": "documents shorter than data.min_text_length skipped",
    "duplicate": "exact duplicate documents skipped (data.dedupe)",
}


class Document(TypedDict):
    text: str
    source: str
    eos: bool  # whether the packer appends the tokenizer's end-of-text id after this text
    tokens: NotRequired[list[int]]  # already tokenized (binary, hdf5): the packer uses these and ignores `text`
    input: NotRequired[Any]  # supervised input (json_samples, pickle), read by data.task classification / seq2seq
    target: NotRequired[Any]  # supervised target (json_samples, pickle), kept for input->target objectives
    quality: NotRequired[float]  # the record's metadata.quality, for data.quality_threshold
    source_index: NotRequired[int]  # set by the mixer: which configured source this came from (for data.adaptive)
    labels: NotRequired[list[int]]  # data.task labeled: the target of each position of `tokens` (-100 = no loss)
    segments: NotRequired[list[dict]]  # data.task labeled: [{"text", "train"}], encoded in turn; loss on trained ones


class SourceConfig(Section):
    """Fields every source has; `name` (used in messages and documents) defaults to type:path."""

    type: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None and "type" in data:
            path = data.get("path")
            shown = ",".join(map(str, path)) if isinstance(path, list) else path
            data = {**data, "name": f"{data['type']}:{shown}" if shown else str(data["type"])}
        return data


class FileSourceConfig(SourceConfig):
    path: str | list[str] = Field(description="a file, a folder (recursive), a glob, or a list of them; relative to the current dir")


class Source(ABC):
    """A deterministic, resumable stream of one split's documents; one call of `documents` is one epoch.

    `documents(state, epoch)` yields (document, state_after_it); passing that state (and epoch) back resumes
    right after the document by seeking, without rereading. Documents of the other split are skipped inside the source.
    """

    supports_tail: ClassVar[bool] = True

    def __init__(self, config: SourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        self.config = config
        self.seed = seed  # for sources that shuffle their document order per epoch
        self.name: str = config.name or config.type
        self.split = split
        self.validation = validation
        self.skipped: Counter[str] = Counter()  # totals over every finished pass, for reports and tests
        # Live counts, the pass in progress included; carried in the reader state so they survive resume
        # and reach metrics.jsonl as data_skipped/<source>/<reason>.
        self.running_skips: Counter[str] = Counter()
        self.first_skip: dict[str, str] = {}  # reason -> where it was first seen
        if validation.method == "tail" and not self.supports_tail:
            raise DataError(
                f"data source {self.name!r} (type {config.type!r}) cannot do validation.method 'tail'; use 'hash'"
            )

    @property
    def tail(self) -> bool:
        return self.validation.method == "tail"

    def split_range(self, f: BinaryIO, path: str, counts: Counter[str], line_aligned: bool = False) -> tuple[int, int] | None:
        """Byte range [start, end) of open file `f` that belongs to this split; None (counted) for an empty file."""
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            self.note_skip(counts, "empty_file", path)
            return None
        if not self.tail:
            return 0, size
        cut = tail_cut(f, size, self.validation.fraction)
        if line_aligned:
            cut = line_start_at_or_after(f, cut)
        return (0, cut) if self.split == "train" else (cut, size)

    def keep(self, text: str) -> bool:
        """Hash-split membership (tail splits are applied by seeking instead)."""
        return self.tail or self.whole or in_hash_split(text, self.split, self.validation.fraction)

    @property
    def whole(self) -> bool:
        """validation.method 'none' (data.val_sources): every document belongs to the split this source was built for."""
        return self.validation.method == "none"

    def make_document(self, text: str, eos: bool) -> Document:
        return {"text": text, "source": self.name, "eos": eos}

    def note_skip(self, counts: Counter[str], reason: str, where: str, n: int = 1) -> None:
        counts[reason] += n
        self.running_skips[reason] += n
        self.first_skip.setdefault(reason, where)

    def finish_pass(self, counts: Counter[str]) -> None:
        """Add this pass's skip counts to the totals and summarise them in one warning."""
        if not counts:
            return
        self.skipped.update(counts)
        parts = []
        for reason, n in sorted(counts.items()):
            where = self.first_skip.get(reason)
            parts.append(f"{n} {SKIP_WORDING.get(reason, reason)}" + (f" (first at {where})" if where else ""))
        warnings.warn(f"data source {self.name!r} ({self.split}): " + "; ".join(parts), DataWarning, stacklevel=3)

    def describe_skips(self) -> str:
        return ", ".join(f"{n} {SKIP_WORDING.get(r, r)}" for r, n in sorted(self.skipped.items())) or "nothing skipped"

    def use_cache(self, size: int) -> None:
        """Map-style sources (binary, hdf5) keep up to `size` decoded samples in an LRU cache; streams have none."""

    @abstractmethod
    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        """Yield (document, state after it) in a fixed order per epoch, starting after `state` (None = from the start)."""
