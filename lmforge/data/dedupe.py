"""Exact-duplicate removal (`data.dedupe`): a document whose content hash was already seen in this pass is dropped.

Why a pass and not the whole run: every epoch repeats every document, so duplicates are judged within one
epoch of one source. Memory: the seen set holds one 64-bit blake2b digest per distinct document of the pass
as a Python int, about 70 bytes each (1M documents ~ 70 MB), in every reader process, since each reader
scans its source's whole stream before sharding. The state stays small: instead of saving the set, it saves
how many upstream documents the pass has consumed, and a resume replays (hashes, never tokenizes) that many
documents from the start of the pass to rebuild the set exactly. Resume then costs one re-read of the pass so far.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterator

import numpy as np

from lmforge.data.filters import FilteredSource
from lmforge.data.sources.base import Document, Source

DIGEST_BYTES = 8  # 2^64 buckets: a false duplicate among 10^8 documents has probability ~3e-4


def content_hash(doc: Document) -> int:
    """Text documents hash their UTF-8 text; token documents (binary, hdf5) their ids, so the two never collide by kind."""
    if "tokens" in doc:
        payload = b"T" + np.asarray(doc["tokens"], dtype=np.int64).tobytes()
    else:
        payload = b"S" + doc["text"].encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(payload, digest_size=DIGEST_BYTES).digest(), "little")


class DedupedSource:
    """`upstream`'s documents minus exact repeats within each pass; drops are counted as `duplicate` skips."""

    def __init__(self, upstream: Source | FilteredSource):
        self.upstream = upstream
        self.base: Source = upstream.source if isinstance(upstream, FilteredSource) else upstream
        self.name, self.split = upstream.name, upstream.split

    @property
    def skipped(self) -> Counter[str]:
        return self.base.skipped

    def describe_skips(self) -> str:
        return self.base.describe_skips()

    def documents(self, state: dict | None = None, epoch: int = 0) -> Iterator[tuple[Document, dict]]:
        """State {"consumed": n}: upstream documents of this pass read so far, kept or dropped."""
        replay = state["consumed"] if state else 0
        seen: set[int] = set()
        counts: Counter[str] = Counter()
        for consumed, (doc, _) in enumerate(self.upstream.documents(None, epoch), start=1):
            key = content_hash(doc)
            if consumed <= replay:
                seen.add(key)
            elif key in seen:
                self.base.note_skip(counts, "duplicate", f"document {consumed - 1} of the pass (epoch {epoch})")
            else:
                seen.add(key)
                yield doc, {"consumed": consumed}
        self.base.finish_pass(counts)


def deduped(source: Source | FilteredSource, dedupe: bool) -> Source | FilteredSource | DedupedSource:
    """`source` itself when dedupe is off, so other runs keep their exact streams and seekable states."""
    return DedupedSource(source) if dedupe else source
