"""The rules of a LoRA repo, in one place: what makes a Hub repo or a local folder a LoRA this server serves.

What this is for: deciding, from a repo's card (README front matter), its file list, its tags and the Hub's
widget data, whether it is a LoRA for one of our base models, which ``.safetensors`` file holds it, its base
models and trigger words, and, when it cannot be served, why (a typed error class from ``lora_engine.errors``
and a reason in plain words). The catalogue (what it lists as usable) and the engine's fetcher (what it
serves) both call :func:`assess_repo`, so "listed as usable" and "served" cannot disagree.

What it is not for: any I/O (callers read folders or ask the Hub, then hand plain values here), opening
weight files (``adapters.parse``), the size cap (an engine setting, checked by ``adapters.fetch``), or what
the catalogue shows (title, thumbnail, licence: ``catalogue.entries``). It imports the standard library,
PyYAML and ``lora_engine.errors`` only: no torch, no huggingface_hub.

The rules:

* **Card.** The YAML front matter between the first two ``---`` lines, then the body's first ``# heading``.
  Broken YAML reads as an empty card (a broken card should not hide a LoRA). A README that is not UTF-8
  text cannot be read at all: that repo is refused (``CorruptAdapter``). Every card value is read by type:
  a value of the wrong type (``tags: 5``, ``base_model: {a: 1}``, ``widget: 7``, ``weight_name: null``, a
  list of mappings where strings belong) counts as absent, never as an error.
* **Tags.** The Hub's tags, then the card's ``tags`` (a string or a list of strings).
* **Base models.** The card's ``base_model`` (a string or a list) when it names any; else the
  ``base_model:<id>`` and ``base_model:<relation>:<id>`` tags.
* **Hub repos** must say LoRA (a ``lora`` tag or a ``base_model:adapter:`` tag, in the card's or the Hub's
  tags) and name a base model; else ``IncompatibleAdapter``. **Local folders** were put there by the operator:
  a card without ``base_model`` or without a ``lora`` tag (or no card) is accepted.
* **Another base model** (the named ones include none of ours) is ``IncompatibleAdapter`` naming both; the
  catalogue leaves such repos out.
* **Weight file.** Only ``.safetensors`` files (any case) outside full-pipeline component folders (``unet/``,
  ``text_encoder/``, ...) are candidates. One candidate: it. Several: the card's ``weight_name``, else the
  one file the card names (its path, else its name, in any card string or the Hub's widget data, or a kohya
  ``<lora:stem:weight>`` reference), else a top-level ``pytorch_lora_weights.safetensors`` (diffusers'
  training scripts), else the only top-level candidate (the others being checkpoints in sub-folders); else
  ``AdapterNotFound``, naming the files. No candidate but pickles (``.bin``, ``.ckpt``, ...):
  ``UnsafeAdapterFile`` (pickles are never opened). Text embeddings beside the LoRA (pivotal tuning:
  ``embeddings.safetensors``, ``*_emb.safetensors``, ``*.pti``): ``UnsupportedAdapterFormat``, since the
  server does not load them yet and the LoRA alone would be served wrong.
* **Trigger words.** The card's ``instance_prompt`` (a list is joined with ", "), else the first widget text
  (the card's ``widget``, else the Hub's widget data).

Bounds on absurd input (each says what is left out): the first ``MAX_FILES`` files and ``MAX_TAGS`` tags of
each kind are considered; a card is parsed from its first ``MAX_CARD_CHARS`` characters; at most
``MAX_CARD_NODES`` values of a card are visited and ``MAX_CARD_STRINGS`` of its strings (``MAX_NAMING_CHARS``
characters in all) are searched for file names.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import (
    AdapterError,
    AdapterNotFound,
    CorruptAdapter,
    IncompatibleAdapter,
    UnsafeAdapterFile,
    UnsupportedAdapterFormat,
)

__all__ = [
    "CARD_FILE",
    "COMPONENT_DIRS",
    "DIFFUSERS_WEIGHT_NAME",
    "MAX_CARD_CHARS",
    "MAX_CARD_NODES",
    "MAX_CARD_STRINGS",
    "MAX_FILES",
    "MAX_NAMING_CHARS",
    "MAX_TAGS",
    "REFUSAL_RULES",
    "SOURCES",
    "Card",
    "Refusal",
    "RepoVerdict",
    "WeightChoice",
    "assess_repo",
    "base_models_of",
    "best_guess_weight_name",
    "card_from_hub",
    "parse_card",
    "read_card",
    "says_lora",
    "str_values",
    "tags_of",
    "trigger_words_of",
    "widget_items",
]

#: Where a repo comes from: the Hub, or a local folder an operator filled.
SOURCES = ("hub", "local")
#: The model card's file name, in a Hub repo and in a local folder alike.
CARD_FILE = "README.md"
#: diffusers' training scripts save the LoRA under this name.
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: Folders of a full diffusers pipeline: weights there are model components, not LoRA files.
COMPONENT_DIRS = frozenset(
    {"unet", "text_encoder", "text_encoder_2", "vae", "transformer", "tokenizer", "tokenizer_2", "scheduler"}
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SAFETENSORS = ".safetensors"

#: Files considered per repo (in the order given; local folders sorted first); the rest are ignored.
MAX_FILES = 10_000
#: Tags considered from the Hub, and again from the card; the rest are ignored.
MAX_TAGS = 10_000
#: Characters of a README parsed; front matter past this reads as broken (an empty card).
MAX_CARD_CHARS = 1 << 20
#: Values of a card (mappings, lists, scalars) visited when searching it; the rest are not looked at.
MAX_CARD_NODES = 20_000
#: Strings of a card searched for file names (the catalogue's historical cap).
MAX_CARD_STRINGS = 2000
#: Characters of those strings searched for file names, in all.
MAX_NAMING_CHARS = 200_000

_KOHYA_REF = re.compile(r"<lora:([^:>]+)")

# Refusal rules, by stable short name (tests and logs key on them).
CARD_UNREADABLE = "card_unreadable"
NOT_A_LORA = "not_a_lora"
NO_BASE_MODEL = "no_base_model"
OTHER_BASE_MODEL = "other_base_model"
PIVOTAL_TUNING = "pivotal_tuning"
PICKLE_ONLY = "pickle_only"
NO_WEIGHT_FILE = "no_weight_file"
AMBIGUOUS_WEIGHT_FILE = "ambiguous_weight_file"
#: Every refusal rule's name, in the order they are checked.
REFUSAL_RULES = (
    CARD_UNREADABLE,
    NOT_A_LORA,
    NO_BASE_MODEL,
    OTHER_BASE_MODEL,
    PIVOTAL_TUNING,
    PICKLE_ONLY,
    NO_WEIGHT_FILE,
    AMBIGUOUS_WEIGHT_FILE,
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Refusal:
    """Why a repo cannot be served.

    Args:
        rule (`str`): the rule that refused it, one of ``REFUSAL_RULES``.
        error (`type[AdapterError]`): the engine's error class for it.
        reason (`str`): plain words, without the repo id (the error adds it); shown by the catalogue as is.
    """

    rule: str  # one of REFUSAL_RULES
    error: type[AdapterError]  # raised by the engine, with the adapter id
    reason: str  # for people: the catalogue's unservable_reason, the error's message

    @property
    def about_card(self) -> bool:
        """Whether the card itself refused the repo (unreadable, not a LoRA, no base model), rather than our base
        models or its files."""
        return self.rule in (CARD_UNREADABLE, NOT_A_LORA, NO_BASE_MODEL)

    def to_error(self, adapter_id: str) -> AdapterError:
        """The engine's typed error for this refusal, naming ``adapter_id``."""
        return self.error(adapter_id, self.reason)


@dataclass(frozen=True)
class WeightChoice:
    """Which file to load, or why there is none.

    Args:
        weight_name (`str`, *optional*): the chosen ``.safetensors`` path inside the repo.
        refusal (`Refusal`, *optional*): why nothing was chosen; set exactly when ``weight_name`` is None.
    """

    weight_name: str | None  # repo-relative path of the LoRA file
    refusal: Refusal | None  # set exactly when weight_name is None


@dataclass(frozen=True)
class Card:
    """A parsed model card.

    Args:
        data (`Mapping[str, Any]`): the YAML front matter (empty when there is none, or it is broken).
        heading (`str`, *optional*): the text of the body's first ``# heading``.
        unreadable (`str`, *optional*): why the README could not be read at all (not UTF-8 text); ``data`` is
            empty then.
    """

    data: Mapping[str, Any] = field(default_factory=dict)  # as yaml.safe_load / the Hub's cardData gave it
    heading: str | None = None  # first level-1 heading of the body, outside code fences
    unreadable: str | None = None  # set when the README's bytes are not text


@dataclass(frozen=True)
class RepoVerdict:
    """What the rules say about one repo.

    Args:
        repo_id (`str`): ``owner/name``.
        source (`str`): "hub" or "local".
        base_models (`tuple[str, ...]`): the base models the card (else the tags) names; may be empty.
        tags (`tuple[str, ...]`): the Hub's tags, then the card's, as strings, without repeats.
        trigger_words (`str`, *optional*): words to put in the prompt.
        weight_name (`str`, *optional*): the file to load; None exactly when refused.
        refusal (`Refusal`, *optional*): why it cannot be served; None exactly when it can.

    Example:
        >>> verdict = assess_repo("o/n", card=None, files=["a.safetensors"], accepted_base_models=(SDXL,),
        ...                       source="local")
        >>> verdict.raise_if_refused()
        'a.safetensors'
    """

    repo_id: str
    source: str  # "hub" | "local"
    base_models: tuple[str, ...]
    tags: tuple[str, ...]
    trigger_words: str | None
    weight_name: str | None  # set exactly when refusal is None
    refusal: Refusal | None

    def __post_init__(self) -> None:
        if (self.weight_name is None) == (self.refusal is None):
            raise ValueError(
                f"exactly one of `weight_name` ({self.weight_name!r}) and `refusal` ({self.refusal!r}) must be set "
                f"for {self.repo_id!r}"
            )

    @property
    def servable(self) -> bool:
        """Whether the engine serves this repo (as far as its card and files tell; the file is checked on load)."""
        return self.refusal is None

    @property
    def reason(self) -> str | None:
        """Why it cannot be served, in plain words; None when it can."""
        return self.refusal.reason if self.refusal is not None else None

    def raise_if_refused(self) -> str:
        """The weight file's path inside the repo.

        Raises:
            AdapterError: the refusal's typed error (``IncompatibleAdapter``, ``UnsafeAdapterFile``,
                ``AdapterNotFound``, ``UnsupportedAdapterFormat`` or ``CorruptAdapter``), naming the repo.
        """
        if self.refusal is not None:
            raise self.refusal.to_error(self.repo_id)
        assert self.weight_name is not None  # the invariant of __post_init__
        return self.weight_name


# --------------------------------------------------------------------------- cards


def parse_card(text: str) -> Card:
    """Parse a README: YAML front matter between ``---`` lines, then the first ``# heading`` of the body.

    Broken YAML (or front matter that is not a mapping) gives an empty ``data`` rather than an error.

    Example:
        >>> parse_card("---\\nbase_model: a/b\\n---\\n# Title\\n")
        Card(data={'base_model': 'a/b'}, heading='Title', unreadable=None)
    """
    text = text[:MAX_CARD_CHARS]
    data: Mapping[str, Any] = {}
    body = text
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() == "---":
                try:
                    parsed = yaml.safe_load("\n".join(lines[1:i]))
                except (yaml.YAMLError, RecursionError):  # RecursionError: absurdly nested YAML
                    parsed = None
                data = parsed if isinstance(parsed, dict) else {}
                body = "\n".join(lines[i + 1 :])
                break
    return Card(data=data, heading=_first_heading(body))


def read_card(raw: bytes) -> Card:
    """Parse a README's bytes (a local folder's ``README.md``); bytes that are not UTF-8 give an unreadable card.

    Only the first ``MAX_CARD_CHARS`` bytes are decoded; a character cut at that end is dropped.
    """
    raw = raw.removeprefix(codecs.BOM_UTF8)  # some editors start UTF-8 files with a byte-order mark
    cut = len(raw) > MAX_CARD_CHARS
    raw = raw[:MAX_CARD_CHARS]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if not (cut and e.start >= len(raw) - 3 and e.reason == "unexpected end of data"):
            return Card(unreadable=f"{CARD_FILE} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})")
        text = raw[: e.start].decode("utf-8")
    return parse_card(text)


def card_from_hub(card_data: Any) -> Card:
    """The card as the Hub's API gives it (``cardData``, already parsed); anything but a mapping is no card."""
    return Card(data=card_data if isinstance(card_data, Mapping) else {})


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


def _data(card: Card | Mapping[str, Any] | None) -> Mapping[str, Any]:
    data = card.data if isinstance(card, Card) else card
    return data if isinstance(data, Mapping) else {}


# --------------------------------------------------------------------------- values read by type


def str_values(value: Any, limit: int = MAX_TAGS) -> tuple[str, ...]:
    """A card value that should be a string or a list of strings, as non-empty stripped strings.

    Anything else (a number, a mapping, null, list items that are not strings) counts as absent.

    Example:
        >>> str_values(["a/b", {"x": 1}, " c/d "]), str_values(5)
        (('a/b', 'c/d'), ())
    """
    if isinstance(value, str):
        items: Iterable[Any] = (value,)
    elif isinstance(value, (list, tuple)):
        items = value[:limit]
    else:
        return ()
    return tuple(v.strip() for v in items if isinstance(v, str) and v.strip())


def tags_of(card: Card | Mapping[str, Any] | None, hub_tags: Any = ()) -> tuple[str, ...]:
    """The Hub's tags, then the card's ``tags``, as strings without repeats (the first ``MAX_TAGS`` of each)."""
    found = [*str_values(hub_tags if isinstance(hub_tags, (list, tuple)) else ()), *str_values(_data(card).get("tags"))]
    return tuple(dict.fromkeys(found))


def says_lora(tags: Iterable[str]) -> bool:
    """Whether the tags say LoRA: a ``lora`` tag, or a ``base_model:adapter:`` tag (the Hub's adapter relation)."""
    return any(t == "lora" or t.startswith("base_model:adapter:") for t in tags)


def base_models_of(card: Card | Mapping[str, Any] | None, tags: Iterable[str] = ()) -> tuple[str, ...]:
    """The base models a repo names: the card's ``base_model`` (a string or a list) when it names any, else
    the ``base_model:<id>`` and ``base_model:<relation>:<id>`` tags.

    Example:
        >>> base_models_of({}, ["lora", "base_model:adapter:a/b", "base_model:a/b"])
        ('a/b',)
    """
    from_card = str_values(_data(card).get("base_model"))
    if from_card:
        return tuple(dict.fromkeys(from_card))
    found: list[str] = []
    for tag in tags:
        if not tag.startswith("base_model:"):
            continue
        rest = tag[len("base_model:") :]
        if ":" in rest.split("/", 1)[0]:  # "adapter:owner/name": a relation before the id
            rest = rest.split(":", 1)[1]
        if rest:
            found.append(rest)
    return tuple(dict.fromkeys(found))


def widget_items(card: Card | Mapping[str, Any] | None, widget_data: Any = None) -> tuple[Mapping[str, Any], ...]:
    """The widget entries (mappings with ``text`` and ``output``): the card's ``widget`` when it is a non-empty
    list, else the Hub's widget data; a lone mapping counts as a list of one, anything else as none."""
    widget = _data(card).get("widget")
    if not isinstance(widget, list) or not widget:
        widget = widget_data
    if isinstance(widget, Mapping):
        widget = [widget]
    if not isinstance(widget, list):
        return ()
    return tuple(w for w in widget[:MAX_TAGS] if isinstance(w, Mapping))


def trigger_words_of(card: Card | Mapping[str, Any] | None, widget_data: Any = None) -> str | None:
    """The trigger words: the card's ``instance_prompt`` (a list is joined with ", "), else the first widget text.

    Example:
        >>> trigger_words_of({"instance_prompt": ["pixel art", 5]}), trigger_words_of({"widget": [{"text": "x"}]})
        ('pixel art', 'x')
    """
    prompts = str_values(_data(card).get("instance_prompt"))
    if prompts:
        return ", ".join(prompts)
    for item in widget_items(card, widget_data):
        text = item.get("text")
        if isinstance(text, str) and text.strip():
            return text.strip()
    return None


# --------------------------------------------------------------------------- the weight file


def _top(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else ""


def _is_embedding(path: str) -> bool:
    low = path.lower()
    return (
        low.endswith(".pti")
        or low.endswith("_emb" + _SAFETENSORS)
        or low.rsplit("/", 1)[-1] == "embeddings.safetensors"
    )


def _shown(names: Sequence[str], n: int = 3) -> str:
    more = f", +{len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _card_texts(*values: Any) -> list[str]:
    """The strings in card values (mapping values, list items, nested), bounded by visits and by count."""
    out: list[str] = []
    stack = list(reversed(values))
    visited = 0
    # Iterative, so a deeply nested card cannot exhaust the stack; the visit budget also bounds YAML anchors
    # that repeat one big value many times.
    while stack and visited < MAX_CARD_NODES and len(out) < MAX_CARD_STRINGS:
        value = stack.pop()
        visited += 1
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, Mapping):
            stack.extend(reversed(list(value.values())[:MAX_CARD_NODES]))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value[:MAX_CARD_NODES]))
    return out


def _named(candidates: Sequence[str], card: Mapping[str, Any], widget_data: Any) -> str | None:
    """The one candidate the card names, or None (none, or several equally)."""
    chosen = card.get("weight_name")
    if isinstance(chosen, str) and chosen.strip():
        chosen = chosen.strip().removeprefix("./")
        if chosen in candidates:
            return chosen
        by_name = [c for c in candidates if c.rsplit("/", 1)[-1] == chosen]
        if len(by_name) == 1:
            return by_name[0]
    text = "\n".join(_card_texts(card, widget_data))[:MAX_NAMING_CHARS]
    # Whole words only: "a.safetensors" is not named by "ba.safetensors". First the full path (not preceded
    # by a folder: "ckpt/x.safetensors" does not name a top-level "x.safetensors"), then the name alone.
    by_path = [c for c in candidates if c in text and re.search(r"(?<![\w.\-/])" + re.escape(c) + r"(?![\w\-])", text)]
    if len(by_path) == 1:
        return by_path[0]
    stems = {ref.strip() for ref in _KOHYA_REF.findall(text)}
    by_name = []
    for c in candidates:
        name = c.rsplit("/", 1)[-1]
        if name[: -len(_SAFETENSORS)] in stems or (
            name in text and re.search(r"(?<![\w.\-])" + re.escape(name) + r"(?![\w\-])", text)
        ):
            by_name.append(c)
    return by_name[0] if len(by_name) == 1 else None


def best_guess_weight_name(
    files: Iterable[Any], card: Card | Mapping[str, Any] | None = None, widget_data: Any = None
) -> WeightChoice:
    """Pick the LoRA weight file among a repo's files (the rules are in the module docstring).

    Args:
        files (`Iterable[str]`): repo-relative paths with ``/`` separators; the first ``MAX_FILES`` count.
        card (`Card` or `Mapping`, *optional*): the card (its ``weight_name`` and strings name files).
        widget_data (*optional*): the Hub's widget data (its texts name files too).

    Example:
        >>> best_guess_weight_name(["README.md", "a.safetensors"]).weight_name
        'a.safetensors'
    """
    considered: list[str] = []
    for f in files:
        if len(considered) >= MAX_FILES:
            break
        if isinstance(f, str) and f:
            considered.append(f)
    embeddings = [f for f in considered if _is_embedding(f)]
    if embeddings:
        return _refuse(
            PIVOTAL_TUNING,
            UnsupportedAdapterFormat,
            f"pivotal-tuning LoRA: needs the text embeddings in {_shown(embeddings)}, which the server does not "
            "load yet",
        )
    candidates = [f for f in considered if f.lower().endswith(_SAFETENSORS) and _top(f) not in COMPONENT_DIRS]
    if not candidates:
        pickles = [f for f in considered if f.lower().endswith(_PICKLE_SUFFIXES) and _top(f) not in COMPONENT_DIRS]
        if pickles:
            return _refuse(
                PICKLE_ONLY,
                UnsafeAdapterFile,
                f"only pickle weights ({_shown(pickles)}); pickles are never opened, only .safetensors files",
            )
        if any(f.lower().endswith(_SAFETENSORS) for f in considered):
            return _refuse(
                NO_WEIGHT_FILE, AdapterNotFound, "only full-model components (unet/, text_encoder/, ...), no LoRA file"
            )
        return _refuse(NO_WEIGHT_FILE, AdapterNotFound, "no .safetensors weight file in the repo")
    if len(candidates) == 1:
        return WeightChoice(candidates[0], None)
    named = _named(candidates, _data(card), widget_data)
    if named is not None:
        return WeightChoice(named, None)
    if DIFFUSERS_WEIGHT_NAME in candidates:
        return WeightChoice(DIFFUSERS_WEIGHT_NAME, None)
    top_level = [c for c in candidates if "/" not in c]
    if len(top_level) == 1:
        return WeightChoice(top_level[0], None)
    return _refuse(
        AMBIGUOUS_WEIGHT_FILE,
        AdapterNotFound,
        f"{len(candidates)} .safetensors files ({_shown(candidates)}) and the card names none of them; "
        "the card's `weight_name` decides",
    )


def _refuse(rule: str, error: type[AdapterError], reason: str) -> WeightChoice:
    return WeightChoice(None, Refusal(rule, error, reason))


# --------------------------------------------------------------------------- the one entry point


def assess_repo(
    repo_id: str,
    *,
    card: Card | None,
    files: Iterable[Any],
    tags: Any = (),
    widget_data: Any = None,
    accepted_base_models: Collection[str] | None,
    source: str = "hub",
) -> RepoVerdict:
    """Apply every rule to one repo.

    Args:
        repo_id (`str`): ``owner/name``.
        card (`Card`, *optional*): the parsed card (``card_from_hub``, ``read_card``); None when there is none.
        files (`Iterable[str]`): repo-relative paths (``/`` separators). For ``source="local"``, hidden paths
            (``.git/``, ``.hub.json``) are dropped and the rest sorted before the ``MAX_FILES`` cap.
        tags (`Sequence[str]`, *optional*): the Hub's tags (anything else counts as none).
        widget_data (*optional*): the Hub's widget data.
        accepted_base_models (`Collection[str]`, *optional*): the base models we serve; None skips that check
            (to learn which base a repo is for).
        source (`str`, *optional*, defaults to "hub"): "hub" or "local" (see the module docstring).

    Raises:
        ValueError: ``source`` is neither "hub" nor "local" (a caller's bug, not a verdict).

    Example:
        >>> v = assess_repo("o/n", card=card_from_hub({"base_model": "x/y", "tags": ["lora"]}),
        ...                 files=["w.safetensors"], accepted_base_models=("a/b",))
        >>> v.refusal.error.__name__, v.reason
        ('IncompatibleAdapter', 'it is a LoRA for x/y, not for a/b')
    """
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {SOURCES} but is {source!r}")
    if source == "local":
        files = sorted(f for f in files if isinstance(f, str) and not any(p.startswith(".") for p in f.split("/")))
    data = _data(card)
    all_tags = tags_of(data, tags)
    bases = base_models_of(data, all_tags)
    trigger = trigger_words_of(data, widget_data)

    def verdict(weight_name: str | None, refusal: Refusal | None) -> RepoVerdict:
        return RepoVerdict(repo_id, source, bases, all_tags, trigger, weight_name, refusal)

    if card is not None and card.unreadable is not None:
        return verdict(None, Refusal(CARD_UNREADABLE, CorruptAdapter, f"its card cannot be read: {card.unreadable}"))
    if source == "hub":
        if not says_lora(all_tags):
            return verdict(
                None,
                Refusal(
                    NOT_A_LORA,
                    IncompatibleAdapter,
                    "its card and tags do not say it is a LoRA (no 'lora' or 'base_model:adapter:...' tag)",
                ),
            )
        if not bases:
            return verdict(
                None,
                Refusal(
                    NO_BASE_MODEL,
                    IncompatibleAdapter,
                    "its card names no base_model (nor do its tags), so it cannot be matched to ours",
                ),
            )
    if accepted_base_models is not None and bases and not set(bases) & set(accepted_base_models):
        return verdict(
            None,
            Refusal(
                OTHER_BASE_MODEL,
                IncompatibleAdapter,
                f"it is a LoRA for {', '.join(bases)}, not for {' or '.join(accepted_base_models)}",
            ),
        )
    choice = best_guess_weight_name(files, data, widget_data)
    return verdict(choice.weight_name, choice.refusal)
