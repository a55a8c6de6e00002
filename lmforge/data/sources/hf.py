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

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, SourceConfig, Source
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

HUB_PROBE_TIMEOUT_S = 3.0
LOCAL_BUILDERS = ("parquet", "json", "csv", "text", "arrow")

# Seed 002's built-in source names, mapped to hub datasets that load without a dataset script
# (datasets >= 4 runs no scripts). Where the original repo still has a script, its parquet export
# branch `refs/convert/parquet` is used; the hub builds that export itself and, for the largest
# datasets, it may hold only the first few GB ("partial-train"), which is plenty for streaming.
HF_ALIASES: dict[str, dict[str, str]] = {
    "wikipedia": {"dataset": "wikimedia/wikipedia", "subset": "20231101.en"},
    "openwebtext": {"dataset": "Skylion007/openwebtext", "subset": "plain_text", "revision": "refs/convert/parquet"},
    "c4": {"dataset": "allenai/c4", "subset": "en"},
    "bookcorpus": {"dataset": "bookcorpus/bookcorpus", "subset": "plain_text", "revision": "refs/convert/parquet"},
    "pile_subset": {"dataset": "NeelNanda/pile-10k"},  # the first 10k documents of the Pile, as parquet
    "common_crawl": {"dataset": "HuggingFaceFW/fineweb", "subset": "sample-10BT"},  # filtered Common Crawl
}


class HFSourceConfig(SourceConfig):
    type: Literal["hf"] = "hf"
    dataset: str = Field(
        description="hub id 'owner/name', a built-in name (" + ", ".join(HF_ALIASES) + "), "
        "or a local builder (parquet, json, csv, text) with data_files"
    )
    subset: str | None = Field(None, description="the dataset's configuration name (load_dataset's `name`)")
    revision: str | None = Field(None, description="hub branch, tag or commit, e.g. 'refs/convert/parquet'")
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

    @model_validator(mode="before")
    @classmethod
    def _expand_alias(cls, data: Any) -> Any:
        """A built-in name becomes its hub dataset; fields the preset set itself win."""
        if isinstance(data, dict) and data.get("dataset") in HF_ALIASES:
            alias = HF_ALIASES[data["dataset"]]
            defaults = {k: v for k, v in alias.items() if data.get(k) is None}
            data = {**data, **defaults, "dataset": alias["dataset"], "name": data.get("name") or data["dataset"]}
        return data


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
                revision=self.cfg.revision,
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
        """State {"read": examples consumed, "dataset": the IterableDataset's own state_dict}.

        Resuming loads the dataset's own state, which seeks to the right shard and row instead of
        re-reading every example before it; `skip(read)` is the fallback for states without one.
        """
        read = state["read"] if state else 0
        stream = self._open()
        own_state = hasattr(stream, "state_dict") and hasattr(stream, "load_state_dict")
        if state and own_state and state.get("dataset") is not None:
            stream.load_state_dict(state["dataset"])
        elif read:
            stream = stream.skip(read)
        counts: Counter[str] = Counter()
        for example in stream:
            read += 1
            text = self._text(example)
            if not text:
                self.note_skip(counts, "missing_field", f"{self.cfg.dataset} example {read - 1}")
                continue
            if self.keep(text):
                yield self.make_document(text, True), {"read": read, "dataset": stream.state_dict() if own_state else None}
        self.finish_pass(counts)
