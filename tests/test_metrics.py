"""Metrics pinned against hand-computed values (../shared/PAPER.md, "Metrics")."""

import math

import polars as pl
import pytest

from convrec.catalog import Catalog
from convrec.evaluation.evaluate import EvalConfig, evaluate
from convrec.evaluation.metrics import DUP, HIT, MISS, OUT, SEEN, discounts, judge_list, ranking_metrics
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


# --- protocols: where convrec, rank-grpo (the released evaluate_direct_match) and he2023 disagree ---


def proto(name, preds, gt, seen=(), ks=(1, 5, 20), cat=CAT, n_items=20):
    """Summary means of one sample under a protocol (the real `evaluate`, no bootstrap)."""
    samples = samples_frame([("s", list(seen), list(gt))])
    p = pl.DataFrame({"sample_id": ["s"], "items": [[{"title": t, "year": y} for t, y in preds]]})
    summary, _ = evaluate(p, samples, cat, EvalConfig(ks=ks, n_items=n_items, protocol=name, n_boot=0))
    return summary


def test_year_off_by_one_on_an_in_catalog_title():
    preds, gt = [("A Movie", 2001)], [A]
    assert proto("convrec", preds, gt)["recall@1"] == 1.0  # within the tolerance: that item
    assert proto("rank-grpo", preds, gt)["recall@1"] == 0.0  # (A Movie, 2001) is no catalog pair: removed
    assert proto("he2023", preds, gt)["recall@1"] == 1.0  # years play no part


def test_seen_title_with_another_year():
    preds, gt, seen = [M, A], [A], [("The Matrix", 1990)]
    assert proto("convrec", preds, gt, seen)["ndcg@5"] == pytest.approx(1 / L3)  # 1990 vs 1999: not the seen one
    assert proto("rank-grpo", preds, gt, seen)["ndcg@5"] == 1.0  # the raw title was seen: removed
    assert proto("he2023", preds, gt, seen)["ndcg@5"] == 1.0


def test_title_one_edit_away():
    preds, gt = [("Fargoo", 1996)], [F]
    assert proto("convrec", preds, gt)["recall@5"] == 0.0
    assert proto("rank-grpo", preds, gt)["recall@5"] == 0.0
    he = proto("he2023", preds, gt)
    assert he["recall@1"] == 1.0 and he["mrr@1"] == 1.0  # nearest title within 2 edits
    assert proto("he2023", [("Fxrgooo", 1996)], gt)["recall@20"] == 0.0  # 3 edits: dropped


def test_duplicate_ground_truth():
    preds, gt = [A, B], [A, A]
    c = proto("convrec", preds, gt)
    assert c["recall@5"] == 1.0 and c["ndcg@5"] == 1.0  # counted once
    r = proto("rank-grpo", preds, gt)
    # |gt| = 2 as it comes; both copies mark position 1; ideal = min(2, filtered length 2) ones
    assert r["recall@5"] == 0.5
    assert r["ndcg@5"] == pytest.approx(1 / (1 + 1 / L3))
    he = proto("he2023", preds, gt)
    assert he["recall@1"] == 1.0 and he["conditions"]["all"]["n"] == 2  # each copy its own sample


FILMS = [(f"Film {i}", 2000, float(i)) for i in range(1, 31)]
FILM_CAT = Catalog(catalog_frame(FILMS))


def test_long_list_whose_first_lines_are_seen():
    films = [(f"Film {i}", 2000) for i in range(1, 26)]  # 25 lines; the answer is the 25th
    seen, gt = films[:5], [films[24]]
    c = proto("convrec", films, gt, seen, cat=FILM_CAT)
    assert c["recall@20"] == 0.0  # cut to 20 lines first: line 25 never fills the gaps the seen ones leave
    r = proto("rank-grpo", films, gt, seen, cat=FILM_CAT)
    assert r["recall@20"] == 1.0 and r["ndcg@20"] == pytest.approx(1 / math.log2(21))  # whole list filtered: rank 20
    he = proto("he2023", films, gt, seen, ks=(10, 20), cat=FILM_CAT)
    assert he["recall@20"] == 1.0 and he["mrr@20"] == pytest.approx(1 / 20) and he["recall@10"] == 0.0
    # an over-long list never beats the 20-line list it starts with
    assert c["ndcg@20"] <= proto("convrec", films[:20], gt, seen, cat=FILM_CAT)["ndcg@20"]


def test_rank_grpo_empty_after_filtering_and_one_position_marked_twice():
    assert proto("rank-grpo", [M], [A], [M])["ndcg@20"] == 0.0
    cat = Catalog(catalog_frame([("X", 2000, 1.0), ("X", 2002, 1.0), ("Y", 2000, 1.0)]))
    # (X, 2001) is no pair; (X, 2002) is; both ground-truth items match it first: one hit, recall 1/2
    r = proto("rank-grpo", [("X", 2002), ("X", 2000)], [("X", 2001), ("X", 2003)], cat=cat)
    assert r["recall@5"] == 0.5
    # convrec: in list order each item takes the first unhit ground-truth item it matches: two hits
    assert proto("convrec", [("X", 2002), ("X", 2000)], [("X", 2001), ("X", 2003)], cat=cat)["recall@5"] == 0.5
    assert proto("convrec", [("X", 2000), ("X", 2002)], [("X", 2001), ("X", 2003)], cat=cat)["recall@5"] == 1.0


def test_he2023_conditions_and_text_reading():
    samples = samples_frame([("s", [E], [A, E])])
    text = "Here you go:\n1. A Movie (2000)\n2. Elf (2003)\n3. Bee Story (2001)\n\nEnjoy these picks, they are great!"
    p = pl.DataFrame({"sample_id": ["s"], "text": [text]})
    summary, rows = evaluate(p, samples, CAT, EvalConfig(ks=(1, 5), protocol="he2023", n_boot=0))
    conds = summary["conditions"]
    assert conds["rec"]["n"] == 1 and conds["dis"]["n"] == 1  # A new, Elf mentioned before
    assert conds["rec"]["recall@1"]["mean"] == 1.0  # "Here you go:" dropped, numbering stripped
    assert conds["dis"]["recall@5"]["mean"] == 0.0  # Elf was seen: excluded from the list
    assert conds["all"]["recall@1"]["mean"] == 0.5
    assert set(rows["condition"].to_list()) == {"rec", "dis"} and rows.height == 2


def test_he2023_interval_is_mean_pm_196_se():
    samples = samples_frame([(f"s{i}", [], [A]) for i in range(4)])
    p = pl.DataFrame({"sample_id": [f"s{i}" for i in range(4)], "text": ["1. A Movie", "1. Elf", "1. A Movie", "x"]})
    summary, _ = evaluate(p, samples, CAT, EvalConfig(ks=(1,), protocol="he2023", n_boot=0))
    part = summary["conditions"]["all"]["recall@1"]
    se = math.sqrt(((0.5**2) * 4) / 3) / 2  # values 1, 0, 1, 0: sd (ddof 1) over sqrt(4)
    assert part["mean"] == 0.5 and part["se"] == pytest.approx(se)
    assert part["ci95"] == pytest.approx([0.5 - 1.959964 * se, 0.5 + 1.959964 * se], rel=1e-5)


def test_convrec_bootstrap_interval_is_seeded_and_brackets_the_mean():
    samples = samples_frame([(f"s{i}", [], [A]) for i in range(40)])
    p = pl.DataFrame({"sample_id": [f"s{i}" for i in range(40)], "text": ["A Movie (2000)", "Elf (2003)"] * 20})
    cfg = EvalConfig(ks=(1,), n_items=1, n_boot=500, seed=7)
    s1, _ = evaluate(p, samples, CAT, cfg)
    s2, _ = evaluate(p, samples, CAT, cfg)
    lo, hi = s1["intervals"]["recall@1"]
    assert s1["intervals"] == s2["intervals"] and lo < 0.5 < hi and hi - lo < 0.5


def test_no_year_format_validity_needs_no_year():
    yearless = Catalog(catalog_frame(), use_year=False)
    samples = samples_frame([("s", [], [("Elf", None)])])
    p = pl.DataFrame({"sample_id": ["s"], "text": ["Elf\nFargo"]})
    summary, _ = evaluate(p, samples, yearless, EvalConfig(ks=(1,), n_items=2, n_boot=0))
    assert summary["format_valid"] == 1.0 and summary["recall@1"] == 1.0
    summary, _ = evaluate(p, samples, CAT, EvalConfig(ks=(1,), n_items=2, n_boot=0))
    assert summary["format_valid"] == 0.0  # with years, a year-less line is not the format


def _released_rules(items, gt, seen_titles, pairs, k):
    """The rules of Rank-GRPO's released evaluate_direct_match, restated per sample."""
    lst = [it for it in items if it[0] not in seen_titles and it in pairs]
    hits = [0] * len(lst)
    for gt_title, gt_year in gt:
        for i, (t, y) in enumerate(lst):
            if t == gt_title and abs(gt_year - y) <= 2:
                hits[i] = 1
                break
    if not lst:
        return 0.0, 0.0
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits[:k]))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gt), len(lst), k)))
    return sum(hits[:k]) / len(gt), dcg / idcg


def test_rank_grpo_equals_the_released_rules_on_random_lists():
    import random

    rng = random.Random(0)
    rows = [(f"T{i % 40}", 1990 + (i // 40) * 3, 1.0) for i in range(80)]  # 40 titles, each in two remakes
    cat = Catalog(catalog_frame(rows))
    pairs = {(t, y) for t, y, _ in rows}
    noisy = lambda: (f"T{rng.randrange(45)}", 1990 + rng.randrange(8))  # noqa: E731  invented titles, year noise
    cases = []
    for i in range(300):
        items = [noisy() for _ in range(rng.randrange(0, 25))]
        gt = [noisy() for _ in range(rng.randrange(1, 4))]
        gt += gt[:1] * rng.randrange(2)  # duplicate ground truth now and then
        seen = [noisy() for _ in range(rng.randrange(0, 4))]
        cases.append((f"s{i}", items, gt, seen))
    samples = samples_frame([(sid, seen, gt) for sid, _, gt, seen in cases])
    preds = pl.DataFrame(
        {"sample_id": [c[0] for c in cases], "items": [[{"title": t, "year": y} for t, y in c[1]] for c in cases]}
    )
    _, per = evaluate(preds, samples, cat, EvalConfig(ks=(5, 20), protocol="rank-grpo", n_boot=0))
    for (_, items, gt, seen), rec, ndcg in zip(cases, per["recall@20"], per["ndcg@20"], strict=True):
        want = _released_rules(items, gt, {t for t, _ in seen}, pairs, 20)
        assert (rec, ndcg) == pytest.approx(want)


def test_paired_difference_and_bootstrap_by_hand():
    import numpy as np

    from convrec.evaluation import intervals

    b = np.random.default_rng(0).random((50, 2))
    d = intervals.paired_difference(b + 0.1, b, n_boot=200, seed=1)
    assert d["diff"] == pytest.approx([0.1, 0.1]) and d["share_le_0"].tolist() == [0.0, 0.0]
    assert d["low"] == pytest.approx([0.1, 0.1]) and d["high"] == pytest.approx([0.1, 0.1])  # no spread: no width
    d = intervals.paired_difference(b, b + 0.1, n_boot=200, seed=1)
    assert d["share_le_0"].tolist() == [1.0, 1.0]
    means = intervals.resample_means(np.arange(4.0)[:, None], 2000, 0)
    assert means.mean() == pytest.approx(1.5, abs=0.05) and set(np.round(means.ravel() * 4)) <= set(range(13))
