"""Request validation at the boundary: a fixed order, and every rule naming the field and the value."""

from __future__ import annotations

import random

import pytest

from lora_engine import GenerationRequest, InvalidAdapterId, InvalidRequest
from lora_engine.request import RequestLimits, check_adapter_id, validate_request

pytestmark = pytest.mark.pure

LIMITS = RequestLimits(default_steps=25, default_side=1024)


def ok(**kw):
    return validate_request(GenerationRequest(kw.pop("prompt", "a cat"), **kw), LIMITS, random.Random(0))


def test_defaults_are_filled_and_the_seed_drawn():
    r = ok()
    assert (r.num_inference_steps, r.width, r.height, r.guidance_scale) == (25, 1024, 1024, 5.0)
    assert 0 <= r.seed < 2**32
    assert ok(seed=5).seed == 5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 100, "`width` must be a multiple of 8 in \\[64, 2048\\] but is 100"),
        ("height", 4096, "`height` must be a multiple of 8 in \\[64, 2048\\] but is 4096"),
        ("width", 56, "but is 56"),
        ("width", 512.5, "`width` must be an integer but is 512.5"),
        ("width", "512", "`width` must be an integer but is '512'"),
        ("width", True, "must be an integer but is True"),
        ("num_inference_steps", 0, "`num_inference_steps` must be in \\[1, 100\\] but is 0"),
        ("num_inference_steps", 101, "but is 101"),
        ("seed", -2, "`seed` must be -1 \\(random\\) or in \\[0, 4294967295\\] but is -2"),
        ("seed", 2**32, "but is 4294967296"),
        ("guidance_scale", float("nan"), "`guidance_scale` must be in \\[0, 30\\] but is nan"),
        ("guidance_scale", -1, "but is -1"),
        ("lora_scale", 9, "`lora_scale` must be in \\[-4, 4\\] but is 9"),
        ("lora_scale", None, "`lora_scale` must be a number but is None"),
        ("negative_prompt", 3, "`negative_prompt` must be a string"),
        ("prompt", None, "`prompt` must be a string"),
        ("prompt", "x" * 10_000, "`prompt` must be at most 4000 characters but has 10000"),
        ("prompt", "a\x00b", "NUL"),
    ],
)
def test_each_rule_names_the_field_and_the_value(field, value, message):
    with pytest.raises(InvalidRequest, match=message) as info:
        ok(**{field: value})
    assert info.value.field == field


def test_accepted_edge_values():
    assert ok(prompt="").prompt == ""  # unconditional: documented
    assert ok(prompt="🎨 ünïcødé 日本語").prompt == "🎨 ünïcødé 日本語"
    assert ok(width=512.0).width == 512
    assert ok(width=64, height=2048).height == 2048
    assert ok(lora_scale=-1.5).lora_scale == -1.5
    assert ok(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.parametrize("good", ["", "nerijs/pixel-art-xl", "a/b", "Org_1/model.v2-final", "x" * 96 + "/y"])
def test_good_adapter_ids(good):
    assert check_adapter_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "nerijs",
        "a/b/c",
        "../x/y",
        "a/..",
        "x/y..z",
        "http://h/a/b",
        "a--b/c",
        "-a/b",
        "a/b-",
        "a b/c",
        "x" * 97 + "/y",
        "/a/b",
        "a\\b",
        5,
    ],
)
def test_bad_adapter_ids(bad):
    with pytest.raises(InvalidAdapterId):
        check_adapter_id(bad)


def test_rules_are_checked_in_a_fixed_order():
    with pytest.raises(InvalidRequest) as info:
        ok(prompt=3, width=1)
    assert info.value.field == "prompt"
