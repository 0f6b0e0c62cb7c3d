"""Byte-bounded LRU bookkeeping for the adapter cache tiers. Pure: no torch, no I/O, no threads.

What this is for: deciding what stays in a tier (host RAM: parsed adapters; device: adapters already
converted to the weights' device and dtype) when each entry costs a known number of bytes. ``put`` returns
the keys it evicted, so the caller can drop the tensors, count evictions, and keep other bookkeeping (the
Ray Serve multiplexer, metrics) consistent. Entries can be pinned: the adapter currently written into the
weights is never evicted from the device tier under its feet.

What it is not for: downloading (the disk tier is huggingface_hub's own cache, pinned by revision sha),
or locking (the engine holds its lock around these calls).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["AdapterKey", "ByteLRU", "CacheStats"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class AdapterKey:
    """The identity of one adapter file: what the cache tiers are keyed by.

    Args:
        repo_id (`str`): ``owner/name``.
        weight_name (`str`): the file inside the repo.
        revision (`str`): the commit sha it was resolved to (``"local-<mtime>"`` for local folders).
    """

    repo_id: str
    weight_name: str
    revision: str

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.weight_name}@{self.revision[:12]}"


@dataclass(frozen=True)
class CacheStats:
    """Counters of one tier.

    Args:
        hits (`int`), misses (`int`), evictions (`int`): since creation.
        entries (`int`), bytes (`int`), capacity (`int`): now.
    """

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity: int


class ByteLRU(Generic[K, V]):
    """A least-recently-used map whose capacity is a byte budget.

    Args:
        capacity_bytes (`int`): the most bytes held. An entry larger than this is not kept at all (the
            caller still uses it once), rather than flushing everything else for it.

    Example:
        >>> lru = ByteLRU(100)
        >>> lru.put("a", "A", 60)
        []
        >>> lru.put("b", "B", 60)
        ['a']
    """

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0 but is {capacity_bytes!r}")
        self.capacity = capacity_bytes
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._pinned: set[K] = set()
        self._hits = self._misses = self._evictions = 0

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def keys(self) -> list[K]:
        """Keys from least to most recently used."""
        return list(self._items)

    def get(self, key: K) -> V | None:
        """The value, marked most recently used; None (and a miss) if absent."""
        item = self._items.get(key)
        if item is None:
            self._misses += 1
            return None
        self._hits += 1
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V, nbytes: int) -> list[K]:
        """Insert or replace ``key``; evict least recently used unpinned entries until it fits.

        Returns:
            `list`: the evicted keys, oldest first (``[key]`` itself if it can never fit).
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0 but is {nbytes!r}")
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]
        pinned_bytes = sum(self._items[k][1] for k in self._pinned if k in self._items)
        if nbytes > self.capacity - pinned_bytes:
            return [key]
        evicted: list[K] = []
        for old in list(self._items):
            if self._bytes + nbytes <= self.capacity:
                break
            if old in self._pinned:
                continue
            self._bytes -= self._items.pop(old)[1]
            evicted.append(old)
        self._evictions += len(evicted)
        self._items[key] = (value, nbytes)
        self._bytes += nbytes
        return evicted

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (not counted as an eviction); its value or None."""
        item = self._items.pop(key, None)
        self._pinned.discard(key)
        if item is None:
            return None
        self._bytes -= item[1]
        return item[0]

    def pin(self, key: K | None) -> None:
        """Make ``key`` the only pinned entry (``None``: pin nothing)."""
        self._pinned = set() if key is None else {key}

    def stats(self) -> CacheStats:
        return CacheStats(self._hits, self._misses, self._evictions, len(self._items), self._bytes, self.capacity)
