"""The catalogue of SDXL LoRAs: Hub and local adapters, searchable, refreshed in the background.

For: the public API the app and the engine use (``Catalogue``, ``CatalogueEntry``, the sources, search
results, errors, and the helpers the UI shows entries with). Not for: internals such as card rules or the
snapshot format, which live in the sub-modules and may change.

Importing this package imports neither torch nor huggingface_hub (``catalogue.hub`` loads the latter when
it first talks to the Hub).

Example:
    >>> from catalogue import Catalogue, HubSource, LocalSource
    >>> catalogue = Catalogue(local=LocalSource("loras"), hub=HubSource(token=False), cache_dir="cache")
    >>> catalogue.start()
    >>> page = catalogue.search("pixel art", sort="likes", limit=20)
    >>> [e.as_api_dict() for e in page.entries], catalogue.status().state
"""

from .catalogue import DEFAULT_BASE_MODEL, Catalogue, CatalogueStatus
from .entries import CatalogueEntry
from .errors import (
    CatalogueError,
    HubTimeout,
    HubUnavailable,
    InvalidCatalogueConfig,
    InvalidEntry,
    InvalidSearch,
    LocalSourceError,
    SnapshotError,
)
from .hub import HubListing, HubSource
from .local import LocalSource
from .presentation import caption, describe_entry, with_trigger_words
from .search import SORTS, SearchIndex, SearchPage

__all__ = [
    "Catalogue",
    "CatalogueEntry",
    "CatalogueError",
    "CatalogueStatus",
    "DEFAULT_BASE_MODEL",
    "HubListing",
    "HubSource",
    "HubTimeout",
    "HubUnavailable",
    "InvalidCatalogueConfig",
    "InvalidEntry",
    "InvalidSearch",
    "LocalSource",
    "LocalSourceError",
    "SORTS",
    "SearchIndex",
    "SearchPage",
    "SnapshotError",
    "caption",
    "describe_entry",
    "with_trigger_words",
]
