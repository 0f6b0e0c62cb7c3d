"""Hostile adapters through the app: HTTP 400 with a JSON error, gr.Error for gradio_client, nothing broken."""

from __future__ import annotations

import httpx
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError

from lora_engine.demo.model import DEMO_BASE_MODEL_ID
from lora_engine.testing.lora_files import (
    absurd_header_file,
    evil_pickle,
    loha_file,
    lora_card,
    publish,
    read_tensors,
    to_bytes,
)

KINDS = ["pickle", "loha", "truncated", "absurd", "nan", "shapes", "other-base", "unknown", "path", "url", "huge"]


@pytest.fixture(scope="module")
def hostile_repos(demo_assets, hub_root, tmp_path_factory):
    good = demo_assets.lora_dir("demo/pixel-blocks") / "pixel-blocks-xl.safetensors"
    raw, tensors = good.read_bytes(), read_tensors(good)
    marker = tmp_path_factory.mktemp("marker") / "UNPICKLED"
    nan = {k: (v * float("nan") if k.endswith("lora_up.weight") else v) for k, v in tensors.items()}
    wide = {
        k: (torch.zeros(v.shape[0], v.shape[1] * 2) if k.endswith("lora_down.weight") else v)
        for k, v in tensors.items()
    }
    card = lora_card(base_model=DEMO_BASE_MODEL_ID)
    files = {
        "pickle": {"pytorch_lora_weights.bin": evil_pickle(marker)},
        "loha": {"l.safetensors": loha_file(tensors)},
        "truncated": {"l.safetensors": raw[: len(raw) // 2]},
        "absurd": {"l.safetensors": absurd_header_file(raw)},
        "nan": {"l.safetensors": to_bytes(nan)},
        "shapes": {"l.safetensors": to_bytes(wide)},
        "other-base": {"l.safetensors": raw},
        "huge": {"l.safetensors": raw + b" " * 0},
    }
    ids = {}
    for kind, content in files.items():
        repo = f"hostile/{kind}"
        publish(
            hub_root,
            repo,
            content,
            card=lora_card(base_model="runwayml/stable-diffusion-v1-5") if kind == "other-base" else card,
        )
        ids[kind] = repo
    ids.update({"unknown": "hostile/does-not-exist", "path": "../../etc/passwd", "url": "https://evil.example/a/b"})
    return ids, marker


@pytest.mark.parametrize("kind", KINDS)
def test_http_answers_400_and_the_next_request_works(served_app, hostile_repos, kind):
    ids, marker = hostile_repos
    engine = served_app.engine
    cap = engine.fetcher.max_bytes
    if kind == "huge":
        engine.fetcher.max_bytes = 1000
    try:
        r = httpx.post(
            served_app.url + "/",
            json={"inputs": "a cat", "parameters": {"num_inference_steps": 1}},
            headers={"lora": ids[kind]},
            timeout=60,
        )
    finally:
        engine.fetcher.max_bytes = cap
    assert r.status_code == 400, r.text
    body = r.json()
    assert ids[kind] in body["error"] and body["error_type"]
    assert not marker.exists()
    ok = httpx.post(
        served_app.url + "/", json={"inputs": "a cat", "parameters": {"num_inference_steps": 1}}, timeout=60
    )
    assert ok.status_code == 200
    assert engine.current_digest() == engine.base_digest


@pytest.mark.parametrize("kind", ["pickle", "nan", "other-base", "path"])
def test_gradio_client_gets_an_app_error(served_app, hostile_repos, kind):
    ids, _ = hostile_repos
    client = Client(served_app.url + "/", verbose=False)
    with pytest.raises(AppError, match="adapter"):
        client.predict(prompt="a cat", lora=ids[kind], num_inference_steps=1, api_name="/generate")
    _, details = client.predict(prompt="a cat", num_inference_steps=1, api_name="/generate")
    assert details["lora"] == ""
