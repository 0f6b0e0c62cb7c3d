"""The offline world every test runs in: a loopback fake Hub, a private HF cache, the built demo model.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is first imported,
so they are set here at import time, before any test module imports it: the fake Hub starts now (on a
free port on 127.0.0.1, serving repos from a session folder that fixtures fill), and the real client then
talks to it with no patching. Tests that need a clean Hub use the ``fake_hub`` fixture, which resets its
knobs (delay, failures) and request log after each test.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lora-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)

from lora_engine.testing.loopback_hub import FakeHub, start_for_this_process  # noqa: E402  (stdlib + yaml: no huggingface_hub)

_HUB = start_for_this_process(_SESSION_DIR)
_HUB_URL = _HUB.url
atexit.register(_HUB.stop)
# The demo model is cached per session here, never in the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = str(_SESSION_DIR / "xdg_cache")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "gpu: needs CUDA (opt-in; never runs in CI)")
    config.addinivalue_line(
        "markers",
        "pure: needs no torch, diffusers, transformers or peft; set per module (`pytestmark = pytest.mark.pure`), "
        "and tests/test_pure_tests_run_without_torch.py runs every such module with those blocked",
    )


def pytest_collection_modifyitems(config, items):
    # GPU tests are opt-in, and say so in the report rather than vanish. torch is imported only when there is a
    # GPU test to decide about, so that collecting the pure tests needs no torch.
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (opt-in marker `gpu`)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture
def fake_hub() -> FakeHub:
    """The loopback Hub (``HF_ENDPOINT`` points at it); knobs and request log are reset after each test."""
    _HUB.reset()
    yield _HUB
    _HUB.reset()


@pytest.fixture(scope="session")
def hub_root() -> Path:
    return Path(_HUB.root)


@pytest.fixture(scope="session")
def demo_assets():
    """The built-in demo model and LoRAs, built once per session (a few seconds) into the session cache."""
    from lora_engine.demo.model import ensure_demo_assets

    return ensure_demo_assets(_SESSION_DIR / "demo")


@pytest.fixture(scope="session")
def load_demo_pipeline(demo_assets):
    """A function loading a fresh demo pipeline with ``from_pretrained`` (each call a new one)."""

    def load():
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(demo_assets.model_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


@pytest.fixture(scope="session")
def catalogue_facts() -> dict:
    """Real SDXL LoRA facts, read from ``../shared/catalogue_facts.json`` beside the checkout."""
    from tests.support.facts import load_catalogue_facts

    return load_catalogue_facts()


@pytest.fixture(scope="session")
def served_app(demo_assets, hub_root, tmp_path_factory):
    """``python app.py`` as a CPU machine runs it, with a Hub LoRA for the demo base published too."""
    from catalogue import Catalogue, HubSource, LocalSource
    from lora_engine import Engine, EngineConfig
    from lora_engine.demo.model import DEMO_BASE_MODEL_ID
    from lora_engine.testing.lora_files import lora_card, publish
    from tests.support.serving import HUB_LORA, serve

    data = (demo_assets.lora_dir("demo/pixel-blocks") / "pixel-blocks-xl.safetensors").read_bytes()
    publish(
        hub_root,
        HUB_LORA,
        {"tiny-hub.safetensors": data},
        card=lora_card(base_model=DEMO_BASE_MODEL_ID, trigger="hub style"),
        downloads=5,
        likes=2,
    )
    engine = Engine.from_config(
        EngineConfig(demo_dir=str(demo_assets.root), hub_cache_dir=str(tmp_path_factory.mktemp("hf")), max_queue=8)
    )
    catalogue = Catalogue(
        base_model=engine.info.base_model_id,
        local=[LocalSource(d) for d in engine.info.local_lora_dirs],
        hub=HubSource(endpoint=_HUB_URL, token=False, timeout_s=5),
        cache_dir=tmp_path_factory.mktemp("catalogue"),
    )
    catalogue.start()
    catalogue.refresh_now()
    served = serve(engine, catalogue)
    yield served
    served.stop()
