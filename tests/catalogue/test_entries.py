"""Card parsing and entry rules (catalogue.entries): pure, no Hub."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from catalogue.entries import (
    Card,
    CatalogueEntry,
    base_models_of,
    build_entry,
    choose_thumbnail,
    choose_weight,
    iso_utc,
    parse_card,
    serves_base,
    title_of,
    trigger_words_of,
)
from catalogue.errors import InvalidEntry
from tests.catalogue.conftest import SDXL, load_facts


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


def test_parse_card_reads_the_real_examples():
    for name, front in load_facts()["model_card_examples"].items():
        card = parse_card(f"---\n{front}---\n\n# Title of {name}\n\ntext\n")
        assert card.data == yaml.safe_load(front), name
        assert card.heading == f"Title of {name}"
        assert "tags" in card.data


def test_parse_card_without_front_matter_or_with_broken_yaml():
    assert parse_card("# Just a heading\nbody") == Card({}, "Just a heading")
    assert parse_card("---\nkey: [unclosed\n---\n# H\n").data == {}
    assert parse_card("---\n- a list\n---\n").data == {}
    fenced = parse_card("---\na: 1\n---\n```\n# not a heading\n```\n## sub\n# Real\n")
    assert fenced.heading == "Real" and fenced.data == {"a": 1}


def test_title_rules():
    assert title_of("o/x", {"title": " T "}) == "T"
    assert title_of("o/x", {"model_name": "M"}, "H") == "M"
    assert title_of("o/x", {}, "Heading") == "Heading"
    assert title_of("nerijs/pixel-art-xl", {}) == "Pixel Art XL"
    assert title_of("latent-consistency/lcm-lora-sdxl", {}) == "LCM LoRA SDXL"
    assert title_of("Pclanglais/TintinIA", {}) == "TintinIA"  # mixed case is kept as written


def test_trigger_words_rules():
    assert trigger_words_of({"instance_prompt": "pixel art", "widget": [{"text": "w"}]}) == "pixel art"
    assert trigger_words_of({"instance_prompt": ["a", "b"]}) == "a, b"
    assert trigger_words_of({"instance_prompt": None, "widget": [{"text": " first "}, {"text": "2"}]}) == "first"
    assert trigger_words_of({}, widget_data=[{"text": "from widgetData"}]) == "from widgetData"
    assert trigger_words_of({"instance_prompt": "", "widget": "not a list"}) is None
    assert trigger_words_of({}) is None


@pytest.mark.parametrize(
    "files,card,weight,reason",
    [
        (["README.md", "a.safetensors"], {}, "a.safetensors", None),
        (["x-v1.safetensors", "x-v2.safetensors"], {"instance_prompt": "<lora:x-v2:0.8>"}, "x-v2.safetensors", None),
        (
            ["Surreal v1.safetensors", "Surreal v2.safetensors"],
            {"widget": [{"text": "use Surreal v1.safetensors"}]},
            "Surreal v1.safetensors",
            None,
        ),
        (["a.safetensors", "pytorch_lora_weights.safetensors"], {}, "pytorch_lora_weights.safetensors", None),
        (["final.safetensors", "checkpoint-1/final.safetensors"], {}, "final.safetensors", None),
        (["a.safetensors", "b.safetensors"], {}, None, "2 .safetensors files (a.safetensors, b.safetensors)"),
        (["ba.safetensors", "a.safetensors"], {"note": "ba.safetensors"}, "ba.safetensors", None),
        (["pytorch_lora_weights.bin", "README.md"], {}, None, "only pickle weights (pytorch_lora_weights.bin)"),
        (["lora.safetensors", "embeddings.pti"], {}, None, "pivotal-tuning LoRA"),
        (["unet/diffusion_pytorch_model.safetensors"], {}, None, "only full-model components"),
        (["README.md", "image.png"], {}, None, "no .safetensors weight file"),
    ],
)
def test_choose_weight(files, card, weight, reason):
    choice = choose_weight(files, card)
    assert choice.weight_name == weight
    if reason is None:
        assert choice.unservable_reason is None
    else:
        assert reason in choice.unservable_reason


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


def test_base_models_from_card_or_tags():
    assert base_models_of({"base_model": SDXL}) == (SDXL,)
    assert base_models_of({"base_model": [SDXL, "other/x"]}) == (SDXL, "other/x")
    tags = ["lora", f"base_model:{SDXL}", f"base_model:adapter:{SDXL}", "base_model:adapter:b/c"]
    assert base_models_of({}, tags) == (SDXL, "b/c")
    assert base_models_of({"base_model": "card/wins"}, tags) == ("card/wins",)
    assert serves_base(base_models_of({"base_model": ["x/y", SDXL]}), SDXL)
    assert not serves_base(base_models_of({"base_model": "fluently/Fluently-XL-v2"}), SDXL)


def test_build_entry_without_any_card():
    entry = build_entry(
        "someone/cool-style-xl",
        source="hub",
        card=None,
        files=["cool.safetensors", "sample.webp"],
        resolve_thumbnail=lambda p: f"U/{p}",
        tags=["lora", f"base_model:adapter:{SDXL}", "license:mit"],
        downloads=5,
    )
    assert entry.title == "Cool Style XL" and entry.trigger_words is None
    assert entry.weight_name == "cool.safetensors" and entry.servable
    assert entry.thumbnail == "U/sample.webp" and entry.license == "mit" and entry.base_models == (SDXL,)


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
