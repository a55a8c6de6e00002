"""Stop strings: end a continuation where its decoded text first contains one, and stream text without showing it.

Stop strings are matched on decoded text, not token ids, because a tokenizer
may spell the same string with different tokens (or split it across tokens).
"""
from __future__ import annotations

from typing import Callable, Sequence


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None


def trim_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) its first stop string."""
    i = find_stop(text, stop_strings)
    return text if i is None else text[:i]


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: it may yet become one."""
    best = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class TextStreamer:
    """Turns token ids into written text as they come: waits out partial UTF-8 characters and anything
    that could still grow into a stop string, and writes nothing from the first stop string on."""

    def __init__(self, decode: Callable[[list[int]], str], write: Callable[[str], None], stop_strings: Sequence[str] = ()):
        self.decode, self.write, self.stop_strings = decode, write, [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.printed = 0
        self.stopped = False

    def text(self) -> str:
        """The continuation so far, cut at its first stop string."""
        return trim_at_stop(self.decode(self.ids), self.stop_strings)

    def feed(self, token_id: int) -> bool:
        """Add one token and write what is now certain; True once a stop string has appeared."""
        if self.stopped:
            return True
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        cut = find_stop(text, self.stop_strings)
        if cut is not None:
            self.stopped = True
            self._write_upto(text[:cut])
        elif not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._write_upto(text[: len(text) - held_back(text, self.stop_strings)])
        return self.stopped

    def finish(self) -> str:
        """Write whatever was held back (the run ended without a stop string); return the whole text."""
        text = self.text()
        self._write_upto(text)
        return text

    def _write_upto(self, text: str) -> None:
        if len(text) > self.printed:
            self.write(text[self.printed :])
            self.printed = len(text)
