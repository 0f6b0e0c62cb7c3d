"""What a caller asks for and what it gets back, and the checks at that boundary. Pure: no torch, no I/O.

What this is for: :class:`GenerationRequest` (what ``/generate``, ``POST /`` and ``Engine.submit`` take),
:class:`GenerationResult` and :class:`Timings` (what they return), and :func:`validate_request`, which
checks every field in a fixed order and returns a *resolved* request (defaults filled in, a random seed
drawn) or raises :class:`~lora_engine.errors.InvalidRequest` naming the rule and the value. Nothing is
clamped or fixed silently (diffusers' "do not guess user intent").

What it is not for: checking that an adapter is usable (that needs the Hub and the file: ``adapters.fetch``,
``adapters.parse``); only the *syntax* of its id is checked here, by :func:`check_adapter_id`.

Decisions worth knowing:
- An empty prompt is allowed: SDXL then draws unconditionally (what diffusers does with ``prompt=""``).
- A prompt longer than ``max_prompt_chars`` is refused rather than cut; CLIP itself reads 77 tokens.
- Integral floats (``512.0``) are accepted for integer fields, because JSON and Gradio sliders send them.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from .errors import InvalidAdapterId, InvalidRequest

if TYPE_CHECKING:
    from .config import EngineConfig

__all__ = [
    "BASE_ADAPTER",
    "GenerationRequest",
    "GenerationResult",
    "RequestLimits",
    "Timings",
    "check_adapter_id",
    "validate_request",
]

#: The adapter id of "no LoRA": the base model takes the same path as any adapter.
BASE_ADAPTER = ""
MAX_SEED = 2**32 - 1
LORA_SCALE_RANGE = (-4.0, 4.0)
GUIDANCE_RANGE = (0.0, 30.0)

# The Hub's repo-name rule: letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' or '..';
# at most 96 characters per part. Anything else (paths, URLs, '..') never reaches huggingface_hub.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")


def check_adapter_id(adapter_id: str) -> str:
    """Return ``adapter_id`` if it is ``""`` (the base model) or a plain ``owner/name`` repo id.

    Raises:
        InvalidAdapterId: paths, ``..``, URLs, empty parts, bad characters.
    """
    if not isinstance(adapter_id, str):
        raise InvalidAdapterId(str(adapter_id), f"the LoRA id must be a string, not {type(adapter_id).__name__}")
    if adapter_id == BASE_ADAPTER:
        return adapter_id
    if "://" in adapter_id or adapter_id.startswith(("/", "~", ".")) or "\\" in adapter_id:
        raise InvalidAdapterId(adapter_id, "must be a Hub repo id 'owner/name', not a path or URL")
    if ".." in adapter_id or "--" in adapter_id or not _REPO_ID.match(adapter_id):
        raise InvalidAdapterId(
            adapter_id,
            "must be a Hub repo id 'owner/name' (letters, digits, '-', '_', '.'; no '..' or '--'; "
            "at most 96 characters per part)",
        )
    return adapter_id


@dataclass(frozen=True)
class RequestLimits:
    """The limits and defaults :func:`validate_request` applies: their one definition.

    ``EngineConfig`` has a field of the same name and default for each (None there: what fits the model), and
    :meth:`for_model` builds the limits from it by name; so a new limit is a field here, the same field in
    ``EngineConfig``, and its use in :func:`validate_request`. The defaults here fit SDXL.

    Args:
        min_side (`int`), max_side (`int`): image side bounds, both multiples of 8.
        max_steps (`int`): most denoising steps.
        max_prompt_chars (`int`): longest prompt and negative prompt, in characters.
        default_steps (`int`), default_side (`int`), default_guidance (`float`): used for fields left None.
    """

    min_side: int = 64
    max_side: int = 2048
    max_steps: int = 100
    max_prompt_chars: int = 4000
    default_steps: int = 25
    default_side: int = 1024
    default_guidance: float = 5.0

    @classmethod
    def for_model(cls, config: EngineConfig, *, is_demo: bool) -> RequestLimits:
        """The limits ``config`` sets, with what fits the model where it leaves a field None.

        Args:
            config (`EngineConfig`): has every field of this class, by name.
            is_demo (`bool`): the built-in demo model (12 steps at 64 px fit it), else SDXL (25 at 1024 px).

        Example:
            >>> RequestLimits.for_model(EngineConfig(max_steps=50), is_demo=True).default_side
            64
        """
        fitting = replace(cls(), **_DEMO_DEFAULTS) if is_demo else cls()
        values = {}
        for f in fields(cls):
            value = getattr(config, f.name)
            values[f.name] = getattr(fitting, f.name) if value is None else value
        return cls(**values)


#: What the built-in demo model draws well (trained on 64 px scenes; 12 steps suffice); SDXL's are the defaults.
_DEMO_DEFAULTS = {"default_steps": 12, "default_side": 64}


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate.

    Args:
        prompt (`str`): the text prompt (may be empty: unconditional).
        negative_prompt (`str`, *optional*): what to steer away from.
        lora (`str`, *optional*): ``""`` for the base model, or a Hub repo id ``owner/name`` (or a local
            catalogue id of the same form).
        lora_scale (`float`, *optional*): the LoRA's weight, in [-4, 4]; 0 gives exactly the base model.
        num_inference_steps (`int`, *optional*): 1..max_steps; None: the model's default.
        guidance_scale (`float`, *optional*): classifier-free guidance, in [0, 30]; None: the default.
        width (`int`, *optional*), height (`int`, *optional*): multiples of 8 in [min_side, max_side].
        seed (`int`, *optional*): -1 for random, else 0..2**32-1.
    """

    prompt: str
    negative_prompt: str = ""
    lora: str = BASE_ADAPTER
    lora_scale: float = 1.0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int = -1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timings:
    """Where the time of one request went, in seconds.

    Args:
        queue_s (`float`): waiting in the queue.
        fetch_s (`float`): resolving, downloading and parsing the adapter (0 on a RAM-cache hit).
        swap_s (`float`): writing the adapter into the weights (0 when it was already there).
        inference_s (`float`): the diffusion itself, VAE decode included.
    """

    queue_s: float = 0.0
    fetch_s: float = 0.0
    swap_s: float = 0.0
    inference_s: float = 0.0

    @property
    def adapter_s(self) -> float:
        """Fetch plus swap: everything the adapter cost this request."""
        return self.fetch_s + self.swap_s

    def to_dict(self) -> dict[str, float]:
        out = {k: round(v, 6) for k, v in asdict(self).items()}
        out["adapter_s"] = round(self.adapter_s, 6)
        return out


@dataclass(frozen=True)
class GenerationResult:
    """One generated image and how it was made.

    Args:
        image (`PIL.Image.Image`): the image.
        seed (`int`): the seed used (drawn at random when the request said -1).
        lora (`str`): the adapter id, ``""`` for the base model.
        timings (`Timings`): where the time went.
        request (`GenerationRequest`): the resolved request (defaults filled in).
        adapter_revision (`str`, *optional*): the Hub commit the adapter came from, or None.
        cache_tier (`str`, *optional*): where the adapter was found: ``"active"``, ``"device"``, ``"ram"``,
            ``"disk"``, ``"hub"`` or ``"local"``; None for the base model.
        weights_digest (`str`, *optional*): the digest of the base weights, checked when the weights last
            returned to the base model; equal to the engine's startup digest unless something is badly wrong.
    """

    image: Any
    seed: int
    lora: str
    timings: Timings
    request: GenerationRequest
    adapter_revision: str | None = None
    cache_tier: str | None = None
    weights_digest: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def details_dict(self) -> dict[str, Any]:
        """The JSON-able details the app returns next to the image."""
        req = self.request
        return {
            "seed": self.seed,
            "lora": self.lora,
            "lora_scale": req.lora_scale,
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "num_inference_steps": req.num_inference_steps,
            "guidance_scale": req.guidance_scale,
            "width": req.width,
            "height": req.height,
            "timings": self.timings.to_dict(),
            "adapter_revision": self.adapter_revision,
            "cache_tier": self.cache_tier,
            "base_digest": self.weights_digest,
            **self.details,
        }


def _as_int(name: str, value: Any) -> int:
    # bool is an int subclass; True as a width is a bug in the caller, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"`{name}` must be an integer but is {value!r}", field=name)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidRequest(f"`{name}` must be an integer but is {value!r}", field=name)
        value = int(value)
    return value


def _as_float(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"`{name}` must be a number but is {value!r}", field=name)
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(f"`{name}` must be in [{lo:g}, {hi:g}] but is {value!r}", field=name)
    return value


def _as_text(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be a string but is {type(value).__name__} {value!r}", field=name)
    if len(value) > max_chars:
        raise InvalidRequest(f"`{name}` must be at most {max_chars} characters but has {len(value)}", field=name)
    if "\x00" in value:
        raise InvalidRequest(f"`{name}` must not contain NUL characters", field=name)
    return value


def validate_request(
    request: GenerationRequest, limits: RequestLimits, rng: random.Random | None = None
) -> GenerationRequest:
    """Check every field in a fixed order; return the request with defaults filled and the seed drawn.

    Args:
        request (`GenerationRequest`): as the caller sent it.
        limits (`RequestLimits`): bounds and defaults.
        rng (`random.Random`, *optional*): where random seeds come from (tests pass a seeded one).

    Raises:
        InvalidRequest: the first rule broken, naming the field, the rule and the value.
        InvalidAdapterId: ``lora`` is not ``""`` or ``owner/name``.
    """
    prompt = _as_text("prompt", request.prompt, limits.max_prompt_chars)
    negative = _as_text("negative_prompt", request.negative_prompt, limits.max_prompt_chars)
    lora = check_adapter_id(request.lora)
    scale = _as_float("lora_scale", request.lora_scale, *LORA_SCALE_RANGE)

    steps = limits.default_steps if request.num_inference_steps is None else request.num_inference_steps
    steps = _as_int("num_inference_steps", steps)
    if not 1 <= steps <= limits.max_steps:
        raise InvalidRequest(
            f"`num_inference_steps` must be in [1, {limits.max_steps}] but is {steps}", field="num_inference_steps"
        )
    guidance = limits.default_guidance if request.guidance_scale is None else request.guidance_scale
    guidance = _as_float("guidance_scale", guidance, *GUIDANCE_RANGE)

    sides = {}
    for name in ("width", "height"):
        value = getattr(request, name)
        value = _as_int(name, limits.default_side if value is None else value)
        if value % 8 or not limits.min_side <= value <= limits.max_side:
            raise InvalidRequest(
                f"`{name}` must be a multiple of 8 in [{limits.min_side}, {limits.max_side}] but is {value}",
                field=name,
            )
        sides[name] = value

    seed = _as_int("seed", request.seed)
    if seed == -1:
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    elif not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"`seed` must be -1 (random) or in [0, {MAX_SEED}] but is {seed}", field="seed")

    return replace(
        request,
        prompt=prompt,
        negative_prompt=negative,
        lora=lora,
        lora_scale=scale,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=sides["width"],
        height=sides["height"],
        seed=seed,
    )
