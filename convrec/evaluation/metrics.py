"""The one metric: judge ranked lists against the ground truth under a protocol, then Recall@k,
NDCG@k (and MRR@k), vectorised over all lists at once.

A protocol is data (`Protocol`, `PROTOCOLS`), not a copy of the loop; every protocol runs the same
steps: resolve each listed item to a key (or "out of catalog"), remove seen items, mark repeats,
assign hits, rank the filtered list. DCG weights rank j (1-based) by 1/log2(j+1).

- ``convrec`` (default; ../shared/PAPER.md, "Metrics"): titles through the catalog matcher
  (normalised titles, years within the tolerance, 2); a seen item is a seen title whose year
  agrees; a repeat of an earlier catalog item keeps its rank and never hits; in list order each
  item takes the first ground-truth item it matches that is not hit yet; ground truth deduplicated.
  The list is cut to its first N parsed lines (``n_items``) *before* seen and out-of-catalog items
  are removed, so items past N never fill gaps and an over-long list cannot beat its own first N.
- ``rank-grpo``: the authors' released ``evaluate_direct_match`` exactly: in the catalog only as an
  exact ``(title, year)`` pair; seen removal by the raw title string; a hit needs the exact title
  and |year - gt year| <= 2; each ground-truth item marks the first position it matches (one
  position may be marked by several); |gt| counts duplicates; the whole list is filtered, no cut.
- ``he2023`` (He et al., CIKM 2023): lines cleaned as `listfmt.he2023_lines`, each mapped to the
  nearest catalog title by Levenshtein distance on lower-cased strings, dropped beyond 2 edits;
  seen titles removed; each ground-truth item is its own sample, ``dis`` when mentioned before,
  else ``rec``; Recall@k = 1[rank <= k], NDCG@k = 1/log2(rank + 1), MRR@k = 1/rank. No years.

Ideal DCG counts n_ideal hits at the top: ``paper`` (the released code) n_ideal = min(|gt|,
filtered length, k); ``textbook`` min(|gt|, k). An empty filtered list scores 0.

`judge_list` gives each raw position a status and a relevance (1 for a hit, 0 for a miss, a seen,
duplicate or out-of-catalog item): exactly the `exp_inf` per-rank reward Rank-GRPO uses, so RL
rewards and eval can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog, nearest_by_edits, normalize_titles
from convrec.listfmt import Item, he2023_clean

HIT, MISS, SEEN, OUT, DUP = "hit", "miss", "seen", "out_of_catalog", "duplicate"
STATUSES = (HIT, MISS, SEEN, OUT, DUP)  # int codes 0..4 in `Judgement.status`
CODES = {s: i for i, s in enumerate(STATUSES)}
_HIT, _MISS, _SEEN, _OUT, _DUP = range(5)
CONVENTIONS = ("paper", "textbook")
HE2023_MAX_EDITS = 2


@dataclass(frozen=True)
class Protocol:
    name: str
    match: str  # "catalog": the matcher | "exact": raw (title, year) pairs | "nearest": edit distance
    seen_year: bool  # a seen title removes an item only when the years agree (within tolerance)
    hit_year: bool  # a hit also needs the years to agree (within tolerance)
    dedupe_gt: bool  # repeated ground-truth items count once
    assign: str  # "greedy": in list order, first unhit gt item | "first": each gt item, its first position
    truncate: bool  # cut to the first n_items lines before filtering
    per_item: bool  # each ground-truth item is its own sample
    ks: tuple[int, ...]  # default cut-offs
    measures: tuple[str, ...]


_PER_LIST, _HE = ("recall", "ndcg"), ("recall", "ndcg", "mrr")
PROTOCOLS = {
    "convrec": Protocol("convrec", "catalog", True, True, True, "greedy", True, False, (5, 10, 15, 20), _PER_LIST),
    "rank-grpo": Protocol("rank-grpo", "exact", False, True, False, "first", False, False, (5, 10, 15, 20), _PER_LIST),
    "he2023": Protocol("he2023", "nearest", False, False, False, "first", False, True, (1, 5, 10, 20), _HE),
}
CONVREC = PROTOCOLS["convrec"]
_ITEMS = pl.List(artifacts.ITEM)
_NO_YEAR = -(10**6)  # stands for a missing year inside integer arrays


@dataclass(frozen=True)
class Judged:
    status: list[str]  # per raw position
    rel: list[int]  # per raw position: 1 for a hit
    filtered_hits: list[int]  # the hit vector after removing seen and out-of-catalog items
    n_gt: int  # distinct ground-truth items


@dataclass(frozen=True)
class Judgement:
    """Every list of a batch judged: flat per-item arrays (list order) plus per-list counts."""

    offsets: np.ndarray  # (M + 1,): list m owns flat items offsets[m]:offsets[m + 1]
    status: np.ndarray  # int8 codes into STATUSES
    rank: np.ndarray  # 0-based rank in the filtered (and, if the protocol cuts, truncated) list; -1 if not in it
    lengths: np.ndarray  # (M,) filtered list lengths
    n_gt: np.ndarray  # (M,) ground-truth items counted (deduplicated or not, per the protocol)
    gt_list: np.ndarray  # (G,) list of each counted ground-truth item
    gt_rank: np.ndarray  # (G,) filtered rank of the position it marked, -1 when none
    gt_seen: np.ndarray  # (G,) bool: mentioned earlier in the conversation (he2023's "dis")


def items_series(lists: Sequence[Sequence[Item]]) -> pl.Series:
    """Python lists of (title, year) as the list-of-struct column `judge` reads."""
    return pl.Series([[{"title": t, "year": y} for t, y in items] for items in lists], dtype=_ITEMS)


def _flat(col: pl.Series) -> pl.DataFrame:
    """(s, title, year) per item, in list order; items without a title (null) dropped. An empty
    title stays: it holds its position and is out of catalog (he2023 maps blank lines too)."""
    df = pl.DataFrame({"s": pl.int_range(col.len(), eager=True, dtype=pl.Int64), "it": col.cast(_ITEMS)})
    return df.explode("it").unnest("it").filter(pl.col("title").is_not_null())


def _keys(
    protocol: Protocol, catalog: Catalog, items, gts, seens
) -> tuple[pl.Series, np.ndarray, pl.Series, pl.Series]:
    """(item key, item row, gt key, seen key): equal keys mean the same title under the protocol;
    the row is the catalog item (-1: out of catalog). Whole columns at a time."""
    if protocol.match == "catalog":
        sizes = np.cumsum([items.height, gts.height])
        norm = normalize_titles(pl.concat([items["title"], gts["title"], seens["title"]]))
        k_item, k_gt, k_seen = norm[: sizes[0]], norm[sizes[0] : sizes[1]], norm[sizes[1] :]
        return k_item, catalog.lookup_keys(k_item, items["year"]), k_gt, k_seen
    if protocol.match == "exact":
        on = ["title", "year"] if catalog.use_year else ["title"]
        pairs = pl.DataFrame({"title": catalog.titles, "year": pl.Series(catalog.years, dtype=pl.Int64)})
        pairs = pairs.with_row_index("row").unique(on, keep="first", maintain_order=True)
        rows = items.select(on).join(
            pairs.select("row", *on), on=on, how="left", maintain_order="left", nulls_equal=True
        )
        return items["title"], rows["row"].fill_null(-1).cast(pl.Int64).to_numpy(), gts["title"], seens["title"]
    names = list(dict.fromkeys(he2023_clean(t, numbering=False) for t in catalog.titles))
    lines = items["title"].unique()
    idx, _ = nearest_by_edits(lines.to_list(), names, HE2023_MAX_EDITS)
    row = items["title"].replace_strict(lines, pl.Series(idx, dtype=pl.Int64), return_dtype=pl.Int64).to_numpy()
    k_item = pl.Series(names + [""], dtype=pl.String).gather(np.where(row < 0, len(names), row))
    clean = [
        f["title"].map_elements(lambda t: he2023_clean(t, numbering=False), return_dtype=pl.String)
        for f in (gts, seens)
    ]
    return k_item, row, clean[0], clean[1]


def _years_ok(a: np.ndarray, b: np.ndarray, tolerance: int, use: bool) -> np.ndarray:
    if not use:
        return np.ones(len(a), dtype=bool)
    return (a == _NO_YEAR) | (b == _NO_YEAR) | (np.abs(a - b) <= tolerance)


def _hash(keys: pl.Series) -> np.ndarray:
    return keys.cast(pl.String).fill_null("").hash(seed=0).to_numpy()


def _match(left: tuple, right: tuple, use_year: bool, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """(l, r) index pairs of (list, key hash, key, year) entries in the same list with the same key
    whose years agree when ``use_year``. Joined on 64-bit hashes, then the keys themselves are
    compared, so a hash collision can never make a false pair."""
    (s_l, h_l, k_l, y_l), (s_r, h_r, k_r, y_r) = left, right
    pairs = (
        pl.DataFrame({"s": s_l, "h": h_l})
        .with_row_index("l")
        .join(pl.DataFrame({"s": s_r, "h": h_r}).with_row_index("r"), on=["s", "h"], how="inner")
    )
    li, ri = pairs["l"].to_numpy().astype(np.int64), pairs["r"].to_numpy().astype(np.int64)
    ok = _years_ok(y_l[li], y_r[ri], tol, use_year) & (k_l.gather(li) == k_r.gather(ri)).to_numpy()
    return li[ok], ri[ok]


def _greedy(i: np.ndarray, g: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (i, g) hits when, in list order, each item takes the first ground-truth item it matches
    that is still unhit. Pairs unique on both sides are hits as they stand; only lists with
    contested pairs go through the sequential rule."""
    pairs = pl.DataFrame({"s": s, "i": i, "g": g}).sort("i", "g")
    contested = pairs.filter(pairs["i"].is_duplicated() | pairs["g"].is_duplicated())["s"].unique().implode()
    clear = pairs.filter(~pl.col("s").is_in(contested))
    hi, hg = clear["i"].to_list(), clear["g"].to_list()
    taken: set[int] = set()
    done: set[int] = set()
    for a, b in pairs.filter(pl.col("s").is_in(contested)).select("i", "g").iter_rows():
        if a not in done and b not in taken:
            taken.add(b)
            done.add(a)
            hi.append(a)
            hg.append(b)
    return np.asarray(hi, dtype=np.int64), np.asarray(hg, dtype=np.int64)


def judge(
    lists: pl.Series,
    ground_truth: pl.Series,
    seen: pl.Series,
    catalog: Catalog,
    protocol: Protocol = CONVREC,
    n_items: int | None = None,
) -> Judgement:
    """Judge M lists (list-of-struct columns of (title, year), aligned row by row) at once."""
    m = lists.len()
    items, gts, seens = _flat(lists), _flat(ground_truth), _flat(seen)
    k_item, row, k_gt, k_seen = _keys(protocol, catalog, items, gts, seens)
    s, s_gt, s_seen = (f["s"].to_numpy() for f in (items, gts, seens))
    y, y_gt, y_seen = (f["year"].fill_null(_NO_YEAR).to_numpy() for f in (items, gts, seens))
    n = len(s)
    offsets = np.searchsorted(s, np.arange(m + 1))
    pos = np.arange(n) - offsets[s]
    use_year, tol = catalog.use_year, catalog.year_tolerance
    member = row >= 0

    is_seen = np.zeros(n, dtype=bool)
    h_item = _hash(k_item)
    seen_side = (s_seen, _hash(k_seen), k_seen, y_seen)
    is_seen[_match((s, h_item, k_item, y), seen_side, protocol.seen_year and use_year, tol)[0]] = True
    is_seen &= member
    first = np.ones(n, dtype=bool)  # first occurrence of its catalog item in its list (seen ones included)
    key = s.astype(np.int64) * (int(row.max(initial=0)) + 1) + row
    first[member] = pl.Series(key[member]).is_first_distinct().to_numpy()
    dup = member & ~is_seen & ~first
    kept = member & ~is_seen
    if protocol.truncate and n_items is not None:
        kept &= pos < n_items
    counts = np.cumsum(kept)
    rank = np.where(kept, counts - 1 - np.concatenate([[0], counts])[offsets[s]], -1)
    lengths = np.bincount(s[kept], minlength=m)

    if protocol.dedupe_gt:
        keep = pl.DataFrame({"s": s_gt, "k": k_gt, "y": y_gt}).select(pl.struct("s", "k", "y").is_first_distinct())
        keep = keep.to_series().to_numpy()
        s_gt, k_gt, y_gt = s_gt[keep], k_gt.filter(pl.Series(keep)), y_gt[keep]
    cand = np.flatnonzero(kept & ~dup)
    li, g = _match(
        (s[cand], h_item[cand], k_item.gather(cand), y[cand]),
        (s_gt, _hash(k_gt), k_gt, y_gt),
        protocol.hit_year and use_year,
        tol,
    )
    i = cand[li]
    if protocol.assign == "greedy":
        hit_idx, hit_g = _greedy(i, g, s[i])
    else:
        firsts = pl.DataFrame({"i": i, "g": g}).group_by("g").agg(pl.col("i").min())
        hit_idx, hit_g = firsts["i"].to_numpy(), firsts["g"].to_numpy()
    gt_rank = np.full(len(s_gt), -1, dtype=np.int64)
    gt_rank[hit_g] = rank[hit_idx]
    status = np.where(~member, _OUT, np.where(is_seen, _SEEN, np.where(dup, _DUP, _MISS))).astype(np.int8)
    status[hit_idx] = _HIT
    gt_f = pl.DataFrame({"s": s_gt, "k": k_gt}).with_row_index("g")
    seen_keys = pl.DataFrame({"s": s_seen, "k": k_seen}).unique()
    gt_seen = np.zeros(len(s_gt), dtype=bool)
    gt_seen[gt_f.join(seen_keys, on=["s", "k"], how="semi")["g"].to_numpy()] = True
    return Judgement(offsets, status, rank, lengths, np.bincount(s_gt, minlength=m), s_gt, gt_rank, gt_seen)


def judge_lists(
    lists: Sequence[Sequence[Item]],
    ground_truth: Sequence[Sequence[Item]],
    seen: Sequence[Sequence[Item]],
    catalog: Catalog,
    protocol: Protocol = CONVREC,
) -> list[Judged]:
    """`judge` over Python lists, one `Judged` (statuses in raw order) per list."""
    j = judge(items_series(lists), items_series(ground_truth), items_series(seen), catalog, protocol)
    out = []
    for a, b, n_gt in zip(j.offsets[:-1], j.offsets[1:], j.n_gt, strict=True):
        codes, ranks = j.status[a:b], j.rank[a:b]
        filtered = [int(c == _HIT) for c, r in zip(codes, ranks, strict=True) if r >= 0]
        out.append(Judged([STATUSES[c] for c in codes], [int(c == _HIT) for c in codes], filtered, int(n_gt)))
    return out


def judge_list(items: Sequence[Item], ground_truth: Sequence[Item], seen: Sequence[Item], catalog: Catalog) -> Judged:
    """Status and relevance of each predicted item, in list order (the convrec rules, no cut)."""
    return judge_lists([items], [ground_truth], [seen], catalog)[0]


def discounts(n: int) -> np.ndarray:
    """1/log2(j+1) for ranks j = 1..n."""
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def _from_hits(hits: np.ndarray, lengths: np.ndarray, n_gt: np.ndarray, ks: Sequence[int], convention: str) -> dict:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    disc = discounts(hits.shape[1])
    dcg_cum = np.cumsum(hits * disc, axis=1)
    hit_cum = np.cumsum(hits, axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    g = np.asarray(n_gt, dtype=np.int64)
    safe_g = np.maximum(g, 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_ideal = np.minimum(g, k) if convention == "textbook" else np.minimum(np.minimum(g, lengths), k)
        idcg = ideal_cum[n_ideal]
        out[f"recall@{k}"] = np.where(g > 0, hit_cum[:, k - 1] / safe_g, 0.0)
        out[f"ndcg@{k}"] = np.where(idcg > 0, dcg_cum[:, k - 1] / np.where(idcg > 0, idcg, 1.0), 0.0)
    return out


def ranking_metrics(
    filtered_hits: Sequence[Sequence[int]],
    n_gt: Sequence[int],
    ks: Sequence[int],
    convention: str = "paper",
) -> dict[str, np.ndarray]:
    """Per-sample Recall@k and NDCG@k from filtered hit vectors."""
    kmax = max(ks)
    hits = np.zeros((len(filtered_hits), kmax), dtype=np.float64)
    for i, h in enumerate(filtered_hits):
        hits[i, : min(kmax, len(h))] = h[:kmax]
    lengths = np.array([len(h) for h in filtered_hits], dtype=np.int64)
    return _from_hits(hits, lengths, np.asarray(n_gt), ks, convention)


def per_list(j: Judgement, ks: Sequence[int], convention: str = "paper") -> dict[str, np.ndarray]:
    """Per-list Recall@k and NDCG@k of a `Judgement` (hits scattered into an (M, k_max) matrix)."""
    kmax = max(ks)
    m = len(j.lengths)
    hits = np.zeros((m, kmax), dtype=np.float64)
    at = np.flatnonzero((j.status == _HIT) & (j.rank >= 0) & (j.rank < kmax))
    lists = np.searchsorted(j.offsets, at, side="right") - 1
    hits[lists, j.rank[at]] = 1.0
    return _from_hits(hits, j.lengths, j.n_gt, ks, convention)


def per_item(j: Judgement, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per ground-truth item (he2023): Recall@k, NDCG@k = 1/log2(rank + 1) and MRR@k = 1/rank."""
    r = j.gt_rank.astype(np.float64) + 1.0  # 1-based; 0 when unmarked
    out = {}
    for k in ks:
        hit = (r >= 1) & (r <= k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(np.maximum(r, 1) + 1), 0.0)
        out[f"mrr@{k}"] = np.where(hit, 1.0 / np.maximum(r, 1), 0.0)
    return out
