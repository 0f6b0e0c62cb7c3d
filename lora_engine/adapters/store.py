"""The adapter store: an adapter ready to swap, from the fastest tier that holds it.

What this is for: everything between an adapter id and factors ready on the weights' device. It owns the
fetcher (``adapters.fetch``), the RAM tier (parsed factors in host memory) and the device tier (factors on the
weights' device and dtype), both :class:`~lora_engine.adapter_cache.ByteLRU` by bytes; it runs one fetch+parse
per adapter at a time (other callers wait for it rather than fetch again), remembers refusals of a file per
:class:`~lora_engine.adapter_cache.AdapterKey` (a bad revision is never parsed twice), fetches ahead on a small
thread pool (``prefetch``), and keeps the adapter in the weights pinned (``set_active``). It reports to
:class:`~lora_engine.metrics.EngineMetrics`: lookups per tier, evictions, bytes per tier, prefetch outcomes and
fetch seconds.

Tiers, fastest first, as :attr:`LoadedAdapter.tier` names them (and ``GenerationResult.cache_tier`` after it):
    active  the adapter in the weights now (``set_active``): nothing to fetch, parse or prepare;
    device  prepared factors in the device tier;
    ram     parsed factors in the RAM tier, or from a fetch already in progress that this call waited for
            (prepared now);
    disk, hub, local  the fetcher's ``AdapterSource.origin``: huggingface_hub's cache, a download, a local folder
            (fetched and parsed now).

What it is not for: torch. It imports none; parsing a file and preparing factors for the device are injected
callables (the engine passes ``adapters.parse`` and ``DiffusersBackend.prepare``), which is what lets it be tested
with fakes. Nor the queue, the weights or the swap (``engine``, ``pipeline``), nor resolving and downloading
(``adapters.fetch``, whose disk tier is huggingface_hub's own cache).

Thread safety: every method may be called from any thread. ``get`` and ``set_active`` are meant for the one thread
that swaps (the engine's worker), ``preload``/``evict``/``resident_adapters`` for hosts such as Ray Serve's
multiplexer, ``prefetch`` for whoever knows what comes next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..adapter_cache import AdapterKey, ByteLRU, CacheStats
from ..errors import AdapterError, EngineError
from ..metrics import EngineMetrics

if TYPE_CHECKING:
    from .fetch import AdapterSource

logger = logging.getLogger(__name__)

__all__ = ["AdapterStore", "LoadedAdapter", "StoreStats"]


class SizedAdapter(Protocol):
    """What the store needs of a parsed or prepared adapter: its size, for the tiers' byte budgets."""

    nbytes: int


class SourceFetcher(Protocol):
    """What the store needs of ``adapters.fetch.AdapterFetcher``."""

    def fetch(self, adapter_id: str) -> AdapterSource: ...

    def known_key(self, adapter_id: str) -> AdapterKey | None: ...


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter ready to swap, and where it was found.

    Args:
        key (`AdapterKey`): the repo, file and revision.
        prepared: its factors on the weights' device and dtype (what the injected ``prepare`` returned).
        tier (`str`): ``"active"``, ``"device"``, ``"ram"``, ``"disk"``, ``"hub"`` or ``"local"`` (module docstring).
        fetch_s (`float`): seconds ``get`` took, fetching, parsing and preparing included.
    """

    key: AdapterKey
    prepared: SizedAdapter
    tier: str
    fetch_s: float


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store.

    Args:
        ram (`CacheStats`), device (`CacheStats`): the tiers' counters.
        in_flight (`dict[str, int]`): adapter ids being fetched and parsed now, each with how many other callers
            wait for that fetch.
        prefetching (`tuple[str, ...]`): adapter ids handed to the prefetch pool and not finished.
    """

    ram: CacheStats
    device: CacheStats
    in_flight: dict[str, int]
    prefetching: tuple[str, ...]


@dataclass(frozen=True)
class _Parsed:
    """An adapter parsed in host memory (held by the RAM tier, or by the caller alone when it is too large)."""

    key: AdapterKey
    parsed: SizedAdapter
    tier: str


@dataclass
class _InFlight:
    """One fetch+parse in progress; callers asking for the same adapter meanwhile wait for ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    waiters: int = 0
    result: _Parsed | None = None
    error: BaseException | None = None


class AdapterStore:
    """Adapters by id, from the fastest tier holding them; see the module docstring.

    Args:
        fetcher (`AdapterFetcher`): resolves ids to files (``fetch``, ``known_key``).
        parse (`Callable[[str, Path], ParsedAdapter]`): reads and checks one file: ``parse(adapter_id, path)``;
            raises an ``AdapterError`` to refuse it (remembered for that key). The result has ``nbytes``.
        prepare (`Callable[[ParsedAdapter], ParsedAdapter]`): the parsed factors on the weights' device and dtype
            (with ``nbytes``).
        ram_cache_bytes (`int`), device_cache_bytes (`int`): the tiers' byte budgets (0 turns a tier off).
        metrics (`EngineMetrics`): where the store's counters go.
        prefetch_threads (`int`, *optional*): threads fetching ahead (downloads overlap; parsing is short).

    Example:
        >>> store = AdapterStore(fetcher, parse=parse, prepare=backend.prepare, ram_cache_bytes=1 << 30,
        ...                      device_cache_bytes=1 << 28, metrics=EngineMetrics())
        >>> loaded = store.get("nerijs/pixel-art-xl")
        >>> backend.swap(loaded.prepared, 1.0); store.set_active(loaded)
    """

    def __init__(
        self,
        fetcher: SourceFetcher,
        *,
        parse: Callable[[str, Path], SizedAdapter],
        prepare: Callable[[SizedAdapter], SizedAdapter],
        ram_cache_bytes: int,
        device_cache_bytes: int,
        metrics: EngineMetrics,
        prefetch_threads: int = 2,
    ):
        self._fetcher = fetcher
        self._parse = parse
        self._prepare = prepare
        self._metrics = metrics
        self._lock = threading.Lock()
        self._ram: ByteLRU[AdapterKey, SizedAdapter] = ByteLRU(ram_cache_bytes)
        self._device: ByteLRU[AdapterKey, SizedAdapter] = ByteLRU(device_cache_bytes)
        self._refused: dict[AdapterKey, AdapterError] = {}
        self._in_flight: dict[str, _InFlight] = {}
        self._prefetching: set[str] = set()
        # The adapter in the weights: served as "active", and pinned in the device tier. Held here (not only in
        # the tier) so that no eviction, not even ``evict``, can take factors that are in use.
        self._active: LoadedAdapter | None = None
        self._pool = ThreadPoolExecutor(max_workers=prefetch_threads, thread_name_prefix="lora-prefetch")

    # -- for the thread that swaps -------------------------------------------------------------------------

    def get(self, adapter_id: str) -> LoadedAdapter:
        """The adapter ready to swap, from the fastest tier holding it; it is then in the device tier too.

        Counts one lookup for the tier it came from (``lora_engine_adapter_cache_lookups``). An adapter larger
        than the whole RAM tier is still served: parsed for this call alone.

        Raises:
            AdapterNotFound, AdapterGated, AdapterFetchError, IncompatibleAdapter, UnsafeAdapterFile: the fetcher's.
            UnsupportedAdapterFormat, CorruptAdapter, IncompatibleAdapter: the parse's refusals, remembered per key.
        """
        t0 = time.monotonic()
        known = self._fetcher.known_key(adapter_id)
        with self._lock:
            active = self._active
            if known is not None and active is not None and active.key == known:
                tier, prepared = "active", active.prepared
            else:
                tier, prepared = "device", (None if known is None else self._device.get(known))
        if prepared is not None:
            self._metrics.cache_lookups.labels(tier).inc()
            return LoadedAdapter(known, prepared, tier, time.monotonic() - t0)
        found = self._ensure_parsed(adapter_id)
        prepared = self._prepare(found.parsed)
        with self._lock:
            self._put("device", self._device, found.key, prepared)
        self._metrics.cache_lookups.labels(found.tier).inc()
        return LoadedAdapter(found.key, prepared, found.tier, time.monotonic() - t0)

    def set_active(self, loaded: LoadedAdapter | None) -> None:
        """Record what is in the weights now (None: the base); it is served as ``"active"`` and never evicted."""
        with self._lock:
            self._active = loaded
            self._device.pin(None if loaded is None else loaded.key)

    @property
    def active_key(self) -> AdapterKey | None:
        """The key of the adapter in the weights, as last given to ``set_active`` (None: the base)."""
        with self._lock:
            return None if self._active is None else self._active.key

    # -- for hosts that decide what a process holds ----------------------------------------------------------

    def preload(self, adapter_id: str) -> AdapterKey:
        """Fetch and parse an adapter into the RAM tier now, on the calling thread; returns its key.

        Waits for a fetch of the same adapter already in progress rather than fetching it twice.

        Raises:
            as ``get``.
        """
        return self._ensure_parsed(adapter_id).key

    def evict(self, adapter_id: str) -> bool:
        """Drop every revision of an adapter from the RAM and device tiers; returns whether any was held.

        The adapter in the weights stays usable (``set_active`` holds its factors).
        """
        dropped = False
        with self._lock:
            for tier, lru in (("ram", self._ram), ("device", self._device)):
                for key in [k for k in lru.keys() if k.repo_id == adapter_id]:
                    lru.pop(key)
                    dropped = True
                self._metrics.cache_bytes.labels(tier).set(lru.bytes)
        return dropped

    def resident_adapters(self) -> list[str]:
        """The adapter ids parsed in the RAM tier, least recently used first."""
        with self._lock:
            return list(dict.fromkeys(key.repo_id for key in self._ram.keys()))

    # -- ahead of time ---------------------------------------------------------------------------------------

    def prefetch(self, adapter_id: str) -> Future | None:
        """Fetch and parse ``adapter_id`` into the RAM tier on the prefetch pool; returns at once.

        Nothing is started (None) when the adapter is being fetched already or is queued for prefetch, which also
        keeps the pool's queue no longer than the number of distinct adapters asked for, or once ``close``d. The
        outcome is counted in ``lora_engine_prefetches`` (``ok``, ``refused``, ``error``); an adapter found in the
        RAM tier counts nothing. Errors are not raised: the request for the adapter meets them itself.

        Returns:
            `Future`: done when the prefetch is (its result is None), or None when nothing was started.
        """
        with self._lock:
            if adapter_id in self._in_flight or adapter_id in self._prefetching:
                return None
            self._prefetching.add(adapter_id)
        try:
            return self._pool.submit(self._prefetch, adapter_id)
        except RuntimeError:  # the pool is shut down: the store is closed
            with self._lock:
                self._prefetching.discard(adapter_id)
            return None

    def _prefetch(self, adapter_id: str) -> None:
        try:
            # On this thread, not the caller's: a local folder's stats or a broken card cost the caller nothing.
            known = self._fetcher.known_key(adapter_id)
            with self._lock:
                if known is not None and known in self._ram:
                    return  # held already: nothing was fetched, nothing to count
            self._ensure_parsed(adapter_id)
            self._metrics.prefetches.labels("ok").inc()
        except EngineError:
            # The request itself will meet the same error and report it; nothing to do here.
            self._metrics.prefetches.labels("refused").inc()
        except Exception:  # a prefetch bug must not kill the pool's thread; the request fetches again itself
            logger.exception("prefetch of %s failed", adapter_id)
            self._metrics.prefetches.labels("error").inc()
        finally:
            with self._lock:
                self._prefetching.discard(adapter_id)

    # -- the rest --------------------------------------------------------------------------------------------

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                ram=self._ram.stats(),
                device=self._device.stats(),
                in_flight={adapter_id: f.waiters for adapter_id, f in self._in_flight.items()},
                prefetching=tuple(sorted(self._prefetching)),
            )

    def close(self) -> None:
        """Stop the prefetch pool (prefetches not started are dropped; running ones finish on their own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- fetch and parse, once per adapter at a time --------------------------------------------------------

    def _ensure_parsed(self, adapter_id: str) -> _Parsed:
        """The adapter parsed (in the RAM tier unless it is larger than all of it), and the tier it came from.

        The first caller fetches and parses; callers arriving meanwhile wait for it and get its result (tier
        ``"ram"``), or its error. A failure is not remembered here: the next caller tries again (the parse's
        refusals are remembered per key by ``_load``).
        """
        with self._lock:
            in_flight = self._in_flight.get(adapter_id)
            if in_flight is None:
                in_flight = self._in_flight[adapter_id] = _InFlight()
                mine = True
            else:
                in_flight.waiters += 1
                mine = False
        if not mine:
            in_flight.done.wait()
            if in_flight.error is not None:
                raise in_flight.error
            return _Parsed(in_flight.result.key, in_flight.result.parsed, "ram")
        try:
            in_flight.result = self._load(adapter_id)
            return in_flight.result
        except BaseException as e:
            in_flight.error = e
            raise
        finally:
            with self._lock:
                self._in_flight.pop(adapter_id, None)
            in_flight.done.set()

    def _load(self, adapter_id: str) -> _Parsed:
        t0 = time.monotonic()
        # Without the network first: a local adapter or a fresh resolution finds the RAM tier with no Hub call.
        known = self._fetcher.known_key(adapter_id)
        if known is not None:
            with self._lock:
                parsed = self._ram.get(known)
            if parsed is not None:
                return _Parsed(known, parsed, "ram")
        source = self._fetcher.fetch(adapter_id)
        with self._lock:
            refused = self._refused.get(source.key)
            if refused is not None:
                raise refused
            parsed = None if source.key == known else self._ram.get(source.key)
        if parsed is not None:
            return _Parsed(source.key, parsed, "ram")
        try:
            parsed = self._parse(adapter_id, source.path)
        except AdapterError as e:
            with self._lock:
                self._refused[source.key] = e
            raise
        with self._lock:
            self._put("ram", self._ram, source.key, parsed)
        self._metrics.fetch_seconds.observe(time.monotonic() - t0)
        return _Parsed(source.key, parsed, source.origin)

    def _put(self, tier: str, lru: ByteLRU, key: AdapterKey, value: SizedAdapter) -> None:
        """Under ``_lock``: put ``value`` in a tier and count what that evicted. A value larger than the whole tier
        comes back as its own eviction, and counts as one: it is dropped at once (its caller still uses it)."""
        for _ in lru.put(key, value, value.nbytes):
            self._metrics.evictions.labels(tier).inc()
        self._metrics.cache_bytes.labels(tier).set(lru.bytes)
