"""`python_stdlib` source: the running interpreter's standard-library .py files, real code that every machine has."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Literal

from pydantic import Field

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import SourceConfig
from lmforge.data.sources.chunked import ChunkedFileSource
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
WHOLE_FILE_CHUNKS = 16  # files up to this many chunks are one document


class PythonStdlibSourceConfig(SourceConfig):
    type: Literal["python_stdlib"] = "python_stdlib"
    chunk_chars: int = Field(4096, ge=64, description=f"files over {WHOLE_FILE_CHUNKS}x this are split into line-aligned chunks")
    shuffle: bool = Field(True, description="train split: visit the chunks in a new random order each epoch (val is never shuffled)")


def stdlib_files(root: Path) -> list[Path]:
    """Every .py file under `root`, sorted by relative path, skipping installed packages and bytecode caches."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        found.extend(Path(dirpath, name) for name in filenames if name.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@SOURCES.register("python_stdlib", config=PythonStdlibSourceConfig)
class PythonStdlibSource(ChunkedFileSource):
    """Each file is one document (eos after it); a tail split would cut every module mid-function, so only hash splits."""

    supports_tail = False

    def __init__(self, config: PythonStdlibSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        root = Path(sysconfig.get_paths()["stdlib"])
        if not root.is_dir():
            raise DataError(f"data source {self.name!r}: the standard library folder {root} does not exist")
        self.root = root
        self.files = stdlib_files(root)
        if not self.files:
            raise DataError(f"data source {self.name!r}: no .py files under {root}")
        self.chunk_bytes = config.chunk_chars
        self.shuffle = config.shuffle
        self.whole_file_bytes = config.chunk_chars * WHOLE_FILE_CHUNKS
