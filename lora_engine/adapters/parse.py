"""Open, check and parse a LoRA file into per-layer factors ``(A, B, scaling)``, without touching the pipeline.

What this is for: turning a downloaded ``.safetensors`` file into a :class:`ParsedAdapter` that the swap can
apply with one ``addmm`` per layer, and refusing anything unsafe or unfit before it gets near the pipeline.
Every step here reads only the file and a :class:`LayerIndex` (plain data captured from the pipeline once
at start), so it runs on any thread: prefetch parses the next adapter while the worker generates.

What it is not for: downloading (``adapters.fetch``), choosing what to keep in memory (``adapter_cache``), or
writing weights (``pipeline.swap``). Key formats are not converted by hand: diffusers' own
``lora_state_dict`` maps kohya/SGM and old attention-processor keys, and its ``_create_lora_config`` (the
same call ``load_lora_weights`` makes) decides ranks and alphas, so the per-layer scaling here is the one
diffusers would fuse. PEFT's ``get_pattern_key`` resolves per-layer rank/alpha patterns, as PEFT does.

Checks, in order (each a typed error from ``errors.py`` naming the adapter and the rule):
1. the file is ``.safetensors`` (pickles are never opened) and under the size cap;
2. the safetensors header is well formed and every tensor's extent lies inside the file;
3. the keys are a LoRA in a format we apply (LyCORIS LoHa/LoKr/Tucker, DoRA and full diffs are refused);
4. no NaN/inf values;
5. every target layer exists in this pipeline and the factor shapes fit it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CorruptAdapter, IncompatibleAdapter, UnsafeAdapterFile, UnsupportedAdapterFormat

__all__ = ["LayerIndex", "LayerInfo", "LoraLayer", "ParsedAdapter", "load_adapter_file", "parse_lora_state_dict"]

#: Components of an SDXL pipeline that LoRA files address, with their key prefix in diffusers' format.
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

_SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
# A real header is a few hundred KB at most; anything huge is hostile or broken.
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_TEXT_TARGET_SUFFIXES = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")

# Key fragments of formats that parse as "LoRA-like" but are not low-rank B@A products we can add.
_UNSUPPORTED_MARKERS = {
    "hada_w1": "LyCORIS LoHa (Hadamard product)",
    "lokr_w1": "LyCORIS LoKr (Kronecker product)",
    "lora_mid": "LyCORIS LoCon with Tucker decomposition",
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "lora_magnitude_vector": "DoRA (weight-decomposed LoRA)",
    ".diff": "full weight differences",
}


@dataclass(frozen=True)
class LayerInfo:
    """What the swap needs to know about one layer of the pipeline.

    Args:
        kind (`str`): ``"linear"`` or ``"conv"``.
        weight_shape (`tuple[int, ...]`): the weight's shape.
    """

    kind: str
    weight_shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerIndex:
    """Plain-data description of the pipeline's adaptable layers, captured once so parsing needs no pipeline.

    Args:
        layers (`dict[tuple[str, str], LayerInfo]`): ``(component, module path)`` -> info, for every
            ``nn.Linear``/``nn.Conv2d`` of the UNet and both text encoders, paths as ``named_modules`` gives.
        unet_config (`dict`): the UNet's config, which diffusers needs to map SGM block names.
        text_model_prefix (`dict[str, bool]`): whether each text encoder nests its layers under
            ``text_model`` (in transformers 5 ``CLIPTextModelWithProjection`` does, ``CLIPTextModel`` not).
    """

    layers: dict[tuple[str, str], LayerInfo]
    unet_config: dict
    text_model_prefix: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_pipeline(cls, pipeline) -> LayerIndex:
        layers: dict[tuple[str, str], LayerInfo] = {}
        nested: dict[str, bool] = {}
        for component in COMPONENTS:
            model = getattr(pipeline, component, None)
            if model is None:
                continue
            nested[component] = component != "unet" and hasattr(model, "text_model")
            for name, module in model.named_modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    kind = "linear" if isinstance(module, torch.nn.Linear) else "conv"
                    layers[(component, name)] = LayerInfo(kind, tuple(module.weight.shape))
        # The FrozenDict itself: immutable, and diffusers reads it by attribute (``config.layers_per_block``).
        return cls(layers=layers, unet_config=pipeline.unet.config, text_model_prefix=nested)


@dataclass(frozen=True)
class LoraLayer:
    """One layer's low-rank update: ``W += scale * scaling * (B @ A)``.

    Args:
        component (`str`): ``"unet"``, ``"text_encoder"`` or ``"text_encoder_2"``.
        module (`str`): the layer's key in the :class:`LayerIndex`.
        a (`torch.Tensor`): ``lora_A`` (rank x in, or rank x in x kh x kw for convs).
        b (`torch.Tensor`): ``lora_B`` (out x rank, or out x rank x 1 x 1).
        scaling (`float`): ``alpha / rank`` as PEFT computes it for this layer.
    """

    component: str
    module: str
    a: torch.Tensor
    b: torch.Tensor
    scaling: float


@dataclass(frozen=True)
class ParsedAdapter:
    """A validated adapter, ready to swap in.

    Args:
        adapter_id (`str`): the catalogue/Hub id it came from.
        layers (`tuple[LoraLayer, ...]`): one entry per target layer.
        nbytes (`int`): bytes held by its tensors (what the RAM cache counts).
        key_format (`str`): ``"peft"``, ``"kohya"`` or ``"diffusers-legacy"``, as detected.
    """

    adapter_id: str
    layers: tuple[LoraLayer, ...]
    nbytes: int
    key_format: str

    def to(self, device: torch.device | str, dtype: torch.dtype) -> ParsedAdapter:
        """A copy with every factor on ``device`` in ``dtype`` (the swap computes in the weights' dtype)."""
        layers = tuple(
            LoraLayer(
                lay.component,
                lay.module,
                lay.a.to(device=device, dtype=dtype),
                lay.b.to(device=device, dtype=dtype),
                lay.scaling,
            )
            for lay in self.layers
        )
        nbytes = sum(lay.a.numel() * lay.a.element_size() + lay.b.numel() * lay.b.element_size() for lay in layers)
        return ParsedAdapter(self.adapter_id, layers, nbytes, self.key_format)


def check_safetensors_header(adapter_id: str, path: Path) -> dict:
    """Validate a safetensors header against the file's real size before any tensor is read.

    Returns:
        `dict`: the header (tensor name -> {dtype, shape, data_offsets}, plus ``__metadata__``).

    Raises:
        CorruptAdapter: truncated file, malformed header, or extents that do not fit.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptAdapter(adapter_id, f"{path.name} is {size} bytes, too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CorruptAdapter(
                adapter_id, f"{path.name} declares a {header_len}-byte header but the file is {size} bytes"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptAdapter(adapter_id, f"{path.name} has a malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CorruptAdapter(adapter_id, f"{path.name} has a safetensors header that is not a JSON object")
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            itemsize = _SAFETENSORS_DTYPES[dtype]
            expected = math.prod(int(d) for d in shape) * itemsize
        except (KeyError, TypeError, ValueError):
            raise CorruptAdapter(adapter_id, f"tensor {name!r} has a malformed header entry {info!r}") from None
        if not (0 <= start <= end <= data_len) or end - start != expected:
            raise CorruptAdapter(
                adapter_id,
                f"tensor {name!r} declares shape {shape} ({expected} bytes) at {start}..{end}, "
                f"but the file holds {data_len} data bytes",
            )
    return header


def load_adapter_file(adapter_id: str, path: Path, *, max_bytes: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a LoRA ``.safetensors`` file after the file-level checks (1, 2 and 4 of the module docstring).

    Returns:
        `tuple`: the tensors and the file's ``__metadata__`` (empty dict if none).
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    if path.suffix.lower() != ".safetensors":  # any case, as repo_rules chooses it ("lora.SAFETENSORS")
        raise UnsafeAdapterFile(
            adapter_id, f"only .safetensors weight files are loaded, not {path.name!r} (pickles are never opened)"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeAdapterFile(adapter_id, f"{path.name} is {size} bytes, over the {max_bytes}-byte size cap")
    check_safetensors_header(adapter_id, path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CorruptAdapter(adapter_id, f"{path.name} could not be read as safetensors ({e})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptAdapter(adapter_id, f"tensor {name!r} holds NaN or inf values")
    return tensors, metadata


def _detect_format(adapter_id: str, keys: list[str]) -> str:
    for marker, what in _UNSUPPORTED_MARKERS.items():
        if any(marker in k for k in keys):
            raise UnsupportedAdapterFormat(adapter_id, f"{what} is not supported (found keys like {marker!r})")
    if not keys or not all("lora" in k or k.endswith(".alpha") for k in keys):
        sample = next((k for k in keys if "lora" not in k), "<no keys>")
        raise IncompatibleAdapter(adapter_id, f"not a LoRA state dict (key {sample!r} is not a LoRA key)")
    if all(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(".processor." in k or "_lora.down" in k for k in keys):
        return "diffusers-legacy"
    return "peft"


def parse_lora_state_dict(
    adapter_id: str, tensors: dict[str, torch.Tensor], metadata: dict, index: LayerIndex
) -> ParsedAdapter:
    """Map a LoRA state dict onto the pipeline's layers with diffusers' converters (checks 3 and 5).

    Args:
        adapter_id (`str`): for error messages and the result.
        tensors (`dict`): the file's tensors, any key format diffusers reads for SDXL.
        metadata (`dict`): the file's ``__metadata__``; diffusers' ``lora_adapter_metadata`` is honoured.
        index (`LayerIndex`): the pipeline's layers.

    Raises:
        UnsupportedAdapterFormat, IncompatibleAdapter
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils.peft_utils import _create_lora_config
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from peft.utils.other import get_pattern_key

    key_format = _detect_format(adapter_id, list(tensors))
    raw_meta = metadata.get("lora_adapter_metadata")
    lora_meta = json.loads(raw_meta) if raw_meta else None
    try:
        state_dict, network_alphas = StableDiffusionXLPipeline.lora_state_dict(
            dict(tensors), unet_config=index.unet_config
        )
    except (ValueError, KeyError, IndexError, RuntimeError) as e:
        raise IncompatibleAdapter(adapter_id, f"diffusers could not map its keys onto SDXL ({e})") from None

    layers: list[LoraLayer] = []
    for component in COMPONENTS:
        prefix = component
        sd = {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}
        if not sd:
            continue
        meta = None
        if lora_meta:
            meta = {k.removeprefix(f"{prefix}."): v for k, v in lora_meta.items() if k.startswith(f"{prefix}.")}
        alphas = None
        if network_alphas:
            alphas = {
                k.removeprefix(f"{prefix}."): v
                for k, v in network_alphas.items()
                if k.startswith(f"{prefix}.") and k.split(".")[0] == prefix
            }
        if component == "unet":
            if "lora_A" not in next(iter(sd)):
                sd = convert_unet_state_dict_to_peft(sd)
            ranks = {f"^{k}": v.shape[1] for k, v in sd.items() if "lora_B" in k and v.ndim > 1}
        else:
            sd = convert_state_dict_to_peft(convert_state_dict_to_diffusers(sd))
            if not index.text_model_prefix.get(component):
                # diffusers does the same: files spell CLIP paths with ``text_model.``, the module may not.
                sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
            ranks = {
                f"{name}.lora_B.weight": sd[f"{name}.lora_B.weight"].shape[1]
                for (comp, name) in index.layers
                if comp == component and name.endswith(_TEXT_TARGET_SUFFIXES) and f"{name}.lora_B.weight" in sd
            }
        targets = sorted({k.split(".lora_")[0] for k in sd if ".lora_A." in k or ".lora_B." in k})
        missing = [t for t in targets if (component, t) not in index.layers]
        if missing or not ranks:
            shown = missing[0] if missing else targets[0]
            raise IncompatibleAdapter(
                adapter_id,
                f"it targets {component} layer {shown!r}, which this base model does not have "
                f"({len(missing) or len(targets)} such layers; made for another architecture?)",
            )
        config = _create_lora_config(sd, alphas, meta, ranks, is_unet=component == "unet")
        for target in targets:
            a = sd.get(f"{target}.lora_A.weight")
            b = sd.get(f"{target}.lora_B.weight")
            if a is None or b is None:
                raise IncompatibleAdapter(adapter_id, f"{component} layer {target!r} lacks lora_A or lora_B")
            r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), target), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), target), config.lora_alpha)
            scaling = alpha / math.sqrt(r) if config.use_rslora else alpha / r
            _check_shapes(adapter_id, component, target, a, b, index.layers[(component, target)])
            layers.append(LoraLayer(component, target, a, b, float(scaling)))
    if not layers:
        raise IncompatibleAdapter(adapter_id, "it has no UNet or text-encoder LoRA layers")
    nbytes = sum(x.a.numel() * x.a.element_size() + x.b.numel() * x.b.element_size() for x in layers)
    return ParsedAdapter(adapter_id, tuple(layers), nbytes, key_format)


def _check_shapes(adapter_id: str, component: str, target: str, a, b, info: LayerInfo) -> None:
    shape = info.weight_shape
    rank = a.shape[0]
    if info.kind == "linear":
        ok = a.ndim == 2 and b.ndim == 2 and b.shape == (shape[0], rank) and a.shape[1] == shape[1]
    else:
        ok = (
            a.ndim == 4
            and b.ndim == 4
            and b.shape[:2] == (shape[0], rank)
            and tuple(b.shape[2:]) == (1, 1)
            and tuple(a.shape[1:]) == tuple(shape[1:])
        )
    if not ok:
        raise IncompatibleAdapter(
            adapter_id,
            f"{component} layer {target!r} has weight {list(shape)} but the LoRA factors are "
            f"A {list(a.shape)}, B {list(b.shape)} (made for another architecture?)",
        )
