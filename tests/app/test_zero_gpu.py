"""On a ZeroGPU Space each request runs inside a ``spaces.GPU`` call and leaves the base weights behind it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from lora_engine import Engine, EngineConfig
from tests.support.serving import serve


class RecordingGpu:
    """Stands in for ``spaces.GPU(duration=...)``: wraps the function and records each call's thread."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        def wrapped(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return wrapped


@pytest.fixture(scope="module")
def zero_gpu_app(demo_assets, tmp_path_factory):
    from catalogue import Catalogue, LocalSource

    engine = Engine.from_config(EngineConfig(demo_dir=str(demo_assets.root)))
    catalogue = Catalogue(
        base_model=engine.info.base_model_id,
        local=[LocalSource(d) for d in engine.info.local_lora_dirs],
        cache_dir=tmp_path_factory.mktemp("cat"),
    )
    catalogue.start()
    gpu = RecordingGpu()
    import uvicorn  # noqa: F401  (serve() imports it; fail here, clearly, if missing)

    from app import build_app

    served = serve(engine, catalogue, app_factory=lambda e, c: build_app(e, c, gpu_call=gpu))
    yield served, gpu
    served.stop()


def test_requests_run_inside_the_gpu_call_and_leave_the_base(zero_gpu_app, served_app):
    served, gpu = zero_gpu_app
    client = Client(served.url + "/", verbose=False)
    path, details = client.predict(
        prompt="a cat", lora="demo/stripes", seed=9, num_inference_steps=2, api_name="/generate"
    )
    assert gpu.calls == 1 and details["lora"] == "demo/stripes"
    assert served.engine.status().active_adapter == ""
    assert served.engine.current_digest() == served.engine.base_digest

    r = httpx.post(
        served.url + "/",
        json={"inputs": "a cat", "parameters": {"seed": 9, "num_inference_steps": 2}},
        headers={"lora": "demo/stripes"},
        timeout=60,
    )
    assert r.status_code == 200 and gpu.calls == 2

    # Same pixels as the normal (worker-thread) path for the same request.
    normal, _ = Client(served_app.url + "/", verbose=False).predict(
        prompt="a cat", lora="demo/stripes", seed=9, num_inference_steps=2, api_name="/generate"
    )
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(normal)))
