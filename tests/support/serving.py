"""Serving the whole app for real in tests: uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

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
