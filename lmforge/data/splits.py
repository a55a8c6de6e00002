"""Train/val membership: a stable per-document hash, or a per-file tail cut like nanoGPT's."""
from __future__ import annotations

import hashlib
from typing import BinaryIO, Literal

from pydantic import Field

from lmforge.config_base import Section

Split = Literal["train", "val"]
HASH_BUCKETS = 1_000_000


class ValidationConfig(Section):
    """How documents are split between train and val.

    hash: a document is val iff blake2b(text) mod 10^6 < fraction * 10^6 (stable across runs and machines).
    tail: the last `fraction` of every file is val, like nanoGPT's `text[int(n*0.9):]`.
    none: no split inside a source; only with data.val_sources, which are the whole val split (sources the whole train split).
    """

    method: Literal["hash", "tail", "none"] = "hash"
    fraction: float = Field(0.01, gt=0, lt=1)


def hash_split(text: str | bytes) -> int:
    """A bucket in [0, 10^6) from blake2b of the text (or raw bytes, for token chunks): the same on every machine, run and Python version."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % HASH_BUCKETS


def in_hash_split(text: str | bytes, split: Split, fraction: float) -> bool:
    """Whether a document belongs to `split` when a `fraction` of documents is val."""
    is_val = hash_split(text) < fraction * HASH_BUCKETS
    return is_val == (split == "val")


def tail_cut(f: BinaryIO, size: int, fraction: float) -> int:
    """Byte offset where a file's val tail starts: int(size * (1 - fraction)), moved onto a UTF-8 character start.

    For ASCII files this is nanoGPT's character cut `int(n * 0.9)` exactly; for other text it is the
    byte position, which keeps the split streamable without decoding the file up to the cut.
    """
    cut = int(size * (1 - fraction))
    f.seek(cut)
    ahead = f.read(4)
    for b in ahead:
        if b & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            break
        cut += 1
    return min(cut, size)


def line_start_at_or_after(f: BinaryIO, offset: int) -> int:
    """The first line start at or after `offset` (so a line-based source never splits a line)."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    f.readline()
    return f.tell()
