"""The catalogue's own entry rules (catalogue.entries): title, thumbnail, licence, the entry record; pure, no Hub.

Whether a repo is servable, its weight file, base models and trigger words are ``repo_rules``' (tested in
tests/lora_engine/test_repo_rules.py); here ``build_entry`` only has to copy the verdict faithfully.
"""

from __future__ import annotations

import dataclasses

import pytest

from catalogue.entries import CatalogueEntry, build_entry, choose_thumbnail, iso_utc, title_of
from catalogue.errors import InvalidEntry
from lora_engine.adapters.repo_rules import Card, assess_repo, card_from_hub
from tests.catalogue.conftest import SDXL

pytestmark = pytest.mark.pure


def _entry(**kw) -> CatalogueEntry:
    base = dict(
        repo_id="o/n",
        title="N",
        trigger_words=None,
        weight_name="n.safetensors",
        unservable_reason=None,
        thumbnail=None,
        downloads=0,
        likes=0,
        last_modified=None,
        license=None,
        gated=None,
        tags=(),
        base_models=(SDXL,),
        source="hub",
    )
    base.update(kw)
    return CatalogueEntry(**base)


def test_title_rules():
    assert title_of("o/x", {"title": " T "}) == "T"
    assert title_of("o/x", {"model_name": "M"}, "H") == "M"
    assert title_of("o/x", {}, "Heading") == "Heading"
    assert title_of("nerijs/pixel-art-xl", {}) == "Pixel Art XL"
    assert title_of("latent-consistency/lcm-lora-sdxl", {}) == "LCM LoRA SDXL"
    assert title_of("Pclanglais/TintinIA", {}) == "TintinIA"  # mixed case is kept as written


def test_choose_thumbnail():
    files = ["README.md", "images/a.png", "images/b.jpg", "w.safetensors"]
    widget = {"widget": [{"text": "t", "output": {"url": "images/b.jpg"}}]}
    assert choose_thumbnail(files, widget) == "images/b.jpg"
    assert choose_thumbnail(files, {"widget": [{"output": {"url": "./images/b.jpg"}}]}) == "images/b.jpg"
    assert choose_thumbnail(files, {"widget": [{"output": {"url": "missing.png"}}]}) == "images/a.png"
    absolute = "https://huggingface.co/o/n/resolve/main/x.jpeg"
    assert choose_thumbnail(files, {"widget": [{"output": {"url": absolute}}]}) == absolute
    assert choose_thumbnail(files, {}, widget_data=[{"output": {"url": "images/b.jpg"}}]) == "images/b.jpg"
    assert choose_thumbnail(["w.safetensors"], {}) is None
    # Hostile widget values count as no widget: the first image file is the thumbnail.
    for widget in (7, "x", [7, "y"], {"output": 3}, [{"output": {"url": 5}}], None):
        assert choose_thumbnail(files, {"widget": widget}) == "images/a.png", widget


def test_build_entry_without_any_card():
    files = ["cool.safetensors", "sample.webp"]
    tags = ["lora", f"base_model:adapter:{SDXL}", "license:mit"]
    verdict = assess_repo(
        "someone/cool-style-xl", card=None, files=files, tags=tags, accepted_base_models=(SDXL,), source="hub"
    )
    entry = build_entry(verdict, card=None, files=files, resolve_thumbnail=lambda p: f"U/{p}", downloads=5)
    assert entry.title == "Cool Style XL" and entry.trigger_words is None
    assert entry.weight_name == "cool.safetensors" and entry.servable
    assert entry.thumbnail == "U/sample.webp" and entry.license == "mit" and entry.base_models == (SDXL,)
    assert entry.tags == tuple(tags) and entry.downloads == 5 and entry.source == "hub"


def test_build_entry_copies_the_verdict_and_keeps_its_own_rules():
    card = card_from_hub(
        {
            "title": "Two Styles",
            "license": ["mit", 5],
            "tags": ["lora", "extra"],
            "base_model": SDXL,
            "instance_prompt": "two",
            "widget": [{"text": "t", "output": {"url": "p.png"}}],
        }
    )
    files = ["a.safetensors", "b.safetensors", "p.png"]
    verdict = assess_repo("o/two", card=card, files=files, tags=["lora"], accepted_base_models=(SDXL,))
    entry = build_entry(verdict, card=card, files=files, resolve_thumbnail=str, likes=True)
    assert (entry.weight_name, entry.unservable_reason) == (None, verdict.reason)
    assert "2 .safetensors files" in entry.unservable_reason and not entry.servable
    assert (entry.title, entry.license, entry.thumbnail, entry.trigger_words) == ("Two Styles", "mit", "p.png", "two")
    assert entry.tags == ("lora", "extra") and entry.base_models == (SDXL,)
    assert entry.likes == 0  # a Hub number of the wrong type counts as none
    # a README that is not text: listed with the reason, title from the repo name
    unreadable = Card(unreadable="README.md is not UTF-8 text")
    verdict = assess_repo("o/bad-card", card=unreadable, files=["w.safetensors"], accepted_base_models=(SDXL,))
    entry = build_entry(verdict, card=unreadable, files=["w.safetensors"], resolve_thumbnail=str)
    assert entry.title == "Bad Card" and "not UTF-8" in entry.unservable_reason


def test_entry_invariants_and_dict_round_trip():
    with pytest.raises(InvalidEntry, match="'web'"):
        _entry(source="web")
    with pytest.raises(InvalidEntry, match="exactly one"):
        _entry(weight_name=None)
    with pytest.raises(InvalidEntry, match="exactly one"):
        _entry(unservable_reason="why")
    e = _entry(tags=("a", "b"), gated="manual", local_dir=None, revision="f" * 40)
    d = e.to_dict()
    assert d["tags"] == ["a", "b"] and set(d) == {f.name for f in dataclasses.fields(CatalogueEntry)}
    assert CatalogueEntry.from_dict(d) == e
    assert CatalogueEntry.from_dict({**d, "future_field": 1}) == e
    with pytest.raises(InvalidEntry, match="'likes'"):
        CatalogueEntry.from_dict({k: v for k, v in d.items() if k != "likes"})
    with pytest.raises(InvalidEntry, match="'downloads'"):
        CatalogueEntry.from_dict({**d, "downloads": "12"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.title = "x"  # type: ignore[misc]


def test_as_api_dict_has_exactly_the_endpoint_fields():
    e = _entry(thumbnail="http://h/o/n/resolve/s/a.png", trigger_words="tw", downloads=3, likes=4)
    assert e.as_api_dict() == {
        "repo_id": "o/n",
        "title": "N",
        "trigger_words": "tw",
        "thumbnail": "http://h/o/n/resolve/s/a.png",
        "downloads": 3,
        "likes": 4,
        "weight_name": "n.safetensors",
    }


def test_iso_utc():
    from datetime import datetime, timedelta, timezone

    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05Z"
    assert iso_utc(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == "2024-01-02T01:04:05Z"
