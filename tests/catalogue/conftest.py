"""Fixtures for the catalogue tests: a loopback Hub holding SDXL LoRA repos modelled on real ones.

The repos take their ids, weight names, trigger words and titles from the shared
``catalogue_facts.json`` (read at test time, never copied here), and their cards from the model-card
examples in the same file. Weights are small dummy bytes: nothing here loads them.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import yaml

from lora_engine.testing.loopback_hub import FakeHub, write_repo

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
SD15 = "runwayml/stable-diffusion-v1-5"
DEMO_BASE = "sdxl-lora-server/tiny-sdxl"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def facts_path() -> Path:
    near = Path(__file__).resolve().parents[2] / "shared" / "catalogue_facts.json"
    for candidate in (
        near,
        Path(__file__).resolve().parents[3] / "shared" / "catalogue_facts.json",
        Path("/work/shared/catalogue_facts.json"),
    ):
        if candidate.exists():
            return candidate
    return near


def load_facts() -> dict:
    path = facts_path()
    if not path.exists():
        pytest.skip(f"catalogue facts not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _example(facts: dict, prefix: str) -> dict:
    (text,) = [v for k, v in facts["model_card_examples"].items() if k.startswith(prefix)]
    return text


def _date(day: int) -> str:
    return f"2023-{1 + day // 28:02d}-{1 + day % 28:02d}T12:00:00.000Z"


def build_world(root: Path) -> dict[str, dict]:
    """Write the Hub repos under ``root``; return what each listed repo's entry should look like."""
    facts = load_facts()
    pixel_card = yaml.safe_load(_example(facts, "nerijs/pixel-art-xl"))
    lcm_card = yaml.safe_load(_example(facts, "latent-consistency/lcm-lora-sdxl"))
    gallery_card = yaml.safe_load(_example(facts, "Hub gallery-style card"))
    dreambooth_text = _example(facts, "diffusers train_dreambooth_lora_sdxl")

    def dreambooth_card(instance_prompt: str, base: str = SDXL) -> dict:
        text = (
            dreambooth_text.replace("<validation_prompt>", f"{instance_prompt}, a photo")
            .replace("<base_model>", base)
            .replace("<instance_prompt>", instance_prompt)
        )
        return yaml.safe_load(text)

    expected: dict[str, dict] = {}
    special = {"latent-consistency/lcm-lora-sdxl", "minimaxir/sdxl-ugly-sonic-lora", "fofr/sdxl-2004"}
    regular = [
        e
        for e in facts["entries"]
        if e.get("diffusers_compatible")
        and (e.get("weight_name") or "").endswith(".safetensors")
        and e.get("trigger_words")
        and e.get("title")
        and e["repo_id"] not in special
    ][:12]
    assert len(regular) == 12
    for i, e in enumerate(regular):
        repo_id, weight, trigger = e["repo_id"], e["weight_name"], e["trigger_words"]
        files: dict[str, bytes | str] = {weight: b"LORA" + repo_id.encode()}
        image = e.get("image")
        shape = i % 3
        if shape == 0:  # like nerijs/pixel-art-xl: instance_prompt + widget text, no output image
            card = dict(pixel_card, instance_prompt=trigger, widget=[{"text": f"{trigger}, a cute corgi"}])
        elif shape == 1:  # diffusers' dreambooth template: widget output image_0.png
            card = dreambooth_card(trigger)
            files["image_0.png"] = PNG
        else:  # pixel-art shape, image given as an absolute Hub URL in the widget when the facts have one
            card = dict(pixel_card, instance_prompt=trigger, widget=[{"text": trigger}])
            if image and image.startswith("https://huggingface.co/"):
                card["widget"][0]["output"] = {"url": image}
                files[image.rsplit("/", 1)[1]] = PNG
        if shape != 1 and image and not image.startswith("http"):
            files[image] = PNG
        card["title"] = e["title"]
        write_repo(
            root,
            repo_id,
            files,
            card=card,
            card_body=f"# {e['title']}\n",
            downloads=1000 + 37 * i,
            likes=(7 * i) % 11,
            last_modified=_date(10 + 5 * i),
        )
        thumb = None
        if shape == 1:
            thumb = "image_0.png"
        elif shape == 2 and image and image.startswith("https://huggingface.co/"):
            thumb = image
        elif image and not image.startswith("http"):
            thumb = image
        expected[repo_id] = dict(weight_name=weight, trigger_words=trigger, title=e["title"], thumb=thumb, shape=shape)

    # latent-consistency/lcm-lora-sdxl: its real card has no instance_prompt and no widget.
    write_repo(
        root,
        "latent-consistency/lcm-lora-sdxl",
        {"pytorch_lora_weights.safetensors": b"LCM"},
        card=lcm_card,
        downloads=50211,
        likes=702,
        last_modified=_date(200),
    )
    expected["latent-consistency/lcm-lora-sdxl"] = dict(
        weight_name="pytorch_lora_weights.safetensors", trigger_words=None, title="LCM LoRA SDXL", thumb=None
    )

    # A .bin-only LoRA (a real one): listed, not servable.
    sonic = next(e for e in facts["entries"] if e["repo_id"] == "minimaxir/sdxl-ugly-sonic-lora")
    write_repo(
        root,
        sonic["repo_id"],
        {sonic["weight_name"]: b"PICKLE", "images/uglysonic.webp": PNG},
        card=dreambooth_card(sonic["trigger_words"]),
        downloads=1480,
        likes=3,
        last_modified=_date(90),
    )
    expected[sonic["repo_id"]] = dict(
        weight_name=None,
        trigger_words=sonic["trigger_words"],
        title="SDXL Ugly Sonic LoRA",
        thumb="images/uglysonic.webp",
        reason="only pickle weights",
    )

    # A pivotal-tuning LoRA (a real one): needs embeddings.pti, listed, not servable.
    piv = next(e for e in facts["entries"] if e["repo_id"] == "fofr/sdxl-2004")
    write_repo(
        root,
        piv["repo_id"],
        {piv["weight_name"]: b"LORA", piv["text_embedding_weights"]: b"EMB"},
        card=dict(pixel_card, instance_prompt=piv["trigger_words"], widget=[{"text": piv["trigger_words"]}]),
        downloads=5,
        likes=3,
        last_modified=_date(91),
    )
    expected[piv["repo_id"]] = dict(
        weight_name=None, trigger_words=piv["trigger_words"], title="SDXL 2004", thumb=None, reason="pivotal-tuning"
    )

    # Gallery-style card with two LoRA files; the card picks v2 through a kohya <lora:...> reference.
    gallery_sdxl = dict(gallery_card, base_model=SDXL)
    write_repo(
        root,
        "gallery/dalle-3-xl-lora",
        {
            "dalle-3-xl-lora-v1.safetensors": b"V1",
            "dalle-3-xl-lora-v2.safetensors": b"V2",
            "images/v2-1.png": PNG,
        },
        card=gallery_sdxl,
        downloads=4000,
        likes=60,
        last_modified=_date(150),
    )
    expected["gallery/dalle-3-xl-lora"] = dict(
        weight_name="dalle-3-xl-lora-v2.safetensors",
        trigger_words=gallery_card["instance_prompt"],
        title="Dalle 3 XL LoRA",
        thumb="images/v2-1.png",
    )

    # Dreambooth output with a training checkpoint: the top-level pytorch_lora_weights.safetensors wins.
    write_repo(
        root,
        "trainer/corgi-dreambooth",
        {
            "pytorch_lora_weights.safetensors": b"FINAL",
            "checkpoint-500/pytorch_lora_weights.safetensors": b"CKPT",
            "image_0.png": PNG,
        },
        card=dreambooth_card("a photo of sks dog"),
        downloads=12,
        likes=0,
        last_modified=_date(160),
    )
    expected["trainer/corgi-dreambooth"] = dict(
        weight_name="pytorch_lora_weights.safetensors",
        trigger_words="a photo of sks dog",
        title="Corgi Dreambooth",
        thumb="image_0.png",
    )

    # Two files, nothing to choose by: listed, not servable.
    write_repo(
        root,
        "ambiguous/two-loras",
        {"style-a.safetensors": b"A", "style-b.safetensors": b"B"},
        card={"tags": ["lora", "text-to-image"], "base_model": SDXL},
        downloads=2,
        likes=0,
        last_modified=_date(161),
    )
    expected["ambiguous/two-loras"] = dict(
        weight_name=None, trigger_words=None, title="Two Loras", thumb=None, reason="2 .safetensors files"
    )

    # list-valued base_model containing SDXL (and the refiner).
    write_repo(
        root,
        "multi/dual-base-lora",
        {"dual.safetensors": b"DUAL"},
        card={
            "license": "mit",
            "tags": ["lora", "text-to-image"],
            "base_model": [SDXL, REFINER],
            "instance_prompt": "dual style",
        },
        downloads=12,
        likes=900,
        last_modified=_date(300),
    )
    expected["multi/dual-base-lora"] = dict(
        weight_name="dual.safetensors", trigger_words="dual style", title="Dual Base LoRA", thumb=None
    )

    # Gated (a real repo id from the facts), listed with gated set.
    gated = next(
        e
        for e in facts["entries"]
        if e.get("diffusers_compatible")
        and e["repo_id"] not in expected
        and e.get("trigger_words")
        and (e.get("weight_name") or "").endswith(".safetensors")
    )
    write_repo(
        root,
        gated["repo_id"],
        {gated["weight_name"]: b"GATED", "preview.png": PNG},
        card=dict(pixel_card, instance_prompt=gated["trigger_words"], widget=[{"text": gated["trigger_words"]}]),
        downloads=345,
        likes=3,
        last_modified=_date(101),
        gated="auto",
    )
    expected[gated["repo_id"]] = dict(
        weight_name=gated["weight_name"],
        trigger_words=gated["trigger_words"],
        title=None,
        thumb="preview.png",
        gated="auto",
    )

    # A card with only tags and base_model: no licence, trigger or widget.
    write_repo(
        root,
        "bare/minimal_card",
        {"lora.safetensors": b"MIN"},
        card={"tags": ["lora"], "base_model": SDXL},
        downloads=1,
        likes=1,
        last_modified=_date(5),
    )
    expected["bare/minimal_card"] = dict(
        weight_name="lora.safetensors", trigger_words=None, title="Minimal Card", thumb=None
    )

    # Tagged lora + base_model:SDXL but not as an adapter: found by the second query only.
    write_repo(
        root,
        "merger/sdxl-merged-lora",
        {"merged.safetensors": b"MERGE"},
        card={"tags": ["lora"], "base_model": SDXL, "base_model_relation": "merge", "instance_prompt": "merged look"},
        downloads=77,
        likes=7,
        last_modified=_date(40),
    )
    expected["merger/sdxl-merged-lora"] = dict(
        weight_name="merged.safetensors",
        trigger_words="merged look",
        title="SDXL Merged LoRA",
        thumb=None,
        second_query=True,
    )

    # Never in the catalogue: another base model (the gallery card as it really is), SD 1.5, a full fine-tune.
    write_repo(
        root,
        "ehristoforu/dalle-3-xl-v2",
        {"dalle-3-xl-lora-v2.safetensors": b"FLUENT"},
        card=gallery_card,
        downloads=99999,
        likes=999,
    )
    write_repo(
        root,
        "sd15fan/sd15-lora",
        {"lora.safetensors": b"sd15"},
        card={"license": "mit", "tags": ["lora", "text-to-image"], "base_model": SD15, "instance_prompt": "x"},
        downloads=88888,
    )
    write_repo(
        root,
        "finetune/sdxl-finetune",
        {"unet/diffusion_pytorch_model.safetensors": b"unet"},
        card={"license": "mit", "tags": ["text-to-image"], "base_model": SDXL},
        downloads=77777,
    )
    return expected


NOT_LISTED = ("ehristoforu/dalle-3-xl-v2", "sd15fan/sd15-lora", "finetune/sdxl-finetune")


@pytest.fixture(scope="session")
def hub_world(tmp_path_factory):
    """A started FakeHub with the repos of ``build_world``; knobs reset by the ``hub`` fixture."""
    root = tmp_path_factory.mktemp("catalogue-hub")
    expected = build_world(root)
    server = FakeHub(root)
    server.start()
    yield types.SimpleNamespace(root=root, hub=server, url=server.url, expected=expected)
    server.stop()


@pytest.fixture
def hub(hub_world):
    """The world with clean knobs and request log before and after the test."""
    hub_world.hub.reset()
    yield hub_world
    hub_world.hub.reset()


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    # Nothing should touch the real HF cache; every download in these tests passes cache_dir anyway.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.pop("HF_TOKEN", None)


def make_source(url: str, **kw):
    """A HubSource on ``url`` with no token and short limits, through a real ``HfApi``."""
    from huggingface_hub import HfApi

    from catalogue import HubSource

    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("deadline_s", 10.0)
    return HubSource(HfApi(endpoint=url, token=False), **kw)


def write_demo_lora(
    root: Path,
    repo_id: str,
    title: str,
    trigger: str,
    weight: str,
    base_model: str = DEMO_BASE,
    thumbnail: str = "thumbnail.png",
) -> Path:
    """One adapter folder laid out like ``lora_engine.demo.model`` writes them (same card keys)."""
    folder = root / repo_id
    folder.mkdir(parents=True)
    front = {
        "license": "apache-2.0",
        "library_name": "diffusers",
        "tags": ["text-to-image", "stable-diffusion-xl", "lora", "diffusers", "template:sd-lora"],
        "base_model": base_model,
        "instance_prompt": trigger,
        "widget": [{"text": f"{trigger}, a red circle", "output": {"url": thumbnail}}],
    }
    (folder / "README.md").write_text(
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + f"# {title}\n\nA demo LoRA.\n", encoding="utf-8"
    )
    (folder / weight).write_bytes(b"SAFETENSORS" + repo_id.encode())
    (folder / "thumbnail.png").write_bytes(PNG)
    return folder


@pytest.fixture
def demo_loras(tmp_path) -> Path:
    """A small demo-style local adapters folder."""
    root = tmp_path / "loras"
    write_demo_lora(root, "demo/neon-glow", "Neon Glow", "neon glow", "pytorch_lora_weights.safetensors")
    write_demo_lora(root, "demo/ink-sketch", "Ink Sketch", "ink sketch", "ink-sketch.safetensors")
    write_demo_lora(root, "demo/pixel-blocks", "Pixel Blocks", "pixel art", "pixel-blocks-xl.safetensors")
    return root
