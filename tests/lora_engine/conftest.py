"""Engines on the demo model for the engine tests: built once per module, since loading takes a second."""

from __future__ import annotations

import numpy as np
import pytest

from lora_engine import Engine, EngineConfig, GenerationRequest
from lora_engine.testing.lora_files import SDXL


def fast(prompt="a red circle", **kw) -> GenerationRequest:
    """A request that runs in a fraction of a second on the demo model."""
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("seed", 7)
    kw.setdefault("width", 64)
    kw.setdefault("height", 64)
    return GenerationRequest(prompt, **kw)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


@pytest.fixture(scope="module")
def demo_engine(demo_assets, tmp_path_factory):
    """The engine exactly as ``python app.py`` builds it on a CPU: demo model, demo LoRAs local."""
    engine = Engine.from_config(
        EngineConfig(demo_dir=str(demo_assets.root), hub_cache_dir=str(tmp_path_factory.mktemp("hf_cache")))
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hub_engine(load_demo_pipeline, tmp_path_factory):
    """The demo pipeline presented as SDXL base, fetching adapters from the loopback Hub."""
    engine = Engine.from_pipeline(
        load_demo_pipeline(),
        base_model_id=SDXL,
        hub_cache_dir=str(tmp_path_factory.mktemp("hf_cache")),
        default_steps=2,
        default_side=64,
        hub_timeout_s=5.0,
    )
    yield engine
    engine.close()
