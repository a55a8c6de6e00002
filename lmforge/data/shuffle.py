"""Shuffle packed blocks through a fixed-size buffer, so neighbouring chunks of one document do not share a batch.

The buffer is part of the resume state. To avoid copying it for every batch, the stream reports only
the slots that changed (`delta()`); the consumer keeps a mirror with `apply_delta`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def rng_for(seed: int, reader: int) -> np.random.Generator:
    """Each reader draws from its own stream, derived from (seed, reader index)."""
    return np.random.default_rng([seed, reader])


class ShuffleBuffer:
    """Fill `size` blocks, then for every incoming block emit a random held one and put the new one in its slot."""

    def __init__(self, size: int, seed: int, reader: int):
        if size < 1:
            raise ValueError(f"shuffle buffer size must be >= 1, got {size}")
        self.size = size
        self.rng = rng_for(seed, reader)
        self.rows: np.ndarray | None = None  # [size, block width], allocated on the first block
        self.n = 0
        self.exhausted = False  # upstream ended: only draining is left
        self._dirty: set[int] = set()

    def _store(self, slot: int, block: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((self.size, len(block)), dtype=np.int64)
        self.rows[slot] = block
        self._dirty.add(slot)

    def blocks(self, upstream: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        if not self.exhausted:
            for block in upstream:
                if self.n < self.size:
                    self._store(self.n, block)
                    self.n += 1
                    continue
                slot = int(self.rng.integers(self.size))
                out = self.rows[slot].copy()
                self._store(slot, block)
                yield out
            self.exhausted = True
        while self.n:
            slot = int(self.rng.integers(self.n))
            out = self.rows[slot].copy()
            self.n -= 1
            if slot < self.n:
                self._store(slot, self.rows[self.n].copy())
            yield out

    def delta(self) -> dict:
        """What changed since the last delta: rng state, fill level, and the rewritten slots."""
        slots = sorted(s for s in self._dirty if s < self.n)
        self._dirty.clear()
        return {
            "rng": self.rng.bit_generator.state,
            "n": self.n,
            "exhausted": self.exhausted,
            "slots": slots,
            "rows": self.rows[slots].copy() if slots else np.zeros((0, 0), dtype=np.int64),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from a full state {"rng", "buffer", "exhausted"} (as built by apply_delta)."""
        self.rng.bit_generator.state = state["rng"]
        self.exhausted = bool(state["exhausted"])
        rows = state["buffer"]
        self.n = len(rows)
        self.rows = None
        for slot, row in enumerate(rows):
            self._store(slot, np.asarray(row, dtype=np.int64))
        self._dirty.clear()


def apply_delta(full: dict | None, delta: dict) -> dict:
    """The consumer's mirror of a buffer after `delta`: {"rng", "buffer": list of row arrays, "exhausted"}."""
    buffer = list(full["buffer"]) if full else []
    n = delta["n"]
    del buffer[n:]
    buffer.extend([None] * (n - len(buffer)))
    for slot, row in zip(delta["slots"], delta["rows"]):
        buffer[slot] = row
    if any(row is None for row in buffer):
        raise RuntimeError("shuffle buffer mirror is missing rows; deltas were applied out of order")
    return {"rng": delta["rng"], "buffer": buffer, "exhausted": delta["exhausted"]}
