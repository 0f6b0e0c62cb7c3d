"""The whole app, served for real: demo engine + catalogue (local demo LoRAs and the loopback Hub) on uvicorn."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from lora_engine import Engine, EngineConfig
from lora_engine.torch_demo import DEMO_BASE_MODEL_ID
from tests.support.loras import lora_card, publish

HUB_LORA = "someone/tiny-hub-lora"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A running app: its base URL, engine and catalogue."""

    def __init__(self, url, engine, catalogue, server, thread):
        self.url, self.engine, self.catalogue, self._server, self._thread = url, engine, catalogue, server, thread

    def stop(self):
        self._server.should_exit = True
        self._thread.join(10)
        self.catalogue.stop()
        self.engine.close()


def serve(engine, catalogue, app_factory=None) -> Served:
    import uvicorn

    from app import build_app

    port = free_port()
    app = (app_factory or build_app)(engine, catalogue)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the app did not start within 60 s")
        time.sleep(0.05)
    return Served(f"http://127.0.0.1:{port}", engine, catalogue, server, thread)


@pytest.fixture(scope="package")
def served_app(demo_assets, hub_root, tmp_path_factory):
    """``python app.py`` as a CPU machine runs it, with a Hub LoRA for the demo base published too."""
    from catalogue import Catalogue, HubSource, LocalSource
    from tests.conftest import _HUB_URL

    data = (demo_assets.lora_dir("demo/pixel-blocks") / "pixel-blocks-xl.safetensors").read_bytes()
    publish(hub_root, HUB_LORA, {"tiny-hub.safetensors": data},
            card=lora_card(base_model=DEMO_BASE_MODEL_ID, trigger="hub style"), downloads=5, likes=2)  # fmt: skip
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
