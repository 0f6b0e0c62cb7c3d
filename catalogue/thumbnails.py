"""Lazy thumbnails: a cached file when there is one, otherwise a background fetch and a placeholder.

For: ``Catalogue.thumbnail_file`` and ``Catalogue.placeholder_thumbnail``. A call never waits on the Hub:
it answers from the cache (or the local entry's own file) or queues a download on a small worker pool and
returns None, so the caller shows the placeholder and asks again later.

Not for: choosing which image is an entry's thumbnail (``entries.choose_thumbnail``) or HTTP (the
``HubSource`` downloads into huggingface_hub's cache layout under ``<cache_dir>/thumbnails``).

Bounds: at most ``workers`` downloads at a time and ``max_pending`` queued (more requests are refused
until the queue drains, and answered None); a failed download is not retried for ``retry_after_s``.
Thumbnails hosted outside the Hub (absolute URLs on other hosts) are never fetched: the UI can show the
URL itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .entries import CatalogueEntry, is_absolute_url
from .errors import HubUnavailable
from .hub import HubSource, RepoFile

__all__ = ["PLACEHOLDER_SIZE", "ThumbnailCache"]

logger = logging.getLogger(__name__)

#: Width and height of the placeholder PNG, in pixels.
PLACEHOLDER_SIZE = 64


class ThumbnailCache:
    """Thumbnail files for catalogue entries, fetched lazily.

    Args:
        cache_dir (`Path`): where downloads and the placeholder go.
        hub (`HubSource`, *optional*): downloads Hub thumbnails; without it only local files are served.
        workers (`int`, *optional*, defaults to 2): concurrent downloads.
        max_pending (`int`, *optional*, defaults to 64): queued plus running downloads.
        retry_after_s (`float`, *optional*, defaults to 300): how long a failed file is not asked for again.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        hub: HubSource | None = None,
        *,
        workers: int = 2,
        max_pending: int = 64,
        retry_after_s: float = 300.0,
    ):
        self.cache_dir = Path(cache_dir)
        self.files_dir = self.cache_dir / "thumbnails"
        self.hub = hub
        self.workers = workers
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._pending: set[RepoFile] = set()
        self._failed: dict[RepoFile, float] = {}  # monotonic time of the failure
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._idle = threading.Condition(self._lock)

    def file_for(self, entry: CatalogueEntry) -> Path | None:
        """The entry's thumbnail file if it is on disk; otherwise queue a download and return None."""
        if entry.thumbnail is None:
            return None
        if entry.source == "local":
            if is_absolute_url(entry.thumbnail):
                return None
            path = Path(entry.thumbnail)
            return path if path.is_file() else None
        if self.hub is None:
            return None
        ref = self.hub.file_ref(entry)
        if ref is None:
            return None
        cached = self.hub.cached_file(ref, self.files_dir)
        if cached is not None:
            return cached
        self._queue(ref)
        return None

    def _queue(self, ref: RepoFile) -> None:
        with self._lock:
            if self._closed or ref in self._pending or len(self._pending) >= self.max_pending:
                return
            failed_at = self._failed.get(ref)
            if failed_at is not None and time.monotonic() - failed_at < self.retry_after_s:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="catalogue-thumb")
            self._pending.add(ref)
            self._executor.submit(self._fetch, ref).add_done_callback(_log_crash)

    def _fetch(self, ref: RepoFile) -> None:
        assert self.hub is not None
        failed = False
        try:
            self.hub.download(ref, self.files_dir)
        except HubUnavailable as e:
            failed = True
            logger.info("thumbnail not fetched: %s", e)
        finally:
            with self._lock:
                self._pending.discard(ref)
                if failed:
                    self._failed[ref] = time.monotonic()
                else:
                    self._failed.pop(ref, None)
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no download is queued or running; return whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def placeholder(self) -> Path:
        """A small grey PNG in the cache folder, made with Pillow the first time it is asked for."""
        path = self.cache_dir / "placeholder.png"
        if path.is_file():
            return path
        from PIL import Image, ImageDraw

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), (200, 200, 205))
        draw = ImageDraw.Draw(image)
        m = PLACEHOLDER_SIZE // 4
        draw.rectangle((m, m, PLACEHOLDER_SIZE - m, PLACEHOLDER_SIZE - m), outline=(150, 150, 160), width=2)
        # Written to a temp file and renamed, so concurrent callers never see half a PNG.
        fd, tmp = tempfile.mkstemp(prefix=".placeholder.", suffix=".png", dir=self.cache_dir)
        replaced = False
        try:
            with os.fdopen(fd, "wb") as f:
                image.save(f, format="PNG")
            os.replace(tmp, path)
            replaced = True
        finally:
            if not replaced:
                Path(tmp).unlink(missing_ok=True)
        return path

    def close(self) -> None:
        """Stop taking downloads and drop queued ones; running ones finish on their own."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _log_crash(future: Future) -> None:
    # Expected failures are handled in _fetch; anything else is a bug the executor would otherwise swallow.
    if not future.cancelled() and future.exception() is not None:
        logger.error("thumbnail fetch crashed", exc_info=future.exception())
