"""Serving the whole app for real in tests: uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import socket
import threading

from tests.support.waiting import wait_until

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
    # uvicorn sets `started` once it listens; a server that fails to start ends its thread instead.
    wait_until(lambda: server.started or not thread.is_alive(), message="the app to start")
    if not server.started:
        raise RuntimeError(f"the app did not start on port {port} (see uvicorn's log above)")
    return Served(f"http://127.0.0.1:{port}", engine, catalogue, server, thread)
