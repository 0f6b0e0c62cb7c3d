"""The catalogue's Hub entries saved as versioned JSON, so the app starts with a full catalogue offline.

For: the file format, its name in the cache folder, atomic writes (temp file + ``os.replace``), and strict
reading (``read_snapshot`` raises ``SnapshotError``) or forgiving reading (``load_snapshot`` logs a warning
and returns None for a missing, corrupt, other-version or other-base file).

Not for: deciding when to save or what to serve (``Catalogue`` does), or local entries (they are read
from their folder at every start).

Format (``format_version`` 1)::

    {"format_version": 1, "saved_at": "2024-05-01T12:00:00Z", "base_model": "owner/name",
     "endpoint": "https://huggingface.co", "entries": [CatalogueEntry.to_dict(), ...]}

``saved_at`` is when the entries were fetched from the Hub, which is what "snapshot age" measures.
``endpoint`` (optional) is the Hub the thumbnail URLs point at, so a reader on another endpoint (a loopback
Hub on a new port) can rebase them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .entries import CatalogueEntry, iso_utc
from .errors import InvalidEntry, SnapshotError

__all__ = ["FORMAT_VERSION", "Snapshot", "load_snapshot", "read_snapshot", "save_snapshot", "snapshot_path"]

logger = logging.getLogger(__name__)

#: The version this code writes and the only one it reads.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    """A saved catalogue.

    Args:
        base_model (`str`): the base model the entries are for.
        saved_at (`datetime`): when the entries were fetched (UTC).
        entries (`tuple[CatalogueEntry, ...]`): the Hub entries.
        endpoint (`str`, *optional*): the Hub they were listed from.
    """

    base_model: str  # entries are adapters for this base model
    saved_at: datetime  # aware UTC; when the Hub answered, not when the file was written
    entries: tuple[CatalogueEntry, ...]  # Hub entries only; local ones are re-read at start
    endpoint: str | None = None  # the Hub the entries' thumbnail URLs point at


def snapshot_path(cache_dir: Path | str, base_model: str) -> Path:
    """The snapshot file for ``base_model`` in ``cache_dir`` (one file per base model)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", base_model).strip("-") or "base"
    return Path(cache_dir) / f"catalogue-{slug}.json"


def save_snapshot(path: Path | str, snapshot: Snapshot) -> None:
    """Write ``snapshot`` to ``path`` atomically: readers see the old file or the new one, never half of one.

    Raises:
        OSError: the folder cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "saved_at": iso_utc(snapshot.saved_at),
        "base_model": snapshot.base_model,
        "endpoint": snapshot.endpoint,
        "entries": [e.to_dict() for e in snapshot.entries],
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    replaced = False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:  # whatever went wrong (it propagates), leave no temp file behind
            Path(tmp).unlink(missing_ok=True)


def read_snapshot(path: Path | str, base_model: str | None = None) -> Snapshot:
    """Read and check a snapshot file.

    Args:
        path (`Path`): the file.
        base_model (`str`, *optional*): when given, the file must be for this base model.

    Raises:
        SnapshotError: missing, unreadable, not JSON, another format version or base model, or a bad entry.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e}", str(path)) from e
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SnapshotError(f"snapshot {path} is not valid JSON: {e}", str(path)) from e
    if not isinstance(data, dict):
        raise SnapshotError(f"snapshot {path} must hold a JSON object but holds {type(data).__name__}", str(path))
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot {path} has format_version {version!r}; this code reads {FORMAT_VERSION} only", str(path)
        )
    saved_base = data.get("base_model")
    if not isinstance(saved_base, str):
        raise SnapshotError(f"snapshot {path} has no base_model string: {saved_base!r}", str(path))
    if base_model is not None and saved_base != base_model:
        raise SnapshotError(f"snapshot {path} is for base model {saved_base!r}, not {base_model!r}", str(path))
    try:
        saved_at = datetime.strptime(str(data.get("saved_at")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as e:
        raise SnapshotError(f"snapshot {path} has a bad saved_at {data.get('saved_at')!r}", str(path)) from e
    endpoint = data.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise SnapshotError(f"snapshot {path} has a bad endpoint {endpoint!r}", str(path))
    records = data.get("entries")
    if not isinstance(records, list):
        raise SnapshotError(f"snapshot {path} has no entries list", str(path))
    try:
        entries = tuple(CatalogueEntry.from_dict(r) for r in records)
    except InvalidEntry as e:
        raise SnapshotError(f"snapshot {path} has a bad entry: {e}", str(path)) from e
    return Snapshot(base_model=saved_base, saved_at=saved_at, entries=entries, endpoint=endpoint)


def load_snapshot(path: Path | str, base_model: str) -> Snapshot | None:
    """Like ``read_snapshot``, but a missing file gives None and a bad one a log warning and None."""
    if not Path(path).exists():
        return None
    try:
        return read_snapshot(path, base_model)
    except SnapshotError as e:
        logger.warning("ignoring the catalogue snapshot: %s", e)
        return None
