"""The one least-recently-used cache of the engine (inversions, Δw, text embeddings, the fake backend).

Bounded by a budget in any unit the caller weighs entries in: bytes (`weight=nbytes`) or entries
(the default weight 1). Thread-safe, because the daemon's status reads the statistics on the event
loop while the worker thread fills the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRUCache:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The value (now the most recently used), or None; counts a hit or a miss."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, weight: int = 1) -> None:
        """Store (or replace) `key`; the least recently used entries go until the budget holds.
        An entry heavier than the whole budget is not stored."""
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]
            if weight > self.budget:
                return
            self._items[key] = (value, weight)
            self.used += weight
            while self.used > self.budget:
                _, (_, dropped) = self._items.popitem(last=False)
                self.used -= dropped

    def values(self) -> list[Any]:
        with self._lock:
            return [value for value, _ in self._items.values()]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def stats(self, unit: str = "entries") -> dict[str, int]:
        with self._lock:
            stats = {"hits": self.hits, "misses": self.misses, "entries": len(self._items)}
            if unit != "entries":
                stats[unit] = self.used
            return stats
