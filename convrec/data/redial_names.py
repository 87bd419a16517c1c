"""Naming ReDIAL's entity ids and reading `Title (Year)` mentions from free text.

The file's ``entity`` ids carry no names, so `name_ids` pairs ids and names by co-occurrence over
the rows; `Mentions` finds known titles (and, with ``guess``, unknown ones by a capitalisation
heuristic) in utterances. `convrec.data.redial` explains why and uses both.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from convrec.listfmt import Item, parse_line

# An id and a name are paired when they share at least this share of the rows either occurs in.
MIN_PAIR_SCORE = 0.5

_YEAR = re.compile(r"\(\s*(\d{4})\s*\)")
# Lower-case words a title may contain between capitalised ones.
_CONNECTORS = {"a", "an", "the", "of", "and", "or", "in", "on", "at", "to", "for", "from", "with", "by", "vs", "vs."}
_CONNECTORS |= {"de", "la", "le", "&", "-", "\u2013", ":"}
# Capitalised only because they start a sentence: never the first word of a guessed title.
_STARTER_WORDS = (
    "I Yes No Or And But If So Did Have Do Also Then Try Maybe Oh Ok Okay OK Well How What Sure Hi Hello Thanks "
    "Great You Perhaps Another Like Watch Check Has Is Are Was Were My It's That's Its Definitely Probably"
)
_STARTERS = set(_STARTER_WORDS.split())
_ABBREVIATIONS = {"vs.", "Mr.", "Mrs.", "Dr.", "St.", "Jr."}


_PARENS = re.compile(r"\([^()]*\)")


def yearless_name(name: str) -> Item | None:
    """(title, None) of a year-less entity name; a DBpedia URI gives its last path part."""
    name = name.strip().strip("<>")
    if "://" in name:
        name = unquote(name.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ")
    title = " ".join(_PARENS.sub(" ", name).split())
    return (title, None) if title else None


def movie_name(name: str) -> Item | None:
    """(title, year) of a `Title (Year)` name, else None (actors, genres, year-less titles)."""
    item = parse_line(name).item
    return item if item is not None and item[1] is not None else None


def guess_title(prefix: str) -> str | None:
    """The title that ends ``prefix``: the run of capitalised words (and connectors) before it."""
    words: list[str] = []
    for w in reversed(prefix.split()):
        if words and w[-1] in ".?!,;" and w not in _ABBREVIATIONS:
            break
        if not (w[0].isupper() or w[0].isdigit() or not w[0].isalpha() or w in _CONNECTORS):
            break
        words.append(w)
    words.reverse()
    while words and (words[0] in _STARTERS or (words[0] in _CONNECTORS and not words[0][0].isupper())):
        words.pop(0)
    if len(words) > 1 and words[0].casefold() == words[1].casefold():
        words.pop(0)  # "The The Blues Brothers": ReDIAL's "The @id" with a name starting "The"
    return " ".join(words) or None


class Mentions:
    """Finds `Title (Year)` mentions of known names in free text (longest known title wins)."""

    def __init__(self) -> None:
        self.by_year: dict[int, list[str]] = {}
        self._cache: dict[tuple[str, bool], list[Item]] = {}  # contexts repeat turn after turn

    def add(self, item: Item) -> None:
        title, year = item
        titles = self.by_year.setdefault(year, [])
        if title not in titles:
            titles.append(title)
            titles.sort(key=len, reverse=True)
            self._cache.clear()

    def find(self, text: str, *, guess: bool = False) -> list[Item]:
        """Mentions in order; with ``guess``, unknown `Title (Year)` mentions are read heuristically."""
        hit = self._cache.get((text, guess))
        if hit is not None:
            return hit
        out: list[Item] = []
        start = 0
        for m in _YEAR.finditer(text):
            year, prefix = int(m[1]), text[start : m.start()].rstrip()
            start = m.end()  # a title never spans an earlier mention
            title = next((t for t in self.by_year.get(year, ()) if ends_with_word(prefix, t)), None)
            if title is None and guess:
                title = guess_title(prefix)
            if title:
                out.append((title, year))
        self._cache[text, guess] = out
        return out


def ends_with_word(text: str, title: str) -> bool:
    return text.endswith(title) and (len(text) == len(title) or not text[-len(title) - 1].isalnum())


def name_ids(rows: Sequence[Any], resp_mentions: list[list[Item]], namer=None) -> dict[int, Item]:
    """Entity id -> `Title (Year)` by co-occurrence over rows (see the module docstring).

    score(id, name) = rows with both / rows with the more frequent of the two, so a generic
    entity present in hundreds of rows ("comedy") never takes a movie's name. Ties go to the
    pair where the id is in ``rec`` and the name in ``resp``, then to the more frequent pair.
    ``namer`` reads an ``entity_name`` (default: a `Title (Year)` movie, else nothing).
    """
    namer = namer or movie_name
    id_rows: Counter = Counter()
    name_rows: Counter = Counter()
    both: Counter = Counter()
    rec_resp: Counter = Counter()
    for row, mentioned in zip(rows, resp_mentions, strict=True):
        ids = set(row.entity) | set(row.rec)
        in_resp = set(mentioned)
        names = in_resp | {m for m in map(namer, row.entity_name) if m is not None}
        id_rows.update(ids)
        name_rows.update(names)
        for i in ids:
            for n in names:
                both[i, n] += 1
                if i in row.rec and n in in_resp:
                    rec_resp[i, n] += 1

    def score(pair: tuple[int, Item]) -> float:
        return both[pair] / max(id_rows[pair[0]], name_rows[pair[1]])

    ranked = sorted(both, key=lambda p: (-score(p), -rec_resp[p], -both[p], p))
    names_of: dict[int, Item] = {}
    taken: set[Item] = set()
    for pair in ranked:
        i, n = pair
        if score(pair) < MIN_PAIR_SCORE:
            break
        if i not in names_of and n not in taken:
            names_of[i] = n
            taken.add(n)
    return names_of
