"""The built-in demo model is a real, deterministic SDXL pipeline with shipped trained weights, and its LoRAs
are real LoRA files. Whether it draws what it is asked is ``test_demo_judge.py``'s business."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from lora_engine.demo.model import (
    DEMO_BASE_MODEL_ID,
    DEMO_LORAS,
    DEMO_WEIGHTS_DIR,
    THUMBNAIL_FILE,
    THUMBNAIL_SCENES,
    build_demo_pipeline,
    ensure_demo_assets,
    render_sheet,
)
from lora_engine.pipeline.swap import weights_digest
from lora_engine.testing.lora_files import read_tensors


def _image(pipe, seed=0, prompt="a red circle"):
    out = pipe(
        prompt,
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
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


def test_the_shipped_weights_are_trained_small_and_loaded_as_shipped(pipe):
    from diffusers import StableDiffusionXLPipeline

    shipped = StableDiffusionXLPipeline.from_pretrained(DEMO_WEIGHTS_DIR / "model")
    assert weights_digest(shipped) == weights_digest(pipe)
    untrained = build_demo_pipeline()

    def arch(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert arch(untrained.unet.config) == arch(pipe.unet.config)
    assert not torch.equal(untrained.unet.conv_in.weight, pipe.unet.conv_in.weight)
    assert not torch.equal(untrained.vae.encoder.conv_in.weight, pipe.vae.encoder.conv_in.weight)
    # The text encoders stay as built (frozen during training).
    encoders = ("text_encoder", "text_encoder_2")
    assert weights_digest(untrained, encoders) == weights_digest(pipe, encoders)
    assert pipe.vae.config.scaling_factor != 0.13025  # set from the trained latents
    total = sum(f.stat().st_size for f in DEMO_WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total < 50 * 2**20, total


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


@pytest.mark.parametrize("spec", DEMO_LORAS, ids=lambda s: s.repo_id)
def test_the_shipped_thumbnail_is_what_the_lora_draws(pipe, demo_assets, spec):
    from PIL import Image

    folder = demo_assets.lora_dir(spec.repo_id)
    shipped = np.asarray(Image.open(folder / THUMBNAIL_FILE).convert("RGB"), dtype=np.int16)
    assert (folder / THUMBNAIL_FILE).read_bytes() == (
        DEMO_WEIGHTS_DIR / "loras" / spec.repo_id / THUMBNAIL_FILE
    ).read_bytes()
    drawn = np.asarray(render_sheet(pipe, THUMBNAIL_SCENES, spec=spec, folder=folder), dtype=np.int16)
    # Rendered on another CPU (AMX or not, other thread counts) the same float math may round differently; a
    # thumbnail of another LoRA, or of the base model, is off by tens of levels on average.
    assert shipped.shape == drawn.shape and np.abs(shipped - drawn).mean() < 2.0


def test_the_demo_model_loads_from_the_loopback_hub_by_repo_id(demo_assets, hub_root):
    """``MODEL_ID=owner/name`` goes through the real from_pretrained download path."""
    from diffusers import StableDiffusionXLPipeline

    shutil.copytree(demo_assets.model_dir, hub_root / DEMO_BASE_MODEL_ID, dirs_exist_ok=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(DEMO_BASE_MODEL_ID)
    assert weights_digest(pipe) == weights_digest(StableDiffusionXLPipeline.from_pretrained(demo_assets.model_dir))


def test_sgm_names_of_resnet_and_transformer_layers_follow_sdxl():
    from lora_engine.demo.model import _sgm_unet_name

    assert _sgm_unet_name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == (
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    )
    assert _sgm_unet_name("down_blocks.0.resnets.1.time_emb_proj") == "input_blocks_2_0_emb_layers_1"
    assert _sgm_unet_name("up_blocks.2.resnets.2.time_emb_proj") == "output_blocks_8_0_emb_layers_1"
    assert _sgm_unet_name("mid_block.resnets.1.time_emb_proj") == "middle_block_2_emb_layers_1"
    assert _sgm_unet_name("mid_block.attentions.0.proj_in") == "middle_block_1_proj_in"
    with pytest.raises(ValueError, match="conv1"):
        _sgm_unet_name("down_blocks.0.resnets.0.conv1")


@pytest.mark.parametrize("spec", [s for s in DEMO_LORAS if s.key_format == "kohya"], ids=lambda s: s.repo_id)
def test_kohya_files_cover_every_layer_of_the_peft_training(spec, demo_assets, load_demo_pipeline):
    """Every adapted UNet layer (transformer linears and ResNet time projections) reaches diffusers."""
    from lora_engine.demo.model import UNET_LORA_TARGETS

    pipe = load_demo_pipeline()
    folder = demo_assets.lora_dir(spec.repo_id)
    expected = {
        n for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(UNET_LORA_TARGETS)
    }
    keys = read_tensors(folder / spec.weight_name)
    assert sum(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys) == len(expected)
    pipe.load_lora_weights(str(folder), weight_name=spec.weight_name, adapter_name="k")
    loaded = {n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "k" in m.lora_A}
    assert loaded == expected
