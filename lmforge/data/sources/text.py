"""`text` source: plain text files streamed as line-aligned chunks (a multi-GB file is never read whole)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.data.splits import ValidationConfig
from lmforge.data.sources.base import FileSourceConfig
from lmforge.data.sources.chunked import ChunkedFileSource
from lmforge.data.sources.paths import require_nonempty, resolve_files
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


class TextSourceConfig(FileSourceConfig):
    type: Literal["text"] = "text"
    chunk_chars: int = Field(4096, ge=64, description="target document size; chunks end at line breaks")
    shuffle: bool = Field(True, description="train split: visit the chunks in a new random order each epoch (val is never shuffled)")


@SOURCES.register("text", config=TextSourceConfig)
class TextSource(ChunkedFileSource):
    """Files given directly or by glob are read whatever their suffix; folders contribute .txt .md .rst .text files."""

    def __init__(self, config: TextSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        self.files = resolve_files(self.name, config.path, TEXT_SUFFIXES)
        require_nonempty(self.name, self.files)
        self.chunk_bytes = config.chunk_chars
        self.shuffle = config.shuffle
