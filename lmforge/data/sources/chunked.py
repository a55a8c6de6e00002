"""Shared reader for sources whose files are plain text: streamed, cut into line-aligned chunks, resumable by offset."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from lmforge.data.sources.base import Document, Source

LINE_OVERRUN = 4  # a line-less stretch is cut at this many chunk sizes so memory stays bounded


def incomplete_utf8_tail(raw: bytes) -> int:
    """How many trailing bytes form the start of a UTF-8 character that continues past `raw`."""
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return back if need > back else 0
    return 0


def read_chunks(f: BinaryIO, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Yield (raw bytes, offset after them) covering f[start:end] exactly.

    A chunk grows line by line until it holds at least `chunk_bytes` bytes, so chunks end at line breaks;
    a line longer than LINE_OVERRUN chunks is cut, at a UTF-8 character boundary.
    """
    max_bytes = chunk_bytes * LINE_OVERRUN
    f.seek(start)
    pos = start
    while pos < end:
        parts: list[bytes] = []
        n = 0
        while pos < end and n < chunk_bytes:
            line = f.readline(min(max_bytes - n, end - pos))
            if not line:  # the file shrank under us: stop at its real end
                end = pos
                break
            parts.append(line)
            n += len(line)
            pos += len(line)
            if n >= max_bytes:
                break
        if not parts:
            return
        raw = b"".join(parts)
        if pos < end and not raw.endswith(b"\n"):
            back = incomplete_utf8_tail(raw)
            if 0 < back < len(raw):
                raw, pos = raw[:-back], pos - back
                f.seek(pos)
        yield raw, pos


def decode(raw: bytes, counts: Counter[str], where: str, source: Source) -> str:
    """UTF-8 text; invalid bytes become U+FFFD and are counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        source.note_skip(counts, "invalid_utf8", where, max(bad, 1))
        return text


class ChunkedFileSource(Source):
    """Documents are consecutive chunks of each file; concatenating a file's chunks gives the file back.

    Chunk sizes are counted in bytes (the same as characters for ASCII). `eos` is set on the last chunk of
    each file's part of the split. A tail split cuts each file at its byte position int(size * (1 - fraction)).

    With `shuffle` (train split only) each epoch visits the same chunks in a fresh random order drawn from
    (seed, epoch): a stream read front to back would fill every batch from one stretch of one file, which
    trains far worse than nanoGPT's random windows. The chunk table costs one scan of the files per source.
    """

    files: list[Path]
    chunk_bytes: int
    whole_file_bytes: int | None = None  # files up to this size are one document
    shuffle: bool = False
    _table: list[tuple[int, int, int, bool]] | None = None

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        if self.shuffle and self.split == "train":
            yield from self._shuffled_documents(state, epoch)
            return
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            resume_at = state["offset"] if state and index == first else None
            for doc, _, end in self._file_documents(index, resume_at, counts):
                yield doc, {"file": index, "offset": end}
        self.finish_pass(counts)

    def _file_documents(self, index: int, resume_at: int | None, counts: Counter[str]) -> Iterator[tuple[Document, int, int]]:
        """(document, start byte, end byte) for the split's chunks of file `index`."""
        path = self.files[index]
        with open(path, "rb") as f:
            span = self.split_range(f, str(path), counts)
            if span is None:
                return
            start, end = span
            size = os.fstat(f.fileno()).st_size
            chunk = size if self.whole_file_bytes and size <= self.whole_file_bytes else self.chunk_bytes
            for raw, pos in read_chunks(f, start if resume_at is None else resume_at, end, chunk):
                text = decode(raw, counts, f"{path} byte {pos - len(raw)}", self)
                if self.keep(text):
                    yield self.make_document(text, pos >= end), pos - len(raw), pos

    def chunk_table(self) -> list[tuple[int, int, int, bool]]:
        """(file index, start, end, eos) of every chunk in the split, in file order; built once."""
        if self._table is None:
            counts: Counter[str] = Counter()
            self._table = [
                (index, start, end, doc["eos"])
                for index in range(len(self.files))
                for doc, start, end in self._file_documents(index, None, counts)
            ]
            self.finish_pass(counts)
        return self._table

    def _shuffled_documents(self, state: dict | None, epoch: int) -> Iterator[tuple[Document, dict]]:
        table = self.chunk_table()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(table))
        counts: Counter[str] = Counter()
        handle: tuple[int, BinaryIO] | None = None
        try:
            for k in range(state["pos"] if state else 0, len(order)):
                index, start, end, eos = table[order[k]]
                if handle is None or handle[0] != index:
                    if handle is not None:
                        handle[1].close()
                    handle = (index, open(self.files[index], "rb"))
                handle[1].seek(start)
                text = decode(handle[1].read(end - start), counts, f"{self.files[index]} byte {start}", self)
                yield self.make_document(text, eos), {"pos": k + 1}
        finally:
            if handle is not None:
                handle[1].close()
