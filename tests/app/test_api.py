"""The app's contract, through the clients users have: gradio_client, plain HTTP, a Prometheus scrape."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from tests.support.serving import HUB_LORA


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app.url + "/", verbose=False)


def test_importing_app_is_cheap():
    code = "import sys, app; print(sorted(m for m in ('torch', 'gradio', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_generate_endpoint_signature(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = [
        (p["parameter_name"], p["parameter_has_default"], p.get("parameter_default"))
        for p in api["/generate"]["parameters"]
    ]
    assert params == [
        ("prompt", False, None),
        ("negative_prompt", True, ""),
        ("lora", True, ""),
        ("lora_scale", True, 1.0),
        ("num_inference_steps", True, 12),
        ("guidance_scale", True, 5.0),
        ("width", True, 64),
        ("height", True, 64),
        ("seed", True, -1),
    ]
    assert [p["parameter_name"] for p in api["/catalogue"]["parameters"]] == ["query", "sort", "limit", "offset"]


def test_generate_returns_png_and_details(client):
    image, details = client.predict(
        prompt="a red circle", lora="demo/ink-sketch", seed=11, num_inference_steps=2, api_name="/generate"
    )
    assert open(image, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert details["seed"] == 11 and details["lora"] == "demo/ink-sketch"
    assert {"queue_s", "adapter_s", "inference_s"} <= set(details["timings"])


def test_same_seed_same_pixels_whatever_ran_between(client):
    def run(**kw):
        path, _ = client.predict(prompt="a blue square", seed=42, num_inference_steps=2, api_name="/generate", **kw)
        return np.asarray(Image.open(path))

    first = run(lora="demo/stripes")
    run(lora="demo/inverted", lora_scale=1.7)
    run()
    assert np.array_equal(first, run(lora="demo/stripes"))


def test_any_hub_lora_for_the_same_base(client, served_app):
    _, details = client.predict(
        prompt="hub style, a cat", lora=HUB_LORA, seed=1, num_inference_steps=1, api_name="/generate"
    )
    assert details["lora"] == HUB_LORA and details["cache_tier"] == "hub"
    assert len(details["adapter_revision"]) == 40


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora": "../../etc/passwd"}, "repo id"),
        ({"lora": "nobody/missing-lora"}, "no such repo"),
        ({"seed": -5}, "seed"),
        ({"prompt": "x" * 10_000}, "at most 4000 characters"),
        ({"width": 100}, "multiple of 8|width"),
    ],
)
def test_generate_errors_reach_the_client(client, kwargs, message):
    kwargs.setdefault("prompt", "a cat")
    with pytest.raises(AppError, match=message):
        client.predict(num_inference_steps=1, api_name="/generate", **kwargs)


def test_catalogue_endpoint(client):
    everything = client.predict(api_name="/catalogue")
    ids = [e["repo_id"] for e in everything]
    assert {"demo/stripes", "demo/ink-sketch", "demo/pixel-blocks", "demo/inverted", HUB_LORA} <= set(ids)
    for e in everything:
        assert set(e) == {"repo_id", "title", "trigger_words", "thumbnail", "downloads", "likes", "weight_name"}
    assert ids[0] == HUB_LORA  # the only one with downloads, sorted by downloads
    found = client.predict(query="INK", api_name="/catalogue")
    assert [e["repo_id"] for e in found] == ["demo/ink-sketch"]
    assert found[0]["trigger_words"] == "ink sketch"
    page = client.predict(query="", sort="likes", limit=2, offset=1, api_name="/catalogue")
    assert len(page) == 2
    with pytest.raises(AppError, match="sort"):
        client.predict(sort="best", api_name="/catalogue")


def test_thumbnail_urls_are_served(client, served_app):
    entry = client.predict(query="striped", api_name="/catalogue")[0]
    response = httpx.get(served_app.url + entry["thumbnail"])
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"


def test_post_root_text_to_image(served_app):
    r = httpx.post(
        served_app.url + "/",
        json={"inputs": "a cat", "parameters": {"seed": 3, "num_inference_steps": 1}},
        headers={"lora": "demo/stripes"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert r.headers["x-lora"] == "demo/stripes" and r.headers["x-seed"] == "3"
    assert json.loads(r.headers["x-timings"])["inference_s"] > 0


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"inputs": "x"', {}, "JSON"),
        (b'{"parameters": {}}', {}, "inputs"),
        (b'["a"]', {}, "JSON object"),
        (b'{"inputs": 3}', {}, "string"),
        (b'{"inputs": "x", "parameters": {"width": 7}}', {}, "width"),
        (b'{"inputs": "x", "parameters": {"steps": 7}}', {}, "unknown parameters"),
        (b'{"inputs": "x"}', {"lora": "not a repo id"}, "repo id"),
        (b'{"inputs": "x", "parameters": {"seed": "abc"}}', {}, "seed"),
    ],
)
def test_post_root_bad_input_is_400_json(served_app, body, headers, message):
    r = httpx.post(served_app.url + "/", content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_metrics_are_prometheus_text(served_app):
    httpx.post(served_app.url + "/", json={"inputs": "a cat", "parameters": {"num_inference_steps": 1}}, timeout=60)
    r = httpx.get(served_app.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "lora_engine_requests_total",
        "lora_engine_queue_depth",
        "lora_engine_swaps_total",
        "lora_engine_adapter_cache_lookups_total",
        "lora_engine_base_digest_ok 1.0",
        "lora_catalogue_entries",
    ):
        assert name in text
