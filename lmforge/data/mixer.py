"""Interleave several document streams; a stream that breaks is dropped so one bad source does not stop a run.

Modes (`data.mix`): `round_robin` (one document from each source in turn), `sequential` (each source's
epoch in order, then the next round), `weighted` (each document from source i with probability
proportional to `source_weights[i]`, drawn from a seeded counter so a resume repeats the same draws).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator, Literal, Protocol

import numpy as np

from lmforge.data.errors import DataError, DataWarning
from lmforge.data.sources.base import Document

LIVE, DONE, FAILED = "live", "done", "failed"
MixMode = Literal["round_robin", "sequential", "weighted"]


class DocumentStream(Protocol):
    name: str

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]: ...


class Mixer:
    """Shared bookkeeping: each stream's state, which streams are finished or failed (a failed stream stays
    dropped on resume, as it would have in the uninterrupted run), and the failure messages."""

    def __init__(self, streams: list[DocumentStream]):
        if not streams:
            raise ValueError(f"{type(self).__name__} needs at least one stream")
        self.streams = streams

    def _restore(self, state: dict | None) -> tuple[list, list[str], list[str]]:
        n = len(self.streams)
        if state is None:
            return [None] * n, [LIVE] * n, []
        return list(state["sources"]), list(state["status"]), list(state["errors"])

    def _pull(self, i: int, iters: dict, states: list, status: list[str], errors: list[str]) -> Document | None:
        """The next document of stream i; None when it ended (DONE) or failed (FAILED, warned; raised when all have)."""
        if i not in iters:
            iters[i] = self.streams[i].documents(states[i])
        try:
            doc, states[i] = next(iters[i])
            doc["source_index"] = i
            return doc
        except StopIteration:
            status[i] = DONE
        except Exception as err:  # noqa: BLE001  any failure of one source must not stop the others
            status[i] = FAILED
            errors.append(f"{self.streams[i].name}: {type(err).__name__}: {err}")
            if all(s == FAILED for s in status):
                raise DataError("all data sources failed: " + "; ".join(errors)) from err
            warnings.warn(f"data source {self.streams[i].name!r} failed and is dropped: {type(err).__name__}: {err}", DataWarning, stacklevel=3)
        return None


class RoundRobin(Mixer):
    """Takes one document from each live stream in turn; state adds whose turn is next."""

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]:
        n = len(self.streams)
        states, status, errors = self._restore(state)
        turn: int = state["turn"] if state else 0
        iters: dict[int, Iterator[tuple[Document, dict]]] = {}
        while LIVE in status:
            i, turn = turn, (turn + 1) % n
            if status[i] != LIVE:
                continue
            doc = self._pull(i, iters, states, status, errors)
            if doc is not None:
                yield doc, {"turn": turn, "sources": list(states), "status": list(status), "errors": list(errors)}


class Sequential(Mixer):
    """Reads stream 0 to its end, then stream 1, ...; with `loop` the next round starts every stream's next epoch.

    The streams must be finite (one epoch each, e.g. ShardedDocuments with loop=False): the mixer owns the
    epochs, starting round e of a stream from {"epoch": e, "index": 0, "source": None}.
    """

    def __init__(self, streams: list[DocumentStream], loop: bool):
        super().__init__(streams)
        self.loop = loop

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]:
        states, status, errors = self._restore(state)
        current: int = state["current"] if state else 0
        epoch: int = state["epoch"] if state else 0
        yielded_this_round = bool(state and state.get("yielded"))
        iters: dict[int, Iterator[tuple[Document, dict]]] = {}
        while True:
            while current < len(self.streams):
                doc = self._pull(current, iters, states, status, errors) if status[current] == LIVE else None
                if doc is None:
                    current += 1
                    continue
                yielded_this_round = True
                yield doc, {
                    "current": current, "epoch": epoch, "yielded": True,
                    "sources": list(states), "status": list(status), "errors": list(errors),
                }
            if not self.loop:
                return
            if not yielded_this_round:
                raise DataError("data.mix 'sequential': a whole round over the sources gave no documents")
            epoch, current, yielded_this_round = epoch + 1, 0, False
            iters = {}
            states = [{"epoch": epoch, "index": 0, "source": None} for _ in self.streams]
            status = [FAILED if s == FAILED else LIVE for s in status]


class Weighted(Mixer):
    """Draw k picks a live stream with probability proportional to its weight, from rng([seed, k]).

    Keying each draw by its counter (saved in the state) makes a resumed run repeat the uninterrupted run's
    choices exactly. A stream that ends (finite streams: val, tokenizer text) leaves the draw to the rest.
    `weights` may be a shared float64 torch tensor (data.adaptive): every draw reads its current values.
    """

    def __init__(self, streams: list[DocumentStream], weights: Any, seed: int):
        super().__init__(streams)
        if len(weights) != len(streams) or any(float(w) <= 0 for w in weights):
            raise ValueError(f"need one positive weight per stream ({len(streams)}), got {list(weights)}")
        self.weights = weights
        self.seed = seed

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]:
        states, status, errors = self._restore(state)
        draws: int = state["draws"] if state else 0
        # A tensor's .numpy() is a view of its (shared) storage, taken here, inside the reader's process.
        weights = self.weights.numpy() if hasattr(self.weights, "numpy") else np.asarray(self.weights, dtype=np.float64)
        iters: dict[int, Iterator[tuple[Document, dict]]] = {}
        while LIVE in status:
            live = np.array([s == LIVE for s in status])
            p = np.where(live, weights, 0.0)
            cumulative = np.cumsum(p / p.sum())
            u = np.random.default_rng([self.seed, draws]).random()
            i = min(int(np.searchsorted(cumulative, u, side="right")), len(p) - 1)
            while not live[i]:  # float rounding at the top end of the cumulative sum
                i -= 1
            draws += 1
            doc = self._pull(i, iters, states, status, errors)
            if doc is not None:
                yield doc, {"draws": draws, "sources": list(states), "status": list(status), "errors": list(errors)}
