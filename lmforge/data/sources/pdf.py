"""`pdf` source: text extracted with pypdf from a file or a folder of PDFs (recursive), cut into ~`chunk_chars` documents.

Chunks end on paragraph breaks, else sentence ends, so a document never stops mid-sentence unless one
sentence alone is longer than the limit. Encrypted (without an empty user password), corrupt and
image-only PDFs are skipped and counted; the run stops only when no PDF gives text.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field

from lmforge.data.splits import ValidationConfig
from lmforge.data.errors import DataError
from lmforge.data.sources.base import Document, FileSourceConfig, Source
from lmforge.data.sources.paths import resolve_files
from lmforge.data.splits import Split
from lmforge.registry import SOURCES

PDF_SUFFIXES = (".pdf",)
LIMIT_FACTOR = 1.25  # a chunk may grow to 1.25 x chunk_chars to reach a paragraph or sentence end
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class PdfSourceConfig(FileSourceConfig):
    type: Literal["pdf"] = "pdf"
    chunk_chars: int = Field(4000, ge=200, description="target document size; chunks end on paragraph or sentence boundaries, at most 1.25x this")


def _units(text: str, limit: int) -> list[tuple[str, str]]:
    """(piece, separator before it): paragraphs, over-long paragraphs as sentences, over-long sentences cut at `limit`."""
    out: list[tuple[str, str]] = []
    for para in PARAGRAPH_BREAK.split(text):
        para = para.strip()
        if not para:
            continue
        sentences = [para] if len(para) <= limit else SENTENCE_END.split(para)
        for k, sentence in enumerate(sentences):
            for start in range(0, len(sentence), limit):
                out.append((sentence[start:start + limit], "\n\n" if k == 0 and start == 0 else " "))
    return out


def chunk_text(text: str, target: int) -> list[str]:
    """Consecutive chunks of `text`, each closed once it reaches `target` chars or the next piece would pass the limit."""
    limit = int(target * LIMIT_FACTOR)
    chunks: list[str] = []
    current = ""
    for piece, sep in _units(text, limit):
        if current and len(current) + len(sep) + len(piece) > limit:
            chunks.append(current)
            current = ""
        current = piece if not current else current + sep + piece
        if len(current) >= target:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    return chunks


@SOURCES.register("pdf", config=PdfSourceConfig)
class PdfSource(Source):
    """Chunks of each PDF in file order, eos after each file's last; a tail split is the last `fraction` of each file's chunks."""

    def __init__(self, config: PdfSourceConfig, *, split: Split, validation: ValidationConfig, seed: int = 0):
        super().__init__(config, split=split, validation=validation, seed=seed)
        try:
            import pypdf  # noqa: F401
        except ImportError:
            raise DataError(f"data source {self.name!r} needs the `pypdf` package: pip install 'lmforge[pdf]'") from None
        self.files = resolve_files(self.name, config.path, PDF_SUFFIXES)
        self.chunk_chars = config.chunk_chars

    def extract(self, path: Path, counts: Counter[str]) -> str | None:
        """The PDF's text, pages joined by blank lines; None (counted) for encrypted, corrupt or text-less files."""
        import pypdf

        try:
            reader = pypdf.PdfReader(path)
            if reader.is_encrypted and not reader.decrypt(""):
                self.note_skip(counts, "encrypted_pdf", str(path))
                return None
            text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        except Exception:  # noqa: BLE001  pypdf raises many types (PdfReadError, ValueError, KeyError...) for broken files
            self.note_skip(counts, "corrupt_pdf", str(path))
            return None
        if not text.strip():
            self.note_skip(counts, "no_text_pdf", str(path))
            return None
        return text

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        first = state["file"] if state else 0
        counts: Counter[str] = Counter()
        for index in range(first, len(self.files)):
            text = self.extract(self.files[index], counts)
            if text is None:
                continue
            chunks = chunk_text(text, self.chunk_chars)
            lo, hi = 0, len(chunks)
            if self.tail:
                cut = int(len(chunks) * (1 - self.validation.fraction))
                lo, hi = (0, cut) if self.split == "train" else (cut, len(chunks))
            for k in range(state["chunk"] if state and index == first else lo, hi):
                if self.keep(chunks[k]):
                    yield self.make_document(chunks[k], k == hi - 1), {"file": index, "chunk": k + 1}
        self.finish_pass(counts)
