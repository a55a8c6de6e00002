"""Document filters applied to each source before sharding: `data.quality_threshold` and `data.min_text_length`.

Filtering inside the source's stream (before documents are dealt to readers) keeps sharding and resume
deterministic; rejects are counted in the source's own skip counters, next to malformed records.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

from lmforge.data.sources.base import Document, Source


class FilteredSource:
    """A source whose documents below the quality threshold, or with shorter text than `min_text_length`, are dropped.

    Only documents that carry `quality` (a record's metadata.quality) are judged on it; token documents
    (binary, hdf5) have no text, so `min_text_length` does not apply to them.
    """

    def __init__(self, source: Source, quality_threshold: float | None, min_text_length: int):
        self.source = source
        self.name, self.split = source.name, source.split
        self.quality_threshold, self.min_text_length = quality_threshold, min_text_length

    @property
    def skipped(self) -> Counter[str]:
        return self.source.skipped

    def describe_skips(self) -> str:
        return self.source.describe_skips()

    def reject(self, doc: Document) -> str | None:
        """The skip reason for `doc`, or None to keep it."""
        quality = doc.get("quality")
        if self.quality_threshold is not None and quality is not None and quality < self.quality_threshold:
            return "low_quality"
        if "tokens" not in doc and len(doc["text"]) < self.min_text_length:
            return "too_short"
        return None

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        counts: Counter[str] = Counter()
        for seen, (doc, inner) in enumerate(self.source.documents(state, epoch)):
            reason = self.reject(doc)
            if reason is None:
                yield doc, inner
            else:
                self.source.note_skip(counts, reason, f"document {seen} of the pass (epoch {epoch})")
        self.source.finish_pass(counts)


def filtered(source: Source, quality_threshold: float | None, min_text_length: int) -> Source | FilteredSource:
    """`source` itself when no filter is set, so unfiltered runs keep their exact streams."""
    if quality_threshold is None and min_text_length <= 0:
        return source
    return FilteredSource(source, quality_threshold, min_text_length)
