"""Find an adapter's weight file: on the Hub (huggingface_hub) or in a local folder, after checking its card.

What this is for: turning an adapter id (``owner/name``) into a :class:`AdapterSource`, a local
``.safetensors`` path pinned to a commit, or a typed refusal. On the Hub: ``model_info`` (with a timeout)
tells the commit sha, tags, card and files; the card must say LoRA and name an accepted ``base_model``
(string or list); one ``.safetensors`` file is chosen; its size is checked against the cap *before*
download; ``hf_hub_download`` fetches it into huggingface_hub's cache pinned to that sha, so a second
request is a disk-cache hit with no GET, and a moved revision gets a new cache entry. Resolutions are
remembered for ``resolve_ttl_s`` so a busy adapter does not cost a Hub round trip per request.

This is the only module of the engine that imports huggingface_hub. It is not for parsing the file
(``adapters.parse``) or caching parsed tensors (``adapter_cache``); it never opens a weight file.

Local folders are laid out like Hub repos (``<root>/<owner>/<name>/README.md`` + weights) and are
searched before the Hub; the built-in demo LoRAs live in one.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..adapter_cache import AdapterKey
from ..errors import (
    AdapterFetchError,
    AdapterGated,
    AdapterNotFound,
    IncompatibleAdapter,
    UnsafeAdapterFile,
)

logger = logging.getLogger(__name__)

__all__ = ["AdapterFetcher", "AdapterSource", "card_bases", "choose_weight_file", "read_card"]

# Downloads run here so that a caller can stop waiting while huggingface_hub retries; shared by all fetchers.
_background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hub-download")
# Bytes per second below which a download is not worth waiting for (used for the deadline above).
_SLOWEST_USEFUL_RATE = 1_000_000
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"


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


def read_card(text: str) -> dict:
    """The YAML front matter of a model card (README.md), or ``{}`` when it has none or it is malformed."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def choose_weight_file(adapter_id: str, files: list[str], card: dict) -> str:
    """Pick the LoRA weight file among a repo's files.

    Order: the card's explicit choice (``weight_name``), then the only top-level ``.safetensors`` file, then
    diffusers' default name ``pytorch_lora_weights.safetensors``.

    Raises:
        UnsafeAdapterFile: only pickle weights (``.bin``, ``.ckpt``, ...) are there.
        AdapterNotFound: no weight file at all, or several with nothing to choose between them.
    """
    chosen = card.get("weight_name")
    if isinstance(chosen, str) and chosen in files:
        if not chosen.endswith(".safetensors"):
            raise UnsafeAdapterFile(adapter_id, f"the card names {chosen!r}; only .safetensors files are loaded")
        return chosen
    # Top level only: diffusers pipelines in the same repo keep their safetensors in sub-folders.
    safetensors = sorted(f for f in files if f.endswith(".safetensors") and "/" not in f)
    if len(safetensors) == 1:
        return safetensors[0]
    if _DIFFUSERS_LORA_NAME in safetensors:
        return _DIFFUSERS_LORA_NAME
    if safetensors:
        raise AdapterNotFound(
            adapter_id,
            f"has {len(safetensors)} .safetensors files ({', '.join(safetensors[:4])}) and its card "
            "names none of them as `weight_name`",
        )
    pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
    if pickles:
        raise UnsafeAdapterFile(
            adapter_id,
            f"has only pickle weights ({', '.join(pickles[:3])}); pickles are never loaded, only .safetensors",
        )
    raise AdapterNotFound(adapter_id, "has no .safetensors weight file")


def _base_models(card: dict, tags: list[str]) -> list[str]:
    base = card.get("base_model")
    if isinstance(base, str):
        found = [base]
    elif isinstance(base, list):
        found = [b for b in base if isinstance(b, str)]
    else:
        found = []
    for tag in tags:
        if tag.startswith("base_model:"):
            found.append(tag.rsplit(":", 1)[-1] if tag.count(":") >= 2 else tag.split(":", 1)[1])
    return list(dict.fromkeys(found))


def card_bases(adapter_id: str, card: dict, tags: list[str]) -> list[str]:
    """The base models a LoRA's card and tags name (``base_model``, ``base_model:`` tags), in order.

    Raises:
        IncompatibleAdapter: the card and tags do not say LoRA, or name no base model.
    """
    card_tags = card.get("tags") or []
    all_tags = set(tags) | {t for t in card_tags if isinstance(t, str)}
    is_lora = "lora" in all_tags or any(t.startswith("base_model:adapter:") for t in all_tags)
    if not is_lora:
        raise IncompatibleAdapter(adapter_id, "its card and tags do not say it is a LoRA (no 'lora' tag)")
    bases = _base_models(card, tags)
    if not bases:
        raise IncompatibleAdapter(adapter_id, "its card names no base_model, so it cannot be matched to ours")
    return bases


def check_card(adapter_id: str, card: dict, tags: list[str], accepted: tuple[str, ...]) -> None:
    """The card/tags must say LoRA and name an accepted base model.

    Raises:
        IncompatibleAdapter: naming what was found.
    """
    bases = card_bases(adapter_id, card, tags)
    if not set(bases) & set(accepted):
        raise IncompatibleAdapter(adapter_id, f"it is a LoRA for {', '.join(bases)}, not for {' or '.join(accepted)}")


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
        folder's card, else from the Hub's ``model_info``; remembered for ``resolve_ttl_s``.

        Raises:
            IncompatibleAdapter: the card does not say LoRA, or names no base model.
            AdapterNotFound, AdapterGated, AdapterFetchError: the Hub's answer, as for ``fetch``.
        """
        with self._lock:
            hit = self._bases.get(adapter_id)
        if hit is not None and time.monotonic() - hit[0] < self.resolve_ttl_s:
            return hit[1]
        local = self.local_dir(adapter_id)
        if local is not None:
            readme = local / "README.md"
            card = read_card(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
            bases = card_bases(adapter_id, card, [])
        else:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=self.endpoint, token=self.token)
            with _hub_errors(adapter_id):
                info = api.model_info(adapter_id, timeout=self.timeout_s)
            card = info.card_data.to_dict() if info.card_data is not None else {}
            bases = card_bases(adapter_id, card, list(info.tags or []))
        with self._lock:
            self._bases[adapter_id] = (time.monotonic(), tuple(bases))
        return tuple(bases)

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
        readme = folder / "README.md"
        stamp = (folder.stat().st_mtime_ns, readme.stat().st_mtime_ns if readme.is_file() else 0)
        with self._lock:
            hit = self._local.get(adapter_id)
        if hit is not None and hit[0] == stamp and hit[1].path.is_file():
            if hit[1].key.revision == f"local-{hit[1].path.stat().st_mtime_ns}":
                return hit[1]
        card = read_card(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
        check_card(adapter_id, card, [], self.accepted)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        weight = choose_weight_file(adapter_id, files, card)
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
        except (IncompatibleAdapter, UnsafeAdapterFile, AdapterNotFound) as e:
            # A verdict about this repo as it is now: remember it briefly so a client retrying in a loop
            # does not cost a Hub round trip each time. Fetch errors are not remembered: they may pass.
            with self._lock:
                self._resolved[adapter_id] = _Resolution(now, None, None, e)
            raise
        with self._lock:
            self._resolved[adapter_id] = _Resolution(now, key, size, None)
        return key, size

    def _resolve_on_hub(self, adapter_id: str) -> tuple[AdapterKey, int | None]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        with _hub_errors(adapter_id):
            info = api.model_info(adapter_id, files_metadata=True, timeout=self.timeout_s)
        card = info.card_data.to_dict() if info.card_data is not None else {}
        check_card(adapter_id, card, list(info.tags or []), self.accepted)
        siblings = {s.rfilename: s for s in (info.siblings or [])}
        weight = choose_weight_file(adapter_id, list(siblings), card)
        size = getattr(siblings[weight], "size", None)
        return AdapterKey(adapter_id, weight, info.sha or "main"), size

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
