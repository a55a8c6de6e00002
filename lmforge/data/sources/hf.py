"""`hf` source: a Hugging Face `datasets` dataset, streamed, from the hub or from local data files.

Nothing touches the network when the source is built; the dataset is opened on first read, so a hub
that cannot be reached makes this one source fail (the mixer drops it with a warning and the others
go on) instead of failing the run. A quick TCP probe turns "no network" into an error in seconds
rather than after the client's retries. Local `data_files` (parquet, json, csv, text) go through the
same code path with no network at all.
"""
from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Any, Iterator, Literal
from urllib.parse import urlparse

from pydantic import Field, model_validator

from lmforge.data.config import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, SourceConfig, Source
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

HUB_PROBE_TIMEOUT_S = 3.0
LOCAL_BUILDERS = ("parquet", "json", "csv", "text", "arrow")


class HFSourceConfig(SourceConfig):
    type: Literal["hf"] = "hf"
    dataset: str = Field(description="hub id 'owner/name', or a local builder (parquet, json, csv, text) with data_files")
    subset: str | None = Field(None, description="the dataset's configuration name (load_dataset's `name`)")
    split: str = Field("train", description="the dataset's own split to stream; lmforge's val split is taken from it by hash")
    text_field: str = "text"
    fields: list[str] | None = Field(None, description="fields to format together, e.g. ['question', 'answer']")
    format: str | None = Field(None, description="str.format template over `fields`, e.g. 'Q: {question}\\nA: {answer}'")
    data_files: str | list[str] | None = Field(None, description="local files for a builder dataset (no network)")

    @model_validator(mode="after")
    def _format_needs_fields(self) -> "HFSourceConfig":
        if (self.fields is None) != (self.format is None):
            raise ValueError("set both `fields` and `format` (multi-field formatting) or neither")
        return self


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the hub endpoint: seconds, not minutes of client retries, when offline."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@SOURCES.register("hf", config=HFSourceConfig)
class HFSource(Source):
    """One document per example (eos after it); resumes by skipping the examples already read."""

    supports_tail = False

    def __init__(self, config: HFSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.cfg = config

    def _open(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise DataError(f"data source {self.name!r} needs the `datasets` package: pip install 'lmforge[hf]'") from None
        local = self.cfg.data_files is not None
        if not local and os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
            raise DataError(f"data source {self.name!r}: the Hugging Face hub cannot be reached (no network?)")
        try:
            return datasets.load_dataset(
                self.cfg.dataset, self.cfg.subset, split=self.cfg.split, streaming=True, data_files=self.cfg.data_files,
            )
        except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFoundError...)
            raise DataError(f"data source {self.name!r}: cannot open {self.cfg.dataset!r}: {type(err).__name__}: {err}") from None

    def _text(self, example: dict[str, Any]) -> str | None:
        if self.cfg.fields is not None:
            try:
                return self.cfg.format.format(**{f: example[f] for f in self.cfg.fields})
            except (KeyError, IndexError, ValueError):
                return None
        value = example.get(self.cfg.text_field)
        return value if isinstance(value, str) else None

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        read = state["read"] if state else 0
        stream = self._open()
        if read:
            stream = stream.skip(read)
        counts: Counter[str] = Counter()
        for example in stream:
            read += 1
            text = self._text(example)
            if not text:
                self.note_skip(counts, "missing_field", f"{self.cfg.dataset} example {read - 1}")
                continue
            if self.keep(text):
                yield self.make_document(text, True), {"read": read}
        self.finish_pass(counts)
