"""The adapter store on its own, with fakes for the fetcher, the parse and the device preparation (no torch).

What the engine tests cannot show deterministically: one fetch+parse per adapter at a time, refusals remembered per
key, the tiers' evictions and the pin, an adapter larger than the RAM tier, prefetch outcomes. Threads meet on
Events; where the store has no event to offer (a caller has started waiting), ``wait_until`` polls the store's own
``stats().in_flight`` with a generous deadline.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import lora_engine
from lora_engine.adapter_cache import AdapterKey
from lora_engine.adapters.store import AdapterStore, LoadedAdapter
from lora_engine.errors import AdapterFetchError, CorruptAdapter, UnsupportedAdapterFormat
from lora_engine.metrics import EngineMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.pure

DEADLINE_S = 30.0  # generous: only a broken store waits this long


@dataclass(frozen=True)
class FakeAdapter:
    """Stands in for a ``ParsedAdapter``: what the store needs is ``nbytes``; ``where`` shows what ``prepare`` did."""

    adapter_id: str
    revision: str
    nbytes: int
    where: str = "host"


@dataclass(frozen=True)
class FakeSource:
    key: AdapterKey
    path: Path
    origin: str


class FakeFetcher:
    """Resolves ids to fake files as ``AdapterFetcher`` does: first fetch "hub", later ones "disk", and a key
    known without the network once fetched. ``gate[id]`` holds a fetch until set; ``fail[id]`` fails the next one."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = dict(sizes)
        self.revisions = dict.fromkeys(sizes, "r1")
        self.fetches: Counter[str] = Counter()
        self.resolved: set[str] = set()
        self.started = {adapter_id: threading.Event() for adapter_id in sizes}
        self.gate: dict[str, threading.Event] = {}
        self.fail: dict[str, Exception] = {}

    def key(self, adapter_id: str) -> AdapterKey:
        return AdapterKey(adapter_id, "lora.safetensors", self.revisions[adapter_id])

    def known_key(self, adapter_id: str) -> AdapterKey | None:
        return self.key(adapter_id) if adapter_id in self.resolved else None

    def fetch(self, adapter_id: str) -> FakeSource:
        self.fetches[adapter_id] += 1
        self.started[adapter_id].set()
        gate = self.gate.get(adapter_id)
        if gate is not None:
            assert gate.wait(DEADLINE_S), "the test never released this fetch"
        error = self.fail.pop(adapter_id, None)
        if error is not None:
            raise error
        origin = "disk" if adapter_id in self.resolved else "hub"
        self.resolved.add(adapter_id)
        key = self.key(adapter_id)
        return FakeSource(key, Path(f"/nowhere/{adapter_id}/{key.revision}/lora.safetensors"), origin)


class FakeParse:
    """``parse(adapter_id, path)``: counts calls per adapter id; ``refuse``/``crash`` map an id to an error to raise."""

    def __init__(self, fetcher: FakeFetcher):
        self.fetcher = fetcher
        self.calls: Counter[str] = Counter()
        self.refuse: dict[str, Exception] = {}
        self.crash: dict[str, Exception] = {}

    def __call__(self, adapter_id: str, path: Path) -> FakeAdapter:
        self.calls[adapter_id] += 1
        if adapter_id in self.refuse:
            raise self.refuse[adapter_id]
        if adapter_id in self.crash:
            raise self.crash[adapter_id]
        return FakeAdapter(adapter_id, path.parent.name, self.fetcher.sizes[adapter_id])

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def prepare(adapter: FakeAdapter) -> FakeAdapter:
    return replace(adapter, where="device")


@dataclass
class World:
    store: AdapterStore
    fetcher: FakeFetcher
    parse: FakeParse
    metrics: EngineMetrics

    def metric(self, name: str, **labels) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def lookups(self, tier: str) -> float:
        return self.metric("lora_engine_adapter_cache_lookups_total", tier=tier)


@pytest.fixture
def make_world():
    stores = []

    def make(sizes: dict[str, int], *, ram: int = 1000, device: int = 1000) -> World:
        fetcher = FakeFetcher(sizes)
        parse = FakeParse(fetcher)
        metrics = EngineMetrics()
        store = AdapterStore(
            fetcher, parse=parse, prepare=prepare, ram_cache_bytes=ram, device_cache_bytes=device, metrics=metrics
        )
        stores.append(store)
        return World(store, fetcher, parse, metrics)

    yield make
    for store in stores:
        store.close()


def waiting_callers(world: World, adapter_id: str, n: int) -> None:
    """Until ``n`` callers wait for the fetch of ``adapter_id`` in progress (the store has no event for that)."""
    wait_until(lambda: world.store.stats().in_flight == {adapter_id: n}, DEADLINE_S, f"{n} waiting for {adapter_id}")


def in_thread(fn, *args) -> Future:
    """Run ``fn(*args)`` on a new thread; the Future has its result or its exception."""
    future: Future = Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to the test through the future, re-raised by .result()
            future.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return future


def test_tiers_hub_then_device_then_active_and_lookups_counted(make_world):
    w = make_world({"a/one": 100})
    first = w.store.get("a/one")
    assert (first.tier, first.key, first.prepared.where) == ("hub", w.fetcher.key("a/one"), "device")
    again = w.store.get("a/one")
    assert again.tier == "device" and again.prepared is first.prepared
    w.store.set_active(again)
    assert w.store.active_key == first.key
    active = w.store.get("a/one")
    assert active.tier == "active" and active.prepared is first.prepared
    assert w.fetcher.fetches["a/one"] == 1 and w.parse.total == 1
    assert [w.lookups(t) for t in ("hub", "device", "active")] == [1, 1, 1]
    assert w.metric("lora_engine_adapter_cache_bytes", tier="ram") == 100
    assert w.metric("lora_engine_adapter_cache_bytes", tier="device") == 100
    assert w.metric("lora_engine_fetch_seconds_count") == 1
    w.store.set_active(None)
    assert w.store.active_key is None and w.store.get("a/one").tier == "device"


def test_ram_tier_evicts_least_recently_used_and_an_evicted_adapter_comes_back_from_disk(make_world):
    w = make_world({"a/one": 100, "a/two": 100, "a/three": 100}, ram=250, device=0)
    assert [w.store.get(a).tier for a in ("a/one", "a/two", "a/three")] == ["hub"] * 3
    assert w.store.resident_adapters() == ["a/two", "a/three"]
    assert w.metric("lora_engine_adapter_cache_evictions_total", tier="ram") == 1
    assert w.metric("lora_engine_adapter_cache_bytes", tier="ram") == 200
    # The device tier is off: every prepared adapter is dropped at once, and counted as an eviction.
    assert w.metric("lora_engine_adapter_cache_evictions_total", tier="device") == 3
    assert w.store.stats().device.entries == 0

    assert w.store.get("a/two").tier == "ram"
    back = w.store.get("a/one")
    assert back.tier == "disk" and w.fetcher.fetches["a/one"] == 2 and w.parse.total == 4
    assert w.store.resident_adapters() == ["a/two", "a/one"]  # a/three was the least recently used


def test_the_adapter_in_the_weights_is_pinned_in_the_device_tier(make_world):
    w = make_world({"a/one": 100, "a/two": 100, "a/three": 100}, device=200)
    one = w.store.get("a/one")
    w.store.set_active(one)
    w.store.get("a/two")
    w.store.get("a/three")  # the device tier is full: a/two goes, not the older but pinned a/one
    assert w.metric("lora_engine_adapter_cache_evictions_total", tier="device") == 1
    w.store.set_active(None)
    assert w.store.get("a/one").tier == "device"
    assert w.store.get("a/two").tier == "ram"


def test_evicting_the_adapter_in_the_weights_keeps_it_usable(make_world):
    w = make_world({"a/one": 100, "a/two": 100})
    w.store.set_active(w.store.get("a/one"))
    w.store.preload("a/two")
    assert w.store.resident_adapters() == ["a/one", "a/two"]
    assert w.store.evict("a/one") is True and w.store.evict("a/one") is False
    assert w.store.resident_adapters() == ["a/two"]
    assert w.metric("lora_engine_adapter_cache_bytes", tier="ram") == 100
    assert w.metric("lora_engine_adapter_cache_bytes", tier="device") == 0
    assert w.store.get("a/one").tier == "active"  # the store still holds the factors in use
    w.store.set_active(None)
    assert w.store.get("a/one").tier == "disk"  # gone from both tiers: fetched again


def test_preload_parses_into_ram_once_and_touches_no_device(make_world):
    w = make_world({"a/one": 100})
    key = w.store.preload("a/one")
    assert key == w.fetcher.key("a/one") and w.store.preload("a/one") == key
    assert w.parse.total == 1 and w.fetcher.fetches["a/one"] == 1
    assert w.store.stats().device.entries == 0
    assert w.store.get("a/one").tier == "ram"


def test_an_adapter_larger_than_the_whole_ram_tier_is_served_without_being_kept(make_world):
    w = make_world({"big/one": 500, "a/two": 100}, ram=300, device=0)
    w.store.preload("a/two")
    first = w.store.get("big/one")
    assert first.tier == "hub" and first.prepared.nbytes == 500
    assert w.parse.total == 2  # parsed once for this call, not again to look for it in the RAM tier
    assert w.store.resident_adapters() == ["a/two"]  # nothing else was flushed for it
    assert w.store.stats().ram.bytes == 100
    second = w.store.get("big/one")
    assert second.tier == "disk" and w.parse.total == 3


def test_two_callers_for_one_adapter_fetch_and_parse_it_once(make_world):
    # No RAM tier: the second caller can only have the adapter from the first caller's fetch, not from a tier.
    w = make_world({"a/one": 100}, ram=0)
    w.fetcher.gate["a/one"] = release = threading.Event()
    first = in_thread(w.store.get, "a/one")
    assert w.fetcher.started["a/one"].wait(DEADLINE_S)
    second = in_thread(w.store.get, "a/one")
    waiting_callers(w, "a/one", 1)
    release.set()
    a, b = first.result(DEADLINE_S), second.result(DEADLINE_S)
    assert w.fetcher.fetches["a/one"] == 1 and w.parse.total == 1
    assert a.key == b.key and (a.tier, b.tier) == ("hub", "ram")
    assert w.store.stats().in_flight == {}


def test_a_failed_fetch_reaches_every_waiting_caller_and_is_not_remembered(make_world):
    w = make_world({"a/one": 100})
    w.fetcher.gate["a/one"] = release = threading.Event()
    w.fetcher.fail["a/one"] = AdapterFetchError("a/one", "the Hub answered 503")
    first = in_thread(w.store.get, "a/one")
    assert w.fetcher.started["a/one"].wait(DEADLINE_S)
    second = in_thread(w.store.preload, "a/one")
    waiting_callers(w, "a/one", 1)
    release.set()
    for future in (first, second):
        with pytest.raises(AdapterFetchError, match="503"):
            future.result(DEADLINE_S)
    assert w.fetcher.fetches["a/one"] == 1
    # Not remembered: the next request fetches again, and this time it works.
    assert w.store.get("a/one").tier == "hub" and w.fetcher.fetches["a/one"] == 2


def test_a_refused_file_is_remembered_per_key_and_parsed_once(make_world):
    w = make_world({"bad/one": 100})
    w.parse.refuse["bad/one"] = CorruptAdapter("bad/one", "the header declares 9 EB")
    for _ in range(3):
        with pytest.raises(CorruptAdapter, match="9 EB"):
            w.store.get("bad/one")
    with pytest.raises(CorruptAdapter):
        w.store.preload("bad/one")
    assert w.parse.total == 1
    assert w.store.resident_adapters() == []
    # A new revision is a new key: parsed (and judged) afresh.
    w.fetcher.revisions["bad/one"] = "r2"
    del w.parse.refuse["bad/one"]
    fixed = w.store.get("bad/one")
    assert fixed.key.revision == "r2" and fixed.tier == "disk" and w.parse.total == 2


def test_prefetch_fetches_into_ram_and_a_concurrent_request_waits_for_it(make_world):
    w = make_world({"a/one": 100})
    w.fetcher.gate["a/one"] = release = threading.Event()
    done = w.store.prefetch("a/one")
    assert done is not None and w.fetcher.started["a/one"].wait(DEADLINE_S)
    assert w.store.prefetch("a/one") is None  # already being fetched: nothing more started
    request = in_thread(w.store.get, "a/one")
    waiting_callers(w, "a/one", 1)
    release.set()
    assert done.result(DEADLINE_S) is None
    loaded = request.result(DEADLINE_S)
    assert loaded.tier == "ram" and w.fetcher.fetches["a/one"] == 1 and w.parse.total == 1
    assert w.metric("lora_engine_prefetches_total", outcome="ok") == 1
    assert w.store.resident_adapters() == ["a/one"] and w.store.stats().prefetching == ()

    held = w.store.prefetch("a/one")  # in the RAM tier already: nothing fetched, nothing counted
    assert held is not None and held.result(DEADLINE_S) is None
    assert w.fetcher.fetches["a/one"] == 1 and w.metric("lora_engine_prefetches_total", outcome="ok") == 1


def test_prefetch_counts_refusals_and_bugs_and_never_raises(make_world):
    w = make_world({"bad/one": 100, "buggy/one": 100, "gone/one": 100})
    w.parse.refuse["bad/one"] = UnsupportedAdapterFormat("bad/one", "LoHa")
    w.parse.crash["buggy/one"] = ZeroDivisionError("a bug in the parse")
    w.fetcher.fail["gone/one"] = AdapterFetchError("gone/one", "connection refused")
    for adapter_id in ("bad/one", "buggy/one", "gone/one"):
        assert w.store.prefetch(adapter_id).result(DEADLINE_S) is None
    assert w.metric("lora_engine_prefetches_total", outcome="refused") == 2
    assert w.metric("lora_engine_prefetches_total", outcome="error") == 1
    # The request meets its own error; the refusal was remembered by the prefetch, the fetch failure was not.
    with pytest.raises(UnsupportedAdapterFormat):
        w.store.get("bad/one")
    assert w.parse.calls["bad/one"] == 1
    assert w.store.get("gone/one").tier == "hub"


def test_nothing_is_prefetched_once_closed(make_world):
    w = make_world({"a/one": 100})
    w.store.close()
    assert w.store.prefetch("a/one") is None
    assert w.fetcher.fetches["a/one"] == 0 and w.store.stats().prefetching == ()


def test_loaded_adapter_is_a_typed_frozen_record(make_world):
    w = make_world({"a/one": 100})
    loaded = w.store.get("a/one")
    assert isinstance(loaded, LoadedAdapter) and loaded.fetch_s >= 0
    with pytest.raises(AttributeError):
        loaded.tier = "ram"  # type: ignore[misc]


def test_the_store_and_the_service_protocol_import_no_torch():
    code = "import lora_engine.adapters.store, lora_engine.service, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _attributes_on(tree: ast.AST, names: set[str]) -> set[str]:
    """Attributes read on ``self.<name>`` or ``<name>`` for each name in ``names``."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in names:
            found.add(node.attr)
        elif isinstance(value, ast.Attribute) and value.attr in names and isinstance(value.value, ast.Name):
            found.add(node.attr)
    return found


def test_the_engine_reaches_the_pipeline_only_through_the_backends_public_surface():
    package = Path(lora_engine.__file__).parent
    engine_tree = ast.parse((package / "engine.py").read_text(encoding="utf-8"))
    backend_tree = ast.parse((package / "pipeline" / "backend.py").read_text(encoding="utf-8"))
    (backend_class,) = [n for n in backend_tree.body if isinstance(n, ast.ClassDef) and n.name == "DiffusersBackend"]
    public = {n.name for n in backend_class.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    public |= {
        t.attr
        for n in ast.walk(backend_class)
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    used = _attributes_on(engine_tree, {"backend"})
    assert {"swap", "active", "verify_base", "originals_bytes"} <= used  # the walker found the engine's calls
    assert "swapper" not in used and used <= public - {"swapper"}, used - public
