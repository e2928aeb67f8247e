"""The server's two bounded in-memory caches: upload embeddings and ready classifiers.

Both are least-recently-used: a hit moves an entry to the back, and the oldest entries
go once there are more than `max_items`. Both are safe to use from several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np


@dataclass
class Embedded:
    """One upload the server has seen: its id, file name, L2-normalised embedding and the
    precision it was encoded at."""

    id: str
    file: str
    embedding: np.ndarray
    precision: str = "fp32"



class _LRU:
    """A thread-safe dict that keeps its `max_items` most recently used entries."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def _put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class EmbeddingCache(_LRU):
    """(upload id, precision) -> `Embedded`, at most `max_items`."""

    def __init__(self, max_items: int = 4096) -> None:
        super().__init__(max_items)

    def get(self, key: str, precisions: Sequence[str] = ("fp32",)) -> Embedded | None:
        """The upload's embedding at the first of `precisions` that is cached."""
        for precision in precisions:
            item = self._get((key, precision))
            if item is not None:
                return item
        return None

    def put(self, item: Embedded) -> None:
        self._put((item.id, item.precision), item)


class LabelSetCache(_LRU):
    """A small LRU of classifiers built for custom label lists and subsets, so a page that
    sends the same labels again (on every rank or k change) does not re-encode them."""

    def __init__(self, max_items: int = 16) -> None:
        super().__init__(max_items)

    def get(self, key: tuple) -> Any | None:
        return self._get(key)

    def get_or_make(self, key: tuple, make: Callable[[], Any]) -> Any:
        value = self._get(key)
        if value is None:
            value = make()  # outside the lock: encoding labels takes a while
            self._put(key, value)
        return value
