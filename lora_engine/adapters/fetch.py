"""Find an adapter's weight file: on the Hub (huggingface_hub) or in a local folder, after checking its card.

What this is for: turning an adapter id (``owner/name``) into a :class:`AdapterSource`, a local
``.safetensors`` path pinned to a commit, or a typed refusal. On the Hub: the model's API answer (with a
timeout) tells the commit sha, tags, card, widget data and files; ``adapters.repo_rules.assess_repo``
decides whether it is a LoRA for an accepted base model and which file to load (the same verdict the
catalogue lists); the file's size is checked against the cap *before* download; ``hf_hub_download``
fetches it into huggingface_hub's cache pinned to that sha, so a second request is a disk-cache hit with
no GET, and a moved revision gets a new cache entry. Resolutions are remembered for ``resolve_ttl_s`` so a
busy adapter does not cost a Hub round trip per request.

This is the only module of the engine that imports huggingface_hub. It is not for the rules of a LoRA repo
(``adapters.repo_rules``), parsing the file (``adapters.parse``) or caching parsed tensors
(``adapter_cache``); it never opens a weight file.

The model's API answer is read as JSON rather than through ``HfApi.model_info``: huggingface_hub's
``ModelInfo`` parses the card itself and raises ``TypeError`` on some cards (``tags: 5``), which would turn a
hostile card into a server error; the rules read every card value by type instead.

Local folders are laid out like Hub repos (``<root>/<owner>/<name>/README.md`` + weights) and are
searched before the Hub; the built-in demo LoRAs live in one. Their README's bytes and file list go to the
same rules, with ``source="local"`` (a card without ``base_model`` or ``lora`` tag is accepted there).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapter_cache import AdapterKey
from ..errors import (
    AdapterFetchError,
    AdapterGated,
    AdapterNotFound,
    IncompatibleAdapter,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)
from .repo_rules import CARD_FILE, RepoVerdict, assess_repo, card_from_hub, read_card

logger = logging.getLogger(__name__)

__all__ = ["AdapterFetcher", "AdapterSource"]

# Downloads run here so that a caller can stop waiting while huggingface_hub retries; shared by all fetchers.
_background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hub-download")
# Bytes per second below which a download is not worth waiting for (used for the deadline above).
_SLOWEST_USEFUL_RATE = 1_000_000


@dataclass(frozen=True)
class AdapterSource:
    """A usable adapter file on local disk.

    Args:
        key (`AdapterKey`): repo, file and revision: the cache key.
        path (`Path`): the ``.safetensors`` file.
        origin (`str`): ``"local"``, ``"disk"`` (huggingface_hub cache hit) or ``"hub"`` (downloaded now).
    """

    key: AdapterKey
    path: Path
    origin: str


@dataclass(frozen=True)
class _Resolution:
    at: float
    key: AdapterKey | None
    size: int | None
    error: Exception | None


class AdapterFetcher:
    """Resolves adapter ids to local files; safe to call from several threads.

    Args:
        accepted_base_models (`tuple[str, ...]`): ``base_model`` ids our pipeline accepts.
        local_dirs (`tuple[Path, ...]`): local LoRA folders, searched first.
        cache_dir (`str`, *optional*): huggingface_hub cache; None for its default.
        endpoint (`str`, *optional*): the Hub; None for huggingface_hub's (``HF_ENDPOINT``).
        token (`str | bool`, *optional*): None lets huggingface_hub find ``HF_TOKEN``.
        timeout_s (`float`): per Hub call.
        max_bytes (`int`): the size cap, checked before download.
        resolve_ttl_s (`float`): how long a resolution (repo -> sha, file) is reused.
    """

    def __init__(
        self,
        *,
        accepted_base_models: tuple[str, ...],
        local_dirs: tuple[Path, ...] = (),
        cache_dir: str | None = None,
        endpoint: str | None = None,
        token: str | bool | None = None,
        timeout_s: float = 20.0,
        max_bytes: int = 1 << 30,
        resolve_ttl_s: float = 300.0,
    ):
        self.accepted = tuple(accepted_base_models)
        self.local_dirs = tuple(Path(d) for d in local_dirs)
        self.cache_dir = cache_dir
        self.endpoint = endpoint
        self.token = token
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.resolve_ttl_s = resolve_ttl_s
        self.refusal_ttl_s = min(resolve_ttl_s, 60.0)
        self._resolved: dict[str, _Resolution] = {}
        # adapter id -> (monotonic time, the base models its card names), for card_base_models.
        self._bases: dict[str, tuple[float, tuple[str, ...]]] = {}
        # Local folders: (folder mtime, card mtime) -> the source found then.
        self._local: dict[str, tuple[tuple[int, int], AdapterSource]] = {}
        self._lock = threading.Lock()

    def local_dir(self, adapter_id: str) -> Path | None:
        for root in self.local_dirs:
            candidate = root / adapter_id
            if (candidate / "README.md").is_file() or candidate.is_dir():
                return candidate
        return None

    def fetch(self, adapter_id: str) -> AdapterSource:
        """Resolve, check and download (if needed) the adapter's weight file.

        Raises:
            AdapterNotFound, AdapterGated, AdapterFetchError, IncompatibleAdapter, UnsafeAdapterFile
        """
        local = self.local_dir(adapter_id)
        if local is not None:
            return self._fetch_local(adapter_id, local)
        key, size = self._resolve(adapter_id)
        self._check_size(adapter_id, key, size)
        try:
            return self._download(adapter_id, key, size)
        except AdapterNotFound:
            # The remembered revision may have moved on the Hub since it was resolved (a force-push, a
            # deleted file): resolve afresh once; a real absence fails again, with the same error.
            self.forget(adapter_id)
            fresh, size = self._resolve(adapter_id)
            if fresh == key:
                raise
            self._check_size(adapter_id, fresh, size)
            return self._download(adapter_id, fresh, size)

    def resolve(self, adapter_id: str) -> AdapterKey:
        """Check the card and choose the file, without downloading it (cached like ``fetch``'s resolution)."""
        local = self.local_dir(adapter_id)
        if local is not None:
            return self._fetch_local(adapter_id, local).key
        key, size = self._resolve(adapter_id)
        self._check_size(adapter_id, key, size)
        return key

    def card_base_models(self, adapter_id: str) -> tuple[str, ...]:
        """The base models the adapter's card names, whether or not we accept them; nothing is downloaded.

        For routing a request to whichever process serves that base (``serving.cluster``). Read from the local
        folder's card, else from the Hub's model answer, by ``repo_rules``; remembered for ``resolve_ttl_s``.

        Raises:
            IncompatibleAdapter: the card does not say LoRA (Hub repos), or names no base model.
            CorruptAdapter: a local folder's README is not text.
            AdapterNotFound, AdapterGated, AdapterFetchError: the Hub's answer, as for ``fetch``.
        """
        with self._lock:
            hit = self._bases.get(adapter_id)
        if hit is not None and time.monotonic() - hit[0] < self.resolve_ttl_s:
            return hit[1]
        local = self.local_dir(adapter_id)
        if local is not None:
            verdict = _local_verdict(adapter_id, local, accepted=None)
        else:
            verdict, _ = _hub_verdict(adapter_id, self._model_json(adapter_id, files_metadata=False), accepted=None)
        if verdict.refusal is not None and verdict.refusal.about_card:
            raise verdict.refusal.to_error(adapter_id)
        if not verdict.base_models:
            # A local card may leave base_model out (the folder is meant for this server), but routing needs one.
            raise IncompatibleAdapter(adapter_id, "its card names no base_model, so it cannot be matched to ours")
        with self._lock:
            self._bases[adapter_id] = (time.monotonic(), verdict.base_models)
        return verdict.base_models

    def _check_size(self, adapter_id: str, key: AdapterKey, size: int | None) -> None:
        if size is not None and size > self.max_bytes:
            raise UnsafeAdapterFile(
                adapter_id, f"{key.weight_name} is {size} bytes, over the {self.max_bytes}-byte size cap"
            )

    def known_key(self, adapter_id: str) -> AdapterKey | None:
        """The adapter's key if it can be had without the network (local, or a fresh resolution); else None.

        Lets the engine find an adapter in its RAM tier without a Hub round trip or a disk check.
        """
        local = self.local_dir(adapter_id)
        if local is not None:
            return self._fetch_local(adapter_id, local).key
        with self._lock:
            hit = self._resolved.get(adapter_id)
        if hit is not None and hit.key is not None and time.monotonic() - hit.at < self.resolve_ttl_s:
            return hit.key
        return None

    def _fetch_local(self, adapter_id: str, folder: Path) -> AdapterSource:
        # Called on every request for a local adapter: a few stats decide whether the card must be read and
        # the folder walked again (adding/removing files, editing the card or rewriting the weights shows).
        readme = folder / CARD_FILE
        stamp = (folder.stat().st_mtime_ns, readme.stat().st_mtime_ns if readme.is_file() else 0)
        with self._lock:
            hit = self._local.get(adapter_id)
        if hit is not None and hit[0] == stamp and hit[1].path.is_file():
            if hit[1].key.revision == f"local-{hit[1].path.stat().st_mtime_ns}":
                return hit[1]
        weight = _local_verdict(adapter_id, folder, accepted=self.accepted).raise_if_refused()
        # The weight file's mtime stands in for a commit sha, so a rewritten file is a new cache key.
        revision = f"local-{(folder / weight).stat().st_mtime_ns}"
        source = AdapterSource(AdapterKey(adapter_id, weight, revision), folder / weight, "local")
        with self._lock:
            self._local[adapter_id] = (stamp, source)
        return source

    def _resolve(self, adapter_id: str) -> tuple[AdapterKey, int | None]:
        now = time.monotonic()
        with self._lock:
            hit = self._resolved.get(adapter_id)
        if hit is not None and now - hit.at < (self.resolve_ttl_s if hit.error is None else self.refusal_ttl_s):
            if hit.error is not None:
                raise hit.error
            return hit.key, hit.size
        try:
            key, size = self._resolve_on_hub(adapter_id)
        except (IncompatibleAdapter, UnsafeAdapterFile, AdapterNotFound, UnsupportedAdapterFormat) as e:
            # A verdict about this repo as it is now: remember it briefly so a client retrying in a loop
            # does not cost a Hub round trip each time. Fetch errors are not remembered: they may pass.
            with self._lock:
                self._resolved[adapter_id] = _Resolution(now, None, None, e)
            raise
        with self._lock:
            self._resolved[adapter_id] = _Resolution(now, key, size, None)
        return key, size

    def _resolve_on_hub(self, adapter_id: str) -> tuple[AdapterKey, int | None]:
        data = self._model_json(adapter_id, files_metadata=True)
        verdict, sizes = _hub_verdict(adapter_id, data, accepted=self.accepted)
        weight = verdict.raise_if_refused()
        sha = data.get("sha")
        return AdapterKey(adapter_id, weight, sha if isinstance(sha, str) and sha else "main"), sizes.get(weight)

    def _model_json(self, adapter_id: str, *, files_metadata: bool) -> dict[str, Any]:
        """The Hub's ``/api/models/<id>`` answer as JSON: the request ``HfApi.model_info`` makes, with its errors
        (see the module docstring for why it is not called)."""
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        endpoint = (self.endpoint or constants.ENDPOINT).rstrip("/")
        with _hub_errors(adapter_id):
            response = get_session().get(
                f"{endpoint}/api/models/{adapter_id}",
                headers=build_hf_headers(token=self.token),
                params={"blobs": True} if files_metadata else {},
                timeout=self.timeout_s,
            )
            hf_raise_for_status(response)
        try:
            data = response.json()
        except ValueError:  # json.JSONDecodeError: not JSON at all
            data = None
        if not isinstance(data, dict):
            raise AdapterFetchError(adapter_id, "the Hub's answer about the repo is not a JSON object")
        return data

    def _download(self, adapter_id: str, key: AdapterKey, size: int | None) -> AdapterSource:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(key.repo_id, key.weight_name, cache_dir=self.cache_dir, revision=key.revision)
        if isinstance(cached, str):
            return AdapterSource(key, Path(cached), "disk")
        # huggingface_hub retries 5xx answers and timeouts with backoff (about 23 s in all), and a large file
        # takes as long as it takes; so the wait is bounded by a deadline that allows for the file's size at a
        # slow-but-working rate. Past it the request fails clearly; the download itself goes on in the
        # background and lands in the cache for a later request.
        deadline = 3 * self.timeout_s + (size or 0) / _SLOWEST_USEFUL_RATE
        download = _background.submit(
            hf_hub_download,
            key.repo_id,
            key.weight_name,
            revision=key.revision,
            cache_dir=self.cache_dir,
            endpoint=self.endpoint,
            token=self.token,
            etag_timeout=self.timeout_s,
        )
        try:
            with _hub_errors(adapter_id):
                path = download.result(timeout=deadline)
        except FutureTimeout:
            raise AdapterFetchError(
                adapter_id, f"the Hub did not deliver {key.weight_name} within {deadline:.0f} s; try again later"
            ) from None
        path = Path(path)
        size = path.stat().st_size
        if size > self.max_bytes:
            raise UnsafeAdapterFile(
                adapter_id, f"{key.weight_name} is {size} bytes, over the {self.max_bytes}-byte cap"
            )
        return AdapterSource(key, path, "hub")

    def forget(self, adapter_id: str) -> None:
        """Drop a remembered resolution (after a failure that a newer revision may fix)."""
        with self._lock:
            self._resolved.pop(adapter_id, None)


def _local_verdict(adapter_id: str, folder: Path, *, accepted: tuple[str, ...] | None) -> RepoVerdict:
    """The rules' verdict on a local folder: its README's bytes and its files, as the catalogue reads them."""
    readme = folder / CARD_FILE
    card = read_card(readme.read_bytes()) if readme.is_file() else None
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return assess_repo(adapter_id, card=card, files=files, accepted_base_models=accepted, source="local")


def _hub_verdict(
    adapter_id: str, data: dict[str, Any], *, accepted: tuple[str, ...] | None
) -> tuple[RepoVerdict, dict[str, int]]:
    """The rules' verdict on the Hub's answer about a repo, and the sizes of its files (when it gave them)."""
    siblings = data.get("siblings")
    files: list[str] = []
    sizes: dict[str, int] = {}
    for sibling in siblings if isinstance(siblings, list) else ():
        name = sibling.get("rfilename") if isinstance(sibling, dict) else None
        if not isinstance(name, str):
            continue
        files.append(name)
        size = sibling.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            sizes[name] = size
    verdict = assess_repo(
        adapter_id,
        card=card_from_hub(data.get("cardData")),
        files=files,
        tags=data.get("tags"),
        widget_data=data.get("widgetData"),
        accepted_base_models=accepted,
        source="hub",
    )
    return verdict, sizes


class _hub_errors:
    """Translate huggingface_hub/httpx errors into the engine's typed errors, naming the adapter."""

    def __init__(self, adapter_id: str):
        self.adapter_id = adapter_id

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        import httpx2
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        aid = self.adapter_id
        if isinstance(exc, LocalEntryNotFoundError):
            # huggingface_hub's way of saying "the Hub failed and the file is not cached".
            raise AdapterFetchError(aid, f"the Hub could not be reached and the file is not cached ({exc})") from None
        if isinstance(exc, GatedRepoError):
            raise AdapterGated(aid, "the repo is gated; accept its terms on the Hub and set HF_TOKEN") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise AdapterNotFound(aid, "no such repo on the Hub (or it is private)") from None
        if isinstance(exc, RevisionNotFoundError):
            raise AdapterNotFound(aid, "the requested revision does not exist") from None
        if isinstance(exc, EntryNotFoundError):
            raise AdapterNotFound(aid, "the weight file is not in the repo") from None
        if isinstance(exc, OfflineModeIsEnabled):
            raise AdapterFetchError(aid, "not in the local cache and HF_HUB_OFFLINE is set") from None
        if isinstance(exc, (HfHubHTTPError, httpx2.HTTPError, OSError)):
            logger.warning("Hub call for %s failed: %s", aid, exc)
            raise AdapterFetchError(aid, f"the Hub did not answer usefully ({type(exc).__name__}: {exc})") from None
        return False
