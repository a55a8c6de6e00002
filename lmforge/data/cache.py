"""LRU cache of decoded samples (`data.cache_size`) for the map-style sources, whose samples are addressed by key.

binary windows and hdf5 rows are read by (file, position); decoding one means a memmap page-in or an h5py
read plus `.tolist()`, which a second epoch (or a shuffled revisit) repeats. An OrderedDict keeps the
`size` most recently used samples; `hits` and `misses` say whether it pays off. Cached lists are shared,
so consumers copy before changing them (the packer does; hdf5 caches the raw row and its target).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable

DEFAULT_CACHE_SIZE = 1000


class SampleCache:
    """`get(key, decode)`: the cached sample for key, else decode() stored as most recent; size 0 = off."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._items) > size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, decode: Callable[[], Any]) -> Any:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item
        self.misses += 1
        item = decode()
        if self.size > 0:
            self._items[key] = item
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return item
