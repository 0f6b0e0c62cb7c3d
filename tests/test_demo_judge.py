"""The demo model draws what it is asked, and each demo LoRA shows its effect, by the pixel judge.

The prompt grid is every colour x shape, 2 seeds each (one on a white, one on a black background): 24
pictures per check.
The base model must draw the asked colour, shape and background in at least 80 % of them; each LoRA, with
its trigger word, must show its effect in at least 80 %, and at scale 0 the effect must be gone (the same
prompts, trigger word included). The grids run in batches through diffusers' loader (fast); one more test
runs the same effects through the serving engine's own swap, the way the app serves them.

All of it runs in under a minute on 2 CPU cores: pictures are 64 px, at the demo's default 12 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_engine import GenerationRequest
from lora_engine.demo.data import prompt_grid
from lora_engine.demo.judge import has_effect, judge
from lora_engine.demo.model import DEMO_LORAS

# Seed 0 on white, seed 1 on black: every colour x shape twice, both backgrounds, 24 pictures.
GRID = [(scene, 0 if scene.background == "white" else 1) for scene in prompt_grid()]
PASS = 0.8


@pytest.fixture(scope="module")
def pipe(load_demo_pipeline):
    return load_demo_pipeline()


def _draw(pipe, demo_assets, spec=None, scale: float = 1.0) -> list:
    """The whole grid in one batch (the trigger words first when ``spec`` is given), at the demo's 12 steps."""
    prompts = [f"{spec.trigger_words}, {scene.caption}" if spec else scene.caption for scene, _ in GRID]
    if spec is not None:
        pipe.load_lora_weights(str(demo_assets.lora_dir(spec.repo_id)), weight_name=spec.weight_name, adapter_name="j")
        pipe.set_adapters("j", scale)
    try:
        return pipe(
            prompts,
            num_inference_steps=12,
            guidance_scale=5.0,
            width=64,
            height=64,
            generator=[torch.Generator().manual_seed(seed) for _, seed in GRID],
        ).images
    finally:
        if spec is not None:
            pipe.unload_lora_weights()


def test_the_base_model_draws_the_asked_colour_shape_and_background(pipe, demo_assets):
    images = _draw(pipe, demo_assets)
    wrong = [
        (s.caption, seed, judge(im))
        for (s, seed), im in zip(GRID, images)
        if (judge(im).colour, judge(im).shape, judge(im).background) != (s.colour, s.shape, s.background)
    ]
    assert len(wrong) <= (1 - PASS) * len(GRID), wrong
    # and it is no LoRA's effect by accident
    for spec in DEMO_LORAS:
        assert sum(has_effect(im, spec.effect, s) for (s, _), im in zip(GRID, images)) <= (1 - PASS) * len(GRID)


@pytest.mark.parametrize("spec", DEMO_LORAS, ids=lambda s: s.repo_id)
def test_each_lora_shows_its_effect_and_scale_zero_removes_it(pipe, demo_assets, spec):
    shown = _draw(pipe, demo_assets, spec, 1.0)
    hits = [has_effect(im, spec.effect, s) for (s, _), im in zip(GRID, shown)]
    assert sum(hits) >= PASS * len(GRID), (spec.repo_id, sum(hits), len(GRID))
    removed = _draw(pipe, demo_assets, spec, 0.0)
    still = [has_effect(im, spec.effect, s) for (s, _), im in zip(GRID, removed)]
    assert sum(still) <= (1 - PASS) * len(GRID), (spec.repo_id, sum(still), len(GRID))


def test_the_serving_engine_shows_the_same_effects(demo_assets, tmp_path):
    """The engine's own swap (not diffusers' loader) gives each LoRA's effect, and scale 0 is the base itself."""
    from lora_engine import Engine, EngineConfig

    scene, seed = GRID[0]
    with Engine.from_config(EngineConfig(demo_dir=str(demo_assets.root), hub_cache_dir=str(tmp_path))) as engine:
        base = engine.generate(GenerationRequest(scene.caption, seed=seed), timeout=120).image
        for spec in DEMO_LORAS:
            prompt = f"{spec.trigger_words}, {scene.caption}"
            assert has_effect(
                engine.generate(GenerationRequest(prompt, lora=spec.repo_id, seed=seed), timeout=120).image,
                spec.effect,
                scene,
            ), spec.repo_id
            zero = engine.generate(GenerationRequest(prompt, lora=spec.repo_id, lora_scale=0.0, seed=seed), timeout=120)
            plain = engine.generate(GenerationRequest(prompt, seed=seed), timeout=120)
            assert np.array_equal(np.asarray(zero.image), np.asarray(plain.image)), spec.repo_id
    assert not has_effect(base, "inverted", scene)
