"""What a host that decides which adapters a process holds (Ray Serve's multiplexer) needs from the engine:
``Engine.preload``/``evict``/``resident_adapters``, ``AdapterFetcher.card_base_models``, errors that pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lora_engine import errors
from lora_engine.adapters.fetch import AdapterFetcher
from lora_engine.demo.model import DEMO_BASE_MODEL_ID, DEMO_LORAS
from lora_engine.errors import AdapterNotFound, IncompatibleAdapter, InvalidAdapterId
from lora_engine.testing.lora_files import lora_card, publish
from tests.lora_engine.conftest import fast, pixels


def _swaps(engine) -> float:
    return engine.metrics.registry.get_sample_value("lora_engine_swaps_total") or 0.0


def test_preload_parses_into_ram_without_touching_the_weights(demo_engine):
    adapter = DEMO_LORAS[0].repo_id
    demo_engine.evict(adapter)
    swaps = _swaps(demo_engine)
    key = demo_engine.preload(adapter)
    assert key.repo_id == adapter and adapter in demo_engine.resident_adapters()
    assert _swaps(demo_engine) == swaps  # nothing written into the weights
    assert demo_engine.preload(adapter) == key  # idempotent
    result = demo_engine.generate(fast(lora=adapter))
    assert result.cache_tier == "ram"


def test_evict_drops_the_adapter_and_a_later_request_fetches_it_again(demo_engine):
    adapter = DEMO_LORAS[1].repo_id
    first = demo_engine.generate(fast(lora=adapter, seed=3))
    assert adapter in demo_engine.resident_adapters()
    assert demo_engine.evict(adapter) is True
    assert adapter not in demo_engine.resident_adapters()
    assert demo_engine.evict(adapter) is False
    # It was in the weights when evicted: still served, with the same pixels.
    assert np.array_equal(pixels(demo_engine.generate(fast(lora=adapter, seed=3))), pixels(first))
    other = DEMO_LORAS[2].repo_id
    demo_engine.generate(fast(lora=other))
    demo_engine.evict(adapter)
    again = demo_engine.generate(fast(lora=adapter, seed=3))
    assert again.cache_tier == "local" and np.array_equal(pixels(again), pixels(first))
    assert demo_engine.current_digest() != demo_engine.base_digest  # an adapter is in the weights
    demo_engine.generate(fast())
    assert demo_engine.current_digest() == demo_engine.base_digest


@pytest.mark.parametrize(
    ("adapter", "error"), [("", InvalidAdapterId), ("../x", InvalidAdapterId), ("nobody/missing-lora", AdapterNotFound)]
)
def test_preload_refuses_like_a_request_would(demo_engine, fake_hub, adapter, error):
    with pytest.raises(error):
        demo_engine.preload(adapter)


def test_card_base_models_reads_local_and_hub_cards_whatever_we_accept(demo_assets, hub_root, fake_hub):
    publish(hub_root, "other/for-b", {"w.safetensors": b"not read"}, card=lora_card(base_model="test/base-b"))
    publish(hub_root, "other/two-bases", {"w.safetensors": b"x"}, card=lora_card(base_model=["test/b1", "test/b2"]))
    publish(hub_root, "other/not-a-lora", {"w.safetensors": b"x"}, card=lora_card(tags=["text-to-image"]))
    fetcher = AdapterFetcher(
        accepted_base_models=("nothing/accepted",), local_dirs=(demo_assets.loras_dir,), timeout_s=5
    )
    assert fetcher.card_base_models(DEMO_LORAS[0].repo_id) == (DEMO_BASE_MODEL_ID,)
    assert fetcher.card_base_models("other/for-b") == ("test/base-b",)
    assert fetcher.card_base_models("other/two-bases") == ("test/b1", "test/b2")
    calls = len(fake_hub.requests_matching("GET", r"/api/models/other/for-b"))
    assert fetcher.card_base_models("other/for-b") == ("test/base-b",)  # remembered: no second Hub call
    assert len(fake_hub.requests_matching("GET", r"/api/models/other/for-b")) == calls
    with pytest.raises(IncompatibleAdapter, match="LoRA"):
        fetcher.card_base_models("other/not-a-lora")
    with pytest.raises(AdapterNotFound):
        fetcher.card_base_models("nobody/missing-lora")
    assert not fake_hub.requests_matching("GET", r"/resolve/")  # nothing downloaded


def test_every_engine_error_pickles_as_itself():
    samples = {
        errors.InvalidRequest: errors.InvalidRequest("`seed` must be ...", field="seed"),
        errors.QueueFull: errors.QueueFull(7),
        errors.BaseModelNotDeployed: errors.BaseModelNotDeployed("a/b", ["x/base"], ["y/base"]),
    }
    for name in errors.__all__:
        cls = getattr(errors, name)
        error = samples.get(cls)
        if error is None:
            error = cls("a/b", "why") if issubclass(cls, errors.AdapterError) else cls("why")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error) and copy.__dict__ == error.__dict__, name
    assert pickle.loads(pickle.dumps(errors.QueueFull(7))).max_queue == 7
    assert "no deployment serves" in str(samples[errors.BaseModelNotDeployed])
