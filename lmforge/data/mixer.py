"""Interleave several document streams; a stream that breaks is dropped so one bad source does not stop a run."""
from __future__ import annotations

import warnings
from typing import Iterator, Protocol

from lmforge.data.errors import DataError, DataWarning
from lmforge.data.sources.base import Document

LIVE, DONE, FAILED = "live", "done", "failed"


class DocumentStream(Protocol):
    name: str

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]: ...


class RoundRobin:
    """Takes one document from each live stream in turn.

    State: each stream's state, whose turn is next, and which streams are finished or failed (a failed
    stream stays dropped on resume, as it would have in the uninterrupted run).
    """

    def __init__(self, streams: list[DocumentStream]):
        if not streams:
            raise ValueError("RoundRobin needs at least one stream")
        self.streams = streams

    def documents(self, state: dict | None = None) -> Iterator[tuple[Document, dict]]:
        n = len(self.streams)
        states: list = list(state["sources"]) if state else [None] * n
        status: list[str] = list(state["status"]) if state else [LIVE] * n
        errors: list[str] = list(state["errors"]) if state else []
        turn: int = state["turn"] if state else 0
        iters: dict[int, Iterator[tuple[Document, dict]]] = {}
        while LIVE in status:
            i, turn = turn, (turn + 1) % n
            if status[i] != LIVE:
                continue
            if i not in iters:
                iters[i] = self.streams[i].documents(states[i])
            try:
                doc, states[i] = next(iters[i])
            except StopIteration:
                status[i] = DONE
                continue
            except Exception as err:  # noqa: BLE001  any failure of one source must not stop the others
                status[i] = FAILED
                errors.append(f"{self.streams[i].name}: {type(err).__name__}: {err}")
                if all(s == FAILED for s in status):
                    raise DataError("all data sources failed: " + "; ".join(errors)) from err
                warnings.warn(f"data source {self.streams[i].name!r} failed and is dropped: {type(err).__name__}: {err}", DataWarning, stacklevel=2)
                continue
            yield doc, {"turn": turn, "sources": list(states), "status": list(status), "errors": list(errors)}
