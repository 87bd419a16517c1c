import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from convrec.catalog import Catalog, nearest_by_edits, normalize_title, normalize_titles, years_match
from convrec.errors import ConvrecError
from tests.conftest import SHARED_DATA, catalog_frame


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return Catalog(catalog_frame())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("The Matrix", "Matrix, The"),
        ("the   matrix", "THE MATRIX"),
        ("Amélie", "Amelie"),
        ("Cats & Dogs", "Cats and Dogs"),
        ("Ocean\u2019s Eleven", "Ocean's Eleven"),
        ("Oceans Eleven", "Ocean's Eleven"),
        ("Spider-Man: Homecoming", "Spider Man Homecoming"),
        ("Lord of the Rings, The: The Two Towers", "The Lord of the Rings: The Two Towers"),
    ],
)
def test_normalisation_equates(a, b):
    assert normalize_title(a) == normalize_title(b)


@pytest.mark.parametrize(("a", "b"), [("Dune", "Dune 2"), ("Alien", "Aliens"), ("'71", "71 Fragments")])
def test_normalisation_keeps_distinct_titles_apart(a, b):
    assert normalize_title(a) != normalize_title(b)


def test_years_match():
    assert years_match(2000, 2002, 2) and not years_match(2000, 2003, 2)
    assert years_match(None, 1990, 0) and years_match(1990, None, 0)


def test_remakes_resolve_by_year(cat):
    old, new = cat.lookup("Dune", 1984), cat.lookup("Dune", 2021)
    assert (cat.titles[old], cat.years[old]) == ("Dune", 1984)
    assert (cat.titles[new], cat.years[new]) == ("Dune", 2021)
    assert cat.lookup("Dune", 1986) == old  # within tolerance of the 1984 film only
    assert cat.lookup("Dune", 2019) == new
    assert cat.lookup("Dune", 2000) == -1  # neither remake within ±2


def test_year_tolerance_is_configurable():
    strict = Catalog(catalog_frame(), year_tolerance=0)
    assert strict.lookup("Elf", 2003) >= 0 and strict.lookup("Elf", 2004) == -1
    loose = Catalog(catalog_frame(), year_tolerance=5)
    assert loose.lookup("Elf", 2008) >= 0


def test_missing_year(cat):
    assert cat.lookup("Elf", None) == -1  # strict: the paper drops year-less items
    row = cat.lookup("Dune", None, allow_missing_year=True)
    assert cat.years[row] == 2021  # the more popular remake


def test_yearless_mode():
    c = Catalog(catalog_frame(), use_year=False)
    assert c.titles[c.lookup("matrix, the", None)] == "The Matrix"
    assert c.lookup("The Matrix", 1850) >= 0  # the year is ignored
    assert c.years[c.lookup("Dune", None)] == 2021


def test_lookup_many_and_label(cat):
    rows = cat.lookup_many(["Elf", "Nope", "Fargo"], [2003, 2000, 1996])
    assert rows.dtype == np.int64 and rows[1] == -1
    assert cat.label(int(rows[0])) == "Elf (2003)"


def test_fuzzy_match_recovers_misspellings_and_remakes(cat):
    res = cat.match(
        ["The Matrx", "Dunne", "Dunne", "Ocens Eleven", "Completely Unrelated Thing", "Elf"],
        [1999, 2020, 1985, None, 2000, 2003],
    )
    assert [r.kind for r in res] == ["fuzzy", "fuzzy", "fuzzy", "fuzzy", "none", "exact"]
    assert cat.titles[res[0].row] == "The Matrix"
    assert cat.years[res[1].row] == 2021 and cat.years[res[2].row] == 1984
    assert cat.titles[res[3].row] == "Ocean's Eleven"
    assert res[4].row == -1 and res[5].score == 100.0
    assert 0 < res[0].score < 100


def test_fuzzy_scores_shape(cat):
    s = cat.fuzzy_scores(["Elf", "Fargo"])
    assert s.shape == (2, len(cat)) and s.dtype == np.float32
    assert s[0].argmax() == cat.lookup("Elf", 2003)


def test_empty_catalog_is_a_user_error():
    with pytest.raises(ConvrecError, match="empty"):
        Catalog(catalog_frame([]))


# --- the column twins of the scalar matcher (what eval's vectorised protocols use) ---

PIECES = [*"abcXYZ &,:'-`.\u00e9\t", "The", "the", "A", "an", ", The", ", a: x"]
TITLE_TEXT = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(TITLE_TEXT, max_size=20))
@example(["Matrix, The", "Fast & Furious", "  Amélie  ", "Ocean's Eleven", "X, a: the Sequel", "`Quoted`", ""])
def test_normalize_titles_equals_normalize_title(titles):
    got = normalize_titles(pl.Series(titles, dtype=pl.String)).to_list()
    assert got == [normalize_title(t) for t in titles]


def test_normalize_titles_on_the_reddit_catalog():
    path = SHARED_DATA / "reddit_v2" / "catalog.csv"
    if not path.exists():
        pytest.skip("../shared/data/reddit_v2/catalog.csv is absent")
    titles = pl.read_csv(path)["title"]
    assert normalize_titles(titles).to_list() == [normalize_title(t) for t in titles.to_list()]


def test_lookup_keys_equals_lookup(cat):
    queries = [(t, y + dy) for t, y in zip(cat.titles, cat.years, strict=True) for dy in (-3, -2, 0, 1, 3)]
    queries += [("dune", None), ("Dune", 2003), ("Matrix, The", 2000), ("nope", 2000)]
    for c in (cat, Catalog(catalog_frame(), use_year=False), Catalog(catalog_frame(), year_tolerance=0)):
        titles = pl.Series([t for t, _ in queries])
        got = c.lookup_keys(normalize_titles(titles), pl.Series([y for _, y in queries], dtype=pl.Int64))
        assert got.tolist() == [c.lookup(t, y) for t, y in queries]


def test_nearest_by_edits_equals_brute_force():
    from rapidfuzz.distance import Levenshtein

    rng = np.random.default_rng(0)
    alphabet = list("abcdeAB ")
    words = ["".join(rng.choice(alphabet, size=rng.integers(0, 7))) for _ in range(300)]
    choices, queries = words[:60], words[60:]
    idx, dist = nearest_by_edits(queries, choices, 2)
    for q, i, d in zip(queries, idx, dist, strict=True):
        ds = [Levenshtein.distance(q.lower(), c.lower()) for c in choices]
        best = int(np.argmin(ds))
        if ds[best] <= 2:
            assert (i, d) == (best, ds[best])
        else:
            assert i == -1
