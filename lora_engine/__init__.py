"""lora_engine: one warm SDXL pipeline serving any LoRA, swapped per request.

The public API is what ``__all__`` lists (a test pins it). Importing this package imports no torch: the
modules that do are named ``torch_*`` and load when an ``Engine`` is built.

Example:
    >>> from lora_engine import Engine, EngineConfig, GenerationRequest
    >>> engine = Engine.from_config(EngineConfig.from_env())
    >>> engine.generate(GenerationRequest("a red circle", lora="demo/stripes", seed=3)).image
"""

from .config import SDXL_BASE_MODEL_ID, EngineConfig
from .engine import Engine, EngineStatus, RequestFuture
from .errors import (
    AdapterError,
    AdapterFetchError,
    AdapterGated,
    AdapterNotFound,
    ConfigError,
    CorruptAdapter,
    EngineClosed,
    EngineError,
    IncompatibleAdapter,
    InvalidAdapterId,
    InvalidRequest,
    QueueFull,
    RequestCancelled,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)
from .request import BASE_ADAPTER, GenerationRequest, GenerationResult, Timings

__all__ = [
    "BASE_ADAPTER",
    "SDXL_BASE_MODEL_ID",
    "AdapterError",
    "AdapterFetchError",
    "AdapterGated",
    "AdapterNotFound",
    "ConfigError",
    "CorruptAdapter",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineError",
    "EngineStatus",
    "GenerationRequest",
    "GenerationResult",
    "IncompatibleAdapter",
    "InvalidAdapterId",
    "InvalidRequest",
    "QueueFull",
    "RequestCancelled",
    "RequestFuture",
    "Timings",
    "UnsafeAdapterFile",
    "UnsupportedAdapterFormat",
]
