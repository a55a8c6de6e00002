"""One reader's share of a source, over epochs: reader r of R keeps the documents whose running index % R == r.

The index counts a source's documents (of the split) from 0 in every epoch, so R readers together see each
document exactly once per epoch and no two readers tokenize the same one.
"""
from __future__ import annotations

from typing import Iterator

from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, Source


class ShardedDocuments:
    """`loop=True` (train) starts a new epoch whenever the source ends; `loop=False` (val, tokenizer text) is one pass."""

    def __init__(self, source: Source, reader: int, num_readers: int, loop: bool):
        if not 0 <= reader < num_readers:
            raise ValueError(f"reader {reader} is not in [0, {num_readers})")
        self.source, self.reader, self.num_readers, self.loop = source, reader, num_readers, loop
        self.name = source.name

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]:
        """Yield (document, {"epoch", "index", "source"}); the state resumes right after the document."""
        epoch = state["epoch"] if state else 0
        index = state["index"] if state else 0
        inner = state["source"] if state else None
        while True:
            whole_epoch = inner is None and index == 0
            mine = 0
            for doc, inner_state in self.source.documents(inner, epoch):
                position, index = index, index + 1
                if position % self.num_readers == self.reader:
                    mine += 1
                    yield doc, {"epoch": epoch, "index": index, "source": inner_state}
            if not self.loop:
                return
            if whole_epoch and index == 0:
                raise DataError(
                    f"data source {self.name!r} has no documents in the {self.source.split} split "
                    f"({self.source.describe_skips()})"
                )
            if whole_epoch and mine == 0:
                raise DataError(
                    f"data source {self.name!r} has {index} documents in the {self.source.split} split, fewer than the "
                    f"{self.num_readers} readers (processes x data.num_workers); use fewer workers or smaller chunks"
                )
            epoch, index, inner = epoch + 1, 0, None
