"""The local source: a folder of adapters laid out like Hub repos, read into catalogue entries.

For: scanning ``<root>/<owner>/<name>/`` folders (a ``README.md`` card, the weight file, images), such as
the demo LoRAs that ``lora_engine.demo.model`` writes under ``<demo root>/loras``. Entries have
``source="local"``, ``local_dir`` set, no downloads or likes, and a thumbnail that is a local file path.

Not for: downloading, validating weights (the engine does that when it loads one) or the Hub.

Rules beyond those in ``entries``:

* A card whose ``base_model`` names other models excludes the adapter (logged). A card with no
  ``base_model`` is kept: whoever put the folder there meant it for this server.
* Hidden files and folders (``.git``, ``.hub.json``, ``.cache``) are not repo files.
* A folder that cannot be read is skipped with a warning; a missing root is a ``LocalSourceError``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .entries import CatalogueEntry, base_models_of, build_entry, is_absolute_url, iso_utc, parse_card, serves_base
from .errors import LocalSourceError

__all__ = ["LocalSource"]

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"


class LocalSource:
    """Adapters in ``root/<owner>/<name>/``.

    Args:
        root (`Path` or `str`): the folder holding one sub-folder per owner.

    Example:
        >>> LocalSource(ensure_demo_assets().loras_dir).load(DEMO_BASE_MODEL_ID)
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalSource({str(self.root)!r})"

    def load(self, base_model: str) -> tuple[CatalogueEntry, ...]:
        """Read every adapter folder made for ``base_model``, sorted by repo id.

        Raises:
            LocalSourceError: ``root`` is missing, not a folder, or cannot be listed.
        """
        if not self.root.is_dir():
            raise LocalSourceError(
                f"local adapters folder {str(self.root)!r} does not exist or is not a folder", str(self.root)
            )
        try:
            owners = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            raise LocalSourceError(f"cannot list local adapters folder {str(self.root)!r}: {e}", str(self.root)) from e
        entries: list[CatalogueEntry] = []
        for owner in owners:
            try:
                repos = sorted(p for p in owner.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as e:
                logger.warning("skipping unreadable folder %s: %s", owner, e)
                continue
            for folder in repos:
                try:
                    entry = self._read(folder, f"{owner.name}/{folder.name}", base_model)
                except (OSError, UnicodeDecodeError) as e:
                    logger.warning("skipping local adapter %s: %s", folder, e)
                    continue
                if entry is not None:
                    entries.append(entry)
        return tuple(entries)

    def _read(self, folder: Path, repo_id: str, base_model: str) -> CatalogueEntry | None:
        paths = [
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        if not paths:
            return None
        files = sorted(p.relative_to(folder).as_posix() for p in paths)
        card = None
        if CARD_FILE in files:
            card = parse_card((folder / CARD_FILE).read_text(encoding="utf-8"))
        tags = tuple(t for t in (card.data.get("tags") if card else None) or () if isinstance(t, str))
        bases = base_models_of(card.data if card else {}, tags)
        if bases and not serves_base(bases, base_model):
            logger.info("local adapter %s is for %s, not %s: left out", repo_id, ", ".join(bases), base_model)
            return None
        root = folder.resolve()

        def resolve_thumbnail(choice: str) -> str | None:
            if is_absolute_url(choice):
                return choice
            target = (folder / choice).resolve()
            # A card may not point outside its own folder (``../../etc/passwd``).
            return str(target) if target.is_relative_to(root) and target.is_file() else None

        return build_entry(
            repo_id,
            source="local",
            card=card,
            files=files,
            resolve_thumbnail=resolve_thumbnail,
            tags=tags,
            last_modified=iso_utc(max(p.stat().st_mtime for p in paths)),
            local_dir=str(folder),
        )
