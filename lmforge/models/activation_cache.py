"""The outputs of a model's frozen lower layers, computed once per sequence and reused (StackWise layer-wise training).

When a stage trains block k with the embedding and blocks 0..k-1 frozen, their output for a given sequence never
changes during the stage: the model asks this cache for it and runs only the blocks it trains. Entries are keyed
by the sequence's token ids, so a sequence met again skips the frozen prefix. Each entry remembers its depth:
the next layer-wise stage (one more frozen block) keeps the cache and advances an entry through the newly frozen
block when it is met, one block instead of the whole prefix; every stage starts its data from the same start, so
it meets the sequences the stage before cached. A miss computes the prefix for that one sequence alone, so a
cached value never depends on the batch it first came in, and a run resumed mid-stage (with an empty cache)
continues bitwise. Rows live in device memory in chunks, or in a file memory-mapped under the run dir (`disk`)
when they would not fit; once `max_bytes` is reached the cache stops storing and further misses are computed
each time.

The frozen layers run as at inference (dropout off), as a frozen feature extractor does.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

import torch

Advance = Callable[[torch.Tensor, Optional[torch.Tensor], int, int], torch.Tensor]  # (ids (1, T), h (1, T, C) | None, from, to)

CHUNK_ROWS = 256


class ActivationCache:
    """Prefix outputs (T, C) per sequence; `hits`/`misses` count look-ups (rows)."""

    def __init__(self, depth: int, max_bytes: int, path: Path | None = None):
        self.depth, self.max_bytes, self.path = depth, max_bytes, path
        self.index: dict[bytes, int] = {}
        self.slot_depth: list[int] = []  # the depth each slot's row was computed to
        self.hits = self.misses = 0
        self._chunks: list[torch.Tensor] = []  # memory: (CHUNK_ROWS, T, C) each
        self._file: torch.Tensor | None = None  # disk: (capacity, T, C) mapped from `path`
        self._row_shape: tuple[int, ...] | None = None
        self._capacity = 0

    def deepen(self, depth: int) -> None:
        """Serve `depth` frozen blocks from now on (the next stage froze more); entries advance when next met."""
        if depth < self.depth:
            raise ValueError(f"an activation cache only deepens ({self.depth} -> {depth} blocks)")
        self.depth = depth

    def lookup(self, input_ids: torch.Tensor, advance: Advance) -> torch.Tensor:
        """(B, T, C): each row from the cache (advanced to `depth` if it was computed shallower), or computed with
        `advance(ids, None, 0, depth)` and stored."""
        keys = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest() for row in input_ids.cpu()]
        rows = []
        for b, key in enumerate(keys):
            ids = input_ids[b : b + 1]
            slot = self.index.get(key)
            if slot is None:
                self.misses += 1
                value = advance(ids, None, 0, self.depth)[0]
                self._store(key, value)
            elif self.slot_depth[slot] < self.depth:
                self.hits += 1
                value = advance(ids, self._read(slot).to(input_ids.device).unsqueeze(0), self.slot_depth[slot], self.depth)[0]
                self._write(slot, value)
            else:
                self.hits += 1
                value = self._read(slot).to(input_ids.device)
            rows.append(value)
        return torch.stack(rows)

    @property
    def rows(self) -> int:
        return len(self.index)

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)

    def _allocate(self, value: torch.Tensor) -> None:
        self._row_shape = tuple(value.shape)
        row_bytes = value.numel() * value.element_size()
        self._capacity = self.max_bytes // row_bytes
        if self.path is not None and self._capacity:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            free = os.statvfs(self.path.parent)
            self._capacity = min(self._capacity, free.f_bavail * free.f_frsize // 2 // row_bytes)  # never fill the disk
            with open(self.path, "wb") as f:
                f.truncate(self._capacity * row_bytes)  # sparse: pages are written as rows arrive
            self._file = torch.from_file(str(self.path), shared=True, size=self._capacity * value.numel(),
                                         dtype=value.dtype).view(self._capacity, *self._row_shape)

    def _store(self, key: bytes, value: torch.Tensor) -> None:
        if self._row_shape is None:
            self._allocate(value)
        slot = len(self.index)
        if tuple(value.shape) != self._row_shape or slot >= self._capacity:
            return
        if self._file is None and slot // CHUNK_ROWS == len(self._chunks):
            self._chunks.append(torch.empty(CHUNK_ROWS, *self._row_shape, dtype=value.dtype, device=value.device))
        self.slot_depth.append(self.depth)
        self._write(slot, value)
        self.index[key] = slot

    def _write(self, slot: int, value: torch.Tensor) -> None:
        target = self._file[slot] if self._file is not None else self._chunks[slot // CHUNK_ROWS][slot % CHUNK_ROWS]
        target.copy_(value)
        self.slot_depth[slot] = self.depth

    def _read(self, slot: int) -> torch.Tensor:
        if self._file is not None:
            return self._file[slot]
        return self._chunks[slot // CHUNK_ROWS][slot % CHUNK_ROWS]

    def close(self) -> None:
        """Drop the rows (and the file)."""
        self.index.clear()
        self.slot_depth.clear()
        self._chunks.clear()
        self._file = None
        if self.path is not None and self.path.exists():
            self.path.unlink()
