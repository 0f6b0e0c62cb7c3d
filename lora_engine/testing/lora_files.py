"""LoRA files and Hub repos for tests: real-format files for the tiny UNet, and hostile ones.

Everything here writes real ``.safetensors`` files (or, for the pickle test, a real pickle that would
write a marker file if anyone ever unpickled it) and publishes them as repos on the loopback fake Hub
with cards shaped like real SDXL LoRA cards.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

from .loopback_hub import write_repo

SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SD15 = "runwayml/stable-diffusion-v1-5"


def lora_card(base_model=SDXL, trigger: str | None = "pixel art", tags=None, widget_text=None, **extra) -> dict:
    """A card like ``nerijs/pixel-art-xl``'s front matter."""
    card = {
        "license": "creativeml-openrail-m",
        "tags": tags if tags is not None else ["text-to-image", "stable-diffusion", "lora", "diffusers"],
        "base_model": base_model,
    }
    if trigger is not None:
        card["instance_prompt"] = trigger
        card["widget"] = [{"text": widget_text or f"{trigger}, a cute corgi"}]
    card.update(extra)
    return card


def publish(hub_root: Path, repo_id: str, files: dict[str, bytes], card: dict | None = None, **meta) -> Path:
    return write_repo(hub_root, repo_id, files=files, card=card if card is not None else lora_card(), **meta)


def read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def to_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


class Unpickled:
    """Writes ``marker`` when unpickled: proof that a loader opened a pickle it must never open."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"lora_unet_x.lora_down.weight": Unpickled(marker)})


def loha_file(like: dict) -> bytes:
    """LyCORIS LoHa keys (``hada_w1_a`` ...) for the same layers as a kohya file."""
    import torch

    out = {}
    for key, t in like.items():
        if key.endswith(".lora_down.weight"):
            stem = key.removesuffix(".lora_down.weight")
            up = like[f"{stem}.lora_up.weight"]
            out[f"{stem}.hada_w1_a"] = up.clone()
            out[f"{stem}.hada_w1_b"] = t.clone()
            out[f"{stem}.hada_w2_a"] = up.clone()
            out[f"{stem}.hada_w2_b"] = t.clone()
            out[f"{stem}.alpha"] = torch.tensor(1.0)
    return to_bytes(out)


def lokr_file(like: dict) -> bytes:
    import torch

    out = {}
    for key, t in like.items():
        if key.endswith(".lora_down.weight"):
            stem = key.removesuffix(".lora_down.weight")
            out[f"{stem}.lokr_w1"] = torch.ones(2, 2)
            out[f"{stem}.lokr_w2"] = torch.ones(t.shape[1] // 2, 2)
    return to_bytes(out)


def absurd_header_file(real: bytes) -> bytes:
    """A safetensors file whose header declares a tensor far larger than the file."""
    (n,) = struct.unpack("<Q", real[:8])
    header = json.loads(real[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [1 << 20, 1 << 20]
    header[name]["data_offsets"] = [0, (1 << 40) * 4]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + real[8 + n :]
