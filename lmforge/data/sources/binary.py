"""`binary` source: flat token files (nanoGPT's train.bin / val.bin), read through numpy memmap.

Each `<file>` has a JSON sidecar `<file>.json`, e.g. {"dtype": "uint16", "vocab_size": 50257,
"tokenizer": "gpt2"}, because a .bin holds bare ids with no header. Documents are windows of
`chunk_tokens` ids carrying `tokens` (the packer skips encoding); no eos is added, since a token
file already holds its own separators. Only the window being read is paged in, whatever the file size.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from pydantic import Field

from lmforge.data.cache import SampleCache
from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, FileSourceConfig, Source
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.splits import Split, in_hash_split
from lmforge.registry import SOURCES

BINARY_SUFFIXES = (".bin",)
TOKEN_DTYPES = ("uint16", "uint32")


class BinarySourceConfig(FileSourceConfig):
    type: Literal["binary"] = "binary"
    chunk_tokens: int = Field(4096, ge=16, description="ids per document window")
    shuffle: bool = Field(True, description="train split: visit the windows in a new random order each epoch (val is never shuffled)")
    dtype: Literal["uint16", "uint32"] | None = Field(None, description="dtype for files without a `<file>.json` sidecar; a sidecar wins")


def read_sidecar(source: str, path: Path, fallback: str | None) -> dict[str, Any]:
    """The file's sidecar metadata (dtype, vocab_size, tokenizer); a missing one needs the config's `dtype`."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        if fallback is None:
            raise DataError(
                f"data source {source!r}: {path} has no sidecar {sidecar.name} (e.g. {{\"dtype\": \"uint16\", \"vocab_size\": 50257, "
                "\"tokenizer\": \"gpt2\"}); write one or set the source's `dtype`"
            )
        return {"dtype": fallback}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"data source {source!r}: sidecar {sidecar} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("dtype") not in TOKEN_DTYPES:
        raise DataError(f"data source {source!r}: sidecar {sidecar} must be an object with \"dtype\" one of {', '.join(TOKEN_DTYPES)}")
    return meta


@SOURCES.register("binary", config=BinarySourceConfig)
class BinarySource(Source):
    """Windows of each file's split range in order, or (shuffle, train) all windows in a random order per epoch.

    A tail split cuts each file at token int(n * (1 - fraction)); a hash split keeps a window by the hash of its bytes.
    """

    def __init__(self, config: BinarySourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.files = resolve_files(self.name, config.path, BINARY_SUFFIXES)
        require_nonempty(self.name, self.files)
        self.chunk_tokens = config.chunk_tokens
        self.shuffle = config.shuffle
        self.meta = [read_sidecar(self.name, f, config.dtype) for f in self.files]
        self._table: list[tuple[int, int, int]] | None = None
        self.cache = SampleCache()

    def use_cache(self, size: int) -> None:
        self.cache.resize(size)

    def tokens(self, index: int) -> np.ndarray:
        dtype = np.dtype(self.meta[index]["dtype"])
        path = self.files[index]
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise DataError(f"data source {self.name!r}: {path} has {size} bytes, not a whole number of {dtype} ids (truncated?)")
        if size == 0:  # memmap cannot map an empty file
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    def _windows(self, index: int, start: int | None) -> Iterator[tuple[int, int]]:
        """(start, end) of the split's windows of file `index`, from token `start` (None = the split's start)."""
        n = len(self.tokens(index))
        lo, hi = 0, n
        if self.tail:
            cut = int(n * (1 - self.validation.fraction))
            lo, hi = (0, cut) if self.split == "train" else (cut, n)
        pos = lo if start is None else start
        while pos < hi:
            end = min(pos + self.chunk_tokens, hi)
            yield pos, end
            pos = end

    def _kept(self, ids: np.ndarray) -> bool:
        return self.tail or self.whole or in_hash_split(ids.tobytes(), self.split, self.validation.fraction)

    def _document(self, index: int, ids: np.ndarray, start: int, end: int) -> Document:
        doc = self.make_document("", False)
        doc["tokens"] = self.cache.get((index, start, end), lambda: ids[start:end].tolist())
        return doc

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        if self.shuffle and self.split == "train":
            yield from self._shuffled_documents(state, epoch)
            return
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            ids = self.tokens(index)
            if len(ids) == 0:
                self.note_skip(counts, "empty_file", str(self.files[index]))
                continue
            for start, end in self._windows(index, state["offset"] if state and index == first else None):
                if self._kept(ids[start:end]):
                    yield self._document(index, ids, start, end), {"file": index, "offset": end}
        self.finish_pass(counts)

    def window_table(self) -> list[tuple[int, int, int]]:
        """(file index, start, end) of every window in the split, in file order; built once."""
        if self._table is None:
            self._table = []
            for index in range(len(self.files)):
                ids = self.tokens(index)
                self._table.extend((index, s, e) for s, e in self._windows(index, None) if self._kept(ids[s:e]))
        return self._table

    def _shuffled_documents(self, state: dict | None, epoch: int) -> Iterator[tuple[Document, dict]]:
        table = self.window_table()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(table))
        files = [self.tokens(i) for i in range(len(self.files))]
        for k in range(state["pos"] if state else 0, len(order)):
            index, start, end = table[order[k]]
            yield self._document(index, files[index], start, end), {"pos": k + 1}
