"""``Catalogue``: the facade the app uses: local and Hub entries, a snapshot, background refresh, search.

For: wiring the sources together; serving reads (``search``, ``get``, ``entries``, ``status``) from one
immutable published version that a refresh swaps whole, so readers never lock and never see half a
refresh; the background refresh thread; lazy thumbnails.

Not for: parsing cards (``entries``), talking to the Hub (``hub``), ranking (``search``), file formats
(``snapshot``), or anything UI: ``app.py`` turns ``status()`` into a banner and errors into ``gr.Error``.

Life cycle::

    catalogue = Catalogue(base_model=..., local=LocalSource(dir), hub=HubSource(...), cache_dir=...)
    catalogue.start()   # snapshot + local entries now; never waits on the Hub
    ...                 # a daemon thread refreshes from the Hub at once, then every refresh_interval_s
    catalogue.stop()

States (``status().state``):

* ``"live"``: the latest Hub refresh succeeded.
* ``"snapshot"``: serving Hub entries from an earlier refresh or the snapshot file, because no refresh has
  succeeded yet or the latest failed (``last_error`` says why, ``snapshot_age_s`` how old they are).
* ``"local-only"``: no Hub entries at all (no Hub source, or no snapshot and no successful refresh yet).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from .entries import CatalogueEntry
from .errors import HubUnavailable, InvalidCatalogueConfig, LocalSourceError
from .hub import HubSource
from .local import LocalSource
from .search import SearchIndex, SearchPage
from .snapshot import Snapshot, load_snapshot, save_snapshot, snapshot_path
from .thumbnails import ThumbnailCache

__all__ = ["Catalogue", "CatalogueStatus", "DEFAULT_BASE_MODEL", "STATES", "default_cache_dir"]

logger = logging.getLogger(__name__)

#: The base model whose LoRAs the catalogue lists unless told otherwise.
DEFAULT_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
#: The values of ``CatalogueStatus.state``.
STATES = ("live", "snapshot", "local-only")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sdxl-lora-server/catalogue`` (``~/.cache/...`` when unset)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "sdxl-lora-server" / "catalogue"


@dataclass(frozen=True)
class CatalogueStatus:
    """Where the served entries come from and how fresh they are (for the UI's stale banner).

    Args:
        state (`str`): "live", "snapshot" or "local-only" (see the module docstring).
        entries (`int`): how many entries are served.
        refreshed_at (`datetime`, *optional*): when the served Hub entries were fetched (UTC).
        snapshot_age_s (`float`, *optional*): seconds since ``refreshed_at``.
        last_error (`str`, *optional*): why the latest refresh failed; None after a success.
    """

    state: str  # "live" | "snapshot" | "local-only"
    entries: int  # entries served now (local + Hub)
    refreshed_at: datetime | None  # when the Hub entries being served were fetched; None without any
    snapshot_age_s: float | None  # now - refreshed_at, in seconds
    last_error: str | None  # the latest refresh's failure, in words; None when it succeeded


@dataclass(frozen=True)
class _Version:
    """One published state; replaced whole by each refresh, never changed."""

    local: tuple[CatalogueEntry, ...] = ()  # from the local sources
    hub: tuple[CatalogueEntry, ...] = ()  # from the Hub or the snapshot
    hub_fetched_at: datetime | None = None  # when ``hub`` was fetched
    hub_live: bool = False  # the latest Hub attempt succeeded
    last_error: str | None = None  # the latest refresh's failure
    entries: tuple[CatalogueEntry, ...] = ()  # local first, then Hub entries with other repo ids
    by_id: Mapping[str, CatalogueEntry] = field(default_factory=lambda: MappingProxyType({}))
    index: SearchIndex = field(default_factory=lambda: SearchIndex(()))


def _version(
    local: tuple[CatalogueEntry, ...],
    hub: tuple[CatalogueEntry, ...],
    hub_fetched_at: datetime | None,
    hub_live: bool,
    last_error: str | None,
) -> _Version:
    # Local entries win a repo-id clash: their files are here, whatever the Hub says.
    by_id: dict[str, CatalogueEntry] = {}
    for e in local + hub:
        by_id.setdefault(e.repo_id, e)
    entries = tuple(by_id.values())
    return _Version(
        local, hub, hub_fetched_at, hub_live, last_error, entries, MappingProxyType(by_id), SearchIndex(entries)
    )


def _rebase(snap: Snapshot, endpoint: str) -> tuple[CatalogueEntry, ...]:
    """The snapshot's entries with thumbnail URLs moved from the endpoint they were saved on to ``endpoint``."""
    old = snap.endpoint
    if not old or old == endpoint:
        return snap.entries
    prefix = old.rstrip("/") + "/"
    return tuple(
        dataclasses.replace(e, thumbnail=endpoint + "/" + e.thumbnail[len(prefix) :])
        if e.thumbnail and e.thumbnail.startswith(prefix)
        else e
        for e in snap.entries
    )


class Catalogue:
    """The SDXL LoRA catalogue: local adapters plus the Hub's, searchable, refreshed in the background.

    Args:
        base_model (`str`, *optional*): the base model id adapters must name
            (default ``stabilityai/stable-diffusion-xl-base-1.0``; the demo uses ``sdxl-lora-server/tiny-sdxl``).
        local (`LocalSource` or a sequence of them, *optional*): local adapter folders.
        hub (`HubSource`, *optional*): the Hub to list; without it the catalogue is local-only.
        cache_dir (`Path` or `str`, *optional*): snapshot file and thumbnails (default ``default_cache_dir()``).
        refresh_interval_s (`float`, *optional*, defaults to 3600): seconds between background Hub refreshes.
        thumbnail_workers (`int`, *optional*, defaults to 2): concurrent thumbnail downloads.

    Raises:
        InvalidCatalogueConfig: an argument is invalid; the message names it.

    Example:
        >>> catalogue = Catalogue(base_model=DEMO_BASE_MODEL_ID, local=LocalSource(assets.loras_dir),
        ...                       hub=HubSource(endpoint=url, token=False), cache_dir=tmp)
        >>> catalogue.start()
        >>> catalogue.search("pixel", sort="likes").entries[0].as_api_dict()
    """

    def __init__(
        self,
        *,
        base_model: str = DEFAULT_BASE_MODEL,
        local: LocalSource | Sequence[LocalSource] | None = None,
        hub: HubSource | None = None,
        cache_dir: Path | str | None = None,
        refresh_interval_s: float = 3600.0,
        thumbnail_workers: int = 2,
    ):
        if not isinstance(base_model, str) or not base_model.strip() or any(c.isspace() for c in base_model):
            raise InvalidCatalogueConfig(f"`base_model` must be a model id like 'owner/name' but is {base_model!r}")
        if isinstance(local, LocalSource):
            local = (local,)
        local = tuple(local or ())
        for source in local:
            if not isinstance(source, LocalSource):
                raise InvalidCatalogueConfig(f"`local` must hold LocalSource objects but holds {source!r}")
        if hub is not None and not isinstance(hub, HubSource):
            raise InvalidCatalogueConfig(f"`hub` must be a HubSource or None but is {hub!r}")
        if (
            isinstance(refresh_interval_s, bool)
            or not isinstance(refresh_interval_s, (int, float))
            or not refresh_interval_s > 0
        ):
            raise InvalidCatalogueConfig(f"`refresh_interval_s` must be a number > 0 but is {refresh_interval_s!r}")
        if isinstance(thumbnail_workers, bool) or not isinstance(thumbnail_workers, int) or thumbnail_workers < 1:
            raise InvalidCatalogueConfig(f"`thumbnail_workers` must be an integer >= 1 but is {thumbnail_workers!r}")
        self.base_model = base_model
        self.local_sources: tuple[LocalSource, ...] = local
        self.hub = hub
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.refresh_interval_s = float(refresh_interval_s)
        self.snapshot_file = snapshot_path(self.cache_dir, base_model)
        self._thumbnails = ThumbnailCache(self.cache_dir, hub, workers=thumbnail_workers)
        self._version = _Version()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Catalogue(base_model={self.base_model!r}, state={self.status().state!r})"

    def __enter__(self) -> Catalogue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Serve the snapshot and local entries now, then refresh from the Hub in the background.

        Never waits on the Hub. Calling it again does nothing.

        Raises:
            LocalSourceError: a local adapters folder is missing (a configuration mistake; fail fast).
        """
        if self._thread is not None:
            return
        local = self._load_local()
        hub_entries: tuple[CatalogueEntry, ...] = ()
        fetched_at = None
        if self.hub is not None:
            snap = load_snapshot(self.snapshot_file, self.base_model)
            if snap is not None:
                hub_entries, fetched_at = _rebase(snap, self.hub.endpoint), snap.saved_at
                logger.info("serving %d catalogue entries from the snapshot of %s", len(hub_entries), fetched_at)
        with self._refresh_lock:
            self._version = _version(local, hub_entries, fetched_at, False, None)
        if self.hub is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="catalogue-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background refresh (waiting up to ``timeout_s`` for a running one) and thumbnail fetches.

        Reads keep working on the last version; thumbnails are no longer fetched.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        self._thumbnails.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_now()
            if self._stop.wait(self.refresh_interval_s):
                break

    def _load_local(self) -> tuple[CatalogueEntry, ...]:
        entries: list[CatalogueEntry] = []
        for source in self.local_sources:
            entries.extend(source.load(self.base_model))
        return tuple(entries)

    def refresh_now(self) -> bool:
        """Re-read the local folders and list the Hub, synchronously; return whether both succeeded.

        On failure the previous entries stay served, ``last_error`` says why, and nothing is raised.
        A success is saved as the snapshot.
        """
        with self._refresh_lock:
            old = self._version
            errors: list[str] = []
            try:
                local = self._load_local()
            except LocalSourceError as e:
                logger.warning("catalogue refresh: keeping the previous local entries: %s", e)
                errors.append(str(e))
                local = old.local
            hub_entries, fetched_at, live = old.hub, old.hub_fetched_at, False
            if self.hub is not None:
                try:
                    listing = self.hub.fetch(self.base_model)
                except HubUnavailable as e:
                    logger.warning("catalogue refresh: keeping the previous Hub entries: %s", e)
                    errors.append(str(e))
                else:
                    hub_entries, fetched_at, live = listing.entries, listing.fetched_at, True
                    self._save(Snapshot(self.base_model, listing.fetched_at, listing.entries, self.hub.endpoint))
            self._version = _version(local, hub_entries, fetched_at, live, "; ".join(errors) or None)
            return not errors

    def _save(self, snapshot: Snapshot) -> None:
        try:
            save_snapshot(self.snapshot_file, snapshot)
        except OSError as e:
            # Serving goes on; only the next cold start loses the head start.
            logger.warning("could not save the catalogue snapshot %s: %s", self.snapshot_file, e)

    # ------------------------------------------------------------------ reads

    @property
    def entries(self) -> tuple[CatalogueEntry, ...]:
        """Every entry served now: local ones first, then the Hub's."""
        return self._version.entries

    def get(self, repo_id: str) -> CatalogueEntry | None:
        """The entry for ``repo_id``, or None when the catalogue has none."""
        return self._version.by_id.get(repo_id)

    def search(
        self,
        query: str = "",
        sort: str = "downloads",
        limit: int = 100,
        offset: int = 0,
        *,
        servable_only: bool = False,
    ) -> SearchPage:
        """Search the served entries (rules in ``catalogue.search``).

        Args:
            query (`str`, *optional*): whitespace-separated words, all of which must match.
            sort (`str`, *optional*, defaults to "downloads"): "downloads", "likes" or "recent".
            limit (`int`, *optional*, defaults to 100): page size, 1 to 1000.
            offset (`int`, *optional*, defaults to 0): matches to skip.
            servable_only (`bool`, *optional*): leave out entries the engine cannot load.

        Raises:
            InvalidSearch: a parameter breaks a rule.
        """
        return self._version.index.search(query, sort, limit, offset, servable_only=servable_only)

    def status(self) -> CatalogueStatus:
        """The state, entry count, data age and latest error."""
        v = self._version
        if self.hub is not None and v.hub_live:
            state = "live"
        elif self.hub is not None and v.hub_fetched_at is not None:
            state = "snapshot"
        else:
            state = "local-only"
        age = None
        if v.hub_fetched_at is not None:
            age = max(0.0, (datetime.now(UTC) - v.hub_fetched_at).total_seconds())
        return CatalogueStatus(state, len(v.entries), v.hub_fetched_at, age, v.last_error)

    # ------------------------------------------------------------------ thumbnails

    def thumbnail_file(self, repo_id: str) -> Path | None:
        """The thumbnail file for ``repo_id`` if it is on disk; otherwise start fetching it and return None.

        Never blocks on the network: show ``placeholder_thumbnail()`` and ask again later.
        """
        entry = self.get(repo_id)
        return self._thumbnails.file_for(entry) if entry is not None else None

    def placeholder_thumbnail(self) -> Path:
        """A small placeholder PNG in the cache folder."""
        return self._thumbnails.placeholder()

    def wait_thumbnails(self, timeout_s: float) -> bool:
        """Wait for queued thumbnail downloads to end (for tests and shutdown); return whether they did."""
        return self._thumbnails.wait_idle(timeout_s)
