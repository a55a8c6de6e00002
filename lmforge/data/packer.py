"""Documents -> fixed-length blocks: concatenate token streams and cut seq_length + 1 tokens with stride seq_length.

The last token of a block is the first of the next, so every token is a target exactly once:
input_ids = block[:-1], labels = block[1:]. No token is thrown away at document boundaries.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from lmforge.data.sources.base import Document

IGNORE_INDEX = -100  # label of padding; also marks padding inside a block
EMPTY = np.zeros(0, dtype=np.int64)

DocumentIter = Callable[[dict | None], Iterator[tuple[Document, dict]]]


def split_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) of one block; padding positions get input 0 and label -100."""
    labels = block[1:]
    inputs = np.where(labels == IGNORE_INDEX, 0, block[:-1])
    return inputs, labels


class Packer:
    """Stateful: after each block, `state_dict()` is (upstream state after the last document read, leftover tokens).

    `finite=True` (val) pads the final partial block with -100 instead of dropping it. `per_document=True` never
    lets a block span two documents: each document's last partial block is padded with -100 (Hugging Face's
    per-example chunking), so a document always gives the same blocks, whatever order the documents come in
    (what an activation cache needs to meet a sequence again in the next epoch).
    """

    def __init__(self, encode: Callable[[str], list[int]], eos_id: int | None, seq_length: int, finite: bool, tag_source: bool = False,
                 per_document: bool = False):
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        self.encode, self.eos_id, self.seq_length, self.finite = encode, eos_id, seq_length, finite
        # data.adaptive: append the block's source index as one extra trailing id (collate splits it off). The
        # block is credited to the document that supplied its last token, so a block spanning two documents
        # counts for the later one.
        self.tag_source = tag_source
        self.per_document = per_document
        self.upstream: dict | None = None
        self._buf = EMPTY
        self._pos = 0

    def state_dict(self) -> dict:
        return {"upstream": self.upstream, "leftover": self._buf[self._pos:].copy()}

    def load_state_dict(self, state: dict) -> None:
        self.upstream = state["upstream"]
        self._buf = np.asarray(state["leftover"], dtype=np.int64).reshape(-1)
        self._pos = 0

    def blocks(self, documents: DocumentIter) -> Iterator[np.ndarray]:
        """Blocks of seq_length + 1 ids (views; copy to keep) from `documents(upstream_state)`."""
        width = self.seq_length + 1
        for doc, state in documents(self.upstream):
            # Token documents (binary, hdf5) arrive already encoded.
            ids = list(doc["tokens"]) if "tokens" in doc else self.encode(doc["text"])
            if doc["eos"] and self.eos_id is not None:
                ids.append(self.eos_id)
            self._buf = np.concatenate((self._buf[self._pos:], np.asarray(ids, dtype=np.int64)))
            self._pos = 0
            self.upstream = state
            while len(self._buf) - self._pos >= width:
                block = self._buf[self._pos:self._pos + width]
                self._pos += self.seq_length
                yield np.append(block, doc.get("source_index", 0)) if self.tag_source else block
            if self.per_document:
                rest = self._buf[self._pos:]
                self._buf, self._pos = EMPTY, 0
                if len(rest) > 1:
                    block = np.full(width, IGNORE_INDEX, dtype=np.int64)
                    block[:len(rest)] = rest
                    yield np.append(block, doc.get("source_index", 0)) if self.tag_source else block
        rest = self._buf[self._pos:]
        if self.finite and len(rest) > 1:
            block = np.full(width, IGNORE_INDEX, dtype=np.int64)
            block[:len(rest)] = rest
            self._buf, self._pos = EMPTY, 0
            yield block
