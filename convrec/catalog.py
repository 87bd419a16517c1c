"""The one catalog matcher: title normalisation, exact lookup with a year tolerance, fuzzy lookup.

Every stage that must know which catalog item a piece of text means (eval, baselines, remap,
rl rewards, serve) goes through `normalize_title` and `Catalog`. Nothing else re-implements it.

Normalisation folds case, whitespace, punctuation, quotes, diacritics and `&`/`and`, and moves a
trailing article to the front ("Matrix, The" -> "the matrix"), so "The X" and "X, The" agree.
Exact lookup compares normalised titles and accepts a year within ``year_tolerance`` (default 2,
as the paper's metrics do); remakes sharing a title resolve to the closest year. Fuzzy lookup
scores whole batches of titles against the catalog with `rapidfuzz.process.cdist` (C++, all
cores), never a Python loop over the catalog.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from convrec.errors import ConvrecError

_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
    }
)
_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+?),\s*(?P<art>the|a|an)(?P<rest>\s*[:\-].*)?$")
_APOSTROPHE = re.compile(r"'")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


@lru_cache(maxsize=1 << 20)
def normalize_title(title: str) -> str:
    """Canonical form of a title for matching.

    >>> normalize_title("  Amélie  ")
    'amelie'
    >>> normalize_title("Matrix, The") == normalize_title("The Matrix")
    True
    >>> normalize_title("Fast & Furious") == normalize_title("Fast and Furious")
    True
    """
    t = unicodedata.normalize("NFKD", title.translate(_QUOTES))
    t = "".join(c for c in t if not unicodedata.combining(c)).casefold().strip()
    t = t.replace("&", " and ")
    m = _TRAILING_ARTICLE.match(t)
    if m:
        t = f"{m['art']} {m['body']}{m['rest'] or ''}"
    t = _APOSTROPHE.sub("", t)  # "ocean's" -> "oceans", not "ocean s"
    return _NON_ALNUM.sub(" ", t).strip()


_PRINTABLE_ASCII = r"^[ -~]*$"


def _distinct(values: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
    """The distinct rows (first-seen order) and, per row, the index of its distinct row. Through
    64-bit row hashes (integer work, no string hash table), then checked row by row; on a hash
    collision, never seen in practice, an exact table instead."""
    h = values.hash_rows(seed=0)
    first = np.flatnonzero(h.is_first_distinct().to_numpy())
    reps = pl.DataFrame({"h": h.gather(first), "c": np.arange(len(first))})
    code = pl.DataFrame({"h": h}).join(reps, on="h", how="left", maintain_order="left")["c"].to_numpy()
    uniq = values[first]
    back = uniq[code]
    if all(back[c].eq_missing(values[c]).all() for c in values.columns):
        return uniq, code
    indexed = values.with_row_index("i")
    uniq = values.unique(maintain_order=True)
    keyed = uniq.with_row_index("c").join(indexed, on=values.columns, how="inner", nulls_equal=True)
    code = np.empty(values.height, dtype=np.int64)
    code[keyed["i"].to_numpy()] = keyed["c"].to_numpy()
    return uniq, code


def normalize_titles(titles: pl.Series) -> pl.Series:
    """`normalize_title` over a whole column, once per distinct title. Printable-ASCII titles
    (nearly all) take the same steps as polars string expressions, without a Python call each;
    any other title goes through `normalize_title` itself. tests/test_catalog.py pins the two equal."""
    titles = titles.cast(pl.String)
    uniq_rows, code = _distinct(pl.DataFrame({"t": titles}))
    uniq = uniq_rows["t"]
    fast = (
        pl.col("t")
        .str.replace_all("`", "'", literal=True)
        .str.to_lowercase()
        .str.strip_chars(" ")
        .str.replace_all("&", " and ", literal=True)
        .str.replace(r"^(.+?),\s*(the|a|an)(\s*[:\-].*)?$", "${2} ${1}${3}")
        .str.replace_all("'", "", literal=True)
        .str.replace_all(r"[^0-9a-z]+", " ")
        .str.strip_chars(" ")
    )
    ascii_ = pl.col("t").str.contains(_PRINTABLE_ASCII)
    norm = pl.DataFrame({"t": uniq}).select(pl.when(ascii_).then(fast).otherwise(None).alias("n"))["n"]
    slow = np.flatnonzero((norm.is_null() & uniq.is_not_null()).to_numpy())
    if len(slow):
        norm = norm.scatter(slow, [normalize_title(t) for t in uniq.gather(slow).to_list()])
    return norm.gather(code)


def years_match(a: int | None, b: int | None, tolerance: int) -> bool:
    """Years agree within the tolerance; an unknown year on either side agrees with any year."""
    return a is None or b is None or abs(a - b) <= tolerance


def nearest_by_edits(
    queries: Sequence[str], choices: Sequence[str], max_distance: int, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the index of the choice nearest by Levenshtein distance on lower-cased
    strings (ties: the first choice) and that distance; index -1 when none is within
    ``max_distance``. Exact matches come from a dict; the rest from batched `process.cdist` with
    the distance capped at ``max_distance`` (bounded Levenshtein, C++, all cores), each query
    against the choices whose length is within ``max_distance`` of its own (no other can be)."""
    lower = [c.lower() for c in choices]
    first: dict[str, int] = {}
    for i, c in enumerate(lower):
        first.setdefault(c, i)
    q = [s.lower() for s in queries]
    idx = np.fromiter((first.get(s, -1) for s in q), dtype=np.int64, count=len(q))
    dist = np.where(idx >= 0, 0, max_distance + 1).astype(np.int64)
    rest = np.flatnonzero(idx < 0)
    c_len = np.fromiter(map(len, lower), dtype=np.int64, count=len(lower))
    q_len = np.fromiter((len(q[i]) for i in rest), dtype=np.int64, count=len(rest))
    for length in np.unique(q_len):
        near = np.flatnonzero(np.abs(c_len - length) <= max_distance)  # ascending: ties keep the first
        todo = rest[q_len == length]
        if len(near) == 0:
            continue
        pool = [lower[i] for i in near]
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            d = process.cdist(
                [q[i] for i in part],
                pool,
                scorer=Levenshtein.distance,
                score_cutoff=max_distance,
                dtype=np.int32,
                workers=-1,
            )
            best = d.argmin(axis=1)
            best_d = d[np.arange(len(part)), best]
            ok = best_d <= max_distance
            idx[part[ok]], dist[part[ok]] = near[best[ok]], best_d[ok]
    return idx, dist


@dataclass(frozen=True)
class Match:
    row: int  # row in the catalog frame, -1 when nothing matched
    score: float  # 100 for exact, the fuzzy similarity (0..100) otherwise
    kind: str  # "exact" | "fuzzy" | "none"


class Catalog:
    """An item index over a catalog frame (the `catalog` artifact schema).

    ``use_year=False`` is the year-less mode for datasets whose titles carry no year: titles alone
    decide, and titles shared by several items resolve to the most popular one.
    """

    def __init__(self, df: pl.DataFrame, *, year_tolerance: int = 2, use_year: bool = True) -> None:
        if df.height == 0:
            raise ConvrecError("catalog is empty: it needs at least one item")
        self.df = df
        self.year_tolerance = year_tolerance
        self.use_year = use_year
        self.item_ids: list[str] = df["item_id"].to_list()
        self.titles: list[str] = df["title"].to_list()
        self.years: list[int | None] = df["year"].to_list()
        self.norm: list[str] = [normalize_title(t) for t in self.titles]
        pop = df["popularity"].fill_null(0.0).to_numpy() if "popularity" in df.columns else np.zeros(df.height)
        self.popularity = np.asarray(pop, dtype=np.float64)
        self.row_of_id = {iid: i for i, iid in enumerate(self.item_ids)}
        self._resolved: dict[tuple[str, int | None], tuple[str, int]] = {}
        self._keys_frame: pl.DataFrame | None = None  # built by the first `lookup_keys`
        self._by_title: dict[str, list[int]] = {}
        for i, n in enumerate(self.norm):
            self._by_title.setdefault(n, []).append(i)
        # most popular first, then newest: the pick when a title is ambiguous
        for rows in self._by_title.values():
            rows.sort(key=lambda r: (-self.popularity[r], -(self.years[r] or 0)))

    def __len__(self) -> int:
        return len(self.item_ids)

    def label(self, row: int) -> str:
        """`Title (Year)` for a catalog row: the list line format."""
        y = self.years[row]
        return f"{self.titles[row]} ({y})" if y is not None else self.titles[row]

    def lookup(self, title: str, year: int | None = None, *, allow_missing_year: bool = False) -> int:
        """Catalog row of an exact (normalised) title match with a year within tolerance, else -1.

        Among remakes, the closest year wins (ties: the more popular). A query without a year
        matches only in year-less mode or with ``allow_missing_year`` (then: the most popular).
        """
        return self.lookup_normalized(normalize_title(title), year, allow_missing_year=allow_missing_year)

    def resolve(self, title: str, year: int | None) -> tuple[str, int]:
        """(normalised title, strict `lookup` row), memoised: metrics call it for every listed item."""
        key = (title, year)
        hit = self._resolved.get(key)
        if hit is None:
            norm = normalize_title(title)
            hit = self._resolved[key] = (norm, self.lookup_normalized(norm, year))
        return hit

    def lookup_normalized(self, norm: str, year: int | None, *, allow_missing_year: bool = False) -> int:
        """`lookup` for a title already passed through `normalize_title` (hot loops)."""
        rows = self._by_title.get(norm)
        if not rows:
            return -1
        if not self.use_year:
            return rows[0]
        if year is None:
            return rows[0] if allow_missing_year else -1
        best, best_dy = -1, None
        for r in rows:  # a handful of remakes at most
            y = self.years[r]
            dy = self.year_tolerance if y is None else abs(y - year)
            if dy <= self.year_tolerance and (best_dy is None or dy < best_dy):
                best, best_dy = r, dy
        return best

    def lookup_keys(self, norms: pl.Series, years: pl.Series) -> np.ndarray:
        """`lookup_normalized` over whole columns (normalised titles, years) as one join with the
        catalog: same rules, same picks (closest year, then the title's popularity order)."""
        if self._keys_frame is None:
            order = np.empty(len(self), dtype=np.int64)
            for rows in self._by_title.values():
                order[rows] = np.arange(len(rows))
            self._keys_frame = pl.DataFrame(
                {"k": self.norm, "row": np.arange(len(self)), "cy": pl.Series(self.years, dtype=pl.Int64), "o": order}
            )
        queries = pl.DataFrame({"k": norms.cast(pl.String), "y": years.cast(pl.Int64)})
        distinct, code = _distinct(queries)  # each distinct (title, year) once
        q = distinct.with_row_index("q")
        c = q.join(self._keys_frame, on="k", how="inner")
        if self.use_year:
            tol = self.year_tolerance
            dy = pl.when(pl.col("cy").is_null()).then(tol).otherwise((pl.col("cy") - pl.col("y")).abs())
            c = c.filter(pl.col("y").is_not_null()).with_columns(dy=dy).filter(pl.col("dy") <= tol)
            c = c.sort("q", "dy", "o")
        else:
            c = c.sort("q", "o")
        best = c.unique("q", keep="first")
        rows = np.full(q.height, -1, dtype=np.int64)
        rows[best["q"].to_numpy()] = best["row"].to_numpy()
        return rows[code]

    def lookup_many(
        self, titles: Sequence[str], years: Sequence[int | None] | None = None, *, allow_missing_year: bool = False
    ) -> np.ndarray:
        """`lookup` over a batch; returns an int64 array of rows (-1 for no match)."""
        years = years if years is not None else [None] * len(titles)
        return np.fromiter(
            (self.lookup(t, y, allow_missing_year=allow_missing_year) for t, y in zip(titles, years, strict=True)),
            dtype=np.int64,
            count=len(titles),
        )

    def fuzzy_scores(self, titles: Sequence[str], *, scorer=fuzz.ratio, workers: int = -1) -> np.ndarray:
        """Similarity (0..100, float32) of each query title to every catalog title: shape (Q, |C|)."""
        queries = [normalize_title(t) for t in titles]
        return process.cdist(queries, self.norm, scorer=scorer, dtype=np.float32, workers=workers)

    def match(
        self,
        titles: Sequence[str],
        years: Sequence[int | None] | None = None,
        *,
        fuzzy: bool = True,
        cutoff: float = 85.0,
        year_penalty: float = 5.0,
        batch_size: int = 1024,
        scorer=fuzz.ratio,
    ) -> list[Match]:
        """Resolve free-text (title, year) pairs: exact lookup first, then fuzzy for the rest.

        Fuzzy score = title similarity − ``year_penalty`` per year outside the tolerance (capped at
        10 years), so a misspelt title still resolves to the right remake. Matches under ``cutoff``
        are "none".
        """
        years = list(years) if years is not None else [None] * len(titles)
        rows = self.lookup_many(titles, years, allow_missing_year=True)
        out = [Match(int(r), 100.0, "exact") if r >= 0 else Match(-1, 0.0, "none") for r in rows]
        misses = np.flatnonzero(rows < 0)
        if not fuzzy or len(misses) == 0:
            return out
        cat_years = np.array([y if y is not None else -(10**6) for y in self.years], dtype=np.float32)
        for start in range(0, len(misses), batch_size):
            idx = misses[start : start + batch_size]
            sims = self.fuzzy_scores([titles[i] for i in idx], scorer=scorer)
            if self.use_year:
                qy = np.array([years[i] if years[i] is not None else np.nan for i in idx], dtype=np.float32)
                dy = np.abs(qy[:, None] - cat_years[None, :])
                over = np.clip(dy - self.year_tolerance, 0, 10)
                over = np.where(np.isnan(over), 0.0, over)  # unknown year: no penalty
                sims = sims - year_penalty * over
            best = sims.argmax(axis=1)
            best_score = sims[np.arange(len(idx)), best]
            for i, b, s in zip(idx, best, best_score, strict=True):
                if s >= cutoff:
                    out[i] = Match(int(b), float(s), "fuzzy")
        return out

    def contains(self, title: str, year: int | None) -> bool:
        """In-catalog test used by metrics: exact title, year within tolerance (year required)."""
        return self.lookup(title, year) >= 0
