"""The built-in demo model: a tiny SDXL pipeline and LoRAs for it, built offline from fixed seeds.

This is what ``python app.py`` serves on a machine with no GPU and no Hub, and what the tests run against.
It is a real :class:`~diffusers.StableDiffusionXLPipeline` with SDXL's architecture (a UNet with
``addition_embed_type="text_time"`` and SDXL's block layout, two CLIP text encoders, an AutoencoderKL, an
Euler scheduler), only with small widths. It is written once with ``save_pretrained`` into a cache folder
and loaded from there with ``from_pretrained``, like any model. The LoRAs are written in the formats found
on the Hub: diffusers/PEFT keys (via diffusers' own ``save_lora_weights``) and kohya keys with SDXL's
original block names (``lora_unet_input_blocks_4_1_…``), with text-encoder layers in both.

It is not a model worth looking at: the weights are random, so images are coloured noise that changes with
the prompt, the seed and the LoRA. It is not used when ``MODEL_ID`` names a real model.

Building takes a few seconds on a CPU; :func:`ensure_demo_assets` does it once and reuses the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_BASE_MODEL_ID",
    "DEMO_LORAS",
    "DemoAssets",
    "DemoLora",
    "build_demo_pipeline",
    "ensure_demo_assets",
    "unet_lora_entries",
]

#: The id the demo base model goes by in ``base_model`` fields of LoRA cards.
DEMO_BASE_MODEL_ID = "sdxl-lora-server/tiny-sdxl"
# Bump when the architecture, seeds or LoRA set change, so stale cache folders are rebuilt.
DEMO_VERSION = "1"
#: The native resolution of the demo model (its UNet's ``sample_size`` times the VAE factor of 8).
DEMO_RESOLUTION = 64

# Words the tokenizer keeps whole (one BPE token each); anything else falls back to single bytes.
_VOCAB_WORDS = (
    "a an the of on in with and at by for to is background foreground photo drawing painting style art "
    "red green blue yellow orange purple pink white black grey gray brown cyan magenta "
    "circle square triangle star shape small large big tiny cute simple flat colors colour color "
    "pixel neon glow ink sketch inverted stripes striped outline blocky corgi cat dog portrait landscape "
    "tintin balloon"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-to-printable-character table (the same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer_files(folder: Path) -> int:
    """Write a byte-level CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``); returns its size.

    Every byte is a token (so any text, emoji included, tokenizes), and the words in ``_VOCAB_WORDS``
    get merges that make each one a single token, the way CLIP's real vocabulary does for common words.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in _VOCAB_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            joined = parts[0] + parts[1]
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(joined, len(vocab))
            parts = [joined] + parts[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def build_demo_pipeline(dtype: torch.dtype = torch.float32):
    """Build the tiny SDXL pipeline in memory from fixed seeds (no files, no network).

    Returns:
        `StableDiffusionXLPipeline`: random weights, deterministic for a given torch version.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_clip_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="<|endoftext|>")
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])

    # SDXL's UNet layout (three levels, two layers each, attention in the lower two, text_time
    # conditioning), so kohya files with SDXL's original block names map onto it as they do on the real one.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=DEMO_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # 6 time ids * 8 + the pooled text embedding of text_encoder_2 (projection_dim 32).
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=DEMO_RESOLUTION,
        scaling_factor=0.13025,  # SDXL's VAE factor
    )
    text_config = dict(
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        projection_dim=32,
        hidden_act="gelu",
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    return pipe.to(dtype=dtype)


@dataclass(frozen=True)
class DemoLora:
    """One demo LoRA: what it is called, how it is stored, what makes it recognisable.

    Args:
        repo_id (`str`): its id in the catalogue and on the loopback Hub, ``owner/name``.
        title (`str`): the display title.
        trigger_words (`str`): the card's ``instance_prompt``.
        weight_name (`str`): the file name of the weights.
        key_format (`str`): ``"peft"`` (diffusers ``save_lora_weights``) or ``"kohya"`` (SDXL block names).
        rank (`int`): the UNet rank.
        text_encoder_rank (`int`): the text-encoder rank; 0 for a UNet-only LoRA.
        seed (`int`): the seed of its random factors.
    """

    repo_id: str
    title: str
    trigger_words: str
    weight_name: str
    key_format: str
    rank: int
    text_encoder_rank: int
    seed: int


DEMO_LORAS: tuple[DemoLora, ...] = (
    DemoLora("demo/neon-glow", "Neon Glow", "neon glow", "pytorch_lora_weights.safetensors", "peft", 4, 0, 10),
    DemoLora("demo/ink-sketch", "Ink Sketch", "ink sketch", "ink-sketch.safetensors", "peft", 8, 2, 11),
    DemoLora("demo/pixel-blocks", "Pixel Blocks", "pixel art", "pixel-blocks-xl.safetensors", "kohya", 4, 4, 12),
    DemoLora("demo/inverted", "Inverted Colours", "inverted", "inverted_v1.safetensors", "kohya", 16, 8, 13),
)

_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _random_factors(
    module: torch.nn.Linear, rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(A, B)`` whose product is about as large as the weight itself, so effects are visible."""
    out_features, in_features = module.weight.shape
    w_std = float(module.weight.detach().float().std())
    a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
    b = torch.randn(out_features, rank, generator=generator) * (w_std * in_features**0.5 / rank**0.5)
    return a, b


def _sgm_unet_name(diffusers_name: str) -> str:
    """Map a diffusers UNet module path to SDXL's original (SGM) name, as kohya files spell it.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks_4_1_transformer_blocks_0_attn1_to_q``. SDXL has two layers per down block (three per
    up block) and a downsampler after each level, hence ``3 * block + layer + 1`` on the way down.
    """
    parts = diffusers_name.split(".")
    if parts[0] == "down_blocks":
        block, layer, rest = int(parts[1]), int(parts[3]), parts[4:]
        prefix = f"input_blocks_{3 * block + layer + 1}_1"
    elif parts[0] == "up_blocks":
        block, layer, rest = int(parts[1]), int(parts[3]), parts[4:]
        prefix = f"output_blocks_{3 * block + layer}_1"
    elif parts[0] == "mid_block":
        rest = parts[3:]
        prefix = "middle_block_1"
    else:
        raise ValueError(f"no SGM name for UNet module {diffusers_name!r}")
    return "_".join([prefix, *rest])


def unet_lora_entries(name: str, a: torch.Tensor, b: torch.Tensor, key_format: str, alpha: float) -> dict:
    """One UNet layer's factors keyed as ``key_format`` spells them (``"peft"`` or ``"kohya"`` with SGM names).

    ``alpha`` is written for kohya only (its effective scale is ``alpha / rank``); PEFT files written by
    diffusers carry none, which means a scale of 1.
    """
    if key_format == "peft":
        return {f"unet.{name}.lora_A.weight": a, f"unet.{name}.lora_B.weight": b}
    key = "lora_unet_" + _sgm_unet_name(name).replace(".", "_")
    return {f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b, f"{key}.alpha": torch.tensor(float(alpha))}


def _lora_state_dict(pipe, spec: DemoLora) -> dict[str, torch.Tensor]:
    """The LoRA's tensors, keyed the way ``spec.key_format`` spells them."""
    gen = torch.Generator().manual_seed(spec.seed)
    out: dict[str, torch.Tensor] = {}
    unet_modules = {
        name: m
        for name, m in pipe.unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(_UNET_TARGETS) and ".attn" in name
    }
    te_modules = {
        prefix: {
            # CLIPTextModelWithProjection nests its layers under ``text_model``; CLIPTextModel (transformers 5)
            # does not. Files always spell the path with ``text_model.``, as the original CLIP did.
            name.removeprefix("text_model."): m
            for name, m in encoder.named_modules()
            if isinstance(m, torch.nn.Linear) and name.endswith(_TEXT_TARGETS)
        }
        for prefix, encoder in (("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2))
    }
    for name, module in sorted(unet_modules.items()):
        a, b = _random_factors(module, spec.rank, gen)
        # kohya files get alpha = rank / 2 (scale 0.5), to exercise diffusers' alpha handling.
        out.update(unet_lora_entries(name, a, b, spec.key_format, alpha=spec.rank / 2))
    if spec.text_encoder_rank:
        for prefix, modules in te_modules.items():
            for name, module in sorted(modules.items()):
                a, b = _random_factors(module, spec.text_encoder_rank, gen)
                # Keep the text-encoder push small: CLIP is sensitive and we want the prompt to still matter.
                b = b * 0.3
                if spec.key_format == "peft":
                    component = "text_encoder" if prefix == "te1" else "text_encoder_2"
                    out[f"{component}.text_model.{name}.lora_A.weight"] = a
                    out[f"{component}.text_model.{name}.lora_B.weight"] = b
                else:
                    key = f"lora_{prefix}_text_model_" + name.replace(".", "_")
                    out[f"{key}.lora_down.weight"] = a
                    out[f"{key}.lora_up.weight"] = b
                    out[f"{key}.alpha"] = torch.tensor(float(spec.text_encoder_rank))
    return {k: v.contiguous() for k, v in out.items()}


def _card(spec: DemoLora, thumbnail: str) -> str:
    import yaml

    front = {
        "license": "apache-2.0",
        "library_name": "diffusers",
        "tags": ["text-to-image", "stable-diffusion-xl", "lora", "diffusers", "template:sd-lora"],
        "base_model": DEMO_BASE_MODEL_ID,
        "instance_prompt": spec.trigger_words,
        "widget": [{"text": f"{spec.trigger_words}, a red circle", "output": {"url": thumbnail}}],
    }
    return (
        "---\n"
        + yaml.safe_dump(front, sort_keys=False)
        + "---\n\n"
        + f"# {spec.title}\n\nA demo LoRA for the built-in tiny SDXL model ({spec.key_format} keys, rank {spec.rank}).\n"
        + f"Use `{spec.trigger_words}` in the prompt.\n"
    )


def _base_card() -> str:
    return (
        "---\nlicense: apache-2.0\nlibrary_name: diffusers\npipeline_tag: text-to-image\n"
        "tags:\n- text-to-image\n- stable-diffusion-xl\n---\n\n# Tiny SDXL (demo)\n\n"
        "A tiny, randomly initialised model with SDXL's architecture, for offline demos and tests.\n"
    )


@dataclass(frozen=True)
class DemoAssets:
    """Where the built demo model and its LoRAs are.

    Args:
        root (`Path`): the cache folder holding everything.
        model_dir (`Path`): the pipeline, loadable with ``StableDiffusionXLPipeline.from_pretrained``.
        loras_dir (`Path`): one sub-folder per LoRA (``owner/name``), each laid out like a Hub repo:
            ``README.md`` (the card), the weight file and ``thumbnail.png``.
    """

    root: Path
    model_dir: Path
    loras_dir: Path

    def lora_dir(self, repo_id: str) -> Path:
        return self.loras_dir / repo_id


def default_demo_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "sdxl-lora-server" / f"demo-v{DEMO_VERSION}"


def ensure_demo_assets(root: Path | None = None) -> DemoAssets:
    """Build the demo model and LoRAs into ``root`` unless they are already there; return their paths.

    The build goes into a temporary sibling folder that is renamed into place at the end, so a crash
    never leaves a half-written model behind, and concurrent builders do not corrupt each other.
    """
    root = Path(root) if root is not None else default_demo_root()
    assets = DemoAssets(root=root, model_dir=root / "model", loras_dir=root / "loras")
    if (root / "COMPLETE").exists():
        return assets
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _build_into(tmp)
        (tmp / "COMPLETE").write_text(DEMO_VERSION)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / "COMPLETE").exists():
                raise
            # Another process finished first; its copy is identical.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return assets


def _build_into(folder: Path) -> None:
    from safetensors.torch import save_file

    logger.info("building the demo model into %s", folder)
    pipe = build_demo_pipeline()
    pipe.save_pretrained(folder / "model", safe_serialization=True)
    (folder / "model" / "README.md").write_text(_base_card(), encoding="utf-8")
    for spec in DEMO_LORAS:
        lora_dir = folder / "loras" / spec.repo_id
        lora_dir.mkdir(parents=True)
        state = _lora_state_dict(pipe, spec)
        if spec.key_format == "peft":
            unet_layers = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
            te1 = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
            te2 = {
                k.removeprefix("text_encoder_2."): v for k, v in state.items() if k.startswith("text_encoder_2.")
            }
            # diffusers' own writer, so the file is exactly what its training scripts produce.
            pipe.save_lora_weights(
                lora_dir,
                unet_lora_layers=unet_layers,
                text_encoder_lora_layers=te1 or None,
                text_encoder_2_lora_layers=te2 or None,
                weight_name=spec.weight_name,
            )
        else:
            save_file(state, str(lora_dir / spec.weight_name), metadata={"ss_network_module": "networks.lora"})
        _render_thumbnail(pipe, lora_dir / spec.weight_name, spec, lora_dir / "thumbnail.png")
        (lora_dir / "README.md").write_text(_card(spec, "thumbnail.png"), encoding="utf-8")


def _render_thumbnail(pipe, weights: Path, spec: DemoLora, out: Path) -> None:
    """A thumbnail made from the LoRA's own output (diffusers' loader; this is not the serving path)."""
    from PIL import Image

    pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, adapter_name="thumb")
    try:
        image = pipe(
            prompt=f"{spec.trigger_words}, a red circle",
            num_inference_steps=4,
            guidance_scale=5.0,
            width=DEMO_RESOLUTION,
            height=DEMO_RESOLUTION,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
    finally:
        pipe.unload_lora_weights()
    image.resize((128, 128), Image.NEAREST).save(out)
