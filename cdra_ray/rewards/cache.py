"""A bounded LRU cache of reward-model results, keyed by a hash of the exact request.

Across a run the same (P, q, steps 1..j) comes back often: G responses that open with the same first step, the
same scenario in a later epoch. The judge is frozen, so its answer for the same rendered tokens and the same
generation settings can be reused. Keys hash the token ids, not the text, so two renderings that tokenize
differently never collide.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Generic, Sequence, TypeVar

V = TypeVar("V")


def request_key(prompt_ids: Sequence[int], settings_tag: str) -> str:
    """sha256 over the rendered prompt's token ids and a string describing the generation settings."""
    digest = hashlib.sha256()
    digest.update(settings_tag.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(array("q", prompt_ids).tobytes())
    return digest.hexdigest()


class LRUCache(Generic[V]):
    """At most ``max_size`` entries; the least recently used goes first. Counts hits and misses."""

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError(f"LRUCache max_size must be >= 0 (0 disables caching), got {max_size}")
        self.max_size = max_size
        self._data: OrderedDict[str, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key: str, value: V) -> None:
        if self.max_size == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
