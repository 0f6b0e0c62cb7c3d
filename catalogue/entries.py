"""``CatalogueEntry``, the one record the catalogue serves, and the pure rules that make one from a model card.

For: the entry dataclass and its JSON form (``to_dict``/``from_dict``, ``as_api_dict``); reading a README's
front matter and first heading; the rules for title, trigger words, weight file, thumbnail, licence and base
model. The Hub and local sources both call ``build_entry`` so they produce the same entries.

Not for: any I/O (sources read folders and talk to the Hub, then hand plain values to ``build_entry``),
searching, or snapshot files. Nothing here imports huggingface_hub or torch.

Decisions the rules encode:

* **Weight file.** Only ``.safetensors`` files are servable (the engine never opens pickles). One candidate:
  that file. Several: the one the card names (a file name in any card string, or a kohya ``<lora:stem:w>``
  reference), else a top-level ``pytorch_lora_weights.safetensors`` (diffusers' training scripts), else the
  only top-level candidate when the others sit in sub-folders (training checkpoints). Otherwise the entry is
  listed as not servable, with the reason.
* **``.bin``-only repos** are listed, not servable: ``weight_name`` is None and ``unservable_reason`` says
  "only pickle weights (...)". They stay searchable so a user looking for one learns why it cannot be used.
* **Pivotal-tuning LoRAs** (an ``embeddings.pti`` / ``*_emb.safetensors`` next to the LoRA) are listed,
  not servable: the server loads no textual-inversion embeddings, and the trigger tokens mean nothing
  without them.
* Invariant: ``weight_name is None`` exactly when ``unservable_reason is not None``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import yaml

from .errors import InvalidEntry

__all__ = [
    "Card",
    "CatalogueEntry",
    "SOURCES",
    "WeightChoice",
    "base_models_of",
    "build_entry",
    "choose_thumbnail",
    "choose_weight",
    "is_absolute_url",
    "iso_utc",
    "parse_card",
    "serves_base",
    "title_of",
    "trigger_words_of",
]

#: Where an entry came from.
SOURCES = ("hub", "local")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Folders of a full diffusers pipeline: weights there are model components, not LoRA files.
COMPONENT_DIRS = frozenset(
    {"unet", "text_encoder", "text_encoder_2", "vae", "transformer", "tokenizer", "tokenizer_2", "scheduler"}
)
# Acronyms a prettified repo name should spell the usual way ("pixel-art-xl" -> "Pixel Art XL").
_ACRONYMS = {"xl": "XL", "sdxl": "SDXL", "sd": "SD", "lora": "LoRA", "ai": "AI", "3d": "3D", "2d": "2D", "lcm": "LCM"}
_KOHYA_REF = re.compile(r"<lora:([^:>]+)")
_MAX_CARD_STRINGS = 2000  # bound the work on absurd cards


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
        tags (`tuple[str, ...]`): Hub tags (or the card's tags for local entries).
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
    tags: tuple[str, ...]  # Hub tags; the card's tags for local entries
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


# --------------------------------------------------------------------------- cards


@dataclass(frozen=True)
class Card:
    """A parsed README.

    Args:
        data (`Mapping[str, Any]`): the YAML front matter (empty when there is none or it is invalid).
        heading (`str`, *optional*): the text of the body's first ``# heading``.
    """

    data: Mapping[str, Any]  # front matter as parsed by yaml.safe_load; {} when absent or invalid
    heading: str | None = None  # first level-1 heading of the body, outside code fences


def parse_card(text: str) -> Card:
    """Parse a README: YAML front matter between ``---`` lines, then the first ``# heading`` of the body.

    Invalid YAML gives an empty ``data`` rather than an error: a broken card should not hide the LoRA.
    """
    data: Mapping[str, Any] = {}
    body = text
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                try:
                    parsed = yaml.safe_load("\n".join(lines[1:i]))
                except yaml.YAMLError:
                    parsed = None
                data = parsed if isinstance(parsed, dict) else {}
                body = "\n".join(lines[i + 1 :])
                break
    return Card(data=data, heading=_first_heading(body))


def _first_heading(body: str) -> str | None:
    in_fence = False
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if not in_fence and re.match(r"#\s+\S", stripped):
            return stripped.lstrip("#").strip() or None
    return None


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def _widget_items(card: Mapping[str, Any], widget_data: Any = None) -> list[Mapping[str, Any]]:
    widget = card.get("widget")
    if not isinstance(widget, list) or not widget:
        widget = widget_data
    if isinstance(widget, Mapping):
        widget = [widget]
    if not isinstance(widget, list):
        return []
    return [w for w in widget if isinstance(w, Mapping)]


def base_models_of(card: Mapping[str, Any], tags: Iterable[str] = ()) -> tuple[str, ...]:
    """The base models an adapter names: the card's ``base_model`` (a string or a list), else the
    ``base_model:...`` tags (both ``base_model:ID`` and ``base_model:RELATION:ID``)."""
    from_card = _as_str_list(card.get("base_model"))
    if from_card:
        return tuple(dict.fromkeys(b.strip() for b in from_card))
    found: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.startswith("base_model:"):
            continue
        rest = tag[len("base_model:") :]
        head = rest.split("/", 1)[0]
        if ":" in head:  # "adapter:owner/name"
            rest = rest.split(":", 1)[1]
        if rest:
            found.append(rest)
    return tuple(dict.fromkeys(found))


def serves_base(base_models: Sequence[str], base_model: str) -> bool:
    """Whether an adapter made for ``base_models`` belongs in a catalogue for ``base_model``."""
    return base_model in base_models


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


def trigger_words_of(card: Mapping[str, Any], widget_data: Any = None) -> str | None:
    """The trigger words: the card's ``instance_prompt`` (a list is joined with ", "), else the first widget text."""
    prompts = [p.strip() for p in _as_str_list(card.get("instance_prompt"))]
    if prompts:
        return ", ".join(prompts)
    for item in _widget_items(card, widget_data):
        text = item.get("text")
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


def _license_of(card: Mapping[str, Any], tags: Iterable[str]) -> str | None:
    lic = _as_str_list(card.get("license"))
    if lic:
        return lic[0].strip()
    for tag in tags:
        if isinstance(tag, str) and tag.startswith("license:"):
            return tag[len("license:") :]
    return None


def _card_strings(value: Any, out: list[str]) -> None:
    if len(out) >= _MAX_CARD_STRINGS:
        return
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _card_strings(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _card_strings(v, out)


def _named_in(candidate: str, texts: Sequence[str]) -> bool:
    base = candidate.rsplit("/", 1)[-1]
    stem = base[: -len(".safetensors")]
    # The name as a whole word: "a.safetensors" is not named by "ba.safetensors"; a sub-folder path may precede.
    exact = re.compile(r"(?<![\w.\-])(?:[\w.\-]+/)*" + re.escape(base) + r"(?![\w\-])")
    for text in texts:
        if exact.search(text):
            return True
        if any(ref.strip() == stem for ref in _KOHYA_REF.findall(text)):
            return True
    return False


def _top(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else ""


def _is_embedding(path: str) -> bool:
    low = path.lower()
    return (
        low.endswith(".pti") or low.endswith("_emb.safetensors") or low.rsplit("/", 1)[-1] == "embeddings.safetensors"
    )


@dataclass(frozen=True)
class WeightChoice:
    """Which file to load, or why there is none.

    Args:
        weight_name (`str`, *optional*): the chosen ``.safetensors`` path inside the repo.
        unservable_reason (`str`, *optional*): why nothing was chosen.
    """

    weight_name: str | None  # repo-relative path of the LoRA file
    unservable_reason: str | None  # set exactly when weight_name is None


def _shown(names: Sequence[str], n: int = 3) -> str:
    more = f", +{len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def choose_weight(files: Sequence[str], card: Mapping[str, Any], widget_data: Any = None) -> WeightChoice:
    """Pick the LoRA weight file among a repo's files (see the module docstring for the rules).

    Example:
        >>> choose_weight(["README.md", "a.safetensors"], {}).weight_name
        'a.safetensors'
    """
    embeddings = [f for f in files if _is_embedding(f)]
    if embeddings:
        return WeightChoice(
            None,
            f"pivotal-tuning LoRA: it needs the text embeddings in {_shown(embeddings)}, "
            "which the server does not load",
        )
    candidates = [f for f in files if f.lower().endswith(".safetensors") and _top(f) not in COMPONENT_DIRS]
    if not candidates:
        pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES) and _top(f) not in COMPONENT_DIRS]
        if pickles:
            return WeightChoice(
                None, f"only pickle weights ({_shown(pickles)}); the server loads .safetensors files only"
            )
        if any(f.lower().endswith(".safetensors") for f in files):
            return WeightChoice(None, "only full-model components (unet/, text_encoder/, ...), no LoRA file")
        return WeightChoice(None, "no .safetensors weight file in the repo")
    if len(candidates) == 1:
        return WeightChoice(candidates[0], None)
    texts: list[str] = []
    _card_strings(card, texts)
    _card_strings(widget_data, texts)
    named = [c for c in candidates if _named_in(c, texts)]
    if len(named) == 1:
        return WeightChoice(named[0], None)
    if DIFFUSERS_WEIGHT_NAME in candidates:
        return WeightChoice(DIFFUSERS_WEIGHT_NAME, None)
    top_level = [c for c in candidates if "/" not in c]
    if len(top_level) == 1:
        return WeightChoice(top_level[0], None)
    return WeightChoice(
        None, f"{len(candidates)} .safetensors files ({_shown(candidates)}) and the card names none of them"
    )


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
    for item in _widget_items(card, widget_data):
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
    repo_id: str,
    *,
    source: str,
    card: Card | None,
    files: Sequence[str],
    resolve_thumbnail: Callable[[str], str | None],
    widget_data: Any = None,
    tags: Sequence[str] = (),
    downloads: int = 0,
    likes: int = 0,
    last_modified: str | None = None,
    gated: str | None = None,
    local_dir: str | None = None,
    revision: str | None = None,
) -> CatalogueEntry:
    """Apply every rule to one adapter's card and file list.

    Args:
        repo_id (`str`): ``owner/name``.
        source (`str`): "hub" or "local".
        card (`Card`, *optional*): the parsed card; None when the repo has none.
        files (`Sequence[str]`): repo-relative file paths.
        resolve_thumbnail (`Callable[[str], str | None]`): maps ``choose_thumbnail``'s answer (a URL or a
            repo path) to what the entry stores (a download URL, a local path), or None to drop it.
        widget_data (*optional*): the Hub's ``widgetData`` when the card has no ``widget``.
        tags, downloads, likes, last_modified, gated, local_dir, revision: copied to the entry.
    """
    data: Mapping[str, Any] = card.data if card is not None else {}
    heading = card.heading if card is not None else None
    weight = choose_weight(files, data, widget_data)
    thumb = choose_thumbnail(files, data, widget_data)
    return CatalogueEntry(
        repo_id=repo_id,
        title=title_of(repo_id, data, heading),
        trigger_words=trigger_words_of(data, widget_data),
        weight_name=weight.weight_name,
        unservable_reason=weight.unservable_reason,
        thumbnail=resolve_thumbnail(thumb) if thumb is not None else None,
        downloads=int(downloads or 0),
        likes=int(likes or 0),
        last_modified=last_modified,
        license=_license_of(data, tags),
        gated=gated or None,
        tags=tuple(t for t in tags if isinstance(t, str)),
        base_models=base_models_of(data, tags),
        source=source,
        local_dir=local_dir,
        revision=revision,
    )
