"""The Hub source: lists a base model's LoRAs on the Hugging Face Hub and fetches thumbnail files.

For: the only code in ``catalogue`` that uses huggingface_hub (imported lazily, so ``import catalogue``
stays light). An ``HfApi`` is injected (or built from ``endpoint``/``token``); nothing global is changed.

Not for: deciding what an entry looks like (``entries.build_entry``), when to refresh, or what to serve
when the Hub is down (``Catalogue``).

What is listed: the repos tagged ``lora`` and ``base_model:adapter:<base>``, by downloads, with their card,
files, sha, widget data, ... in one request per page (``HfApi.list_models``' query, through
huggingface_hub's ``paginate``, which follows the ``Link`` pages); then those tagged ``lora`` and
``base_model:<base>`` but not as an adapter, whose details are read from ``/api/models/<id>``
(``HfApi.model_info``'s request), as are those of any listed repo whose listing lacks its files. Each repo
then goes to ``lora_engine.adapters.repo_rules.assess_repo``, the rules the engine serves by: one it refuses
as ``IncompatibleAdapter`` (its card names other base models, or it is not a LoRA) is left out
(``HubListing.excluded``), so a list-valued ``base_model`` containing ours is kept; any other refusal is
listed as not servable, with the reason.

The answers are read as JSON rather than as huggingface_hub's ``ModelInfo``: that class parses the card
itself and raises ``TypeError`` on some cards (``tags: 5``), which would make one hostile repo fail the whole
listing; the rules read every card value by type instead.

Timeouts, since huggingface_hub sets none on its shared client:

* ``/api/models/<id>``: ``timeout_s`` per call.
* the listing pages take no timeout and are retried on 5xx and timeouts with ~23 s of backoff, so the whole listing
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
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from lora_engine.adapters.repo_rules import assess_repo, card_from_hub
from lora_engine.errors import IncompatibleAdapter

from .entries import CatalogueEntry, build_entry, is_absolute_url, iso_utc
from .errors import HubTimeout, HubUnavailable, InvalidCatalogueConfig

if TYPE_CHECKING:
    from huggingface_hub import HfApi

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
        excluded (`tuple[str, ...]`): repo ids the Hub listed that the rules say are not for this base model
            (the card names other base models, or the repo is not a LoRA).
    """

    entries: tuple[CatalogueEntry, ...]  # source="hub", de-duplicated by repo id
    fetched_at: datetime  # aware UTC
    excluded: tuple[str, ...] = ()  # listed by the Hub but refused as IncompatibleAdapter by repo_rules


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

        infos: dict[str, dict[str, Any]] = {}
        for info in self._list_models(["lora", f"base_model:adapter:{base_model}"], LIST_EXPAND):
            if cancel.is_set():
                raise _Cancelled()
            infos.setdefault(info["id"], info)
        extras: list[str] = []
        for info in self._list_models(["lora", f"base_model:{base_model}"], ["downloads"]):
            if cancel.is_set():
                raise _Cancelled()
            if info["id"] not in infos and info["id"] not in extras:
                extras.append(info["id"])
        todo = [rid for rid, info in infos.items() if info.get("siblings") is None] + extras
        for repo_id in todo:
            if cancel.is_set():
                raise _Cancelled()
            try:
                infos[repo_id] = self._model_info(repo_id)
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
            entry = self._entry(repo_id, info, base_model)
            if entry is None:
                excluded.append(repo_id)
            else:
                entries.append(entry)
        if excluded:
            logger.info(
                "left out %d repos that are not LoRAs for %s: %s", len(excluded), base_model, ", ".join(excluded[:10])
            )
        return HubListing(tuple(entries), datetime.now(UTC), tuple(excluded))

    def _headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        api = self.api
        return build_hf_headers(
            token=api.token,
            library_name=api.library_name,
            library_version=api.library_version,
            user_agent=api.user_agent,
            headers=api.headers,
        )

    def _list_models(self, filters: list[str], expand: list[str]) -> Iterator[dict[str, Any]]:
        """The listing's items as JSON objects: ``HfApi.list_models``' request, without its ``ModelInfo``."""
        from huggingface_hub.utils import paginate

        params = {"filter": filters, "sort": "downloads", "limit": self.max_entries, "expand": expand}
        items = paginate(f"{self.endpoint}/api/models", params=params, headers=self._headers())
        for item in islice(items, self.max_entries):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                yield item

    def _model_info(self, repo_id: str) -> dict[str, Any]:
        """``/api/models/<id>`` as a JSON object: ``HfApi.model_info``'s request, without its ``ModelInfo``.

        Raises:
            HfHubHTTPError: the Hub's error answer (``hf_raise_for_status``).
            json.JSONDecodeError: an answer that is not JSON.
            HubUnavailable: JSON that is not an object.
        """
        from huggingface_hub.utils import get_session, hf_raise_for_status

        response = get_session().get(
            f"{self.endpoint}/api/models/{repo_id}", headers=self._headers(), timeout=self.timeout_s
        )
        hf_raise_for_status(response)
        data = response.json()
        if not isinstance(data, dict):
            raise HubUnavailable(f"the Hub's answer about {repo_id} is not a JSON object", self.endpoint)
        return data

    def _entry(self, repo_id: str, info: dict[str, Any], base_model: str) -> CatalogueEntry | None:
        card = card_from_hub(info.get("cardData"))
        siblings = info.get("siblings")
        files = [
            s["rfilename"]
            for s in (siblings if isinstance(siblings, list) else ())
            if isinstance(s, dict) and isinstance(s.get("rfilename"), str)
        ]
        widget_data = info.get("widgetData")
        verdict = assess_repo(
            repo_id,
            card=card,
            files=files,
            tags=info.get("tags"),
            widget_data=widget_data,
            accepted_base_models=(base_model,),
            source="hub",
        )
        if verdict.refusal is not None and issubclass(verdict.refusal.error, IncompatibleAdapter):
            return None
        sha = info.get("sha") if isinstance(info.get("sha"), str) else None
        endpoint = self.endpoint

        def resolve_thumbnail(choice: str) -> str:
            if is_absolute_url(choice):
                return choice
            return f"{endpoint}/{repo_id}/resolve/{quote(sha or 'main', safe='')}/{quote(choice)}"

        gated = info.get("gated")
        return build_entry(
            verdict,
            card=card,
            files=files,
            resolve_thumbnail=resolve_thumbnail,
            widget_data=widget_data,
            downloads=info.get("downloads") or 0,
            likes=info.get("likes") or 0,
            last_modified=_iso_or_none(info.get("lastModified")),
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


def _iso_or_none(value: Any) -> str | None:
    """The Hub's ``lastModified`` (``2024-01-02T03:04:05.000Z``) as an entry's time, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return iso_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
