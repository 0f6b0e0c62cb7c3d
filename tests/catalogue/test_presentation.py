"""Trigger-word insertion and the selected-LoRA panel text (pure helpers the UI uses)."""

from __future__ import annotations

import pytest

from catalogue.entries import CatalogueEntry
from catalogue.presentation import caption, describe_entry, with_trigger_words

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    ("prompt", "trigger", "previous", "expected"),
    [
        ("", "pixel art", None, "pixel art, "),
        ("a cat", "pixel art", None, "pixel art, a cat"),
        ("pixel art, a cat", "pixel art", None, "pixel art, a cat"),
        ("a cat in PIXEL ART style", "pixel art", None, "a cat in PIXEL ART style"),
        ("pixel artwork of a cat", "pixel art", None, "pixel art, pixel artwork of a cat"),
        ("pixel art, a cat", "ink sketch", "pixel art", "ink sketch, a cat"),
        ("pixel art, a cat", None, "pixel art", "a cat"),
        ("a cat", None, None, "a cat"),
    ],
)
def test_trigger_words_are_inserted_once(prompt, trigger, previous, expected):
    assert with_trigger_words(prompt, trigger, previous) == expected
    assert with_trigger_words(expected, trigger, None) == expected  # idempotent


def _entry(**kw):
    base = dict(
        repo_id="nerijs/pixel-art-xl",
        title="Pixel Art XL",
        trigger_words="pixel art",
        weight_name="pixel-art-xl.safetensors",
        unservable_reason=None,
        thumbnail=None,
        downloads=1,
        likes=2,
        last_modified=None,
        license="creativeml-openrail-m",
        gated=None,
        tags=("lora",),
        base_models=("stabilityai/stable-diffusion-xl-base-1.0",),
        source="hub",
    )
    base.update(kw)
    return CatalogueEntry(**base)


def test_describe_entry_has_title_trigger_link_and_license():
    text = describe_entry(_entry())
    assert "Pixel Art XL" in text and "`pixel art`" in text
    assert "https://huggingface.co/nerijs/pixel-art-xl" in text and "creativeml-openrail-m" in text


def test_unservable_and_gated_entries_say_so():
    entry = _entry(weight_name=None, unservable_reason="only pickle weights", gated="auto")
    text = describe_entry(entry)
    assert "Not servable" in text and "only pickle weights" in text and "HF_TOKEN" in text
    assert caption(entry).endswith("(not servable)")
