"""The engine's configuration: one frozen dataclass, read once from the environment or the command line.

What this is for: every knob of the engine, with its default and a one-line reason, in one place, parsed
and checked once at start (a bad value is a :class:`~lora_engine.errors.ConfigError` naming the variable
and the value). The app passes the result around explicitly; nothing reads the environment later.

What it is not for: huggingface_hub's own variables (``HF_ENDPOINT``, ``HF_HOME``, ``HF_TOKEN``,
``HF_HUB_OFFLINE``), which huggingface_hub reads itself as it defines them, nor the Gradio server's address
(``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``). Importing this module imports no torch: ``device="auto"``
and ``dtype="auto"`` are resolved by the backend when the pipeline is built.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace

from .errors import ConfigError

__all__ = ["EngineConfig", "SDXL_BASE_MODEL_ID"]

SDXL_BASE_MODEL_ID = "stabilityai/stable-diffusion-xl-base-1.0"

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_ORIGINALS = ("auto", "same", "cpu")
_SWAP_KERNELS = ("auto", "torch")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to know; see each field's comment. Build with ``from_env``/``from_args``."""

    # The base pipeline: a Hub repo id or a local folder. None: SDXL base on CUDA, else the built-in demo model.
    model_id: str | None = None
    # The id LoRA cards must name as base_model. None: model_id if it is a Hub id, the demo's id for the demo.
    base_model_id: str | None = None
    # More base ids whose LoRAs are accepted (fine-tunes sharing the architecture), comma-separated in env.
    extra_base_models: tuple[str, ...] = ()
    # "auto" (cuda, then mps, then cpu) or any torch device string.
    device: str = "auto"
    # "auto": float16 on CUDA/MPS, float32 on CPU (bfloat16 is valid on CPU too but slower on most CPUs).
    dtype: str = "auto"
    # Where to build/find the demo model. None: ~/.cache/sdxl-lora-server/demo-v<version>.
    demo_dir: str | None = None
    # The huggingface_hub cache for adapters. None: huggingface_hub's default (HF_HOME / HF_HUB_CACHE).
    hub_cache_dir: str | None = None
    # Seconds for each Hub call (metadata and each download read); huggingface_hub sets none by default.
    hub_timeout_s: float = 20.0
    # Weight files larger than this are refused before download (real SDXL LoRAs are 10 MB - 900 MB).
    max_adapter_bytes: int = 1 << 30
    # Parsed adapters kept in host RAM, by bytes of tensors (LRU). Real rank-32 SDXL LoRAs are ~200 MB.
    ram_cache_bytes: int = 4 << 30
    # Adapters kept on the accelerator ready to swap, by bytes (LRU). Ignored on CPU (the RAM tier serves).
    device_cache_bytes: int = 2 << 30
    # Where originals of touched layers live: "same" (beside the weights, fastest), "cpu" (pinned host), "auto".
    originals_device: str = "auto"
    # "auto": bf16 CPU weights are written by a one-pass AMX kernel, built with the system C compiler on first
    # use, when the CPU has AMX (else, and for every other case, torch.addmm); "torch": always torch.addmm.
    swap_kernel: str = "auto"
    # Keep originals of every attention/text-encoder linear at start, so the first swap costs like later ones.
    eager_originals: bool = True
    # Check each return to the base model: every kept original equals its live layer (one read of those layers).
    verify_restores: bool = True
    # Requests waiting at most; one more gets QueueFull at once (HTTP 503).
    max_queue: int = 64
    # A request waits at most this long beyond where plain FIFO would have run it (adapter grouping).
    max_wait_s: float = 10.0
    # Group requests by adapter (False: plain FIFO).
    group_by_adapter: bool = True
    # Parse the next queued request's adapter while the current one runs.
    prefetch: bool = True
    # Request limits: image side in pixels (multiples of 8), denoising steps, prompt length in characters.
    min_side: int = 64
    max_side: int = 2048
    max_steps: int = 100
    max_prompt_chars: int = 4000
    # Defaults for requests that leave them out. None: chosen for the model (1024 px/25 steps SDXL, 64 px/12 steps
    # demo).
    default_steps: int | None = None
    default_side: int | None = None
    default_guidance: float = 5.0
    # Local LoRA folders (laid out like Hub repos, <root>/<owner>/<name>/), searched before the Hub.
    local_lora_dirs: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ConfigError(f"LORA_ENGINE_DTYPE must be one of {', '.join(_DTYPES)} but is {self.dtype!r}")
        if self.originals_device not in _ORIGINALS:
            raise ConfigError(
                f"LORA_ENGINE_ORIGINALS_DEVICE must be one of {', '.join(_ORIGINALS)} but is {self.originals_device!r}"
            )
        if self.swap_kernel not in _SWAP_KERNELS:
            raise ConfigError(
                f"LORA_ENGINE_SWAP_KERNEL must be one of {', '.join(_SWAP_KERNELS)} but is {self.swap_kernel!r}"
            )
        for name in ("max_queue", "max_adapter_bytes", "ram_cache_bytes", "max_steps", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_env_name(name)} must be at least 1 but is {getattr(self, name)!r}")
        for name in ("hub_timeout_s", "max_wait_s", "device_cache_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_env_name(name)} must be >= 0 but is {getattr(self, name)!r}")
        if not (8 <= self.min_side <= self.max_side) or self.min_side % 8 or self.max_side % 8:
            raise ConfigError(
                f"LORA_ENGINE_MIN_SIDE/MAX_SIDE must be multiples of 8 with 8 <= min <= max, "
                f"but are {self.min_side!r} and {self.max_side!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> EngineConfig:
        """Read ``MODEL_ID``/``BASE_MODEL_ID`` and ``LORA_ENGINE_<FIELD>`` variables once.

        Args:
            environ (`Mapping[str, str]`, *optional*): defaults to ``os.environ``.
            overrides: field values that win over the environment (e.g. from CLI flags).

        Raises:
            ConfigError: a value does not parse or breaks a rule.
        """
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(_env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field, documented with its environment variable and default."""
        group = parser.add_argument_group("engine (each flag overrides its environment variable)")
        for f in fields(cls):
            default = f.default if f.default_factory is MISSING else f.default_factory()
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                type=lambda raw, name=f.name: _parse(name, raw),
                help=f"[env: {_env_name(f.name)}] [default: {default!r}]",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace | Sequence[str] | None = None, environ=None) -> EngineConfig:
        """Environment first, then CLI flags (from ``add_arguments``) on top."""
        if args is None or isinstance(args, (list, tuple)):
            parser = argparse.ArgumentParser()
            cls.add_arguments(parser)
            args = parser.parse_args(args)
        overrides = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        return cls.from_env(environ, **overrides)

    def replace(self, **changes) -> EngineConfig:
        return replace(self, **changes)


def _env_name(field_name: str) -> str:
    # The two most used keep the short names the issue and Spaces users know; the rest are namespaced.
    if field_name in ("model_id", "base_model_id"):
        return field_name.upper()
    return "LORA_ENGINE_" + field_name.upper()


def _parse(name: str, raw: str):
    f = {f.name: f for f in fields(EngineConfig)}[name]
    kind = str(f.type)
    try:
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return _parse_int(raw)
        if kind.startswith("float"):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{_env_name(name)} must be a {kind} but is {raw!r}") from None


def _parse_int(raw: str) -> int:
    # Byte budgets read better as "4GiB" or "512MiB"; plain integers work too.
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9}
    text = raw.strip().lower().replace("_", "")
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(text)
