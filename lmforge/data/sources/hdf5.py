"""`hdf5` source: seed 001's layout, `/dataset/inputs` (N, seq_len) token ids, `/dataset/targets`, metadata as attributes.

Rows are read one at a time through h5py, so a file far larger than memory streams in constant space.
Each row is a token document (the packer skips encoding) with its target alongside; a numeric
`quality` attribute on the group applies to every row, for data.quality_threshold.
"""
from __future__ import annotations

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

HDF5_SUFFIXES = (".h5", ".hdf5")


class Hdf5SourceConfig(FileSourceConfig):
    type: Literal["hdf5"] = "hdf5"
    group: str = Field("dataset", description="the group holding the inputs and targets datasets")
    inputs: str = Field("inputs", description="(N, seq_len) integer token ids, one document per row")
    targets: str | None = Field("targets", description="per-row targets put in each document's `target`; None = none")
    pad_id: int | None = Field(None, description="trailing ids equal to this are dropped from each row; None = keep every id")
    eos: bool = Field(True, description="append the tokenizer's end-of-text id after each row")


def _open(source: str, path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise DataError(f"data source {source!r} needs the `h5py` package: pip install 'lmforge[hdf5]'") from None
    try:
        return h5py.File(path, "r")
    except OSError as err:  # not HDF5, truncated, unreadable
        raise DataError(f"data source {source!r}: {path} is not a readable HDF5 file: {err}") from None


@SOURCES.register("hdf5", config=Hdf5SourceConfig)
class Hdf5Source(Source):
    """Rows in file order; a tail split is the last `fraction` of each file's rows, a hash split hashes a row's ids."""

    def __init__(self, config: Hdf5SourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.cfg = config
        self.files = resolve_files(self.name, config.path, HDF5_SUFFIXES)
        require_nonempty(self.name, self.files)
        self.cache = SampleCache()

    def use_cache(self, size: int) -> None:
        self.cache.resize(size)

    def _datasets(self, f: Any, path: Path) -> tuple[Any, Any, dict[str, Any]]:
        """(inputs, targets or None, group attributes), checked for shape and dtype."""
        cfg = self.cfg
        group = f.get(cfg.group)
        where = f"data source {self.name!r}: {path}"
        if group is None or cfg.inputs not in group:
            raise DataError(f"{where} has no dataset /{cfg.group}/{cfg.inputs}")
        inputs = group[cfg.inputs]
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise DataError(f"{where}: /{cfg.group}/{cfg.inputs} must be a 2-D integer array (N, seq_len), got {inputs.dtype} {inputs.shape}")
        targets = None
        if cfg.targets is not None and cfg.targets in group:
            targets = group[cfg.targets]
            if targets.shape[0] != inputs.shape[0]:
                raise DataError(f"{where}: /{cfg.group}/{cfg.targets} has {targets.shape[0]} rows, inputs have {inputs.shape[0]}")
        return inputs, targets, dict(group.attrs)

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            path = self.files[index]
            if path.stat().st_size == 0:
                self.note_skip(counts, "empty_file", str(path))
                continue
            with _open(self.name, path) as f:
                inputs, targets, attrs = self._datasets(f, path)
                n = inputs.shape[0]
                lo, hi = 0, n
                if self.tail:
                    cut = int(n * (1 - self.validation.fraction))
                    lo, hi = (0, cut) if self.split == "train" else (cut, n)
                quality = attrs.get("quality")
                for row in range(state["row"] if state and index == first else lo, hi):
                    ids, target = self.cache.get((index, row), lambda: (inputs[row], targets[row] if targets is not None else None))
                    doc = self._row_document(ids, target, quality, counts, f"{path} row {row}")
                    if doc is not None:
                        yield doc, {"file": index, "row": row + 1}
        self.finish_pass(counts)

    def _row_document(self, ids: np.ndarray, target: Any, quality: Any, counts: Counter[str], where: str) -> Document | None:
        if self.cfg.pad_id is not None:
            keep = np.flatnonzero(ids != self.cfg.pad_id)
            ids = ids[: keep[-1] + 1] if len(keep) else ids[:0]
        if len(ids) == 0:
            self.note_skip(counts, "empty_text", where)
            return None
        if not self.tail and not self.whole and not in_hash_split(ids.astype(np.int64).tobytes(), self.split, self.validation.fraction):
            return None
        doc = self.make_document("", self.cfg.eos)
        doc["tokens"] = ids.tolist()
        if target is not None:
            doc["target"] = target.tolist() if hasattr(target, "tolist") else target
        if isinstance(quality, (int, float, np.integer, np.floating)) and not isinstance(quality, (bool, np.bool_)):
            doc["quality"] = float(quality)
        return doc
