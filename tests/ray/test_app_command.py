"""The documented command, as a user runs it: ``python app.py --ray ...`` serves ``POST /`` and the UI from a local
Ray Serve application, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from lora_engine.demo.model import DEMO_LORAS
from tests.support.facts import REPO_ROOT
from tests.support.serving import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def test_python_app_py_ray_serves_and_stops(demo_assets, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "LORA_ENGINE_HUB_CACHE_DIR": str(tmp_path / "hf")}
    command = [
        sys.executable,
        "app.py",
        "--ray",
        "--replicas",
        "2",
        "--adapters-per-replica",
        "4",
        "--gpus-per-replica",
        "0",
        "--cpus-per-replica",
        "0.5",
        "--ray-num-cpus",
        "2",
        "--demo-dir",
        str(demo_assets.root),
        "--no-hub-catalogue",
    ]
    log = open(tmp_path / "app.log", "w+b")  # noqa: SIM115 (read back after the process ends)
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert process.poll() is None, _tail(log)  # the app exited: no point waiting
        try:
            return httpx.get(url + "/", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            # Ray, two replicas and the UI on two busy cores: minutes, at worst.
            wait_until(answering, timeout=420, message=f"the app to answer on {url}", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_tail(log)}") from None
        lora = DEMO_LORAS[2].repo_id
        body = {"inputs": "a red circle", "parameters": {"seed": 3, "num_inference_steps": 1}}
        answer = httpx.post(url + "/", json=body, headers={"lora": lora}, timeout=120)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text[:300]
        assert answer.headers["x-lora"] == lora and answer.headers["x-seed"] == "3"
        assert "lora_cluster_requests_total" in httpx.get(url + "/metrics", timeout=30).text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    text = _tail(log, 20_000)
    assert "Deleting app ['lora']" in text, text  # the Serve application was taken down on the way out
    assert "Traceback" not in text.split("Deleting app")[0], text


def _tail(log, n: int = 4000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-n:]
