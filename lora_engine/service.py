"""What a host (``app.py``) needs from whatever serves it images, declared as ``typing.Protocol``s.

What this is for: one written-down interface between the UI/HTTP layer and the things behind it. Two implement it:
:class:`~lora_engine.engine.Engine` (one process, one pipeline) and
:class:`~lora_engine.serving.cluster.ClusterClient` (a Ray Serve application). A test checks that every attribute
``app.py`` uses on its engine is a member here, and that both implementations have every member with the same
signature, so a new call in ``app.py`` cannot silently break ``--ray``.

- :class:`ImageService`: what every implementation offers.
- :class:`InlineImageService`: that, plus running a request on the calling thread (``generate_inline``), which only
  means something where the pipeline lives in this process (``Engine``): hosts such as Hugging Face ZeroGPU, where
  the GPU exists only inside a particular call.

What it is not for: implementations, or anything the UI does not need (``Engine.status``, ``preload``/``evict``
for Ray Serve's multiplexer, ``ClusterClient.stats``). Pure: imports no torch and no ray.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from .adapter_cache import AdapterKey
from .backend_info import BackendInfo
from .config import EngineConfig
from .request import GenerationRequest, GenerationResult, RequestLimits

__all__ = ["ImageService", "InlineImageService", "ProgressCallback"]

#: Called with ``(step, total_steps)`` as a request's denoising steps finish.
ProgressCallback = Callable[[int, int], None]


@runtime_checkable
class ImageService(Protocol):
    """Generates images for requests; what ``app.py`` serves from.

    Attributes:
        info (`BackendInfo`): the model served (what the UI shows, the catalogue's base model, local LoRA folders).
        limits (`RequestLimits`): what requests must satisfy, and the UI's defaults.
        config (`EngineConfig`): the engine's configuration; ``max_queue`` is how many requests the host hands over
            at once, ``hub_timeout_s`` the Hub calls' timeout.
    """

    info: BackendInfo
    limits: RequestLimits
    config: EngineConfig

    def submit(self, request: GenerationRequest, *, on_progress: ProgressCallback | None = None) -> Future:
        """Queue a request; a Future of its :class:`GenerationResult`. Cancelling the Future drops the request if
        it has not started. ``on_progress`` is called from another thread, where steps are reported at all.

        Raises:
            EngineClosed, QueueFull, InvalidRequest, InvalidAdapterId: at once, or through the Future.
        """
        ...

    def check_adapter(self, adapter_id: str) -> AdapterKey | None:
        """Check an adapter id against the served base model without loading it; None for the base model.

        Raises:
            InvalidAdapterId, AdapterNotFound, AdapterGated, AdapterFetchError, IncompatibleAdapter,
            UnsafeAdapterFile
        """
        ...

    def position(self, future: Future) -> int | None:
        """How many requests run before this one; None when not known (it runs or is done, or the implementation
        cannot tell)."""
        ...

    def estimate_s(self, future: Future) -> float | None:
        """Rough seconds until this request is done; None when not known (no run finished yet to go by, the
        request is not waiting, or the implementation cannot tell)."""
        ...

    def metrics_text(self) -> bytes:
        """Its metrics in the Prometheus text format (for ``GET /metrics``)."""
        ...

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking requests and release what it holds, waiting up to ``timeout`` seconds for its threads."""
        ...


@runtime_checkable
class InlineImageService(ImageService, Protocol):
    """An :class:`ImageService` whose pipeline lives in this process, so a request can run on the calling thread."""

    def generate_inline(
        self, request: GenerationRequest, on_progress: ProgressCallback | None = None
    ) -> GenerationResult:
        """Run one request on the calling thread and leave the weights at the base model afterwards.

        Raises:
            InvalidRequest, InvalidAdapterId, AdapterError: as ``submit`` and the request would.
        """
        ...
