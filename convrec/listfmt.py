"""The one list parser and formatter: raw model/teacher text <-> ordered (title, year) items.

Parsing follows the paper (split on newlines, strip numbering, bullets, markdown and quotes,
read `Title (Year)`) and is lenient where real teachers are sloppy: a line without a year is
kept as an item with ``year=None`` when it looks like a title rather than prose, and a title
may itself contain parentheses ("Birdman (or The Unexpected Virtue of Ignorance) (2014)").
`format_list` is the inverse, used to write training targets. `he2023_lines` reads an answer the
way He et al. (CIKM 2023) did, for their evaluation protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

Item = tuple[str, int | None]

_NUMBERING = re.compile(r"^\s*(?:#?\d{1,3}\s*[.)\]:]|\(\d{1,3}\)|\[\d{1,3}\])\s+")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u2023\u25e6\u2043>]|\u2013|\u2014)\s+")
# The year is a final "(dddd)"; failing that, the first "(dddd)" followed by a separator and a
# comment ("Title (Year) - why"). Either way "(1234)" inside a title stays in the title.
_TITLE_YEAR_END = re.compile(r"^(?P<title>.*\S)\s*\(\s*(?P<year>\d{4})\s*\)\s*$")
_TITLE_YEAR = re.compile(r"^(?P<title>.*?\S)\s*\(\s*(?P<year>\d{4})\s*\)\s*[-\u2013\u2014:,;|].*$")
_ANY_YEAR = re.compile(r"\(\s*\d{4}\s*\)")
_MD = re.compile(r"\*\*|__|(?<!\w)[*_]|[*_](?!\w)|`")
_PAIRS = {'"': '"', "\u201c": "\u201d", "'": "'", "\u2018": "\u2019", "\u00ab": "\u00bb"}


@dataclass(frozen=True)
class Line:
    raw: str
    item: Item | None  # None: not an item (prose, blank)
    marked: bool  # had numbering or a bullet


def _strip_quotes(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and _PAIRS.get(s[0]) == s[-1]:
        s = s[1:-1].strip()
    return s


def parse_line(raw: str) -> Line:
    s = raw.strip()
    if not s:
        return Line(raw, None, False)
    marked = False
    for pat in (_NUMBERING, _BULLET, _NUMBERING):  # "- 1. X" and "1. - X" both occur
        m = pat.match(s)
        if m:
            s, marked = s[m.end() :], True
    s = _MD.sub("", s).strip()
    m = _TITLE_YEAR_END.match(s) or _TITLE_YEAR.match(s)
    if m:
        title = _strip_quotes(m["title"]).rstrip(" -:,")
        if title:
            return Line(raw, (title, int(m["year"])), marked)
    title = _strip_quotes(s)
    words = title.split()
    prose = (
        not title
        or title.endswith(":")
        or len(words) > 10
        or (title.endswith(".") and len(words) > 3)
        or (not marked and _ANY_YEAR.search(s) is not None)  # "X (1999) is great" is prose
    )
    return Line(raw, None if prose else (title, None), marked)


def parse_lines(text: str | None) -> list[Line]:
    return [parse_line(line) for line in (text or "").splitlines()]


def parse_list(text: str | None, *, dedupe: bool = False) -> list[Item]:
    """Ordered items of a generated list. Duplicates (same normalised title and year, the catalog
    matcher's key) are kept unless ``dedupe``."""
    from convrec.catalog import normalize_title  # the matcher owns title equality

    items = [ln.item for ln in parse_lines(text) if ln.item is not None]
    if not dedupe:
        return items
    seen: set[tuple[str, int | None]] = set()
    out = []
    for t, y in items:
        key = (normalize_title(t), y)
        if key not in seen:
            seen.add(key)
            out.append((t, y))
    return out


def is_format_valid(text: str | None, n: int | None = None, *, need_year: bool = True) -> bool:
    """Every non-blank line is `Title (Year)` (numbering tolerated; `Title` alone when not
    ``need_year``, for year-less catalogs) and, given n, there are n lines."""
    lines = [ln for ln in parse_lines(text) if ln.raw.strip()]
    if not lines or any(ln.item is None or (need_year and ln.item[1] is None) for ln in lines):
        return False
    return n is None or len(lines) == n


_HE_PARENS = re.compile(r"\([^()]*\)")
_HE_SPACES = re.compile(r"\s+")
_HE_NUMBERING = re.compile(r"^(?:\d+[.)\u3001]?\s*[-\u2014\u2013]?\s*)?")


def he2023_clean(line: str, *, numbering: bool = True) -> str:
    """A line as He et al. clean it: parenthesised parts dropped, spaces collapsed, then (given
    ``numbering``) a leading number with its dot, bracket or dash removed."""
    s = _HE_SPACES.sub(" ", _HE_PARENS.sub("", line.strip())).strip()
    return _HE_NUMBERING.sub("", s, count=1) if numbering else s


def he2023_lines(text: str | None) -> list[str]:
    """An answer's lines as He et al. read them: everything up to the first "1." is dropped (with
    no "1.", commas also break lines), then each line is cleaned by `he2023_clean`. Blank lines
    stay, as in their release: the nearest-title step maps them too (to a title of <= 2 letters)."""
    if not text:
        return []
    head, sep, rest = text.partition("1.")
    body = rest if sep else text.replace(",", "\n")
    return [he2023_clean(line) for line in body.split("\n")]


def format_item(title: str, year: int | None) -> str:
    return f"{title} ({year})" if year is not None else title


def format_list(items: Iterable[Item]) -> str:
    """Training-target text: one `Title (Year)` per line, nothing else."""
    return "\n".join(format_item(t, y) for t, y in items)
