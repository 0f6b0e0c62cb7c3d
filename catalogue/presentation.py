"""Small pure helpers that turn catalogue entries into what the UI shows and puts in the prompt.

What this is for: the text of the "selected LoRA" panel, gallery captions, and inserting a LoRA's
trigger words into the prompt exactly once (replacing the previous LoRA's, never doubling them). Kept out of
``app.py`` so the UI code only wires components, and so these rules are unit-tested without Gradio.

What it is not for: search or card parsing (``search``, ``entries``).
"""

from __future__ import annotations

import re

from .entries import CatalogueEntry

__all__ = ["caption", "describe_entry", "hub_url", "with_trigger_words"]


def hub_url(repo_id: str, endpoint: str = "https://huggingface.co") -> str:
    return f"{endpoint.rstrip('/')}/{repo_id}"


def caption(entry: CatalogueEntry) -> str:
    """A gallery caption: the title, plus a mark when the entry cannot be served."""
    return entry.title if entry.weight_name else f"{entry.title} (not servable)"


def describe_entry(entry: CatalogueEntry, endpoint: str = "https://huggingface.co") -> str:
    """Markdown for the selected-LoRA panel: title, trigger words, Hub link, licence, servability."""
    lines = [f"### {entry.title}"]
    if entry.trigger_words:
        lines.append(f"**Trigger words:** `{entry.trigger_words}`")
    if entry.source == "hub":
        lines.append(f"**Hub page:** [{entry.repo_id}]({hub_url(entry.repo_id, endpoint)})")
    else:
        lines.append(f"**Local LoRA:** `{entry.repo_id}`")
    lines.append(f"**License:** {entry.license or 'not stated'}")
    if entry.gated:
        lines.append("**Gated:** accept its terms on the Hub and set `HF_TOKEN` to use it.")
    if not entry.weight_name:
        lines.append(f"**Not servable:** {entry.unservable_reason}")
    return "\n\n".join(lines)


def _contains_words(prompt: str, words: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(words.strip())}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def with_trigger_words(prompt: str, trigger_words: str | None, previous: str | None = None) -> str:
    """Put ``trigger_words`` at the front of ``prompt`` unless they are already in it.

    The previous LoRA's trigger words are taken out first when the prompt still starts with them (the way
    this function put them there), so switching LoRAs does not pile trigger words up.

    Example:
        >>> with_trigger_words("a cat", "pixel art")
        'pixel art, a cat'
        >>> with_trigger_words("pixel art, a cat", "pixel art")
        'pixel art, a cat'
        >>> with_trigger_words("pixel art, a cat", "ink sketch", previous="pixel art")
        'ink sketch, a cat'
    """
    prompt = prompt or ""
    if previous and previous != trigger_words:
        prefix = previous.strip()
        if prompt.lower().startswith(prefix.lower()):
            prompt = prompt[len(prefix) :].lstrip(" ,")
    if not trigger_words or _contains_words(prompt, trigger_words):
        return prompt
    # An empty prompt gets a trailing ", " so the user can type straight after the trigger words.
    return f"{trigger_words.strip()}, {prompt}" if prompt.strip() else f"{trigger_words.strip()}, "
