import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from convrec.listfmt import _ANY_YEAR, _BULLET, _NUMBERING, format_list, is_format_valid, parse_line, parse_list

RAW = """Sure! Here are some movies you might like:

1. **Inception** (2010)
2) "The Matrix" (1999)
- Birdman (or The Unexpected Virtue of Ignorance) (2014)
* '71 (2014) - a gritty thriller
3. Amelie
#4. 2001: A Space Odyssey (1968)
5. *Airplane!*
I hope you enjoy these! They are all great movies to watch tonight with friends.
Inception (2010)
"""


def test_parse_messy_teacher_output():
    assert parse_list(RAW) == [
        ("Inception", 2010),
        ("The Matrix", 1999),
        ("Birdman (or The Unexpected Virtue of Ignorance)", 2014),
        ("'71", 2014),
        ("Amelie", None),
        ("2001: A Space Odyssey", 1968),
        ("Airplane!", None),
        ("Inception", 2010),
    ]
    assert parse_list(RAW, dedupe=True)[-1] == ("Airplane!", None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("10. Heat (1995)", ("Heat", 1995)),
        ("• Heat (1995)", ("Heat", 1995)),
        ("(3) Heat (1995)", ("Heat", 1995)),
        ("__Heat__ ( 1995 )", ("Heat", 1995)),
        ("\u201cHeat\u201d (1995)", ("Heat", 1995)),
        ("Heat (1995): a heist classic", ("Heat", 1995)),
        ("9 to 5 (1980)", ("9 to 5", 1980)),
        ("Here are my picks:", None),
        ("", None),
        ("Heat (1995) is a film I think you would like a lot", None),
    ],
)
def test_parse_line(line, expected):
    assert parse_line(line).item == expected


def test_format_valid():
    assert is_format_valid("A (2000)\nB (2001)", 2)
    assert is_format_valid("1. A (2000)\n2. B (2001)")
    assert not is_format_valid("A (2000)\nB", 2)  # missing year
    assert not is_format_valid("Here you go:\nA (2000)\nB (2001)", 2)  # prose line
    assert not is_format_valid("A (2000)", 2)  # wrong length
    assert not is_format_valid("", None) and not is_format_valid(None)


def test_format_list():
    assert format_list([("Heat", 1995), ("Amelie", None)]) == "Heat (1995)\nAmelie"


# Titles as catalogs have them: words, digits, inner punctuation and parentheses. Excluded: forms a
# list line cannot tell apart from its own syntax (a leading "12." reads as numbering, a title wrapped
# whole in quotes or ending in "(1999)" reads as markup or a year).
_word = st.text(alphabet=string.ascii_letters + string.digits + "'éü", min_size=1, max_size=9)
_sep = st.sampled_from([" ", " ", " ", ": ", " - ", " & ", ", ", "! ", "? "])


@st.composite
def titles(draw) -> str:
    words = draw(st.lists(_word, min_size=1, max_size=6))
    t = words[0]
    for w in words[1:]:
        t += draw(_sep) + w
    if draw(st.booleans()):
        t += f" ({draw(_word)})"
    t = t.strip()
    if t[0] == "'" or _NUMBERING.match(t) or _BULLET.match(t):  # would read as list markup
        t = "X" + t
    return t


years = st.one_of(st.none(), st.integers(1900, 2030))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(titles(), st.integers(1900, 2030)), max_size=25))
@example([("Heat (1234)", 1999), ("Heat (1995) - Part 2", 2001), ("Up: A (Tale)", 2009)])
def test_format_then_parse_round_trips(items):
    assert parse_list(format_list(items)) == items


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(titles(), years), max_size=10))
def test_round_trip_with_missing_years(items):
    # a year-less line is kept when it looks like a title (<= 10 words, not prose)
    items = [
        (t, y)
        for t, y in items
        if y is not None or (len(t.split()) <= 10 and not t.endswith((".", ":")) and not _ANY_YEAR.search(t))
    ]
    assert parse_list(format_list(items)) == items


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(titles(), st.integers(1900, 2030)), min_size=1, max_size=20))
def test_numbered_lists_parse_the_same(items):
    numbered = "\n".join(f"{i}. {t} ({y})" for i, (t, y) in enumerate(items, 1))
    assert parse_list(numbered) == items
