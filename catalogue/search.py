"""In-memory search and sort over catalogue entries. Pure: plain data in, ``SearchPage`` out.

For: validating search parameters, a per-entry lowercase token index built once per catalogue version,
relevance ranking, the three sorts, paging. 10,000 entries answer in a few milliseconds (``bench/search.py``).

Not for: fetching entries, threads or caching between catalogue versions (``Catalogue`` builds one
``SearchIndex`` per published version and swaps it whole).

Matching rules:

* The query is split on whitespace; every word must match (AND). Case does not matter.
* Text is normalised to its letter/digit runs ("Pixel-Art_XL" -> "pixel art xl"), queries the same way,
  so "pixel-art" finds "pixel_art" and "nerijs/pixel" finds ``nerijs/pixel-art-xl``. A word with no
  letter or digit is ignored.
* A word matches an entry when it is a **substring** of the entry's normalised text (repo id, title,
  trigger words, tags; ``base_model:*`` and ``region:*`` tags are left out since every entry has them).
  Substring rather than token prefix, so "art" also finds "pixelart".
* Relevance: each word scores by where and how well it matched, best of
  field weight (name/title 4, trigger words 3, owner or whole repo id 2, tags 1) x match strength (whole token 3,
  token prefix 2, substring 1); the entry's score is the sum over words, plus 100 when the whole query
  equals the repo name, the title or the repo id. So an exact repo-name or title hit ranks above a
  trigger-word hit, which ranks above a tag-only hit.
* Ties (and an empty query) follow ``sort``: "downloads" (then likes), "likes" (then downloads), "recent"
  (``last_modified``, newest first, unknown last); remaining ties by repo id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .entries import CatalogueEntry
from .errors import InvalidSearch

__all__ = ["MAX_LIMIT", "MAX_QUERY_CHARS", "SORTS", "SearchIndex", "SearchPage", "validate_search"]

#: The accepted values of ``sort``.
SORTS = ("downloads", "likes", "recent")
#: The largest page ``limit`` accepts.
MAX_LIMIT = 1000
#: The longest query accepted, in characters.
MAX_QUERY_CHARS = 256

_TOKEN = re.compile(r"[^\W_]+")
_SKIP_TAG_PREFIXES = ("base_model:", "region:")
# (score, field, strength) for field weights primary 4 / trigger 3 / owner 2 / tags 1 and strengths
# exact 3 / prefix 2 / substring 1, best first. The last level (tags, substring) needs no test: a word that
# matched the haystack matched at least that.
_FIELDS = ("primary", "trigger", "owner", "tags")
_WEIGHTS = {"primary": 4, "trigger": 3, "owner": 2, "tags": 1}
_STRENGTHS = {"exact": 3, "prefix": 2, "substring": 1}
_LEVELS = sorted(
    ((_WEIGHTS[f] * _STRENGTHS[s], fi, s) for fi, f in enumerate(_FIELDS) for s in _STRENGTHS),
    key=lambda t: (-t[0], t[1]),
)
_EXACT_QUERY_BONUS = 100


@dataclass(frozen=True)
class SearchPage:
    """One page of search results.

    Args:
        entries (`tuple[CatalogueEntry, ...]`): the page, best first.
        total (`int`): how many entries matched in all.
        query (`str`): the query as given.
        sort (`str`): the sort used for ties.
        limit (`int`): the page size asked for.
        offset (`int`): how many matches were skipped.
    """

    entries: tuple[CatalogueEntry, ...]  # this page, in rank order
    total: int  # matches over all pages
    query: str  # as passed in
    sort: str  # "downloads" | "likes" | "recent"
    limit: int = 100  # page size asked for
    offset: int = 0  # matches skipped before this page


def validate_search(query: str, sort: str, limit: int, offset: int) -> None:
    """Check search parameters, in a fixed order: query, sort, limit, offset.

    Raises:
        InvalidSearch: a parameter breaks a rule; the message names it and its value.
    """
    if not isinstance(query, str):
        raise InvalidSearch(f"`query` must be a string but is {type(query).__name__}: {query!r}")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidSearch(f"`query` must be at most {MAX_QUERY_CHARS} characters but has {len(query)}")
    if not isinstance(sort, str) or sort not in SORTS:
        raise InvalidSearch(f"`sort` must be one of {', '.join(SORTS)} but is {sort!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidSearch(f"`limit` must be an integer in [1, {MAX_LIMIT}] but is {limit!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidSearch(f"`offset` must be an integer >= 0 but is {offset!r}")


def _norm(text: str | None) -> str:
    return " ".join(_TOKEN.findall(text.lower())) if text else ""


def _field(parts: Sequence[str]) -> str:
    # Segments are joined with " \n " so neither a token test (" w ") nor a multi-word pattern spans two.
    return " " + " \n ".join(p for p in parts if p) + " "


class SearchIndex:
    """A search index over one immutable tuple of entries; build once, query from any thread.

    Args:
        entries (`Sequence[CatalogueEntry]`): the entries, in any order.

    Example:
        >>> index = SearchIndex(entries)
        >>> page = index.search("pixel art", sort="likes", limit=10)
        >>> page.total, [e.repo_id for e in page.entries]
    """

    def __init__(self, entries: Sequence[CatalogueEntry]):
        self.entries: tuple[CatalogueEntry, ...] = tuple(entries)
        n = len(self.entries)
        primary, trigger, owner, tags, hay = [], [], [], [], []
        exact: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            own, _, name = e.repo_id.partition("/")
            p = [_norm(name), _norm(e.title)]
            t = [_norm(e.trigger_words)]
            o = [_norm(own), _norm(e.repo_id)]  # the whole id too, so "nerijs/pixel" matches
            g = [_norm(tag) for tag in e.tags if not tag.startswith(_SKIP_TAG_PREFIXES)]
            primary.append(_field(p))
            trigger.append(_field(t))
            owner.append(_field(o))
            tags.append(_field(g))
            hay.append(_field(p + t + o + g))
            for key in {p[0], p[1], _norm(e.repo_id)} - {""}:
                exact.setdefault(key, []).append(i)
        self._fields = (primary, trigger, owner, tags)
        self._hay = hay
        self._exact = exact
        self._servable = [e.servable for e in self.entries]
        ids = [e.repo_id for e in self.entries]
        keys = {
            "downloads": lambda i: (-self.entries[i].downloads, -self.entries[i].likes, ids[i]),
            "likes": lambda i: (-self.entries[i].likes, -self.entries[i].downloads, ids[i]),
            "recent": lambda i: ids[i],
        }
        self._order: dict[str, tuple[int, ...]] = {}
        for sort in ("downloads", "likes"):
            self._order[sort] = tuple(sorted(range(n), key=keys[sort]))
        # Newest first, unknown dates last, ties by repo id: two stable passes.
        by_id = sorted(range(n), key=keys["recent"])
        dated = [i for i in by_id if self.entries[i].last_modified]
        dated.sort(key=lambda i: self.entries[i].last_modified, reverse=True)
        self._order["recent"] = tuple(dated + [i for i in by_id if not self.entries[i].last_modified])
        self._rank: dict[str, list[int]] = {}
        for sort, order in self._order.items():
            rank = [0] * n
            for r, i in enumerate(order):
                rank[i] = r
            self._rank[sort] = rank

    def __len__(self) -> int:
        return len(self.entries)

    def search(
        self,
        query: str = "",
        sort: str = "downloads",
        limit: int = 100,
        offset: int = 0,
        *,
        servable_only: bool = False,
    ) -> SearchPage:
        """Rank the entries matching ``query`` and return one page.

        Args:
            query (`str`, *optional*): whitespace-separated words, all of which must match; "" matches all.
            sort (`str`, *optional*, defaults to "downloads"): "downloads", "likes" or "recent"; orders ties.
            limit (`int`, *optional*, defaults to 100): page size, in [1, ``MAX_LIMIT``].
            offset (`int`, *optional*, defaults to 0): matches to skip.
            servable_only (`bool`, *optional*): leave out entries the engine cannot load.

        Raises:
            InvalidSearch: a parameter breaks a rule.
        """
        validate_search(query, sort, limit, offset)
        words = [w for w in (_norm(part) for part in query.split()) if w]
        if not words:
            order = self._order[sort]
            if servable_only:
                order = tuple(i for i in order if self._servable[i])
            page = order[offset : offset + limit]
            return SearchPage(tuple(self.entries[i] for i in page), len(order), query, sort, limit, offset)

        hay = self._hay
        cands = [i for i, ok in enumerate(self._servable) if ok] if servable_only else range(len(hay))
        for w in words:
            cands = [i for i in cands if w in hay[i]]
            if not cands:
                return SearchPage((), 0, query, sort, limit, offset)

        score = dict.fromkeys(cands, 0)
        for w in words:
            patterns = {"exact": f" {w} ", "prefix": f" {w}", "substring": w}
            remaining = cands
            for value, fi, strength in _LEVELS[:-1]:
                pat, strings = patterns[strength], self._fields[fi]
                hit = [i for i in remaining if pat in strings[i]]
                if hit:
                    for i in hit:
                        score[i] += value
                    hit_set = set(hit)
                    remaining = [i for i in remaining if i not in hit_set]
                    if not remaining:
                        break
            for i in remaining:
                score[i] += _LEVELS[-1][0]
        for i in self._exact.get(" ".join(words), ()):
            if i in score:
                score[i] += _EXACT_QUERY_BONUS

        n = len(hay) or 1
        rank = self._rank[sort]
        ordered = sorted(cands, key=lambda i: rank[i] - score[i] * n)
        page = ordered[offset : offset + limit]
        return SearchPage(tuple(self.entries[i] for i in page), len(ordered), query, sort, limit, offset)
