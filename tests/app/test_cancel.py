"""A request whose caller left is dropped before it runs: Future.cancel, Gradio cancel, HTTP disconnect."""

from __future__ import annotations

import time

import httpx
import pytest
from gradio_client import Client

from tests.lora_engine.conftest import fast


def cancelled_count(engine) -> float:
    return engine.metrics.requests.labels("cancelled")._value.get()


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


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
    assert wait_until(lambda: engine.status().queue_depth == 0 and engine.status().scheduler["dispatched"] > dispatched)
    waiting = client.submit(prompt="a dog", lora="demo/stripes", num_inference_steps=2, seed=4, api_name="/generate")
    assert wait_until(lambda: engine.status().queue_depth == 1), "the second request never reached the engine"
    time.sleep(1.0)  # the handler has yielded at least once: Gradio now holds its iterator
    waiting.cancel()
    assert wait_until(lambda: cancelled_count(engine) == before + 1, timeout=20)
    busy.result(timeout=120)
    assert engine.status().queue_depth == 0


def test_http_disconnect_drops_the_waiting_request(served_app):
    engine = served_app.engine
    before = cancelled_count(engine)
    dispatched = engine.status().scheduler["dispatched"]
    with httpx.Client(timeout=120) as http:
        import threading

        busy = threading.Thread(
            target=lambda: http.post(
                served_app.url + "/",
                json={"inputs": "a cat", "parameters": {"num_inference_steps": 100, "width": 256, "height": 256}},
            )
        )
        busy.start()
        assert wait_until(
            lambda: engine.status().scheduler["dispatched"] > dispatched and engine.status().queue_depth == 0
        )
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                served_app.url + "/", json={"inputs": "a dog", "parameters": {"num_inference_steps": 2}}, timeout=1.0
            )
        assert wait_until(lambda: cancelled_count(engine) == before + 1, timeout=20)
        busy.join(120)
    assert engine.status().queue_depth == 0
