"""The local source: a folder of adapters laid out like Hub repos, read into catalogue entries.

For: scanning ``<root>/<owner>/<name>/`` folders (a ``README.md`` card, the weight file, images), such as
the demo LoRAs that ``lora_engine.demo.model`` writes under ``<demo root>/loras``. Entries have
``source="local"``, ``local_dir`` set, no downloads or likes, and a thumbnail that is a local file path.

Not for: downloading, validating weights (the engine does that when it loads one) or the Hub.

Whether a folder is a servable LoRA is decided by ``lora_engine.adapters.repo_rules.assess_repo`` with
``source="local"``, from the README's bytes and the file list, exactly as the engine's fetcher decides it:

* A card whose ``base_model`` names other models excludes the adapter (logged). A card with no
  ``base_model`` or no ``lora`` tag is kept: whoever put the folder there meant it for this server.
* Hidden files and folders (``.git``, ``.hub.json``, ``.cache``) are not repo files.
* A README that is not UTF-8 text lists the adapter as not servable, with the reason; it never stops the
  catalogue. A folder that cannot be read is skipped with a warning; a missing root is a ``LocalSourceError``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lora_engine.adapters.repo_rules import CARD_FILE, assess_repo, read_card
from lora_engine.errors import IncompatibleAdapter

from .entries import CatalogueEntry, build_entry, is_absolute_url, iso_utc
from .errors import LocalSourceError

__all__ = ["LocalSource"]

logger = logging.getLogger(__name__)


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
                except OSError as e:
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
        card = read_card((folder / CARD_FILE).read_bytes()) if CARD_FILE in files else None
        verdict = assess_repo(repo_id, card=card, files=files, accepted_base_models=(base_model,), source="local")
        if verdict.refusal is not None and issubclass(verdict.refusal.error, IncompatibleAdapter):
            logger.info("local adapter %s left out: %s", repo_id, verdict.reason)
            return None
        root = folder.resolve()

        def resolve_thumbnail(choice: str) -> str | None:
            if is_absolute_url(choice):
                return choice
            target = (folder / choice).resolve()
            # A card may not point outside its own folder (``../../etc/passwd``).
            return str(target) if target.is_relative_to(root) and target.is_file() else None

        return build_entry(
            verdict,
            card=card,
            files=files,
            resolve_thumbnail=resolve_thumbnail,
            last_modified=iso_utc(max(p.stat().st_mtime for p in paths)),
            local_dir=str(folder),
        )
