"""The unmodified huggingface_hub client against lora_engine/testing/loopback_hub.py."""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import httpx2  # noqa: E402  (the HTTP library huggingface_hub 2.x actually uses)
import pytest  # noqa: E402
from huggingface_hub import HfApi, hf_hub_download  # noqa: E402
from huggingface_hub import file_download as hf_file_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lora_engine.testing.loopback_hub import FakeHub, write_repo  # noqa: E402
from tests.support.facts import catalogue_facts_path  # noqa: E402

pytestmark = pytest.mark.pure

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SD15 = "runwayml/stable-diffusion-v1-5"
ADAPTER_SDXL = f"base_model:adapter:{SDXL}"
FACTS = catalogue_facts_path()
LORA_TAGS = ["text-to-image", "stable-diffusion", "lora", "diffusers"]


def _date(day: int) -> str:
    return f"2023-{1 + day // 28:02d}-{1 + day % 28:02d}T12:00:00.000Z"


def _sdxl_lora_specs() -> list[dict]:
    """SDXL LoRA repos: a few fixed ones plus (when present) some real ids from the shared facts file."""
    specs = [
        dict(
            repo_id="nerijs/pixel-art-xl",
            weight="pixel-art-xl.safetensors",
            trigger="pixel art",
            license="creativeml-openrail-m",
            downloads=17058,
            likes=134,
            created=10,
            modified=40,
        ),
        dict(
            repo_id="latent-consistency/lcm-lora-sdxl",
            weight="pytorch_lora_weights.safetensors",
            trigger=None,
            license="openrail++",
            downloads=50211,
            likes=702,
            created=200,
            modified=210,
            library_name="diffusers",
        ),
        dict(
            repo_id="multi/dual-base-lora",
            weight="dual.safetensors",
            trigger="dual",
            license="mit",
            downloads=12,
            likes=900,
            created=5,
            modified=300,
            base_model=[SDXL, "stabilityai/stable-diffusion-xl-refiner-1.0"],
        ),
        dict(
            repo_id="gatedorg/gated-sdxl-lora",
            weight="gated.safetensors",
            trigger="gated style",
            license="other",
            downloads=345,
            likes=3,
            created=100,
            modified=101,
            gated="auto",
        ),
        dict(
            repo_id="oldtimer/bin-only-lora",
            weight="pytorch_lora_weights.bin",
            trigger="old style",
            license="openrail",
            downloads=7,
            likes=1,
            created=1,
            modified=2,
        ),
    ]
    if FACTS.exists():
        used = {s["repo_id"] for s in specs}
        entries = [
            e
            for e in json.loads(FACTS.read_text())["entries"]
            if e.get("diffusers_compatible") and e.get("weight_name") and e["repo_id"] not in used
        ]
        for i, e in enumerate(entries[:3]):
            specs.append(
                dict(
                    repo_id=e["repo_id"],
                    weight=e["weight_name"],
                    trigger=e.get("trigger_words"),
                    license="openrail++",
                    downloads=1000 + 101 * i,
                    likes=20 + i,
                    created=50 + i,
                    modified=60 + 3 * i,
                )
            )
    return specs


def _card(spec: dict) -> dict:
    card = {"license": spec["license"], "tags": list(LORA_TAGS), "base_model": spec.get("base_model", SDXL)}
    if spec.get("library_name"):
        card["library_name"] = spec["library_name"]
    if spec.get("trigger"):
        card["instance_prompt"] = spec["trigger"]
        card["widget"] = [{"text": f"{spec['trigger']}, a cute corgi"}]
    return card


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    specs = _sdxl_lora_specs()
    for s in specs:
        write_repo(
            root,
            s["repo_id"],
            {s["weight"]: b"W" * 64 + s["repo_id"].encode(), "images/a.png": b"\x89PNG"},
            card=_card(s),
            card_body=f"# {s['repo_id']}\n",
            likes=s["likes"],
            downloads=s["downloads"],
            created_at=_date(s["created"]),
            last_modified=_date(s["modified"]),
            gated=s.get("gated", False),
        )
    # Must never show up in SDXL-LoRA listings:
    write_repo(
        root,
        "sd15fan/sd15-lora",
        {"lora.safetensors": b"sd15"},
        card={"license": "mit", "tags": ["lora", "text-to-image"], "base_model": SD15},
        downloads=99999,
        likes=9999,
        created_at=_date(3),
        last_modified=_date(4),
    )
    write_repo(
        root,
        "finetune/sdxl-finetune",
        {"unet/diffusion_pytorch_model.safetensors": b"unet"},
        card={"license": "mit", "tags": ["text-to-image"], "base_model": SDXL},
        downloads=88888,
        likes=8888,
        created_at=_date(6),
        last_modified=_date(7),
    )
    write_repo(
        root,
        "secret/private-lora",
        {"p.safetensors": b"private"},
        card={"license": "mit", "tags": ["lora"], "base_model": SDXL},
        downloads=77777,
        private=True,
        created_at=_date(8),
        last_modified=_date(9),
    )
    write_repo(
        root,
        "tester/mutable",
        {"weights.safetensors": b"v1" * 100, "unet/config.json": "{}"},
        card={"license": "mit", "tags": ["text-to-image"]},
    )
    hub = FakeHub(root)
    hub.start()
    yield types.SimpleNamespace(root=root, hub=hub, url=hub.url, specs=specs, api=HfApi(endpoint=hub.url, token=False))
    hub.stop()


@pytest.fixture(autouse=True)
def _clean_knobs(world):
    world.hub.reset()
    yield
    world.hub.reset()


def _ids(models) -> list[str]:
    return [m.id for m in models]


def _expected(world, key: str) -> list[str]:
    return [s["repo_id"] for s in sorted(world.specs, key=lambda s: (-s[key], s["repo_id"]))]


# ----------------------------------------------------------------------------- list_models


def test_list_models_filters_sdxl_loras_sorted_by_downloads(world):
    models = list(world.api.list_models(filter=["lora", ADAPTER_SDXL], sort="downloads", cardData=True))
    assert _ids(models) == _expected(world, "downloads")
    pixel = next(m for m in models if m.id == "nerijs/pixel-art-xl")
    assert pixel.card_data["instance_prompt"] == "pixel art"
    assert pixel.downloads == 17058 and "lora" in pixel.tags
    top = list(world.api.list_models(filter=["lora", ADAPTER_SDXL], sort="downloads", limit=2))
    assert _ids(top) == _expected(world, "downloads")[:2]
    gets = world.hub.requests_matching("GET", r"^/api/models\?")
    assert [g[1].count("filter=") for g in gets] == [2, 2]
    assert "limit=2" in gets[-1][1] and "sort=downloads" in gets[-1][1]


def test_list_models_follows_link_header_across_pages(world):
    world.hub.page_size = 2
    models = list(world.api.list_models(filter=["lora", ADAPTER_SDXL], sort="downloads", full=True))
    assert _ids(models) == _expected(world, "downloads")
    assert all(re.fullmatch(r"[0-9a-f]{40}", m.sha) for m in models)
    gets = world.hub.requests_matching("GET", r"^/api/models\?")
    assert len(gets) == math.ceil(len(world.specs) / 2) >= 3
    assert all("cursor=" in g[1] and g[1].count("filter=") == 2 for g in gets[1:])
    # limit is applied client-side too: stops after 3 items (2 pages of 2), never asks for page 3
    world.hub.requests.clear()
    assert len(list(world.api.list_models(filter=["lora", ADAPTER_SDXL], sort="downloads", limit=3))) == 3
    assert len(world.hub.requests_matching("GET", r"^/api/models\?")) == 2


@pytest.mark.parametrize(
    "sort,key",
    [
        ("likes", "likes"),
        ("lastModified", "modified"),
        ("last_modified", "modified"),
        ("createdAt", "created"),
        ("created_at", "created"),
    ],
)
def test_list_models_sort_keys(world, sort, key):
    assert _ids(world.api.list_models(filter=[ADAPTER_SDXL, "lora"], sort=sort)) == _expected(world, key)


def test_list_models_search_author_and_excludes(world):
    assert _ids(world.api.list_models(search="PIXEL-art")) == ["nerijs/pixel-art-xl"]
    assert _ids(world.api.list_models(author="latent-consistency")) == ["latent-consistency/lcm-lora-sdxl"]
    all_ids = _ids(world.api.list_models())
    assert "secret/private-lora" not in all_ids and "tester/mutable" in all_ids
    sd15 = _ids(world.api.list_models(filter=["lora", f"base_model:adapter:{SD15}"]))
    assert sd15 == ["sd15fan/sd15-lora"]
    assert _ids(world.api.list_models(filter="diffusers", author="latent-consistency")) == [
        "latent-consistency/lcm-lora-sdxl"
    ]
    # finetune has base_model:SDXL but no adapter relation
    assert "finetune/sdxl-finetune" in _ids(world.api.list_models(filter=f"base_model:{SDXL}"))


def test_list_models_expand_returns_only_requested_fields(world):
    (m,) = world.api.list_models(search="pixel-art", expand=["downloads", "likes"])
    assert (m.downloads, m.likes) == (17058, 134)
    assert m.tags is None and m.card_data is None and m.sha is None
    raw = httpx.get(f"{world.url}/api/models", params=[("search", "pixel-art"), ("expand", "likes")]).json()
    assert raw == [{"_id": raw[0]["_id"], "id": "nerijs/pixel-art-xl", "likes": 134}]


# ----------------------------------------------------------------------------- model_info


def test_model_info_tags_card_siblings(world):
    info = world.api.model_info("nerijs/pixel-art-xl", files_metadata=True)
    assert re.fullmatch(r"[0-9a-f]{40}", info.sha) and info.sha == world.hub.sha("nerijs/pixel-art-xl")
    for tag in (
        "lora",
        f"base_model:{SDXL}",
        ADAPTER_SDXL,
        "license:creativeml-openrail-m",
        "region:us",
        "safetensors",
    ):
        assert tag in info.tags
    assert info.card_data.base_model == SDXL and info.card_data["instance_prompt"] == "pixel art"
    sib = {s.rfilename: s for s in info.siblings}
    assert set(sib) == {"README.md", "pixel-art-xl.safetensors", "images/a.png"}
    assert sib["pixel-art-xl.safetensors"].size == 64 + len("nerijs/pixel-art-xl")
    assert sib["pixel-art-xl.safetensors"].lfs is not None and sib["README.md"].lfs is None
    assert info.gated is False and info.private is False and info.likes == 134
    assert info.widget_data == [{"text": "pixel art, a cute corgi"}]
    pinned = world.api.model_info("nerijs/pixel-art-xl", revision=info.sha)
    assert pinned.sha == info.sha and pinned.siblings[0].size is None


def test_model_info_variants(world):
    dual = world.api.model_info("multi/dual-base-lora")
    assert {ADAPTER_SDXL, "base_model:adapter:stabilityai/stable-diffusion-xl-refiner-1.0"} <= set(dual.tags)
    binonly = world.api.model_info("oldtimer/bin-only-lora")
    assert "safetensors" not in binonly.tags and ADAPTER_SDXL in binonly.tags
    sd15 = world.api.model_info("sd15fan/sd15-lora")
    assert f"base_model:adapter:{SD15}" in sd15.tags and ADAPTER_SDXL not in sd15.tags
    finetune = world.api.model_info("finetune/sdxl-finetune")
    assert f"base_model:{SDXL}" in finetune.tags and ADAPTER_SDXL not in finetune.tags
    assert world.api.model_info("gatedorg/gated-sdxl-lora").gated == "auto"
    lcm = world.api.model_info("latent-consistency/lcm-lora-sdxl")
    assert lcm.library_name == "diffusers" and lcm.tags[0] == "diffusers"


# ----------------------------------------------------------------------------- downloads


def test_download_caches_and_follows_revision(world, tmp_path):
    repo, fname = "tester/mutable", "weights.safetensors"
    kw = dict(revision="main", cache_dir=tmp_path, endpoint=world.url, token=False)
    p1 = hf_hub_download(repo, fname, **kw)
    assert Path(p1).read_bytes() == b"v1" * 100
    gets = lambda: world.hub.requests_matching("GET", r"/resolve/")  # noqa: E731
    assert len(gets()) == 1
    p2 = hf_hub_download(repo, fname, **kw)
    assert p2 == p1 and len(gets()) == 1
    assert len(world.hub.requests_matching("HEAD", r"/resolve/")) == 2
    n = len(world.hub.requests)
    assert hf_hub_download(repo, fname, local_files_only=True, **kw) == p1
    assert len(world.hub.requests) == n  # no network at all
    # subfolder file, fetched through the client's own URL quoting
    cfg = hf_hub_download(repo, "config.json", subfolder="unet", **kw)
    assert Path(cfg).read_text() == "{}"

    old_sha = world.hub.sha(repo)
    write_repo(world.root, repo, {fname: b"v2" * 100})
    assert world.hub.sha(repo) != old_sha
    p3 = hf_hub_download(repo, fname, **kw)
    assert Path(p3).read_bytes() == b"v2" * 100
    assert Path(p3).parent.name == world.hub.sha(repo) and Path(p1).parent.name == old_sha
    assert Path(p1).read_bytes() == b"v1" * 100  # old snapshot untouched
    assert hf_hub_download(repo, fname, revision=old_sha, cache_dir=tmp_path, endpoint=world.url) == p1


def test_download_errors_raise_client_types(world, tmp_path):
    kw = dict(cache_dir=tmp_path, endpoint=world.url, token=False)
    with pytest.raises(RepositoryNotFoundError) as e:
        hf_hub_download("nobody/nothing", "x.safetensors", **kw)
    assert type(e.value) is RepositoryNotFoundError and e.value.response.status_code == 401
    with pytest.raises(RemoteEntryNotFoundError) as e:
        hf_hub_download("nerijs/pixel-art-xl", "missing.safetensors", **kw)
    assert isinstance(e.value, EntryNotFoundError) and e.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("nerijs/pixel-art-xl", "pixel-art-xl.safetensors", revision="v9", **kw)
    with pytest.raises(GatedRepoError):
        hf_hub_download("gatedorg/gated-sdxl-lora", "gated.safetensors", **kw)
    ok = hf_hub_download(
        "gatedorg/gated-sdxl-lora", "gated.safetensors", cache_dir=tmp_path, endpoint=world.url, token="hf_fake_token"
    )
    assert Path(ok).read_bytes().startswith(b"WWWW")
    assert world.hub.requests[-1][2]["authorization"] == "Bearer hf_fake_token"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("nerijs/pixel-art-xl", "pixel-art-xl.safetensors", local_files_only=True, **kw)


def test_api_errors_raise_client_types(world):
    with pytest.raises(RepositoryNotFoundError) as e:
        world.api.model_info("nobody/nothing")
    assert type(e.value) is RepositoryNotFoundError
    with pytest.raises(RepositoryNotFoundError):
        world.api.model_info("secret/private-lora")
    assert HfApi(endpoint=world.url, token="hf_x").model_info("secret/private-lora").private is True
    with pytest.raises(RevisionNotFoundError):
        world.api.model_info("nerijs/pixel-art-xl", revision="0" * 40)
    world.hub.requests.clear()
    world.hub.fail_status = 500
    world.hub.fail_paths = r"^/api/models/nerijs/"
    with pytest.raises(HfHubHTTPError) as e:
        world.api.model_info("nerijs/pixel-art-xl")
    assert e.value.response.status_code == 500
    assert world.api.model_info("multi/dual-base-lora").id == "multi/dual-base-lora"  # not matched by fail_paths
    assert len(world.hub.requests_matching("GET", "pixel-art")) == 1  # model_info does not retry on 500


def test_timeouts(world, tmp_path):
    world.hub.delay_s = 1.0
    with pytest.raises(httpx2.TimeoutException):
        world.api.model_info("nerijs/pixel-art-xl", timeout=0.2)
    # HEAD timing out (etag_timeout) with the file cached => client falls back to the cache.
    world.hub.delay_s = 0
    kw = dict(cache_dir=tmp_path, endpoint=world.url, token=False)
    p = hf_hub_download("nerijs/pixel-art-xl", "pixel-art-xl.safetensors", **kw)
    world.hub.delay_s = 1.0
    n_get = len(world.hub.requests_matching("GET"))
    assert hf_hub_download("nerijs/pixel-art-xl", "pixel-art-xl.safetensors", etag_timeout=0.2, **kw) == p
    assert len(world.hub.requests_matching("GET")) == n_get


def test_cut_download_fails_and_leaves_nothing(world, tmp_path, monkeypatch):
    # http_get sleeps 1 s between its 5 resume attempts; skip the waiting.
    monkeypatch.setattr(hf_file_download, "time", types.SimpleNamespace(sleep=lambda s: None))
    world.hub.cut_after_bytes = 10
    repo, fname = "nerijs/pixel-art-xl", "pixel-art-xl.safetensors"
    data = (world.root / repo / fname).read_bytes()
    with pytest.raises(httpx2.RemoteProtocolError):  # raised by the 6th attempt, unwrapped
        hf_hub_download(repo, fname, cache_dir=tmp_path, endpoint=world.url, token=False)
    # httpx2 buffers DOWNLOAD_CHUNK_SIZE (10 MiB) per chunk: a cut mid-chunk loses the partial bytes,
    # so every retry starts again from 0 without a Range header.
    ranges = [g[2].get("range") for g in world.hub.requests_matching("GET", r"/resolve/")]
    assert ranges == [None] * 6
    storage = tmp_path / "models--nerijs--pixel-art-xl"
    assert not [p for p in storage.rglob("*") if p.is_file() and ("snapshots" in p.parts or "blobs" in p.parts)]

    # With small chunks the bytes before the cut are kept and the client resumes with Range.
    monkeypatch.setattr(hf_file_download.constants, "DOWNLOAD_CHUNK_SIZE", 5)
    world.hub.requests.clear()
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(repo, fname, cache_dir=tmp_path, endpoint=world.url, token=False)
    ranges = [g[2].get("range") for g in world.hub.requests_matching("GET", r"/resolve/")]
    assert ranges == [None] + ["bytes=10-"] * 5
    assert not [p for p in storage.rglob("*") if p.is_file() and ("snapshots" in p.parts or "blobs" in p.parts)]

    # One cut only: the client resumes at offset 10 and gets the whole file.
    world.hub.reset()
    world.hub.cut_after_bytes, world.hub.cut_times = 10, 1
    p = hf_hub_download(repo, fname, cache_dir=tmp_path, endpoint=world.url, token=False)
    assert Path(p).read_bytes() == data
    assert [g[2].get("range") for g in world.hub.requests_matching("GET", r"/resolve/")] == [None, "bytes=10-"]


# ----------------------------------------------------------------------------- raw HTTP


def test_range_requests_and_headers(world):
    data = (world.root / "nerijs/pixel-art-xl/pixel-art-xl.safetensors").read_bytes()
    url = f"{world.url}/nerijs/pixel-art-xl/resolve/main/pixel-art-xl.safetensors"
    with httpx.Client() as c:
        full = c.get(url)
        assert full.status_code == 200 and full.content == data
        assert full.headers["x-repo-commit"] == world.hub.sha("nerijs/pixel-art-xl")
        assert full.headers["accept-ranges"] == "bytes" and full.headers["etag"].startswith('"')
        r = c.get(url, headers={"Range": "bytes=2-5"})
        assert r.status_code == 206 and r.content == data[2:6]
        assert r.headers["content-range"] == f"bytes 2-5/{len(data)}"
        r = c.get(url, headers={"Range": "bytes=60-"})
        assert r.status_code == 206 and r.content == data[60:]
        r = c.get(url, headers={"Range": "bytes=-3"})
        assert r.status_code == 206 and r.content == data[-3:]
        r = c.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
        h = c.head(url)
        assert h.status_code == 200 and h.content == b"" and int(h.headers["content-length"]) == len(data)
        enc = c.get(f"{world.url}/tester/mutable/resolve/main/unet%2Fconfig.json")
        assert enc.status_code == 200 and enc.content == b"{}"
        miss = c.get(f"{world.url}/nerijs/pixel-art-xl/resolve/main/nope.bin")
        assert miss.status_code == 404 and miss.headers["x-error-code"] == "EntryNotFound"
        assert miss.json() == {"error": "Entry not found"} and "x-repo-commit" in miss.headers
        gated = c.get(f"{world.url}/gatedorg/gated-sdxl-lora/resolve/main/gated.safetensors")
        assert gated.status_code == 401 and gated.headers["x-error-code"] == "GatedRepo"
        tree = c.get(f"{world.url}/api/models/tester/mutable/tree/main", params={"recursive": "true"}).json()
        assert {e["path"] for e in tree} >= {"unet", "unet/config.json", "README.md"}


def test_held_requests_wait_unanswered_until_released(world):
    from concurrent.futures import ThreadPoolExecutor

    hub = world.hub
    hub.hold(r"^/api/models/nerijs/pixel-art-xl$")
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(httpx.get, f"{world.url}/api/models/nerijs/pixel-art-xl", timeout=60) for _ in range(2)]
        assert hub.wait_held(2, timeout=60)
        # Other paths are answered meanwhile; the held ones are not.
        assert pool.submit(httpx.get, f"{world.url}/api/models/multi/dual-base-lora", timeout=60).result().is_success
        assert hub.held() == 2 and not any(f.done() for f in held)
        hub.release()
        assert [f.result(60).json()["id"] for f in held] == ["nerijs/pixel-art-xl"] * 2
    assert hub.held() == 0 and hub.hold_paths is None
    assert httpx.get(f"{world.url}/api/models/nerijs/pixel-art-xl", timeout=60).is_success  # no longer held
