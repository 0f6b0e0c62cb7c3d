"""A request whose caller left is dropped before it runs: Future.cancel, Gradio cancel, HTTP disconnect."""

from __future__ import annotations

import json
import socket
import threading

import httpx
from gradio_client import Client

from tests.lora_engine.conftest import fast
from tests.support.waiting import wait_until


def cancelled_count(engine) -> float:
    return engine.metrics.requests.labels("cancelled")._value.get()


def test_a_cancelled_future_never_runs(served_app):
    engine = served_app.engine
    before_dispatched = engine.status().scheduler["dispatched"]
    before = cancelled_count(engine)
    busy = engine.submit(fast(num_inference_steps=100, width=256, height=256, seed=1))  # seconds of work
    waiting = engine.submit(fast(lora="demo/inverted", seed=2))
    assert engine.position(waiting) is not None
    assert waiting.cancel()
    busy.result(60)
    assert cancelled_count(engine) == before + 1
    assert engine.status().queue_depth == 0
    assert engine.status().scheduler["dispatched"] == before_dispatched + 1  # only the busy one ran


def test_gradio_cancel_drops_the_waiting_request(served_app):
    engine = served_app.engine
    # Two sessions (two browser tabs): Gradio's cancel stops every running event of the cancelling session.
    other, client = Client(served_app.url + "/", verbose=False), Client(served_app.url + "/", verbose=False)
    before = cancelled_count(engine)
    dispatched = engine.status().scheduler["dispatched"]  # the app is shared: earlier tests ran requests
    busy = other.submit(prompt="a cat", num_inference_steps=100, width=256, height=256, seed=3, api_name="/generate")
    wait_until(
        lambda: engine.status().queue_depth == 0 and engine.status().scheduler["dispatched"] > dispatched,
        message="the busy request to start",
    )
    waiting = client.submit(prompt="a dog", lora="demo/stripes", num_inference_steps=2, seed=4, api_name="/generate")
    wait_until(lambda: engine.status().queue_depth == 1, message="the second request to reach the engine")
    # The handler has yielded (the client holds its first, empty, update): Gradio now iterates it, and closes it on
    # cancel, which runs its `finally`. A cancel before the first yield would find no iterator to close.
    wait_until(waiting.outputs, message="the waiting request's handler to yield")
    waiting.cancel()
    wait_until(lambda: cancelled_count(engine) == before + 1, message="the waiting request to be cancelled")
    busy.result(timeout=120)
    assert engine.status().queue_depth == 0


def test_http_disconnect_drops_the_waiting_request(served_app):
    engine = served_app.engine
    before = cancelled_count(engine)
    dispatched = engine.status().scheduler["dispatched"]
    with httpx.Client(timeout=120) as http:
        busy = threading.Thread(
            target=lambda: http.post(
                served_app.url + "/",
                json={"inputs": "a cat", "parameters": {"num_inference_steps": 100, "width": 256, "height": 256}},
            )
        )
        busy.start()
        wait_until(
            lambda: engine.status().scheduler["dispatched"] > dispatched and engine.status().queue_depth == 0,
            message="the busy request to start",
        )
        # The caller leaves once its request is known to wait in the engine (a client-side timeout could fire before
        # the request even got there on a busy machine): the raw connection is closed mid-request.
        url = httpx.URL(served_app.url)
        body = json.dumps({"inputs": "a dog", "parameters": {"num_inference_steps": 2}}).encode()
        head = f"POST / HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/json\r\n"
        with socket.create_connection((url.host, url.port), timeout=120) as leaving:
            leaving.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_until(lambda: engine.status().queue_depth == 1, message="the second request to reach the engine")
        wait_until(lambda: cancelled_count(engine) == before + 1, message="the disconnected request to be dropped")
        busy.join(120)
    assert not busy.is_alive()
    assert engine.status().queue_depth == 0
