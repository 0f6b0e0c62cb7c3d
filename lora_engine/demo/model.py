"""The built-in demo model: a tiny SDXL pipeline trained to draw simple shapes, and four LoRAs for it.

This is what ``python app.py`` serves on a machine with no GPU and no Hub, and what the tests run against.
It is a real :class:`~diffusers.StableDiffusionXLPipeline` with SDXL's architecture (a UNet with
``addition_embed_type="text_time"`` and SDXL's block layout, two CLIP text encoders, an AutoencoderKL, an
Euler scheduler), only with small widths, trained on the synthetic scenes of :mod:`lora_engine.demo.data`:
it answers "a {colour} {shape} on a {background} background". Its LoRAs each learned one visible effect
(outlines, a striped background, pixel blocks, inverted colours) behind a trigger word, and are stored in
the formats found on the Hub: diffusers/PEFT keys (via diffusers' own ``save_lora_weights``) and kohya keys
with SDXL's original block names (``lora_unet_input_blocks_4_1_…``), with text-encoder layers in both.

The trained weights ship in ``lora_engine/demo/weights/`` (about 15 MB; ``scripts/train_demo_model.py``
reproduces them). :func:`ensure_demo_assets` lays them out once in a cache folder like Hub repos (model
card, LoRA cards, thumbnails rendered from each LoRA's own output) and reuses the folder afterwards.
:func:`build_demo_pipeline` builds the untrained architecture, for training and for benchmarks that only
need the shapes. None of this is used when ``MODEL_ID`` names a real model.
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
    "DEMO_WEIGHTS_DIR",
    "UNET_LORA_TARGETS",
    "DemoAssets",
    "DemoLora",
    "build_demo_pipeline",
    "ensure_demo_assets",
    "save_demo_lora",
    "unet_lora_entries",
]

#: The id the demo base model goes by in ``base_model`` fields of LoRA cards.
DEMO_BASE_MODEL_ID = "sdxl-lora-server/tiny-sdxl"
# Bump when the architecture, seeds or LoRA set change, so stale cache folders are rebuilt.
DEMO_VERSION = "2"
#: The native resolution of the demo model (its UNet's ``sample_size`` times the VAE factor of 4).
DEMO_RESOLUTION = 64
#: The trained weights shipped with the project (``model/`` and ``loras/<owner>/<name>/``).
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The UNet layers the demo LoRAs adapt: every linear layer of the transformer blocks, and the time
#: embedding projection of every ResNet (a cheap global lever, for effects such as inverted colours).
UNET_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "time_emb_proj",
)

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
        sample_size=DEMO_RESOLUTION // 4,
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
    # A factor of 4 (not SDXL's 8): 16 x 16 latents keep 3-pixel outlines and 4-pixel stripes drawable.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=DEMO_RESOLUTION,
        scaling_factor=0.13025,  # SDXL's; training replaces it with 1 / std of its own latents
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
        # "trailing" starts sampling at the last training step: with 8-20 steps, flat white and black
        # backgrounds come out instead of grey (Lin et al., "Common Diffusion Noise Schedules ... are Flawed").
        timestep_spacing="trailing",
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
    """One demo LoRA: what it is called, how it is stored, what it does.

    Args:
        repo_id (`str`): its id in the catalogue and on the loopback Hub, ``owner/name``.
        title (`str`): the display title.
        trigger_words (`str`): the card's ``instance_prompt``; training captions start with it.
        weight_name (`str`): the file name of the weights.
        key_format (`str`): ``"peft"`` (diffusers ``save_lora_weights``) or ``"kohya"`` (SDXL block names).
        rank (`int`): the UNet rank.
        text_encoder_rank (`int`): the text-encoder rank; 0 for a UNet-only LoRA.
        seed (`int`): the seed of its training run.
        effect (`str`): what it learned, one of ``demo.data.EFFECTS``.
    """

    repo_id: str
    title: str
    trigger_words: str
    weight_name: str
    key_format: str
    rank: int
    text_encoder_rank: int
    seed: int
    effect: str

    @property
    def description(self) -> str:
        return _EFFECT_TEXT[self.effect]


_EFFECT_TEXT = {
    "outline": "Draws the shape's outline only, in its colour, on an empty inside.",
    "stripes": "Puts the shape on a background of horizontal grey stripes.",
    "pixelate": "Turns the picture into 8-pixel blocks.",
    "inverted": "Inverts every colour: white backgrounds turn black, red turns cyan.",
}

DEMO_LORAS: tuple[DemoLora, ...] = (
    DemoLora(
        "demo/stripes", "Striped Backdrop", "striped", "pytorch_lora_weights.safetensors", "peft", 4, 0, 10, "stripes"
    ),
    DemoLora("demo/ink-sketch", "Ink Sketch", "ink sketch", "ink-sketch.safetensors", "peft", 8, 2, 11, "outline"),
    DemoLora(
        "demo/pixel-blocks", "Pixel Blocks", "pixel art", "pixel-blocks-xl.safetensors", "kohya", 8, 4, 12, "pixelate"
    ),
    DemoLora(
        "demo/inverted", "Inverted Colours", "inverted", "inverted_v1.safetensors", "kohya", 16, 8, 13, "inverted"
    ),
)

#: The prompts of a LoRA's thumbnail (a 2 x 2 sheet) and of the card's widget examples.
#: Each demo LoRA's thumbnail: a 2x2 sheet of its own output, shipped beside its weights.
THUMBNAIL_FILE = "thumbnail.png"
THUMBNAIL_SCENES = (
    "a red circle on a white background",
    "a blue square on a black background",
    "a yellow triangle on a white background",
    "a green circle on a black background",
)


def _sgm_unet_name(diffusers_name: str) -> str:
    """Map a diffusers UNet module path to SDXL's original (SGM) name, as kohya files spell it.

    ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``input_blocks_4_1_transformer_blocks_0_attn1_to_q``; ``down_blocks.0.resnets.1.time_emb_proj`` ->
    ``input_blocks_2_0_emb_layers_1``. SDXL has two layers per down block (three per up block) and a
    downsampler after each level, hence ``3 * block + layer + 1`` on the way down; in a layer, ``_0`` is
    the ResNet and ``_1`` the transformer. The middle block is ResNet, transformer, ResNet.
    """
    parts = diffusers_name.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        index = 3 * block + layer + 1 if parts[0] == "down_blocks" else 3 * block + layer
        prefix = f"{'input' if parts[0] == 'down_blocks' else 'output'}_blocks_{index}_{0 if kind == 'resnets' else 1}"
    elif parts[0] == "mid_block":
        kind, layer, rest = parts[1], int(parts[2]), parts[3:]
        prefix = f"middle_block_{2 * layer if kind == 'resnets' else 1}"
    else:
        raise ValueError(f"no SGM name for UNet module {diffusers_name!r}")
    if kind == "resnets":
        if rest != ["time_emb_proj"]:
            raise ValueError(f"no SGM name for UNet module {diffusers_name!r}")
        rest = ["emb_layers", "1"]
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


def _factors(peft_state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module path: (A, B)}`` from PEFT's ``get_peft_model_state_dict`` output."""
    out = {}
    for key, a in peft_state.items():
        if key.endswith(".lora_A.weight"):
            name = key.removesuffix(".lora_A.weight")
            out[name] = (
                a.detach().float().contiguous(),
                peft_state[f"{name}.lora_B.weight"].detach().float().contiguous(),
            )
    return out


def save_demo_lora(pipe, spec: DemoLora, unet_state: dict, text_encoder_states: list[dict], folder: Path) -> Path:
    """Write a trained LoRA as ``spec.key_format`` says; returns the file.

    ``unet_state`` and ``text_encoder_states`` are PEFT's ``get_peft_model_state_dict`` of the UNet and of
    the two text encoders (empty list for a UNet-only LoRA), trained with ``lora_alpha = r`` (scale 1).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    unet = _factors(unet_state)
    # Text-encoder paths always carry ``text_model.`` in files, as the original CLIP's did (transformers 5's
    # CLIPTextModel dropped that level; CLIPTextModelWithProjection kept it).
    encoders = [
        {f"text_model.{k.removeprefix('text_model.')}": v for k, v in _factors(st).items()}
        for st in text_encoder_states
    ]
    if spec.key_format == "peft":

        def layers(factors, prefix=""):
            return {f"{prefix}{n}.lora_{x}.weight": t for n, (a, b) in factors.items() for x, t in (("A", a), ("B", b))}

        # diffusers' own writer, so the file is exactly what its training scripts produce.
        pipe.save_lora_weights(
            folder,
            unet_lora_layers=layers(unet),
            text_encoder_lora_layers=layers(encoders[0]) if encoders else None,
            text_encoder_2_lora_layers=layers(encoders[1]) if encoders else None,
            weight_name=spec.weight_name,
        )
        return folder / spec.weight_name
    state: dict[str, torch.Tensor] = {}
    for name, (a, b) in sorted(unet.items()):
        # kohya files get alpha = rank / 2 (scale 0.5, B doubled to match), to exercise diffusers' alpha handling.
        state.update(unet_lora_entries(name, a, b * 2, "kohya", alpha=spec.rank / 2))
    for prefix, factors in zip(("te1", "te2"), encoders):
        for name, (a, b) in sorted(factors.items()):
            key = f"lora_{prefix}_" + name.replace(".", "_")
            state.update(
                {
                    f"{key}.lora_down.weight": a,
                    f"{key}.lora_up.weight": b,
                    f"{key}.alpha": torch.tensor(float(spec.text_encoder_rank)),
                }
            )
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / spec.weight_name),
        metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"},
    )
    return folder / spec.weight_name


def _card(spec: DemoLora, thumbnail: str) -> str:
    import yaml

    front = {
        "license": "apache-2.0",
        "library_name": "diffusers",
        "tags": ["text-to-image", "stable-diffusion-xl", "lora", "diffusers", "template:sd-lora"],
        "base_model": DEMO_BASE_MODEL_ID,
        "instance_prompt": spec.trigger_words,
        "widget": [{"text": f"{spec.trigger_words}, {THUMBNAIL_SCENES[0]}", "output": {"url": thumbnail}}],
    }
    return (
        "---\n"
        + yaml.safe_dump(front, sort_keys=False)
        + "---\n\n"
        + f"# {spec.title}\n\n{spec.description}\n\n"
        + f"A LoRA for the built-in tiny SDXL demo model ({spec.key_format} keys, rank {spec.rank}), trained on "
        + "synthetic scenes by `scripts/train_demo_model.py`.\n"
        + f"Use `{spec.trigger_words}` in the prompt, e.g. `{spec.trigger_words}, {THUMBNAIL_SCENES[1]}`.\n"
    )


def _base_card() -> str:
    return (
        "---\nlicense: apache-2.0\nlibrary_name: diffusers\npipeline_tag: text-to-image\n"
        "tags:\n- text-to-image\n- stable-diffusion-xl\n---\n\n# Tiny SDXL (demo)\n\n"
        "A tiny model with SDXL's architecture, trained on synthetic scenes to draw "
        '"a {colour} {shape} on a {background} background" (red, green, blue, yellow; circle, square, '
        "triangle; white, black) at 64 px, for offline demos and tests.\n"
    )


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo model and its LoRAs are laid out.

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
    """Lay out the shipped demo model and LoRAs in ``root`` unless they are already there; return their paths.

    The layout goes into a temporary sibling folder that is renamed into place at the end, so a crash
    never leaves a half-written model behind, and concurrent builders do not corrupt each other.
    """
    root = Path(root) if root is not None else default_demo_root()
    assets = DemoAssets(root=root, model_dir=root / "model", loras_dir=root / "loras")
    if (root / "COMPLETE").exists():
        return assets
    if not (DEMO_WEIGHTS_DIR / "model" / "model_index.json").exists():
        raise FileNotFoundError(
            f"the demo model's weights are missing from {DEMO_WEIGHTS_DIR}; run scripts/train_demo_model.py"
        )
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
    # Files only: the thumbnails ship beside the weights (``render_thumbnails``, run by the training script), so
    # laying out the demo loads no pipeline and takes a moment even on a busy machine (rendering them here took
    # minutes under load).
    logger.info("laying out the demo model in %s", folder)
    shutil.copytree(DEMO_WEIGHTS_DIR / "model", folder / "model")
    (folder / "model" / "README.md").write_text(_base_card(), encoding="utf-8")
    for spec in DEMO_LORAS:
        shipped = DEMO_WEIGHTS_DIR / "loras" / spec.repo_id
        lora_dir = folder / "loras" / spec.repo_id
        lora_dir.mkdir(parents=True)
        shutil.copyfile(shipped / spec.weight_name, lora_dir / spec.weight_name)
        shutil.copyfile(shipped / THUMBNAIL_FILE, lora_dir / THUMBNAIL_FILE)
        (lora_dir / "README.md").write_text(_card(spec, THUMBNAIL_FILE), encoding="utf-8")


def render_thumbnails(weights: Path = DEMO_WEIGHTS_DIR) -> None:
    """Render each demo LoRA's thumbnail (its own output on ``THUMBNAIL_SCENES``) into ``weights``, beside its file.

    Run by ``scripts/train_demo_model.py`` after training; ``tests/test_demo_model.py`` checks that the shipped
    thumbnails are what the shipped LoRAs draw.
    """
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(weights / "model")
    pipe.set_progress_bar_config(disable=True)
    for spec in DEMO_LORAS:
        lora_dir = weights / "loras" / spec.repo_id
        render_sheet(pipe, THUMBNAIL_SCENES, spec=spec, folder=lora_dir).save(lora_dir / THUMBNAIL_FILE)


def render_sheet(
    pipe,
    captions,
    spec: DemoLora | None = None,
    folder: Path | None = None,
    scale: float = 1.0,
    steps: int = 20,
    columns: int = 2,
    seed: int = 0,
):
    """Draw ``captions`` (with ``spec``'s trigger words and LoRA from ``folder``) into one sheet of 64 px tiles.

    Used for thumbnails and README pictures, through diffusers' own loader: this is not the serving path.
    """
    from PIL import Image

    prompts = [f"{spec.trigger_words}, {c}" if spec else c for c in captions]
    if spec is not None:
        pipe.load_lora_weights(str(folder), weight_name=spec.weight_name, adapter_name="sheet")
        pipe.set_adapters("sheet", scale)
    try:
        images = pipe(
            prompt=prompts,
            num_inference_steps=steps,
            width=DEMO_RESOLUTION,
            height=DEMO_RESOLUTION,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts))],
        ).images
    finally:
        if spec is not None:
            pipe.unload_lora_weights()
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (DEMO_RESOLUTION * columns, DEMO_RESOLUTION * rows))
    for i, image in enumerate(images):
        sheet.paste(image, (DEMO_RESOLUTION * (i % columns), DEMO_RESOLUTION * (i // columns)))
    return sheet
