"""The built-in demo model is a real, deterministic SDXL pipeline, and its LoRAs are real LoRA files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from lora_engine.torch_demo import DEMO_BASE_MODEL_ID, DEMO_LORAS, build_demo_pipeline, ensure_demo_assets
from lora_engine.torch_swap import weights_digest
from tests.support.loras import read_tensors


def _image(pipe, seed=0, prompt="a red circle"):
    out = pipe(prompt, num_inference_steps=2, width=64, height=64, generator=torch.Generator().manual_seed(seed),
               output_type="np")  # fmt: skip
    return out.images[0]


@pytest.fixture(scope="module")
def pipe(demo_assets):
    from diffusers import StableDiffusionXLPipeline

    p = StableDiffusionXLPipeline.from_pretrained(demo_assets.model_dir)
    p.set_progress_bar_config(disable=True)
    return p


def test_it_is_sdxl_architecture(pipe):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.addition_embed_type == "text_time"
    assert list(pipe.unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.scheduler, EulerDiscreteScheduler)
    ids = pipe.tokenizer("a red circle, 🎨").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer.model_max_length == 77


def test_building_twice_gives_the_same_weights(pipe):
    assert weights_digest(build_demo_pipeline()) == weights_digest(pipe)


def test_same_seed_same_pixels_other_seed_other_pixels(pipe):
    assert np.array_equal(_image(pipe, 1), _image(pipe, 1))
    assert not np.array_equal(_image(pipe, 1), _image(pipe, 2))
    assert not np.array_equal(_image(pipe, 1), _image(pipe, 1, prompt="a blue square"))


def test_assets_are_reused_not_rebuilt(demo_assets):
    stamp = (demo_assets.model_dir / "model_index.json").stat().st_mtime_ns
    again = ensure_demo_assets(demo_assets.root)
    assert (again.model_dir / "model_index.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("spec", DEMO_LORAS, ids=lambda s: s.repo_id)
def test_every_demo_lora_loads_with_diffusers_and_changes_the_output(pipe, demo_assets, spec):
    folder = demo_assets.lora_dir(spec.repo_id)
    keys = list(read_tensors(folder / spec.weight_name))
    if spec.key_format == "kohya":
        assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in keys)
        assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
    else:
        assert any(k.startswith("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A") for k in keys)
    card = (folder / "README.md").read_text()
    assert f"base_model: {DEMO_BASE_MODEL_ID}" in card and f"instance_prompt: {spec.trigger_words}" in card
    assert (folder / "thumbnail.png").read_bytes()[:4] == b"\x89PNG"

    base = _image(pipe)
    pipe.load_lora_weights(str(folder), weight_name=spec.weight_name, adapter_name="t")
    try:
        with_lora = _image(pipe)
    finally:
        pipe.unload_lora_weights()
    assert np.abs(with_lora - base).mean() > 1e-3


def test_the_demo_model_loads_from_the_loopback_hub_by_repo_id(demo_assets, hub_root):
    """``MODEL_ID=owner/name`` goes through the real from_pretrained download path."""
    from diffusers import StableDiffusionXLPipeline

    shutil.copytree(demo_assets.model_dir, hub_root / DEMO_BASE_MODEL_ID, dirs_exist_ok=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(DEMO_BASE_MODEL_ID)
    assert weights_digest(pipe) == weights_digest(build_demo_pipeline())
