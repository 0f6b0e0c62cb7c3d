"""Hub faults: slow, failing, refusing, cutting downloads. The engine fails clearly and keeps serving."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lora_engine import AdapterFetchError, Engine
from lora_engine.demo.model import DEMO_LORAS
from lora_engine.testing.lora_files import SDXL, publish
from tests.lora_engine.conftest import fast, pixels


@pytest.fixture(scope="module")
def lora_bytes(demo_assets):
    spec = DEMO_LORAS[2]
    return (demo_assets.lora_dir(spec.repo_id) / spec.weight_name).read_bytes()


@pytest.fixture
def engine(load_demo_pipeline, tmp_path):
    e = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path),
        default_steps=1,
        default_side=64,
        hub_timeout_s=1.0,
    )
    yield e
    e.close()


# What "fails fast" is measured against: huggingface_hub alone retries a failing call with about 23 s of backoff.
# The engine's deadline (3 x hub_timeout_s = 3 s here) ends the wait long before that; the bound below sits under
# those retries, with room for a loaded machine, so it tells the two apart without being a speed target.
HUB_RETRIES_S = 23


def fails_fast(engine, adapter_id, within_s=HUB_RETRIES_S - 3):
    started = time.monotonic()
    with pytest.raises(AdapterFetchError) as info:
        engine.generate(fast(lora=adapter_id), timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < within_s, f"took {elapsed:.1f} s"
    return info.value


def still_serves(engine, base):
    assert np.array_equal(pixels(engine.generate(fast(), timeout=60)), base)
    assert engine.current_digest() == engine.base_digest


def test_a_hub_slower_than_the_timeout(engine, fake_hub, hub_root, lora_bytes):
    publish(hub_root, "faults/slow", {"lora.safetensors": lora_bytes})
    base = pixels(engine.generate(fast()))
    fake_hub.delay_s = 3.0
    fails_fast(engine, "faults/slow")
    fake_hub.delay_s = 0
    still_serves(engine, base)
    assert engine.generate(fast(lora="faults/slow")).cache_tier == "hub"  # works once the Hub is back


@pytest.mark.parametrize("where", ["/api/models/", "/resolve/"])
def test_a_hub_answering_500(engine, fake_hub, hub_root, lora_bytes, where):
    repo = f"faults/five-hundred-{where.strip('/').replace('/', '-')}"
    publish(hub_root, repo, {"lora.safetensors": lora_bytes})
    base = pixels(engine.generate(fast()))
    fake_hub.fail_status, fake_hub.fail_paths = 500, where
    err = fails_fast(engine, repo)
    assert "500" in str(err) or "Hub" in str(err)
    fake_hub.reset()
    still_serves(engine, base)


def test_connection_refused(engine, hub_root, lora_bytes):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    base = pixels(engine.generate(fast()))
    engine.fetcher.endpoint = dead
    fails_fast(engine, "faults/refused")
    engine.fetcher.endpoint = None
    still_serves(engine, base)


def test_a_download_cut_midway_is_never_used(engine, fake_hub, hub_root, lora_bytes, tmp_path):
    publish(hub_root, "faults/cut", {"lora.safetensors": lora_bytes})
    base = pixels(engine.generate(fast()))
    fake_hub.cut_after_bytes = len(lora_bytes) // 3
    fails_fast(engine, "faults/cut", within_s=30)
    assert not list(tmp_path.glob("models--faults--cut/snapshots/*/lora.safetensors"))
    fake_hub.reset()
    still_serves(engine, base)
    good = engine.generate(fast(lora="faults/cut"))
    assert good.cache_tier == "hub"
    assert (
        tmp_path / next(iter(tmp_path.glob("models--faults--cut/snapshots/*/lora.safetensors")))
    ).read_bytes() == lora_bytes


def test_a_revision_that_vanished_after_resolution_is_resolved_again(engine, fake_hub, hub_root, demo_assets):
    """Resolved at sha X, then the repo moved and X no longer exists: the engine resolves afresh, once."""
    first, second = ((demo_assets.lora_dir(s.repo_id) / s.weight_name).read_bytes() for s in DEMO_LORAS[:2])
    publish(hub_root, "faults/moving", {"lora.safetensors": first})
    old = engine.fetcher.resolve("faults/moving")
    publish(hub_root, "faults/moving", {"lora.safetensors": second})
    assert fake_hub.sha("faults/moving") != old.revision
    result = engine.generate(fast(lora="faults/moving"))
    assert result.adapter_revision == fake_hub.sha("faults/moving")
    assert fake_hub.requests_matching(None, f"faults/moving/resolve/{old.revision}")  # the old one was tried


def test_a_missing_revision_is_a_clear_not_found(engine, fake_hub, hub_root, lora_bytes):
    from lora_engine import AdapterNotFound
    from lora_engine.adapter_cache import AdapterKey

    publish(hub_root, "faults/norev", {"lora.safetensors": lora_bytes})
    with pytest.raises(AdapterNotFound, match="revision"):
        engine.fetcher._download("faults/norev", AdapterKey("faults/norev", "lora.safetensors", "f" * 40), None)
