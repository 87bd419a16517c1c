"""Metrics pinned against hand-computed values (../shared/PAPER.md, "Metrics")."""

import math

import polars as pl
import pytest

from convrec.catalog import Catalog
from convrec.evaluation import EvalConfig, evaluate
from convrec.metrics import DUP, HIT, MISS, OUT, SEEN, discounts, judge_list, ranking_metrics
from tests.conftest import catalog_frame, samples_frame

CAT = Catalog(catalog_frame())
A, B, C, D84, D21, M, OC, AM, E, F = (
    ("A Movie", 2000),
    ("Bee Story", 2001),
    ("Cats & Dogs", 2002),
    ("Dune", 1984),
    ("Dune", 2021),
    ("The Matrix", 1999),
    ("Ocean's Eleven", 2001),
    ("Amélie", 2001),
    ("Elf", 2003),
    ("Fargo", 1996),
)
L2, L3, L4, L5, L6, L7 = (math.log2(x) for x in (2, 3, 4, 5, 6, 7))


def score(preds, gt, seen=(), ks=(1, 5, 10), convention="paper"):
    j = judge_list(preds, gt, seen, CAT)
    m = ranking_metrics([j.filtered_hits], [j.n_gt], ks, convention)
    return j, {k: float(v[0]) for k, v in m.items()}


def test_discounts():
    assert discounts(3) == pytest.approx([1.0, 1 / L3, 1 / L4])


def test_perfect_single_hit():
    j, m = score([A], [A])
    assert j.status == [HIT] and j.rel == [1]
    assert m["recall@1"] == 1.0 and m["ndcg@5"] == 1.0


def test_year_tolerance():
    _, m = score([("A Movie", 2002)], [A])  # |2002 - 2000| <= 2: a hit
    assert m["recall@5"] == 1.0
    j, m = score([("A Movie", 2003)], [A])  # 2003 is 3 years off: not in catalog, removed
    assert j.status == [OUT] and m["recall@5"] == 0.0


def test_seen_items_are_removed_before_ranking():
    j, m = score([M, A], [A], seen=[M])
    assert j.status == [SEEN, HIT]
    assert m["ndcg@5"] == 1.0  # A moves up to rank 1 once the seen item is removed
    _, m = score([("Matrix, The", 2000), A], [A], seen=[("The Matrix", None)])  # seen without a year
    assert m["ndcg@5"] == 1.0


def test_out_of_catalog_items_are_removed():
    j, m = score([("Not A Film", 2000), ("Elf", 2010), A], [A])
    assert j.status == [OUT, OUT, HIT]
    assert m["ndcg@1"] == 1.0 and m["recall@1"] == 1.0


def test_duplicate_predictions_hit_once_and_keep_their_rank():
    j, m = score([A, A, B], [A, B])
    assert j.status == [HIT, DUP, HIT] and j.rel == [1, 0, 1]
    dcg = 1 + 1 / L4
    idcg = 1 + 1 / L3  # paper: min(|gt|=2, filtered=3, k=5) = 2 ideal hits
    assert m["ndcg@5"] == pytest.approx(dcg / idcg)
    assert m["recall@1"] == 0.5 and m["recall@5"] == 1.0


def test_duplicate_ground_truth_counts_once():
    j, m = score([A], [A, A, ("a movie", 2000)])
    assert j.n_gt == 1 and m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0


def test_more_than_k_predictions():
    preds = [B, C, E, F, OC, A]  # the hit is at rank 6
    _, m = score(preds, [A])
    assert m["recall@5"] == 0.0 and m["ndcg@5"] == 0.0
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == pytest.approx(1 / L7)


def test_empty_predictions():
    j, m = score([], [A, B])
    assert j.status == [] and m == {k: 0.0 for k in m}


def test_remake_years_decide_the_hit():
    j, _ = score([D84, D21], [D21])
    assert j.status == [MISS, HIT]


def test_paper_versus_textbook_ideal_dcg():
    gt = [A, B, C]
    _, paper = score([B], gt, convention="paper")
    _, textbook = score([B], gt, convention="textbook")
    assert paper["ndcg@5"] == 1.0  # ideal over min(3, 1, 5) = 1 hit
    assert textbook["ndcg@5"] == pytest.approx(1 / (1 + 1 / L3 + 1 / L4))  # min(3, 5) = 3 hits
    _, paper = score([E, B], gt)
    assert paper["ndcg@5"] == pytest.approx((1 / L3) / (1 + 1 / L3))  # two filtered items: 2 ideal hits
    with pytest.raises(ValueError):
        ranking_metrics([[1]], [1], (5,), "other")


def test_hand_computed_mixed_list():
    # seen M removed, OOC dropped, E miss, A hit, dup A, F hit -> filtered [E, A, A, F] hits [0, 1, 0, 1]
    preds = [M, E, ("Ghost", 1990), A, A, F]
    j, m = score(preds, [A, F, OC], seen=[M], ks=(2, 3, 4, 5))
    assert j.status == [SEEN, MISS, OUT, HIT, DUP, HIT]
    assert j.filtered_hits == [0, 1, 0, 1]
    assert m["recall@2"] == pytest.approx(1 / 3) and m["recall@4"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 / L3) / (1 + 1 / L3))
    assert m["ndcg@4"] == pytest.approx((1 / L3 + 1 / L5) / (1 + 1 / L3 + 1 / L4))


def test_evaluate_averages_samples_and_reports_list_statistics():
    samples = samples_frame([("s1", [], [A]), ("s2", [M], [F]), ("s3", [], [E])])
    preds = pl.DataFrame(
        {
            "sample_id": ["s1", "s2", "unknown"],
            "text": ["A Movie (2000)\nElf (2003)", "The Matrix (1999)\nFargo (1996)\nFargo (1996)", "x"],
        }
    )
    summary, rows = evaluate(preds, samples, CAT, EvalConfig(ks=(1, 2), n_items=2))
    # s1 hit@1, s2 hit@1 after removing the seen item, s3 has no prediction
    assert summary["recall@1"] == pytest.approx(2 / 3)
    assert summary["ndcg@2"] == pytest.approx(2 / 3)
    assert summary["samples_without_prediction"] == 1 and summary["predictions_not_in_split"] == 1
    assert summary["in_catalog"] == 1.0
    assert summary["duplicate_ratio"] == pytest.approx(1 / 5)
    assert summary["format_valid"] == pytest.approx(1 / 3)  # s2 has 3 lines, s3 none
    assert summary["mean_list_length"] == pytest.approx(5 / 3)
    assert summary["hit_rate_per_rank"] == pytest.approx([1 / 3, 1 / 3])
    assert rows.filter(pl.col("sample_id") == "s2")["n_hits"].item() == 1


def test_evaluate_prefers_items_over_text():
    samples = samples_frame([("s1", [], [A])])
    preds = pl.DataFrame({"sample_id": ["s1"], "items": [[{"title": "A Movie", "year": 2000}]], "text": ["Elf (2003)"]})
    summary, _ = evaluate(preds, samples, CAT, EvalConfig(ks=(1,), n_items=1))
    assert summary["recall@1"] == 1.0 and summary["format_valid"] == 1.0
