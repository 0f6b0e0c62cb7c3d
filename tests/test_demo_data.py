"""The synthetic dataset for the demo model, and the judge calibrated on it."""

from __future__ import annotations

import numpy as np
import pytest

from lora_engine.demo.data import SHAPES, Scene, draw, prompt_grid, sample_scenes
from lora_engine.demo.judge import judge

pytestmark = pytest.mark.pure


def test_captions_have_the_promised_form():
    assert Scene("red", "circle", "white").caption == "a red circle on a white background"
    assert len(list(prompt_grid())) == 4 * 3 * 2


def test_sampling_is_deterministic_and_varied():
    a, b = sample_scenes(50, seed=1), sample_scenes(50, seed=1)
    assert a == b and a != sample_scenes(50, seed=2)
    assert {s.shape for s in a} == set(SHAPES)
    assert len({round(s.size, 2) for s in a}) > 20 and len({round(s.cx, 2) for s in a}) > 20
    assert np.array_equal(np.asarray(draw(a[0])), np.asarray(draw(b[0])))
    assert draw(a[0]).size == (64, 64)


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="hexagon"):
        draw(Scene("red", "hexagon", "white"))


def test_the_judge_is_right_on_every_grid_scene_and_on_random_training_scenes():
    for scene in list(prompt_grid()) + sample_scenes(200, seed=0):
        verdict = judge(draw(scene))
        assert (verdict.colour, verdict.shape, verdict.background) == (scene.colour, scene.shape, scene.background), (
            scene,
            verdict,
        )


def test_the_judge_sees_no_shape_in_a_blank_image():
    from PIL import Image

    verdict = judge(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert verdict.colour is None and verdict.shape is None and verdict.background == "white"


@pytest.mark.parametrize("effect", ["outline", "stripes", "inverted", "pixelate"])
def test_the_effect_judge_tells_each_effect_from_plain_and_from_the_others(effect):
    from lora_engine.demo.data import EFFECTS
    from lora_engine.demo.judge import has_effect

    for scene in list(prompt_grid()) + sample_scenes(100, seed=3):
        assert has_effect(draw(scene, effect=effect), effect, scene), (scene, effect)
        assert not has_effect(draw(scene), effect, scene), (scene, effect)
        for other in EFFECTS:
            if other != effect:
                assert not has_effect(draw(scene, effect=other), effect, scene), (scene, other, effect)


def test_an_unknown_effect_is_refused():
    with pytest.raises(ValueError, match="sepia"):
        draw(Scene("red", "circle", "white"), effect="sepia")
