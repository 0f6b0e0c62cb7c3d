"""``CatalogueEntry``, the one record the catalogue serves, and the catalogue's own rules for building one.

For: the entry dataclass and its JSON form (``to_dict``/``from_dict``, ``as_api_dict``); the rules that are
the catalogue's alone: title, thumbnail and licence. The Hub and local sources both call ``build_entry`` so
they produce the same entries.

Not for: whether a repo is a servable LoRA, its weight file, base models or trigger words. Those are
``lora_engine.adapters.repo_rules``' (``assess_repo``), which the engine's fetcher calls too, so "listed as
usable" and "served" cannot disagree; ``build_entry`` copies its verdict. Nor any I/O (sources read folders
and talk to the Hub), searching, or snapshot files. Nothing here imports huggingface_hub or torch.

Decisions:

* A repo the rules refuse is still listed (searchable, with the reason) unless the refusal says it is not
  for this server at all (``IncompatibleAdapter``: another base model, not a LoRA); the sources leave those
  out.
* Invariant: ``weight_name is None`` exactly when ``unservable_reason is not None``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from lora_engine.adapters.repo_rules import Card, RepoVerdict, str_values, widget_items

from .errors import InvalidEntry

__all__ = [
    "CatalogueEntry",
    "SOURCES",
    "build_entry",
    "choose_thumbnail",
    "is_absolute_url",
    "iso_utc",
    "title_of",
]

#: Where an entry came from.
SOURCES = ("hub", "local")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Acronyms a prettified repo name should spell the usual way ("pixel-art-xl" -> "Pixel Art XL").
_ACRONYMS = {"xl": "XL", "sdxl": "SDXL", "sd": "SD", "lora": "LoRA", "ai": "AI", "3d": "3D", "2d": "2D", "lcm": "LCM"}


# --------------------------------------------------------------------------- the entry


@dataclass(frozen=True)
class CatalogueEntry:
    """One LoRA in the catalogue, from the Hub or a local folder.

    Args:
        repo_id (`str`): ``owner/name``; the key everywhere.
        title (`str`): display title.
        trigger_words (`str`, *optional*): words to put in the prompt.
        weight_name (`str`, *optional*): the LoRA file to load; None when not servable.
        unservable_reason (`str`, *optional*): why the entry cannot be served; None when it can.
        thumbnail (`str`, *optional*): a download URL (Hub) or a file path (local).
        downloads (`int`): Hub downloads (0 for local entries).
        likes (`int`): Hub likes (0 for local entries).
        last_modified (`str`, *optional*): ISO-8601 UTC time, ``YYYY-MM-DDTHH:MM:SSZ``.
        license (`str`, *optional*): the card's licence id.
        gated (`str`, *optional*): the Hub's gating mode ("auto" or "manual"); None when not gated.
        tags (`tuple[str, ...]`): the Hub's tags, then the card's (only the card's for local entries).
        base_models (`tuple[str, ...]`): the base models the card names.
        source (`str`): "hub" or "local".
        local_dir (`str`, *optional*): the adapter's folder for local entries.
        revision (`str`, *optional*): the Hub commit sha the entry was read at.
    """

    repo_id: str  # owner/name, unique in a catalogue
    title: str  # card title / model_name / first heading, else the prettified repo name
    trigger_words: str | None  # card instance_prompt, else the first widget text
    weight_name: str | None  # the .safetensors file to load; None exactly when not servable
    unservable_reason: str | None  # why weight_name is None, in words for the UI
    thumbnail: str | None  # resolve URL on the configured endpoint, an absolute URL, or a local file path
    downloads: int  # Hub download count (0 for local)
    likes: int  # Hub like count (0 for local)
    last_modified: str | None  # ISO-8601 UTC, seconds precision, "Z" suffix; sorts lexicographically
    license: str | None  # licence id from the card (or its license: tag)
    gated: str | None  # "auto" / "manual" when the Hub gates downloads, else None
    tags: tuple[str, ...]  # Hub tags, then card tags (repo_rules.tags_of)
    base_models: tuple[str, ...]  # base_model ids from the card (or base_model: tags when no card)
    source: str  # "hub" | "local"
    local_dir: str | None = None  # folder holding the files, for local entries
    revision: str | None = None  # Hub commit sha the metadata was read at (thumbnails resolve against it)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InvalidEntry(f"`source` must be one of {SOURCES} but is {self.source!r}")
        if (self.weight_name is None) == (self.unservable_reason is None):
            raise InvalidEntry(
                f"exactly one of `weight_name` ({self.weight_name!r}) and `unservable_reason` "
                f"({self.unservable_reason!r}) must be set for {self.repo_id!r}"
            )

    @property
    def servable(self) -> bool:
        """Whether the engine can load this entry (it has a ``.safetensors`` weight file)."""
        return self.weight_name is not None

    def as_api_dict(self) -> dict[str, Any]:
        """The fields the app's ``/catalogue`` endpoint returns, and only those.

        Example:
            >>> entry.as_api_dict()
            {'repo_id': 'nerijs/pixel-art-xl', 'title': 'Pixel Art XL', 'trigger_words': 'pixel art',
             'thumbnail': 'http://.../resolve/<sha>/images/a.png', 'downloads': 17058, 'likes': 134,
             'weight_name': 'pixel-art-xl.safetensors'}
        """
        return {
            "repo_id": self.repo_id,
            "title": self.title,
            "trigger_words": self.trigger_words,
            "thumbnail": self.thumbnail,
            "downloads": self.downloads,
            "likes": self.likes,
            "weight_name": self.weight_name,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (tuples become lists); the inverse of ``from_dict``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CatalogueEntry:
        """Rebuild an entry from ``to_dict`` output; unknown keys are ignored.

        Raises:
            InvalidEntry: a field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise InvalidEntry(f"an entry must be a JSON object but is {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in ("local_dir", "revision"):
                    kwargs[f.name] = None
                    continue
                raise InvalidEntry(f"entry {data.get('repo_id')!r} lacks the field {f.name!r}")
            kwargs[f.name] = _check_field(f.name, data[f.name], data.get("repo_id"))
        return cls(**kwargs)


_STR_FIELDS = {"repo_id", "title", "source"}
_OPT_STR_FIELDS = {
    "trigger_words",
    "weight_name",
    "unservable_reason",
    "thumbnail",
    "last_modified",
    "license",
    "gated",
    "local_dir",
    "revision",
}
_INT_FIELDS = {"downloads", "likes"}
_TUPLE_FIELDS = {"tags", "base_models"}


def _check_field(name: str, value: Any, repo_id: Any) -> Any:
    ok = True
    if name in _STR_FIELDS:
        ok = isinstance(value, str)
    elif name in _OPT_STR_FIELDS:
        ok = value is None or isinstance(value, str)
    elif name in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in _TUPLE_FIELDS:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise InvalidEntry(f"entry {repo_id!r}: field {name!r} has the wrong type ({type(value).__name__}): {value!r}")
    return value


# --------------------------------------------------------------------------- the catalogue's own rules


def _prettify(repo_id: str) -> str:
    name = repo_id.split("/")[-1]
    words = [w for w in re.split(r"[-_\s]+", name) if w]
    out = []
    for w in words:
        low = w.lower()
        if low in _ACRONYMS:
            out.append(_ACRONYMS[low])
        elif w.islower():
            out.append(w[0].upper() + w[1:])
        else:
            out.append(w)
    return " ".join(out) or repo_id


def title_of(repo_id: str, card: Mapping[str, Any], heading: str | None = None) -> str:
    """The display title: card ``title``, then ``model_name``, then the first heading, then the prettified name."""
    for key in ("title", "model_name"):
        value = card.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if heading:
        return heading
    return _prettify(repo_id)


def _license_of(card: Mapping[str, Any], tags: Sequence[str]) -> str | None:
    lic = str_values(card.get("license"))
    if lic:
        return lic[0]
    for tag in tags:
        if tag.startswith("license:"):
            return tag[len("license:") :]
    return None


def iso_utc(when: datetime | float) -> str:
    """A datetime (naive means UTC) or a POSIX timestamp as ``YYYY-MM-DDTHH:MM:SSZ``, the one format entries use."""
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(float(when), tz=UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_absolute_url(value: str) -> bool:
    """Whether ``value`` is an http(s) URL rather than a path inside a repo."""
    return bool(re.match(r"https?://", value, re.IGNORECASE))


def choose_thumbnail(files: Sequence[str], card: Mapping[str, Any], widget_data: Any = None) -> str | None:
    """The thumbnail, as an absolute URL or a repo-relative path: the first widget ``output.url``
    (a relative one only if the repo has that file), else the first image file, else None."""
    present = set(files)
    for item in widget_items(card, widget_data):
        output = item.get("output")
        url = output.get("url") if isinstance(output, Mapping) else None
        if not isinstance(url, str) or not url.strip():
            continue
        url = url.strip()
        if is_absolute_url(url):
            return url
        rel = url.removeprefix("./").lstrip("/")
        if rel in present:
            return rel
    for f in files:
        if f.lower().endswith(IMAGE_SUFFIXES):
            return f
    return None


def build_entry(
    verdict: RepoVerdict,
    *,
    card: Card | None,
    files: Sequence[str],
    resolve_thumbnail: Callable[[str], str | None],
    widget_data: Any = None,
    downloads: int = 0,
    likes: int = 0,
    last_modified: str | None = None,
    gated: str | None = None,
    local_dir: str | None = None,
    revision: str | None = None,
) -> CatalogueEntry:
    """One adapter's entry: the rules' verdict (weight file or reason, trigger words, base models, tags) plus
    the catalogue's own title, thumbnail and licence.

    Args:
        verdict (`RepoVerdict`): ``repo_rules.assess_repo``'s answer for this repo.
        card (`Card`, *optional*): the card the verdict was made from; None when the repo has none.
        files (`Sequence[str]`): repo-relative file paths.
        resolve_thumbnail (`Callable[[str], str | None]`): maps ``choose_thumbnail``'s answer (a URL or a
            repo path) to what the entry stores (a download URL, a local path), or None to drop it.
        widget_data (*optional*): the Hub's ``widgetData`` when the card has no ``widget``.
        downloads, likes, last_modified, gated, local_dir, revision: copied to the entry.
    """
    data: Mapping[str, Any] = card.data if card is not None and isinstance(card.data, Mapping) else {}
    heading = card.heading if card is not None else None
    thumb = choose_thumbnail(files, data, widget_data)
    return CatalogueEntry(
        repo_id=verdict.repo_id,
        title=title_of(verdict.repo_id, data, heading),
        trigger_words=verdict.trigger_words,
        weight_name=verdict.weight_name,
        unservable_reason=verdict.reason,
        thumbnail=resolve_thumbnail(thumb) if thumb is not None else None,
        downloads=downloads if isinstance(downloads, int) and not isinstance(downloads, bool) else 0,
        likes=likes if isinstance(likes, int) and not isinstance(likes, bool) else 0,
        last_modified=last_modified,
        license=_license_of(data, verdict.tags),
        gated=gated or None,
        tags=verdict.tags,
        base_models=verdict.base_models,
        source=verdict.source,
        local_dir=local_dir,
        revision=revision,
    )
