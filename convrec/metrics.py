"""The one metric: judge a ranked list against the ground truth, Recall@k / NDCG@k and friends.

Rules (../shared/PAPER.md, "Metrics"): a predicted item hits a ground-truth item when the
normalised titles agree and the years differ by at most the tolerance (2); each ground-truth item
is hit at most once. Seen and out-of-catalog items are removed before ranking. DCG weights rank j
(1-based) by 1/log2(j+1). The ideal DCG counts n_ideal hits at the top, where

- ``paper`` (default, the released code): n_ideal = min(|gt|, len(filtered list), k)
- ``textbook``: n_ideal = min(|gt|, k)

`judge_list` gives each raw position a status and a relevance (1 for a hit, 0 for a miss, a seen,
duplicate or out-of-catalog item): exactly the `exp_inf` per-rank reward Rank-GRPO uses, so RL
rewards and eval can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convrec.catalog import Catalog, normalize_title, years_match
from convrec.listfmt import Item

HIT, MISS, SEEN, OUT, DUP = "hit", "miss", "seen", "out_of_catalog", "duplicate"
CONVENTIONS = ("paper", "textbook")


@dataclass(frozen=True)
class Judged:
    status: list[str]  # per raw position
    rel: list[int]  # per raw position: 1 for a hit
    filtered_hits: list[int]  # the hit vector after removing seen and out-of-catalog items
    n_gt: int  # distinct ground-truth items


def _dedupe_gt(gt: Sequence[Item]) -> list[tuple[str, int | None]]:
    out, keys = [], set()
    for t, y in gt:
        key = (normalize_title(t), y)
        if key not in keys:
            keys.add(key)
            out.append(key)
    return out


def judge_list(
    items: Sequence[Item],
    ground_truth: Sequence[Item],
    seen: Sequence[Item],
    catalog: Catalog,
) -> Judged:
    """Status and relevance of each predicted item, in list order."""
    tol = catalog.year_tolerance
    use_year = catalog.use_year
    gt = _dedupe_gt(ground_truth)
    gt_by_title: dict[str, list[int]] = {}
    for i, (n, _) in enumerate(gt):
        gt_by_title.setdefault(n, []).append(i)
    gt_hit = [False] * len(gt)
    seen_years: dict[str, list[int | None]] = {}
    for t, y in seen:
        seen_years.setdefault(normalize_title(t), []).append(y)
    emitted: set = set()
    status, rel, filtered = [], [], []
    for t, y in items:
        n, row = catalog.resolve(t, y)
        key = row if row >= 0 else (n, y)
        if row < 0:
            s = OUT
        elif n in seen_years and any(not use_year or years_match(y, sy, tol) for sy in seen_years[n]):
            s = SEEN
        elif key in emitted:
            s = DUP
        else:
            s = MISS
            for gi in gt_by_title.get(n, ()):
                if not gt_hit[gi] and (not use_year or years_match(y, gt[gi][1], tol)):
                    gt_hit[gi] = True
                    s = HIT
                    break
        emitted.add(key)
        status.append(s)
        rel.append(1 if s == HIT else 0)
        if s in (HIT, MISS, DUP):  # duplicates stay in the list (they take a rank, never hit twice)
            filtered.append(1 if s == HIT else 0)
    return Judged(status, rel, filtered, len(gt))


def discounts(n: int) -> np.ndarray:
    """1/log2(j+1) for ranks j = 1..n."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def ranking_metrics(
    filtered_hits: Sequence[Sequence[int]],
    n_gt: Sequence[int],
    ks: Sequence[int],
    convention: str = "paper",
) -> dict[str, np.ndarray]:
    """Per-sample Recall@k and NDCG@k from filtered hit vectors (vectorised over samples)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    kmax = max(ks)
    m = len(filtered_hits)
    hits = np.zeros((m, kmax), dtype=np.float64)
    lengths = np.zeros(m, dtype=np.int64)
    for i, h in enumerate(filtered_hits):
        h = h[:kmax]
        hits[i, : len(h)] = h
        lengths[i] = len(filtered_hits[i])
    g = np.asarray(n_gt, dtype=np.int64)
    disc = discounts(kmax)
    dcg_cum = np.cumsum(hits * disc, axis=1)
    hit_cum = np.cumsum(hits, axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    out: dict[str, np.ndarray] = {}
    safe_g = np.maximum(g, 1)
    for k in ks:
        n_ideal = np.minimum(g, k) if convention == "textbook" else np.minimum(np.minimum(g, lengths), k)
        idcg = ideal_cum[n_ideal]
        out[f"recall@{k}"] = np.where(g > 0, hit_cum[:, k - 1] / safe_g, 0.0)
        out[f"ndcg@{k}"] = np.where(idcg > 0, dcg_cum[:, k - 1] / np.where(idcg > 0, idcg, 1.0), 0.0)
    return out
