"""The Hub source (catalogue.hub) with the real huggingface_hub client against the loopback FakeHub."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalogue import HubSource, HubTimeout, HubUnavailable, InvalidCatalogueConfig
from lora_engine.testing.loopback_hub import FakeHub, write_repo
from tests.catalogue.conftest import NOT_LISTED, SDXL, make_source

ADAPTER_FILTER = re.escape(f"filter=base_model%3Aadapter%3A{SDXL.replace('/', '%2F')}")


def _by_id(listing):
    return {e.repo_id: e for e in listing.entries}


def test_listing_matches_the_world(hub):
    listing = make_source(hub.url).fetch(SDXL)
    got = _by_id(listing)
    assert set(got) == set(hub.expected)
    assert not set(got) & set(NOT_LISTED) and listing.excluded == ()
    for repo_id, want in hub.expected.items():
        e = got[repo_id]
        assert e.source == "hub" and e.local_dir is None, repo_id
        assert e.weight_name == want["weight_name"], repo_id
        assert e.trigger_words == want["trigger_words"], repo_id
        if want.get("title"):
            assert e.title == want["title"], repo_id
        if want.get("reason"):
            assert want["reason"] in e.unservable_reason, repo_id
        assert e.revision == hub.hub.sha(repo_id)
        thumb = want["thumb"]
        if thumb is None:
            assert e.thumbnail is None, repo_id
        elif thumb.startswith("https://"):
            assert e.thumbnail == thumb, repo_id  # absolute URLs are kept
        else:  # relative paths resolve on the configured endpoint at the listed revision
            assert e.thumbnail == f"{hub.url}/{repo_id}/resolve/{e.revision}/{thumb}", repo_id
    # Hub numbers and metadata are carried over
    pixel = got["nerijs/pixel-art-xl"]
    assert pixel.title == "Pixel Art XL" and pixel.license == "creativeml-openrail-m"
    assert f"base_model:adapter:{SDXL}" in pixel.tags and pixel.base_models == (SDXL,)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pixel.last_modified)
    lcm = got["latent-consistency/lcm-lora-sdxl"]
    assert (lcm.downloads, lcm.likes, lcm.license) == (50211, 702, "openrail++")


def test_pagination_follows_the_link_header_with_both_filters(hub):
    hub.hub.page_size = 5
    listing = make_source(hub.url).fetch(SDXL)
    assert set(_by_id(listing)) == set(hub.expected)
    first = hub.hub.requests_matching("GET", ADAPTER_FILTER)
    assert len(first) >= 4  # 21 adapter repos in pages of 5
    assert "cursor=" not in first[0][1] and all("cursor=" in r[1] for r in first[1:])
    assert all("filter=lora" in r[1] and "expand=cardData" in r[1] for r in first)
    second = hub.hub.requests_matching("GET", re.escape(f"filter=base_model%3A{SDXL.replace('/', '%2F')}"))
    assert len(second) >= 4 and all("filter=lora" in r[1] for r in second)
    # the one repo only the second query finds is read with model_info
    assert [r[1] for r in hub.hub.requests_matching("GET", r"^/api/models/[^?]")] == [
        "/api/models/merger/sdxl-merged-lora"
    ]


def test_card_variants(hub):
    got = _by_id(make_source(hub.url).fetch(SDXL))
    assert got["multi/dual-base-lora"].base_models == (SDXL, "stabilityai/stable-diffusion-xl-refiner-1.0")
    gated = [e for e in got.values() if e.gated]
    assert len(gated) == 1 and gated[0].gated == "auto" and gated[0].servable
    sonic = got["minimaxir/sdxl-ugly-sonic-lora"]  # .bin only: listed, searchable, not servable
    assert not sonic.servable and sonic.unservable_reason.startswith("only pickle weights (pytorch_lora_weights.bin)")
    assert got["gallery/dalle-3-xl-lora"].weight_name == "dalle-3-xl-lora-v2.safetensors"  # the card chooses
    assert got["trainer/corgi-dreambooth"].weight_name == "pytorch_lora_weights.safetensors"
    assert got["ambiguous/two-loras"].weight_name is None
    bare = got["bare/minimal_card"]
    assert (bare.title, bare.trigger_words, bare.license, bare.thumbnail) == ("Minimal Card", None, None, None)


def test_card_naming_another_base_is_excluded_even_if_tags_match(tmp_path):
    # The Hub's filter goes by tags; the card's own base_model decides (repo_rules): a card whose tags claim
    # SDXL but whose base_model names another model is left out, and said so.
    write_repo(
        tmp_path,
        "multi/foreign-card",
        {"w.safetensors": b"W"},
        card={"tags": ["lora", f"base_model:adapter:{SDXL}"], "base_model": "fluently/Fluently-XL-v2"},
    )
    write_repo(tmp_path, "multi/ours", {"w.safetensors": b"W"}, card={"tags": ["lora"], "base_model": SDXL})
    server = FakeHub(tmp_path)
    server.start()
    try:
        listing = make_source(server.url).fetch(SDXL)
    finally:
        server.stop()
    assert [e.repo_id for e in listing.entries] == ["multi/ours"] and listing.excluded == ("multi/foreign-card",)


def test_a_hostile_card_does_not_fail_the_listing(tmp_path):
    # huggingface_hub's ModelInfo raises TypeError on `tags: 5`; the listing reads JSON and the rules read by type.
    hostile = {"tags": 5, "library_name": "lora", "base_model": SDXL, "base_model_relation": "adapter"}
    write_repo(tmp_path, "evil/tags-five", {"w.safetensors": b"W"}, card=hostile, downloads=9)
    write_repo(tmp_path, "evil/tags-five-extra", {"w.safetensors": b"W"}, card={**hostile, "base_model_relation": "x"})
    write_repo(tmp_path, "multi/ours", {"w.safetensors": b"W"}, card={"tags": ["lora"], "base_model": SDXL})
    server = FakeHub(tmp_path)
    server.start()
    try:
        got = _by_id(make_source(server.url).fetch(SDXL))
    finally:
        server.stop()
    assert set(got) == {"evil/tags-five", "evil/tags-five-extra", "multi/ours"}
    assert got["evil/tags-five"].weight_name == "w.safetensors" and got["evil/tags-five"].downloads == 9
    assert got["evil/tags-five-extra"].servable  # the second query's repo, read with /api/models/<id>


def test_the_base_model_is_a_parameter(hub):
    listing = make_source(hub.url).fetch("runwayml/stable-diffusion-v1-5")
    assert [e.repo_id for e in listing.entries] == ["sd15fan/sd15-lora"]
    assert make_source(hub.url).fetch("nobody/no-such-base").entries == ()


def test_slow_hub_times_out_at_the_deadline(hub):
    source = make_source(hub.url, deadline_s=0.4, max_stuck_listings=1)
    hub.hub.delay_s, hub.hub.delay_paths = 1.0, r"^/api/models\?"
    # The deadline, not the Hub's answer, ends the wait (the message names it; speed is bench/'s business).
    with pytest.raises(HubTimeout, match="did not finish within 0.4 s") as e:
        source.fetch(SDXL)
    assert isinstance(e.value, HubUnavailable) and isinstance(e.value, TimeoutError) and e.value.endpoint == hub.url
    # one abandoned listing is still running: refuse without asking the Hub rather than pile up threads
    listings_before = len(hub.hub.requests_matching("GET", r"^/api/models\?"))
    with pytest.raises(HubUnavailable, match="still running"):
        source.fetch(SDXL)
    assert len(hub.hub.requests_matching("GET", r"^/api/models\?")) == listings_before
    hub.hub.reset()
    assert source.wait_idle(5)  # the abandoned thread stops at its next result
    assert len(source.fetch(SDXL).entries) == len(hub.expected)


def test_failing_hub_fails_fast(hub):
    source = make_source(hub.url, deadline_s=0.5)
    hub.hub.fail_status, hub.hub.fail_paths = 500, r"^/api/models\?"
    # huggingface_hub retries 5xx with about 23 s of backoff: the 0.5 s deadline ends the wait, not the retries.
    with pytest.raises(HubTimeout, match="did not finish within 0.5 s"):
        source.fetch(SDXL)
    hub.hub.reset()
    assert source.wait_idle(60)
    hub.hub.reset()  # a clean request log: the abandoned listing's last requests are not this one's
    hub.hub.fail_status, hub.hub.fail_paths = 400, r"^/api/models\?"  # not retried: the error itself
    with pytest.raises(HubUnavailable, match="400") as e:
        source.fetch(SDXL)
    assert not isinstance(e.value, HubTimeout)
    assert len(hub.hub.requests_matching("GET", r"^/api/models\?")) == 1


def test_model_info_has_a_timeout_and_its_5xx_fails_the_listing(hub):
    source = make_source(hub.url, timeout_s=0.3, deadline_s=10)
    hub.hub.delay_s, hub.hub.delay_paths = 1.0, r"^/api/models/merger/"
    with pytest.raises(HubUnavailable) as e:  # the 0.3 s call timeout fails it, long before the 10 s deadline
        source.fetch(SDXL)
    assert not isinstance(e.value, HubTimeout)
    hub.hub.reset()
    hub.hub.fail_status, hub.hub.fail_paths = 500, r"^/api/models/merger/"
    with pytest.raises(HubUnavailable, match="500"):
        source.fetch(SDXL)
    hub.hub.fail_status = 404  # a repo gone between listing and model_info is skipped
    assert "merger/sdxl-merged-lora" not in _by_id(source.fetch(SDXL))


def test_thumbnail_files(hub, tmp_path):
    source = make_source(hub.url)
    got = _by_id(source.fetch(SDXL))
    pixel = got["nerijs/pixel-art-xl"]
    ref = source.file_ref(pixel)
    assert (ref.repo_id, ref.revision, ref.path) == (pixel.repo_id, pixel.revision, "images/pixel-art-xl.jpeg")
    assert source.cached_file(ref, tmp_path) is None
    path = source.download(ref, tmp_path)
    assert path.read_bytes() == (hub.root / "nerijs/pixel-art-xl/images/pixel-art-xl.jpeg").read_bytes()
    assert source.cached_file(ref, tmp_path) == path
    balloon = got["ProomptEngineer/pe-balloon-diffusion-style"]  # an absolute huggingface.co URL: same repo
    assert source.file_ref(balloon).path == "2095176.jpeg"
    gated = next(e for e in got.values() if e.gated)
    with pytest.raises(HubUnavailable, match="restricted|401|Gated"):
        source.download(source.file_ref(gated), tmp_path)
    assert source.file_ref(got["multi/dual-base-lora"]) is None  # no thumbnail
    assert isinstance(source.cached_file(ref, tmp_path), Path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(timeout_s=0), "`timeout_s` must be a number > 0 but is 0"),
        (dict(deadline_s=-1), "`deadline_s` must be a number > 0 but is -1"),
        (dict(max_entries=0), "`max_entries` must be an integer >= 1 but is 0"),
        (dict(max_stuck_listings=True), "but is True"),
        (dict(endpoint="ftp://x"), "`endpoint` must be an http"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InvalidCatalogueConfig, match=re.escape(match) if "`" in match else match):
        HubSource(token=False, **kwargs)


def test_api_xor_endpoint(hub):
    from huggingface_hub import HfApi

    with pytest.raises(InvalidCatalogueConfig, match="either"):
        HubSource(HfApi(endpoint=hub.url), endpoint=hub.url)
    assert HubSource(endpoint=hub.url + "/", token=False).endpoint == hub.url
