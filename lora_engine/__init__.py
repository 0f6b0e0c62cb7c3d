"""lora_engine: one warm SDXL pipeline serving any LoRA, swapped per request.

The public API is what ``__all__`` lists (a test pins it). Importing this package imports no torch: the
modules that do (``pipeline/``, ``adapters.parse``) load when an ``Engine`` is built. ``ImageService`` declares
what a host (``app.py``) needs from an engine; ``Engine`` and ``serving.cluster.ClusterClient`` implement it.
``assess_repo`` (in ``adapters.repo_rules``, whose ``__all__`` is public too: the catalogue lists by it) decides
whether a repo is a LoRA this server serves, and returns a ``RepoVerdict`` (a weight file, or a ``Refusal``).

Example:
    >>> from lora_engine import Engine, EngineConfig, GenerationRequest
    >>> engine = Engine.from_config(EngineConfig.from_env())
    >>> engine.generate(GenerationRequest("a red circle", lora="demo/stripes", seed=3)).image
"""

from .adapters.repo_rules import Refusal, RepoVerdict, assess_repo
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
from .service import ImageService, InlineImageService
from .settings import Kind, Settings, setting

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
    "ImageService",
    "IncompatibleAdapter",
    "InlineImageService",
    "InvalidAdapterId",
    "InvalidRequest",
    "Kind",
    "QueueFull",
    "Refusal",
    "RepoVerdict",
    "RequestCancelled",
    "RequestFuture",
    "Settings",
    "Timings",
    "UnsafeAdapterFile",
    "UnsupportedAdapterFormat",
    "assess_repo",
    "setting",
]
