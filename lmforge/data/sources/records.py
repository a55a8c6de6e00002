"""Shared reader for sources whose files each hold a list of records (pickle, json_samples).

A record is a string, a dict with a text field, or seed 001's sample `{"input", "target", "metadata"}`.
Such files are one object, not a stream, so each file is loaded whole when it is reached; resume
skips to the saved (file, record) position without rebuilding documents before it.
"""
from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, FileSourceConfig, Source


class RecordFileSourceConfig(FileSourceConfig):
    text_field: str = Field("text", description="dict records without input/target: the key holding the text")
    template: str = Field(
        "{input}{target}", description="input/target records: str.format template of the document text over `input` and `target`"
    )


def unwrap_samples(obj: Any) -> Any:
    """Seed 001 wraps its records as {"samples": [...]}; anything else is taken as the record list itself."""
    if isinstance(obj, dict) and "samples" in obj:
        return obj["samples"]
    return obj


class RecordFileSource(Source):
    """One document per record, eos after each; records of the wrong shape are skipped and counted."""

    supports_tail = False  # a file is one object, not a byte stream, so there is no tail to cut
    files: list[Path]

    @abstractmethod
    def load(self, path: Path) -> Any:
        """The file's decoded object; raise DataError when the file cannot be read at all."""

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            path = self.files[index]
            records = unwrap_samples(self.load(path))
            if not isinstance(records, list):
                raise DataError(
                    f"data source {self.name!r}: {path} holds a {type(records).__name__}; expected a list of records "
                    "or {'samples': [...]}"
                )
            start = state["record"] if state and index == first else 0
            for k in range(start, len(records)):
                doc = self.record_document(records[k], counts, f"{path} record {k}")
                if doc is not None and self.keep(doc["text"]):
                    yield doc, {"file": index, "record": k + 1}
        self.finish_pass(counts)

    def record_document(self, record: Any, counts: Counter[str], where: str) -> Document | None:
        cfg: RecordFileSourceConfig = self.config  # type: ignore[assignment]
        target: Any = None
        quality: Any = None
        if isinstance(record, str):
            text = record
        elif isinstance(record, dict) and "input" in record and "target" in record:
            target = record["target"]
            try:
                text = cfg.template.format(input=_as_text(record["input"]), target=_as_text(target))
            except (KeyError, IndexError, ValueError):
                self.note_skip(counts, "bad_record", where)
                return None
            metadata = record.get("metadata")
            quality = metadata.get("quality") if isinstance(metadata, dict) else None
        elif isinstance(record, dict) and isinstance(record.get(cfg.text_field), str):
            text = record[cfg.text_field]
            metadata = record.get("metadata")
            quality = metadata.get("quality") if isinstance(metadata, dict) else None
        else:
            self.note_skip(counts, "bad_record", where)
            return None
        if not text:
            self.note_skip(counts, "empty_text", where)
            return None
        doc = self.make_document(text, True)
        if target is not None:
            doc["input"] = _plain(record["input"])
            doc["target"] = _plain(target)
        if isinstance(quality, (int, float)) and not isinstance(quality, bool):
            doc["quality"] = float(quality)
        return doc


def _as_text(value: Any) -> str:
    """Strings stay as they are; labels (ints) and lists become their str() so a template can show them."""
    return value if isinstance(value, str) else str(_plain(value))


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (allowed in pickles) as Python lists and numbers, so documents stay plain."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value
