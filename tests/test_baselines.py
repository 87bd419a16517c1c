import math

import numpy as np
import pytest

from convrec import artifacts
from convrec.baselines import cooc, popularity
from convrec.catalog import Catalog


@pytest.fixture
def world(tiny_data):
    cat = Catalog(artifacts.read(tiny_data / "catalog.parquet", "catalog"))
    return (
        cat,
        artifacts.read(tiny_data / "train.parquet", "samples"),
        artifacts.read(tiny_data / "test.parquet", "samples"),
    )


def test_popularity_counts_train_answers(world):
    cat, train, test = world
    counts = popularity.item_counts(train, cat)
    dune = cat.lookup("Dune", 2021)
    assert math.floor(counts[dune]) == 3  # answered three times in train (+ a tie-break below 1)
    assert math.floor(counts[cat.lookup("Elf", 2003)]) == 1
    assert np.all(counts - np.floor(counts) < 1)


def test_popularity_excludes_seen_and_has_n_items(world):
    cat, train, test = world
    preds = popularity.recommend(train, test, cat, n=5)
    lists = dict(zip(preds["sample_id"], preds["items"].to_list(), strict=True))
    assert all(len(v) == 5 for v in lists.values())
    assert {"title": "Elf", "year": 2003} not in lists["s2"]  # s2 saw Elf
    assert lists["s3"][0] == {"title": "Dune", "year": 2021}


def test_cooc_matrix_is_cosine_normalised(world):
    cat, train, _ = world
    c = cooc.fit(train, cat).toarray()
    m, d21, e, f = (cat.lookup(*x) for x in (("The Matrix", 1999), ("Dune", 2021), ("Elf", 2003), ("Fargo", 1996)))
    # mentions: Matrix twice, Elf once; answers: Dune(2021) 3x, Elf 1x, Fargo 1x
    assert c[m, d21] == pytest.approx(2 / math.sqrt(2 * 3))
    assert c[m, e] == pytest.approx(1 / math.sqrt(2 * 1))
    assert c[e, f] == pytest.approx(1.0)
    assert np.count_nonzero(c) == 3


def test_cooc_recommends_from_mentions_and_falls_back_to_popularity(world):
    cat, train, test = world
    preds = cooc.recommend(train, test, cat, n=3)
    lists = dict(zip(preds["sample_id"], preds["items"].to_list(), strict=True))
    assert lists["s1"][:2] == [{"title": "Dune", "year": 2021}, {"title": "Elf", "year": 2003}]
    assert lists["s2"][0] == {"title": "Fargo", "year": 1996}
    assert lists["s3"][0] == {"title": "Dune", "year": 2021}  # no mention: popularity prior
    assert preds["text"][1].splitlines()[0] == "Fargo (1996)"
