"""The engine's configuration: one frozen dataclass, read once from the environment or the command line.

What this is for: every knob of the engine, with its default and a one-line reason, in one place, declared
with :func:`~lora_engine.settings.setting` (its variable, flag, help and rules) and read by the
:class:`~lora_engine.settings.Settings` machinery every config class shares: a bad value is a
:class:`~lora_engine.errors.ConfigError` naming the variable and the value, at start. The app passes the
result around explicitly; nothing reads the environment later.

The request limits (``min_side`` ... ``default_guidance``) are :class:`~lora_engine.request.RequestLimits`'
fields under the same names, with its defaults; :meth:`RequestLimits.for_model` builds the limits from them.

What it is not for: huggingface_hub's own variables (``HF_ENDPOINT``, ``HF_HOME``, ``HF_TOKEN``,
``HF_HUB_OFFLINE``), which huggingface_hub reads itself as it defines them, nor the app's own settings (the
server's address, the catalogue: ``AppConfig`` in app.py). Importing this module imports no torch:
``device="auto"`` and ``dtype="auto"`` are resolved by the backend when the pipeline is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .errors import ConfigError
from .request import RequestLimits
from .settings import Kind, Settings, setting

__all__ = ["EngineConfig", "SDXL_BASE_MODEL_ID"]

SDXL_BASE_MODEL_ID = "stabilityai/stable-diffusion-xl-base-1.0"

_LIMITS = RequestLimits()


@dataclass(frozen=True)
class EngineConfig(Settings):
    """Everything the engine needs to know; see each field's comment. Build with ``from_env``/``from_args``."""

    settings_title: ClassVar[str] = "engine"

    # The base pipeline: a Hub repo id or a local folder. None: SDXL base on CUDA, else the built-in demo model.
    # The two most used settings keep the short names Spaces users know; the rest are namespaced LORA_ENGINE_*.
    model_id: str | None = setting(
        None,
        env="MODEL_ID",
        help="the base pipeline, a Hub repo id or a local folder; unset: SDXL base on CUDA, else the demo model",
    )
    # The id LoRA cards must name as base_model. None: model_id if it is a Hub id, the demo's id for the demo.
    base_model_id: str | None = setting(
        None,
        env="BASE_MODEL_ID",
        help="the id LoRA cards must name as base_model; unset: the model's if it is a Hub id, the demo's for the demo",
    )
    # Fine-tunes sharing the architecture have their own LoRAs on the Hub, which work on this base too.
    extra_base_models: tuple[str, ...] = setting(
        (), env="LORA_ENGINE_EXTRA_BASE_MODELS", kind=Kind.LIST, help="more accepted base model ids"
    )
    # A device is a torch string; "auto" lets one config serve a GPU box and a laptop alike.
    device: str = setting(
        "auto", env="LORA_ENGINE_DEVICE", help="'auto' (cuda, then mps, then cpu) or any torch device string"
    )
    # "auto": float16 on CUDA/MPS, float32 on CPU (bfloat16 is valid on CPU too but slower on most CPUs).
    dtype: str = setting(
        "auto",
        env="LORA_ENGINE_DTYPE",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="'auto': float16 on CUDA/MPS, float32 on CPU",
    )
    # Where to build/find the demo model. None: ~/.cache/sdxl-lora-server/demo-v<version>.
    demo_dir: str | None = setting(
        None,
        env="LORA_ENGINE_DEMO_DIR",
        shown_default="~/.cache/sdxl-lora-server/demo-v<version>",
        help="where the shipped demo model is laid out once",
    )
    # The huggingface_hub cache for adapters. None: huggingface_hub's default (HF_HOME / HF_HUB_CACHE).
    hub_cache_dir: str | None = setting(
        None, env="LORA_ENGINE_HUB_CACHE_DIR", shown_default="huggingface_hub's", help="the adapter download cache"
    )
    # huggingface_hub sets no timeout by default, and a stuck Hub would hold the worker forever.
    hub_timeout_s: float = setting(
        20.0, env="LORA_ENGINE_HUB_TIMEOUT_S", kind=Kind.SECONDS, at_least=0, help="seconds for each Hub call"
    )
    # Real SDXL LoRAs are 10 MB - 900 MB; a bigger file is refused before download.
    max_adapter_bytes: int = setting(
        1 << 30,
        env="LORA_ENGINE_MAX_ADAPTER_BYTES",
        kind=Kind.BYTES,
        at_least=1,
        help="weight files larger than this are refused before download",
    )
    # Parsed adapters kept in host RAM, by bytes of tensors (LRU). Real rank-32 SDXL LoRAs are ~200 MB.
    ram_cache_bytes: int = setting(
        4 << 30,
        env="LORA_ENGINE_RAM_CACHE_BYTES",
        kind=Kind.BYTES,
        at_least=1,
        help="parsed adapters kept in host RAM (LRU by bytes)",
    )
    # Adapters kept on the accelerator ready to swap, by bytes (LRU). Ignored on CPU (the RAM tier serves).
    device_cache_bytes: int = setting(
        2 << 30,
        env="LORA_ENGINE_DEVICE_CACHE_BYTES",
        kind=Kind.BYTES,
        at_least=0,
        help="adapters kept ready on the device (LRU by bytes)",
    )
    # Where originals of touched layers live: "same" (beside the weights, fastest), "cpu" (pinned host), "auto".
    originals_device: str = setting(
        "auto",
        env="LORA_ENGINE_ORIGINALS_DEVICE",
        choices=("auto", "same", "cpu"),
        help="where originals of touched layers live: 'same' (beside the weights) or 'cpu' (pinned host)",
    )
    # "auto": bf16 CPU weights are written by a one-pass AMX kernel, built with the system C compiler on first
    # use, when the CPU has AMX (else, and for every other case, torch.addmm); "torch": always torch.addmm.
    swap_kernel: str = setting(
        "auto",
        env="LORA_ENGINE_SWAP_KERNEL",
        choices=("auto", "torch"),
        help="'auto': a one-pass kernel for bf16 weights on AMX CPUs, else torch.addmm; 'torch': always torch.addmm",
    )
    # Keeping originals at start makes the first swap cost like later ones.
    eager_originals: bool = setting(
        True,
        env="LORA_ENGINE_EAGER_ORIGINALS",
        kind=Kind.BOOL,
        help="keep originals of every attention/text-encoder linear at start",
    )
    # One read of the touched layers per return to the base proves the restore was exact.
    verify_restores: bool = setting(
        True,
        env="LORA_ENGINE_VERIFY_RESTORES",
        kind=Kind.BOOL,
        help="on each return to the base model, check every restored layer equals its kept original",
    )
    # A bounded queue answers "busy" at once instead of letting waits grow without end.
    max_queue: int = setting(
        64,
        env="LORA_ENGINE_MAX_QUEUE",
        kind=Kind.INT,
        at_least=1,
        help="requests waiting at most; one more is refused at once (HTTP 503)",
    )
    # Grouping by adapter reorders requests; this bounds what that costs any one of them.
    max_wait_s: float = setting(
        10.0,
        env="LORA_ENGINE_MAX_WAIT_S",
        kind=Kind.SECONDS,
        at_least=0,
        help="the most a request waits beyond where plain FIFO would have run it",
    )
    # Grouping saves swaps; False gives plain FIFO (benchmarks' baseline).
    group_by_adapter: bool = setting(
        True, env="LORA_ENGINE_GROUP_BY_ADAPTER", kind=Kind.BOOL, help="group requests by adapter (false: FIFO)"
    )
    # Parsing the next adapter during the current image hides the fetch behind inference.
    prefetch: bool = setting(
        True,
        env="LORA_ENGINE_PREFETCH",
        kind=Kind.BOOL,
        help="fetch and parse the next queued adapter while the current request runs",
    )
    # Request limits (RequestLimits' fields, same names and defaults): image side in pixels (multiples of 8),
    # denoising steps, prompt length in characters.
    min_side: int = setting(
        _LIMITS.min_side, env="LORA_ENGINE_MIN_SIDE", kind=Kind.INT, help="smallest image side (a multiple of 8)"
    )
    max_side: int = setting(
        _LIMITS.max_side, env="LORA_ENGINE_MAX_SIDE", kind=Kind.INT, help="largest image side (a multiple of 8)"
    )
    max_steps: int = setting(
        _LIMITS.max_steps, env="LORA_ENGINE_MAX_STEPS", kind=Kind.INT, at_least=1, help="most denoising steps"
    )
    max_prompt_chars: int = setting(
        _LIMITS.max_prompt_chars,
        env="LORA_ENGINE_MAX_PROMPT_CHARS",
        kind=Kind.INT,
        at_least=1,
        help="longest prompt (and negative prompt), in characters",
    )
    # Defaults for requests that leave them out. None: what fits the model (RequestLimits.for_model).
    default_steps: int | None = setting(
        None,
        env="LORA_ENGINE_DEFAULT_STEPS",
        kind=Kind.INT,
        at_least=1,
        shown_default="the model's (25 SDXL, 12 demo)",
        help="denoising steps of requests that leave them out",
    )
    default_side: int | None = setting(
        None,
        env="LORA_ENGINE_DEFAULT_SIDE",
        kind=Kind.INT,
        shown_default="the model's (1024 SDXL, 64 demo)",
        help="image side of requests that leave it out",
    )
    default_guidance: float = setting(
        _LIMITS.default_guidance,
        env="LORA_ENGINE_DEFAULT_GUIDANCE",
        kind=Kind.FLOAT,
        help="guidance scale of requests that leave it out",
    )
    # Local LoRA folders (laid out like Hub repos, <root>/<owner>/<name>/), searched before the Hub.
    local_lora_dirs: tuple[str, ...] = setting(
        (),
        env="LORA_ENGINE_LOCAL_LORA_DIRS",
        kind=Kind.LIST,
        help="local LoRA folders (<root>/<owner>/<name>/ like Hub repos), searched before the Hub",
    )

    def __post_init__(self):
        super().__post_init__()
        if not (8 <= self.min_side <= self.max_side) or self.min_side % 8 or self.max_side % 8:
            raise ConfigError(
                f"LORA_ENGINE_MIN_SIDE and LORA_ENGINE_MAX_SIDE must be multiples of 8 with 8 <= min <= max, "
                f"but are {self.min_side!r} and {self.max_side!r}"
            )
