"""Catalog titles named in free conversation text: the seen items that serving excludes.

Data sets carry a `seen` column; a live conversation does not, so `convrec serve` and
`convrec generate --constrained` read the text itself. Words are normalised one at a time with
the catalog's own `normalize_title`, and the longest run of words that is a catalog title wins.
A `(Year)` right after the title picks the remake within the catalog's year tolerance; a title
named without a year stands for all its namesakes (as the eval's seen filter reads it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from convrec.catalog import Catalog, normalize_title

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|&")
_YEAR = re.compile(r"\d{4}")


class MentionFinder:
    """Finds catalog titles in text; built once per catalog (serve reuses it for every request)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.rows_by_title: dict[str, list[int]] = {}
        for row, norm in enumerate(catalog.norm):
            if norm:
                self.rows_by_title.setdefault(norm, []).append(row)
        self.max_words = max((len(n.split()) for n in self.rows_by_title), default=0)

    def rows(self, text: str) -> set[int]:
        """Catalog rows the text names."""
        words = [(m, normalize_title(m.group())) for m in _WORD.finditer(text)]
        words = [(m, n) for m, n in words if n]
        found: set[int] = set()
        i = 0
        while i < len(words):
            hit = self._longest_at(text, words, i)
            if hit is None:
                i += 1
                continue
            length, rows = hit
            found.update(rows)
            i += length
        return found

    def _longest_at(self, text: str, words: list, i: int) -> tuple[int, list[int]] | None:
        for length in range(min(self.max_words, len(words) - i), 0, -1):
            key = " ".join(n for _, n in words[i : i + length])
            rows = self.rows_by_title.get(key)
            if rows is None:
                continue
            first = words[i][0].group()
            # one lower-case word ("up", "it") is ordinary prose, not a title
            if length == 1 and not (first[0].isupper() or first[0].isdigit()):
                continue
            year = self._year_after(text, words, i + length)
            if year is None:
                return length, rows
            row = self.catalog.lookup_normalized(key, year)
            return length, [row] if row >= 0 else []
        return None

    @staticmethod
    def _year_after(text: str, words: list, j: int) -> int | None:
        if j >= len(words):
            return None
        m = words[j][0]
        between = text[words[j - 1][0].end() : m.start()].strip()
        if between in ("(", "") and _YEAR.fullmatch(m.group()):
            return int(m.group())
        return None

    def rows_in_messages(self, messages: Iterable[dict]) -> set[int]:
        """Rows named anywhere in a conversation (every role: the assistant's suggestions count as seen)."""
        found: set[int] = set()
        for m in messages:
            found |= self.rows(m.get("content") or "")
        return found
