"""Every error the engine raises on purpose, in one place.

This module is for callers that want to tell refusals apart (the app maps them to ``gr.Error`` and HTTP
status codes). It is not for bugs: anything not listed here is unexpected and is logged with its
traceback by whoever catches it.

The tree (each error also inherits the matching builtin, so ``except ValueError`` still works)::

    EngineError
    ├── InvalidRequest(ValueError)          a request parameter breaks a rule
    ├── QueueFull(RuntimeError)             the bounded queue is full; retry later (HTTP 503)
    ├── RequestCancelled(RuntimeError)      the caller left before the request ran
    ├── EngineClosed(RuntimeError)          submit() after close()
    ├── ConfigError(ValueError)             a configuration value is invalid
    ├── ReplicaUnavailable(RuntimeError)    the Ray Serve replica for a request died and retries ran out
    └── AdapterError                        anything about one adapter; carries ``adapter_id``
        ├── InvalidAdapterId(ValueError)    not an ``owner/name`` repo id (paths, ``..``, URLs)
        ├── AdapterNotFound(LookupError)    no such repo, file or revision on the Hub
        ├── AdapterGated(PermissionError)   the repo is gated or private and we have no access
        ├── AdapterFetchError(ConnectionError)  the Hub failed, timed out or cut the download
        ├── UnsafeAdapterFile(ValueError)   not a .safetensors file (pickles are never opened), or over the size cap
        ├── IncompatibleAdapter(ValueError) not a LoRA, or made for another base model / architecture
        ├── UnsupportedAdapterFormat(ValueError)  a known format we do not apply (LoHa, LoKr, DoRA, ...)
        ├── CorruptAdapter(ValueError)      truncated file, bad header, NaN/inf values
        └── BaseModelNotDeployed(LookupError)  Ray Serve: no deployment serves the base model its card names

Every error pickles as itself, fields included (``__reduce__``), so it crosses process boundaries (Ray
Serve replicas, multiprocessing) with its type and message intact.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AdapterFetchError",
    "AdapterGated",
    "AdapterNotFound",
    "BaseModelNotDeployed",
    "ConfigError",
    "CorruptAdapter",
    "EngineClosed",
    "EngineError",
    "IncompatibleAdapter",
    "InvalidAdapterId",
    "InvalidRequest",
    "QueueFull",
    "ReplicaUnavailable",
    "RequestCancelled",
    "UnsafeAdapterFile",
    "UnsupportedAdapterFormat",
]


class EngineError(Exception):
    """Raised for every refusal the engine makes on purpose; the base of this module's tree."""

    #: A stable short name for logs and metrics labels.
    kind = "engine_error"
    #: Whether the caller is at fault (HTTP 4xx) rather than the server or the Hub (5xx).
    client_error = True

    def __reduce__(self):
        # Pickling by ``args`` would call ``__init__`` with the formatted message alone, which most of these
        # signatures do not take (``AdapterError(adapter_id, message)``, ``QueueFull(max_queue)``): rebuild
        # from the message and the fields instead.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type, message: str, fields: dict) -> EngineError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(fields)
    return error


class InvalidRequest(EngineError, ValueError):
    """Raised when a request parameter breaks a rule; the message names the rule and the value."""

    kind = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class QueueFull(EngineError, RuntimeError):
    """Raised at once when the bounded queue already holds ``max_queue`` requests."""

    kind = "queue_full"
    client_error = False

    def __init__(self, max_queue: int):
        super().__init__(f"the queue is full ({max_queue} requests waiting); try again in a moment")
        self.max_queue = max_queue


class RequestCancelled(EngineError, RuntimeError):
    """Raised for a request whose caller cancelled it before it ran."""

    kind = "cancelled"


class EngineClosed(EngineError, RuntimeError):
    """Raised when a request is submitted to an engine that was closed."""

    kind = "engine_closed"
    client_error = False


class ConfigError(EngineError, ValueError):
    """Raised when a configuration value (environment variable or flag) is invalid."""

    kind = "config_error"
    client_error = False


class ReplicaUnavailable(EngineError, RuntimeError):
    """Raised when the Ray Serve replica running a request died or became unreachable, and the retries on
    other replicas ran out too (``lora_engine.serving.cluster``)."""

    kind = "replica_unavailable"
    client_error = False


class AdapterError(EngineError):
    """Raised for anything wrong with one adapter; ``adapter_id`` names it."""

    kind = "adapter_error"

    def __init__(self, adapter_id: str, message: str):
        super().__init__(f"adapter {adapter_id!r}: {message}")
        self.adapter_id = adapter_id
        self.reason = message


class InvalidAdapterId(AdapterError, ValueError):
    """Raised when an adapter id is not a plain ``owner/name`` Hub repo id."""

    kind = "invalid_adapter_id"


class AdapterNotFound(AdapterError, LookupError):
    """Raised when the repo, the weight file or the revision does not exist."""

    kind = "adapter_not_found"


class AdapterGated(AdapterError, PermissionError):
    """Raised when the repo is gated or private and the configured token gives no access."""

    kind = "adapter_gated"


class AdapterFetchError(AdapterError, ConnectionError):
    """Raised when the Hub fails, times out or cuts a download; the adapter may work later."""

    kind = "adapter_fetch_error"
    client_error = False


class UnsafeAdapterFile(AdapterError, ValueError):
    """Raised for weight files we refuse to open: pickles (.bin, .ckpt, .pt) and files over the size cap."""

    kind = "unsafe_adapter_file"


class IncompatibleAdapter(AdapterError, ValueError):
    """Raised when the repo is not a LoRA, targets another base model, or its shapes do not fit ours."""

    kind = "incompatible_adapter"


class UnsupportedAdapterFormat(AdapterError, ValueError):
    """Raised for adapter formats we recognise but do not apply (LyCORIS LoHa/LoKr, DoRA, ...)."""

    kind = "unsupported_adapter_format"


class CorruptAdapter(AdapterError, ValueError):
    """Raised when the file is truncated, its header is malformed, or it holds NaN/inf values."""

    kind = "corrupt_adapter"


class BaseModelNotDeployed(AdapterError, LookupError):
    """Raised when an adapter's base_model has no deployment in the Ray Serve application.

    Args:
        adapter_id (`str`): the adapter.
        base_models (`tuple[str, ...]`): the base models its card names.
        deployed (`tuple[str, ...]`): the base models the application serves.
    """

    kind = "base_model_not_deployed"

    def __init__(self, adapter_id: str, base_models, deployed):
        self.base_models = tuple(base_models)
        self.deployed = tuple(deployed)
        super().__init__(
            adapter_id,
            f"it is a LoRA for {', '.join(self.base_models)}, and no deployment serves that base model "
            f"(deployed: {', '.join(self.deployed) or 'none'})",
        )
