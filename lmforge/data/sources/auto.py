"""`auto` source: a file or folder of mixed formats, each file read by the source type its format calls for.

Detection (`detect_type`) trusts an unambiguous extension; `.json` and unknown extensions are sniffed:
magic bytes for HDF5, PDF and binary pickles, a `<file>.json` sidecar for token files, the first line
for JSONL versus one JSON document of samples, and plain text otherwise. Each file becomes its own
delegate source, read in file order; the state is (file, delegate state), so resume seeks as the
delegate does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, FileSourceConfig, Source
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"
PICKLE_PROTO = b"\x80"  # protocols 2-5 open with PROTO <version>
BY_SUFFIX = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".pkl": "pickle", ".pickle": "pickle", ".h5": "hdf5", ".hdf5": "hdf5",
    ".pdf": "pdf", ".bin": "binary", ".txt": "text", ".md": "text", ".rst": "text", ".text": "text",
}
SNIFF_BYTES = 1 << 16  # enough for the first line of any sane JSONL file


class AutoSourceConfig(FileSourceConfig):
    type: Literal["auto"] = "auto"


def is_sidecar(path: Path) -> bool:
    """`x.bin.json` next to `x.bin` describes a token file; it is not data itself."""
    return path.name.endswith(".json") and path.with_name(path.name[: -len(".json")]).is_file()


def _json_kind(path: Path, head: bytes) -> str | None:
    """jsonl when the first line is a JSON object without "samples"; json_samples when the whole file is
    {"samples": [...]} or a list; None when it is not JSON at all."""
    first = head.split(b"\n", 1)[0].strip()
    try:
        obj = json.loads(first.decode("utf-8-sig"))
        if isinstance(obj, dict) and "samples" not in obj:
            return "jsonl"
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        whole = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None
    return "json_samples" if isinstance(whole, list) or (isinstance(whole, dict) and "samples" in whole) else None


def detect_type(path: Path) -> str:
    """The registered source type that reads `path`: by extension when it is unambiguous, else by content."""
    by_suffix = BY_SUFFIX.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(PDF_MAGIC):
        return "pdf"
    if head[:1] == PICKLE_PROTO and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if path.with_name(path.name + ".json").is_file():
        return "binary"
    if head.lstrip()[:1] in (b"{", b"["):
        return _json_kind(path, head) or "text"
    return "text"


@SOURCES.register("auto", config=AutoSourceConfig)
class AutoSource(Source):
    """Files in path order, each through the source `detect_type` names; folders contribute every file but sidecars.

    Skip counts of every delegate land in this source's counters, so reports name the auto source.
    """

    def __init__(self, config: AutoSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        files = [f for f in resolve_files(self.name, config.path, ("",)) if not is_sidecar(f)]
        if not files:
            raise DataError(f"data source {self.name!r}: {config.path!r} holds only sidecar files")
        require_nonempty(self.name, files)
        self.files = files
        self.types = [detect_type(f) for f in files]
        self.delegates: list[Source] = []
        for path, kind in zip(files, self.types):
            sub_cfg = SOURCES.config_class(kind).model_validate({"type": kind, "path": str(path), "name": self.name})
            try:
                delegate = SOURCES.get(kind)(sub_cfg, split=split, validation=validation, seed=seed)
            except DataError as err:
                raise DataError(f"{err} (file detected as {kind!r} by the auto source)") from None
            # one set of counters, shared with the delegates
            delegate.skipped, delegate.first_skip, delegate.running_skips = self.skipped, self.first_skip, self.running_skips
            self.delegates.append(delegate)

    def use_cache(self, size: int) -> None:
        for delegate in self.delegates:
            delegate.use_cache(size)

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        first = state["file"] if state else 0
        for index in range(first, len(self.delegates)):
            inner = state["inner"] if state and index == first else None
            for doc, inner_state in self.delegates[index].documents(inner, epoch):
                yield doc, {"file": index, "inner": inner_state}
