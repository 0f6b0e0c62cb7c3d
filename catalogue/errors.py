"""Every error the catalogue raises on purpose, in one place.

This module is for callers that want to tell refusals apart (the app maps ``InvalidSearch`` to a 400 and
shows ``gr.Error(str(e))``). It is not for bugs: anything not listed here is unexpected and is logged with
its traceback by whoever catches it.

Most of these never reach the UI: ``Catalogue`` catches ``HubUnavailable``, ``SnapshotError`` and
``LocalSourceError`` during a refresh, logs them and reports them in ``status().last_error`` while it
keeps serving the entries it had.

The tree (each error also inherits the matching builtin, so ``except ValueError`` still works)::

    CatalogueError
    ├── InvalidSearch(ValueError)           a search parameter (query, sort, limit, offset) breaks a rule
    ├── InvalidCatalogueConfig(ValueError)  a constructor argument is invalid (interval, timeout, base id, ...)
    ├── InvalidEntry(ValueError)            a stored entry lacks a field or has one of the wrong type
    ├── SnapshotError(ValueError)           a snapshot file is corrupt, of another format version or base model
    ├── LocalSourceError(OSError)           the local adapters folder is missing or unreadable
    └── HubUnavailable(ConnectionError)     the Hub listing failed or answered an error; carries ``endpoint``
        └── HubTimeout(HubUnavailable, TimeoutError)  the listing did not finish within its deadline
"""

from __future__ import annotations

__all__ = [
    "CatalogueError",
    "HubTimeout",
    "HubUnavailable",
    "InvalidCatalogueConfig",
    "InvalidEntry",
    "InvalidSearch",
    "LocalSourceError",
    "SnapshotError",
]


class CatalogueError(Exception):
    """Raised for every refusal the catalogue makes on purpose; the base of this module's tree."""

    #: A stable short name for logs and metrics labels.
    kind = "catalogue_error"
    #: Whether the caller is at fault (HTTP 4xx) rather than the server or the Hub (5xx).
    client_error = False


class InvalidSearch(CatalogueError, ValueError):
    """Raised when a search parameter breaks a rule; the message names the parameter and the value."""

    kind = "invalid_search"
    client_error = True


class InvalidCatalogueConfig(CatalogueError, ValueError):
    """Raised when a catalogue or source is constructed with an invalid argument; the message names it."""

    kind = "invalid_catalogue_config"


class InvalidEntry(CatalogueError, ValueError):
    """Raised when a stored entry (a snapshot record) lacks a field or has one of the wrong type."""

    kind = "invalid_entry"


class SnapshotError(CatalogueError, ValueError):
    """Raised when a snapshot file is unreadable, corrupt, or written for another format version or base model."""

    kind = "snapshot_error"

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        #: The snapshot file, when there is one.
        self.path = path


class LocalSourceError(CatalogueError, OSError):
    """Raised when the local adapters folder is missing, not a folder, or cannot be read."""

    kind = "local_source_error"

    def __init__(self, message: str, root: str | None = None):
        super().__init__(message)
        #: The folder that was asked for.
        self.root = root


class HubUnavailable(CatalogueError, ConnectionError):
    """Raised when listing the Hub failed: a network error, an HTTP error status or an unreadable answer."""

    kind = "hub_unavailable"

    def __init__(self, message: str, endpoint: str | None = None):
        super().__init__(message)
        #: The Hub endpoint that was asked.
        self.endpoint = endpoint


class HubTimeout(HubUnavailable, TimeoutError):
    """Raised when the Hub listing did not finish within its deadline (slow Hub, or 5xx being retried)."""

    kind = "hub_timeout"
