"""`jsonl` source: one JSON object per line, the text in `text_field`; bad lines are skipped and counted."""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterator, Literal

from lmforge.data.splits import ValidationConfig
from lmforge.data.sources.base import Document, FileSourceConfig, Source
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

JSONL_SUFFIXES = (".jsonl", ".ndjson")
UTF8_BOM = b"\xef\xbb\xbf"


class JsonlSourceConfig(FileSourceConfig):
    type: Literal["jsonl"] = "jsonl"
    text_field: str = "text"


@SOURCES.register("jsonl", config=JsonlSourceConfig)
class JsonlSource(Source):
    """Streamed line by line; one document per line with eos after it. A tail split cuts at the first line
    starting at or after byte int(size * (1 - fraction)) of each file."""

    def __init__(self, config: JsonlSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.files = resolve_files(self.name, config.path, JSONL_SUFFIXES)
        require_nonempty(self.name, self.files)
        self.text_field = config.text_field

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            resume_at = state["offset"] if state and index == first else None
            yield from self._file_documents(index, resume_at, counts)
        self.finish_pass(counts)

    def _file_documents(self, index: int, resume_at: int | None, counts: Counter[str]) -> Iterator[tuple[Document, dict]]:
        path = self.files[index]
        with open(path, "rb") as f:
            span = self.split_range(f, str(path), counts, line_aligned=True)
            if span is None:
                return
            start, end = span
            pos = start if resume_at is None else resume_at
            f.seek(pos)
            while pos < end:
                line_start = pos
                line = f.readline()
                if not line:
                    break
                pos += len(line)
                if line_start == 0 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                where = f"{path} byte {line_start}"
                text = self._parse(line, counts, where)
                if text is not None and self.keep(text):
                    yield self.make_document(text, True), {"file": index, "offset": pos}

    def _parse(self, line: bytes, counts: Counter[str], where: str) -> str | None:
        """The line's text, or None (counted) when the line is not a JSON object with a string text field."""
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError for invalid UTF-8
            self.note_skip(counts, "not_json", where)
            return None
        if not isinstance(obj, dict):
            self.note_skip(counts, "not_object", where)
            return None
        text = obj.get(self.text_field)
        if not isinstance(text, str):
            self.note_skip(counts, "missing_field", where)
            return None
        if not text:
            self.note_skip(counts, "empty_text", where)
            return None
        return text
