"""The adapter cache as the engine uses it: the tiers (disk/RAM/device), prefetch, local adapters.

The LRU and the adapter key alone (pure, no engine) are tested in ``test_adapter_cache.py``.
"""

from __future__ import annotations

import os
import threading

import pytest

from lora_engine import Engine
from lora_engine.demo.model import DEMO_LORAS
from lora_engine.testing.lora_files import SDXL, publish
from tests.lora_engine.conftest import fast
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def tier_repos(hub_root, demo_assets):
    ids = []
    for i, spec in enumerate(DEMO_LORAS):
        repo = f"tiers/lora-{i}"
        data = (demo_assets.lora_dir(spec.repo_id) / spec.weight_name).read_bytes()
        publish(hub_root, repo, {f"lora-{i}.safetensors": data})
        ids.append(repo)
    return ids


def test_an_adapter_larger_than_the_whole_ram_tier_is_still_served(load_demo_pipeline, tier_repos, tmp_path, fake_hub):
    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=1,
        default_side=64,
        ram_cache_bytes=100_000,
        device_cache_bytes=0,
        prefetch=False,
    )
    try:
        first = engine.generate(fast(lora=tier_repos[0]))
        assert first.lora == tier_repos[0] and engine.status().ram_cache["bytes"] == 0
        again = engine.generate(fast(lora=tier_repos[1]))  # and a swap to another one works too
        assert again.lora == tier_repos[1]
    finally:
        engine.close()


def test_tiers_hub_then_ram_then_disk_with_no_second_get(load_demo_pipeline, tier_repos, tmp_path, fake_hub):
    """A small RAM budget forces evictions; an evicted adapter comes back from disk, never the network."""
    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=1,
        default_side=64,
        ram_cache_bytes=3_000_000,
        device_cache_bytes=0,
        prefetch=False,
    )
    try:
        tiers = [engine.generate(fast(lora=r)).cache_tier for r in tier_repos]
        assert tiers == ["hub"] * len(tier_repos)
        status = engine.status()
        assert status.ram_cache["bytes"] <= 3_000_000 and status.ram_cache["evictions"] > 0
        assert status.device_cache["bytes"] == 0  # tier off: the RAM tier alone must serve

        last = engine.generate(fast(lora=tier_repos[-1]))
        assert last.cache_tier == "active"  # still in the weights: no fetch, no swap
        assert last.timings.swap_s == 0.0

        gets_before = len(fake_hub.requests_matching("GET", "/resolve/"))
        again = engine.generate(fast(lora=tier_repos[0]))  # evicted from RAM long ago
        assert again.cache_tier == "disk"
        assert len(fake_hub.requests_matching("GET", "/resolve/")) == gets_before

        engine.generate(fast(lora=tier_repos[1]))
        back = engine.generate(fast(lora=tier_repos[0]))
        assert back.cache_tier == "ram"
    finally:
        engine.close()


def test_device_tier_serves_recent_adapters(load_demo_pipeline, tier_repos, tmp_path):
    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=1,
        default_side=64,
        prefetch=False,
    )
    try:
        assert [engine.generate(fast(lora=r)).cache_tier for r in tier_repos[:2]] == ["hub", "hub"]
        assert engine.generate(fast(lora=tier_repos[0])).cache_tier == "device"
        assert engine.generate(fast(lora=tier_repos[0], lora_scale=0.5)).cache_tier == "active"
    finally:
        engine.close()


def test_a_moved_revision_gets_a_new_cache_entry(load_demo_pipeline, hub_root, demo_assets, tmp_path, fake_hub):
    specs = DEMO_LORAS[:2]
    first_bytes, second_bytes = ((demo_assets.lora_dir(s.repo_id) / s.weight_name).read_bytes() for s in specs)
    publish(hub_root, "moving/lora", {"lora.safetensors": first_bytes})
    engine = Engine.from_pipeline(
        load_demo_pipeline(), base_model_id=SDXL, hub_cache_dir=str(tmp_path), default_steps=1, default_side=64
    )
    try:
        old_sha = fake_hub.sha("moving/lora")
        a = engine.generate(fast(lora="moving/lora"))
        publish(hub_root, "moving/lora", {"lora.safetensors": second_bytes})
        engine.fetcher.forget("moving/lora")  # as if the resolution TTL had passed
        b = engine.generate(fast(lora="moving/lora"))
        assert a.adapter_revision == old_sha and b.adapter_revision == fake_hub.sha("moving/lora") != old_sha
        assert b.cache_tier == "hub"
        assert len(list(tmp_path.glob("models--moving--lora/snapshots/*"))) == 2
    finally:
        engine.close()


def test_prefetch_parses_the_next_adapter_off_the_worker_thread(load_demo_pipeline, tier_repos, tmp_path):
    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=4,
        default_side=64,
        max_wait_s=0.0,
    )
    seen = []
    fetch = engine.fetcher.fetch

    def recording_fetch(adapter_id):
        seen.append((adapter_id, threading.current_thread().name))
        return fetch(adapter_id)

    engine.fetcher.fetch = recording_fetch
    try:
        futures = [engine.submit(fast(lora=r, num_inference_steps=4)) for r in tier_repos[:3]]
        results = [f.result(60) for f in futures]
    finally:
        engine.close()
    threads = dict(seen)
    assert threads[tier_repos[0]] == "lora-engine-worker"
    assert all(name.startswith("lora-prefetch") for r, name in seen if r != tier_repos[0])
    assert [r.cache_tier for r in results[1:]] == ["ram", "ram"]


def test_queue_full_is_refused_at_once_and_position_and_estimate_are_given(load_demo_pipeline, tmp_path):
    from lora_engine import QueueFull

    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=1,
        default_side=64,
        max_queue=2,
    )
    try:
        engine.generate(fast())  # one finished run, so estimates have a mean to use
        busy = engine.submit(fast(num_inference_steps=100, width=256, height=256))
        wait_until(busy.running, message="the busy request never started")
        waiting = [engine.submit(fast(seed=i)) for i in range(2)]
        # Refused at once: raised by submit itself, before anything is queued (not through a Future later).
        with pytest.raises(QueueFull, match="2 requests waiting"):
            engine.submit(fast(seed=9))
        assert engine.status().queue_depth == 2
        assert [engine.position(f) for f in waiting] == [0, 1]
        assert engine.estimate_s(waiting[1]) > engine.estimate_s(waiting[0]) > 0
        for f in [busy, *waiting]:
            f.result(120)
        assert engine.position(waiting[0]) is None
    finally:
        engine.close()


def test_local_adapters_are_resolved_from_stats_and_a_rewritten_file_is_a_new_key(demo_assets, tmp_path):
    import shutil

    from lora_engine.adapters.fetch import AdapterFetcher
    from lora_engine.demo.model import DEMO_BASE_MODEL_ID

    shutil.copytree(demo_assets.lora_dir("demo/stripes"), tmp_path / "me" / "glow")
    fetcher = AdapterFetcher(accepted_base_models=(DEMO_BASE_MODEL_ID,), local_dirs=(tmp_path,))
    first = fetcher.fetch("me/glow")
    assert first.origin == "local" and first.key.revision.startswith("local-")
    assert fetcher.fetch("me/glow") is first  # nothing changed: the remembered source, no re-read
    weight = first.path
    stamp = weight.stat().st_mtime_ns
    weight.write_bytes(weight.read_bytes())  # rewritten in place: the folder's mtime does not change
    # A later mtime, set rather than waited for: a fast rewrite may keep the old one on a coarse-clocked file system.
    os.utime(weight, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    again = fetcher.fetch("me/glow")
    assert again.key != first.key
