"""Eval throughput per protocol (convrec, rank-grpo, he2023) against a per-sample Python loop.

100,000 lists of 20 (catalog items with year noise, seen items, repeats, misspelt and invented
titles) against the 7,404-item Reddit-v2 catalog (../shared/data, else a generated one of the
same size). "vectorised" is `metrics.judge` + the metric arrays (what `convrec eval` runs, without
the bootstrap); "loop" scores one sample at a time in plain Python by the same rules (for
rank-grpo: the released evaluate_direct_match's rules, exact string equality instead of its edit
distance, so the loop is if anything faster than the original) on the first --loop-samples lists.
Both must give the same numbers; the table says so. Run: `make bench` or
`python bench/bench_eval.py [--samples N] [--loop-samples N]`.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_foundation import load_catalog, misspell  # noqa: E402
from rapidfuzz.distance import Levenshtein  # noqa: E402

from convrec.catalog import Catalog, normalize_title, years_match  # noqa: E402
from convrec.evaluation.metrics import PROTOCOLS, items_series, judge, per_item, per_list  # noqa: E402

K = 20


def make_lists(cat: Catalog, n: int, seed: int = 0) -> tuple[list, list, list]:
    rng = random.Random(seed)
    size = len(cat)

    def real() -> tuple[str, int]:
        r = rng.randrange(size)
        return cat.titles[r], cat.years[r]

    lists, gts, seens = [], [], []
    for _ in range(n):
        gt = [real() for _ in range(rng.randint(1, 3))]
        seen = [real() for _ in range(rng.randint(0, 3))]
        items = []
        for _ in range(K):
            u = rng.random()
            if u < 0.1:
                items.append(rng.choice(gt))
            elif u < 0.2 and seen:
                items.append(rng.choice(seen))
            elif u < 0.3:
                t, y = real()
                items.append((misspell(rng, t), y))
            else:
                t, y = real()
                items.append((t, y + rng.choice((0, 0, 0, 1, -1, 2, 3))))
        if items and rng.random() < 0.2:
            items[rng.randrange(K)] = items[0]  # a repeat
        lists.append(items)
        gts.append(gt)
        seens.append(seen)
    return lists, gts, seens


def _ndcg(hits: list[int], n_ideal: int, k: int) -> float:
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits[:k]))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(n_ideal, k)))
    return dcg / idcg if idcg else 0.0


def loop_convrec(items, gt, seen, cat: Catalog, n_items: int = K) -> tuple[float, float]:
    """convrec's rules one sample at a time (the shape of the pre-vectorised `judge_list`)."""
    tol = cat.year_tolerance
    keys = list(dict.fromkeys((normalize_title(t), y) for t, y in gt))
    hit_gt = [False] * len(keys)
    seen_years: dict[str, list] = {}
    for t, y in seen:
        seen_years.setdefault(normalize_title(t), []).append(y)
    emitted, hits = set(), []
    for t, y in items[:n_items]:
        norm, row = cat.resolve(t, y)
        if row < 0 or any(years_match(y, sy, tol) for sy in seen_years.get(norm, ())):
            emitted.add(row)
            continue
        h = 0
        if row not in emitted:
            for gi, (gn, gy) in enumerate(keys):
                if not hit_gt[gi] and gn == norm and years_match(y, gy, tol):
                    hit_gt[gi], h = True, 1
                    break
        emitted.add(row)
        hits.append(h)
    if not hits:
        return 0.0, 0.0
    return sum(hits[:K]) / len(keys), _ndcg(hits, min(len(keys), len(hits)), K)


def loop_rank_grpo(items, gt, seen, pairs: set) -> tuple[float, float]:
    seen_titles = {t for t, _ in seen}
    lst = [it for it in items if it[0] not in seen_titles and it in pairs]
    hits = [0] * len(lst)
    for gt_title, gt_year in gt:
        for i, (t, y) in enumerate(lst):
            if t == gt_title and abs(gt_year - y) <= 2:
                hits[i] = 1
                break
    if not lst:
        return 0.0, 0.0
    return sum(hits[:K]) / len(gt), _ndcg(hits, min(len(gt), len(lst)), K)


def loop_released_style(items, gt, seen, pairs: set) -> tuple[float, float]:
    """The same rules computed the way the authors' per-sample function does it: an edit distance
    for every (ground truth, item) pair, numpy arrays and logs per sample."""
    seen_titles = [t for t, _ in seen]
    lst = [it for it in items if it[0] not in seen_titles]
    lst = [it for it in lst if it in pairs]
    hits = np.zeros(len(lst), dtype=int)
    for gt_title, gt_year in gt:
        names = [Levenshtein.distance(gt_title, t) for t, _ in lst]
        years = [np.abs(int(gt_year) - int(y)) for _, y in lst]
        marked = False
        for i, (d, dy) in enumerate(zip(names, years, strict=True)):
            if d == 0 and dy <= 2 and not marked:
                hits[i], marked = 1, True
    if len(hits) == 0:
        return 0.0, 0.0
    k = min(K, len(hits))
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.zeros(len(hits))
    ideal[: len(gt)] = 1
    return float(hits[:K].sum() / len(gt)), float((hits[:k] * disc).sum() / (ideal[:k] * disc).sum())


def vectorised(name: str, cols, cat: Catalog) -> tuple[float, dict]:
    t = time.perf_counter()
    j = judge(*cols, cat, PROTOCOLS[name], n_items=K)
    m = per_item(j, (K,)) if PROTOCOLS[name].per_item else per_list(j, (K,))
    return time.perf_counter() - t, m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--loop-samples", type=int, default=10_000)
    args = ap.parse_args()
    df, source = load_catalog()
    cat = Catalog(df)
    lists, gts, seens = make_lists(cat, args.samples)
    he_lists = [[(t, None) for t, _ in items] for items in lists]
    cols = (items_series(lists), items_series(gts), items_series(seens))
    he_cols = (items_series(he_lists), cols[1], cols[2])
    pairs = set(zip(cat.titles, cat.years, strict=True))
    n_loop = min(args.loop_samples, args.samples)
    table = Table(title=f"eval per protocol · {args.samples:,} lists of {K} · catalog: {source}")
    heads = ("protocol", "R@20", "vectorised s", "samples/s", "per-sample loop", "loop samples/s", "speed-up")
    for c in (*heads, "same numbers"):
        table.add_column(c, justify="left" if c in ("protocol", "per-sample loop") else "right")
    loops = {
        "convrec": [("plain Python", lambda i: loop_convrec(lists[i], gts[i], seens[i], cat))],
        "rank-grpo": [
            ("plain Python", lambda i: loop_rank_grpo(lists[i], gts[i], seens[i], pairs)),
            ("released style", lambda i: loop_released_style(lists[i], gts[i], seens[i], pairs)),
        ],
    }
    for name in PROTOCOLS:
        secs, m = vectorised(name, he_cols if name == "he2023" else cols, cat)
        rate = args.samples / secs
        recall = f"{m[f'recall@{K}'].mean():.4f}"
        if name not in loops:
            table.add_row(name, recall, f"{secs:.2f}", f"{rate:,.0f}", "-", "-", "-", "-")
            continue
        got = np.stack([m[f"recall@{K}"][:n_loop], m[f"ndcg@{K}"][:n_loop]], axis=1)
        for label, loop in loops[name]:
            t = time.perf_counter()
            ref = np.array([loop(i) for i in range(n_loop)])
            loop_rate = n_loop / (time.perf_counter() - t)
            same = bool(np.allclose(got, ref, atol=1e-9))
            row = (f"{secs:.2f}", f"{rate:,.0f}", label, f"{loop_rate:,.0f}", f"{rate / loop_rate:.1f}×", str(same))
            table.add_row(name, recall, *row)
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
