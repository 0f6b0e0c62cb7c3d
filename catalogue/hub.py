"""The Hub source: lists a base model's LoRAs on the Hugging Face Hub and fetches thumbnail files.

For: the only code in ``catalogue`` that uses huggingface_hub (imported lazily, so ``import catalogue``
stays light). An ``HfApi`` is injected (or built from ``endpoint``/``token``); nothing global is changed.

Not for: deciding what an entry looks like (``entries.build_entry``), when to refresh, or what to serve
when the Hub is down (``Catalogue``).

What is listed: ``list_models(filter=["lora", "base_model:adapter:<base>"], sort="downloads",
expand=[cardData, siblings, sha, ...])`` (the client follows the ``Link`` pages), then
``filter=["lora", "base_model:<base>"]`` for repos tagged with the base but not as an adapter; those extra
ids are read with ``model_info``, as is any listed repo whose listing lacks ``siblings``. A repo whose card
names other base models is left out (``HubListing.excluded``), so a list-valued ``base_model`` containing
ours is kept.

Timeouts, since huggingface_hub sets none on its shared client:

* ``model_info(timeout=timeout_s)`` per call.
* ``list_models`` takes no timeout and retries 5xx and timeouts with ~23 s of backoff, so the whole listing
  runs on a daemon thread and ``fetch`` waits at most ``deadline_s`` for it (``HubTimeout``). The abandoned
  thread is told to stop at its next result and ends when the client's current request (and backoff) does;
  while ``max_stuck_listings`` of them are still running, ``fetch`` fails at once instead of piling up more.
  ``set_client_factory`` would give every request a timeout but replaces the client for the whole process
  (the engine's downloads included), so it is left alone.
* thumbnail downloads: ``hf_hub_download(etag_timeout=timeout_s)``; its GET uses the library's own
  ``HF_HUB_DOWNLOAD_TIMEOUT`` (10 s by default).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from .entries import Card, CatalogueEntry, base_models_of, build_entry, is_absolute_url, iso_utc, serves_base
from .errors import HubTimeout, HubUnavailable, InvalidCatalogueConfig

if TYPE_CHECKING:
    from huggingface_hub import HfApi, ModelInfo

__all__ = ["HubListing", "HubSource", "RepoFile"]

logger = logging.getLogger(__name__)

# What the listing asks for: everything an entry needs, in one request per page.
LIST_EXPAND = [
    "author",
    "cardData",
    "downloads",
    "gated",
    "lastModified",
    "likes",
    "sha",
    "siblings",
    "tags",
    "widgetData",
]


class _Cancelled(Exception):
    """Raised inside an abandoned listing thread to stop it at its next result."""


@dataclass(frozen=True)
class HubListing:
    """What one listing found.

    Args:
        entries (`tuple[CatalogueEntry, ...]`): the adapters for the base model, Hub order (downloads).
        fetched_at (`datetime`): when the listing finished (UTC).
        excluded (`tuple[str, ...]`): repo ids the Hub listed whose card names other base models.
    """

    entries: tuple[CatalogueEntry, ...]  # source="hub", de-duplicated by repo id
    fetched_at: datetime  # aware UTC
    excluded: tuple[str, ...] = ()  # listed but left out: the card's base_model is another model


@dataclass(frozen=True)
class RepoFile:
    """A file in a Hub repo at a revision.

    Args:
        repo_id (`str`): ``owner/name``.
        revision (`str`): a commit sha or a branch.
        path (`str`): the path inside the repo.
    """

    repo_id: str  # owner/name
    revision: str  # commit sha (entries carry the listed sha) or "main"
    path: str  # repo-relative, unquoted


class HubSource:
    """LoRAs for a base model on a Hub endpoint, with a timeout on every call.

    Args:
        api (`HfApi`, *optional*): the client to use; built from ``endpoint`` and ``token`` when omitted.
        endpoint (`str`, *optional*): Hub URL when ``api`` is omitted (default: huggingface_hub's).
        token (`str` or `bool`, *optional*): token when ``api`` is omitted; ``False`` sends none.
        timeout_s (`float`, *optional*, defaults to 10): per-request timeout (``model_info``, thumbnail HEAD).
        deadline_s (`float`, *optional*, defaults to 120): the most a whole listing may take.
        max_entries (`int`, *optional*, defaults to 5000): the most repos taken from each query.
        max_stuck_listings (`int`, *optional*, defaults to 2): abandoned listings allowed to run on.

    Raises:
        InvalidCatalogueConfig: both ``api`` and ``endpoint``/``token``, or a bad number.

    Example:
        >>> hub = HubSource(endpoint="http://127.0.0.1:8000", token=False, timeout_s=2, deadline_s=10)
        >>> listing = hub.fetch("stabilityai/stable-diffusion-xl-base-1.0")
    """

    def __init__(
        self,
        api: HfApi | None = None,
        *,
        endpoint: str | None = None,
        token: str | bool | None = None,
        timeout_s: float = 10.0,
        deadline_s: float = 120.0,
        max_entries: int = 5000,
        max_stuck_listings: int = 2,
    ):
        if api is not None and (endpoint is not None or token is not None):
            raise InvalidCatalogueConfig("pass either `api` or `endpoint`/`token`, not both")
        for name, value in (("timeout_s", timeout_s), ("deadline_s", deadline_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidCatalogueConfig(f"`{name}` must be a number > 0 but is {value!r}")
        for name, value, low in (("max_entries", max_entries, 1), ("max_stuck_listings", max_stuck_listings, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidCatalogueConfig(f"`{name}` must be an integer >= {low} but is {value!r}")
        if endpoint is not None and not re.match(r"https?://[^/]+", endpoint):
            raise InvalidCatalogueConfig(f"`endpoint` must be an http(s) URL but is {endpoint!r}")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=endpoint, token=token)
        self.api = api
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s)
        self.max_entries = max_entries
        self.max_stuck_listings = max_stuck_listings
        self._lock = threading.Lock()
        self._stuck: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"HubSource(endpoint={self.endpoint!r}, deadline_s={self.deadline_s})"

    @property
    def endpoint(self) -> str:
        """The Hub URL thumbnails resolve against, without a trailing slash."""
        return str(self.api.endpoint).rstrip("/")

    # ------------------------------------------------------------------ listing

    def fetch(self, base_model: str) -> HubListing:
        """List the LoRAs for ``base_model``, waiting at most ``deadline_s``.

        Raises:
            HubTimeout: the listing did not finish in time (slow Hub, or 5xx answers being retried).
            HubUnavailable: a network error, an HTTP error status, an unreadable answer, or too many
                earlier listings still stuck.
        """
        import httpx2

        with self._lock:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            if len(self._stuck) >= self.max_stuck_listings:
                raise HubUnavailable(
                    f"{len(self._stuck)} earlier listings on {self.endpoint} are still running past their "
                    "deadline; not starting another",
                    self.endpoint,
                )
        cancel = threading.Event()
        future: Future[HubListing] = Future()
        thread = threading.Thread(
            target=self._run, args=(future, base_model, cancel), name="catalogue-hub-listing", daemon=True
        )
        thread.start()
        try:
            return future.result(timeout=self.deadline_s)
        except TimeoutError as e:
            if future.done():  # the listing itself raised a TimeoutError (an OSError): a network failure
                raise HubUnavailable(f"listing LoRAs on {self.endpoint} failed: {e}", self.endpoint) from e
            cancel.set()
            with self._lock:
                self._stuck.append(thread)
            raise HubTimeout(
                f"listing LoRAs on {self.endpoint} did not finish within {self.deadline_s:g} s "
                "(slow Hub, or error answers being retried)",
                self.endpoint,
            ) from None
        except (httpx2.HTTPError, OSError, json.JSONDecodeError) as e:
            # HfHubHTTPError is an httpx2.HTTPError and an OSError; JSONDecodeError: a page that is not JSON.
            raise HubUnavailable(f"listing LoRAs on {self.endpoint} failed: {_one_line(e)}", self.endpoint) from e

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait for abandoned listings to end; return whether none is left running."""
        with self._lock:
            threads = list(self._stuck)
        for t in threads:
            t.join(timeout_s)
        with self._lock:
            self._stuck = [t for t in self._stuck if t.is_alive()]
            return not self._stuck

    def _run(self, future: Future, base_model: str, cancel: threading.Event) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = self._list(base_model, cancel)
        except BaseException as e:  # noqa: BLE001 - handed to fetch(), which re-raises or maps it
            future.set_exception(e)
        else:
            future.set_result(result)

    def _list(self, base_model: str, cancel: threading.Event) -> HubListing:
        from huggingface_hub.errors import HfHubHTTPError

        api = self.api
        infos: dict[str, Any] = {}
        for info in api.list_models(
            filter=["lora", f"base_model:adapter:{base_model}"],
            sort="downloads",
            limit=self.max_entries,
            expand=LIST_EXPAND,
        ):
            if cancel.is_set():
                raise _Cancelled()
            infos.setdefault(info.id, info)
        extras: list[str] = []
        for info in api.list_models(
            filter=["lora", f"base_model:{base_model}"],
            sort="downloads",
            limit=self.max_entries,
            expand=["downloads"],
        ):
            if cancel.is_set():
                raise _Cancelled()
            if info.id not in infos and info.id not in extras:
                extras.append(info.id)
        todo = [rid for rid, info in infos.items() if info.siblings is None] + extras
        for repo_id in todo:
            if cancel.is_set():
                raise _Cancelled()
            try:
                infos[repo_id] = api.model_info(repo_id, timeout=self.timeout_s)
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if status is not None and status < 500:  # gone or hidden since it was listed: skip that one
                    logger.info("skipping %s: model_info answered %s", repo_id, status)
                    infos.pop(repo_id, None)
                    continue
                raise
        entries: list[CatalogueEntry] = []
        excluded: list[str] = []
        for repo_id, info in infos.items():
            entry = self._entry(info, base_model)
            if entry is None:
                excluded.append(repo_id)
            else:
                entries.append(entry)
        if excluded:
            logger.info(
                "left out %d repos whose card names another base model: %s", len(excluded), ", ".join(excluded[:10])
            )
        return HubListing(tuple(entries), datetime.now(UTC), tuple(excluded))

    def _entry(self, info: ModelInfo, base_model: str) -> CatalogueEntry | None:
        card_data = info.card_data.to_dict() if info.card_data is not None else {}
        tags = tuple(t for t in info.tags or () if isinstance(t, str))
        if not serves_base(base_models_of(card_data, tags), base_model):
            return None
        repo_id, sha = info.id, info.sha
        endpoint = self.endpoint

        def resolve_thumbnail(choice: str) -> str:
            if is_absolute_url(choice):
                return choice
            return f"{endpoint}/{repo_id}/resolve/{quote(sha or 'main', safe='')}/{quote(choice)}"

        gated = info.gated
        return build_entry(
            repo_id,
            source="hub",
            card=Card(card_data),
            files=[s.rfilename for s in info.siblings or ()],
            resolve_thumbnail=resolve_thumbnail,
            widget_data=info.widget_data,
            tags=tags,
            downloads=info.downloads or 0,
            likes=info.likes or 0,
            last_modified=iso_utc(info.last_modified) if info.last_modified else None,
            gated=(gated if isinstance(gated, str) else "true") if gated else None,
            revision=sha,
        )

    # ------------------------------------------------------------------ files (thumbnails)

    def file_ref(self, entry: CatalogueEntry) -> RepoFile | None:
        """The repo file behind a Hub entry's thumbnail URL, or None (no thumbnail, or hosted elsewhere)."""
        if entry.source != "hub" or not entry.thumbnail:
            return None
        parts = urlsplit(entry.thumbnail)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parts.path)
        if not m or unquote(m.group(1)) != entry.repo_id:
            return None
        return RepoFile(entry.repo_id, unquote(m.group(2)), unquote(m.group(3)))

    def cached_file(self, ref: RepoFile, cache_dir: Path | str) -> Path | None:
        """The file if it is already in ``cache_dir``; no network."""
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref.repo_id, ref.path, cache_dir=cache_dir, revision=ref.revision)
        return Path(found) if isinstance(found, str) else None

    def download(self, ref: RepoFile, cache_dir: Path | str) -> Path:
        """Download one file into ``cache_dir`` (huggingface_hub's cache layout) and return its path.

        Raises:
            HubUnavailable: the Hub failed, timed out, refused (gated, missing) or cut the download.
        """
        import httpx2

        try:
            path = self.api.hf_hub_download(
                ref.repo_id, ref.path, revision=ref.revision, cache_dir=cache_dir, etag_timeout=self.timeout_s
            )
        except (httpx2.HTTPError, OSError) as e:
            raise HubUnavailable(
                f"downloading {ref.path} from {ref.repo_id} failed: {_one_line(e)}", self.endpoint
            ) from e
        return Path(path)


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
