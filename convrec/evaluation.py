"""`convrec eval`'s library side: score prediction frames against a split.

Predictions carry raw ``text`` (parsed here with the one parser) and/or ``items``; when both
are present ``items`` wins. Every sample of the split is scored: a sample without a prediction
counts as an empty list, so a partial prediction file cannot inflate the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from convrec.catalog import Catalog
from convrec.data import item_lists
from convrec.errors import ConvrecError
from convrec.listfmt import is_format_valid, parse_list
from convrec.metrics import DUP, OUT, judge_list, ranking_metrics


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 15, 20)
    convention: str = "paper"
    n_items: int = 20  # expected list length: format validity, in-catalog ratio, per-rank hit rate


def predicted_lists(preds: pl.DataFrame) -> dict[str, tuple[list, str | None]]:
    """sample_id -> (items, raw text or None)."""
    n = preds.height
    ids = preds["sample_id"].to_list()
    has_items = preds["items"].is_not_null().to_list() if "items" in preds.columns else [False] * n
    items_col = item_lists(preds["items"]) if "items" in preds.columns else [None] * n
    texts = preds["text"].to_list() if "text" in preds.columns else [None] * n
    out = {}
    for sid, present, items, text in zip(ids, has_items, items_col, texts, strict=True):
        out[sid] = (items if present else parse_list(text), text)
    return out


def evaluate(
    preds: pl.DataFrame, samples: pl.DataFrame, catalog: Catalog, cfg: EvalConfig = EvalConfig()
) -> tuple[dict, pl.DataFrame]:
    """Summary metrics (means over samples) and a per-sample frame."""
    if samples.height == 0:
        raise ConvrecError("the split has no samples to evaluate")
    lists = predicted_lists(preds)
    ids = samples["sample_id"].to_list()
    known = set(ids)
    unknown = sum(1 for s in lists if s not in known)
    if lists and unknown == len(lists):
        raise ConvrecError("no prediction's sample_id is in this split: wrong --split or --data?")
    n = cfg.n_items
    per_rank = np.zeros(n)
    filtered, n_gt, rows = [], [], []
    in_cat = total_first = dups = 0
    gts, seens = item_lists(samples["ground_truth"]), item_lists(samples["seen"])
    for sid, gt, seen in zip(ids, gts, seens, strict=True):
        items, text = lists.get(sid, ([], None))
        j = judge_list(items, gt, seen, catalog)
        filtered.append(j.filtered_hits)
        n_gt.append(j.n_gt)
        first = j.status[:n]
        in_cat += sum(s != OUT for s in first)
        total_first += len(first)
        dups += sum(s == DUP for s in j.status)
        per_rank[: min(n, len(j.rel))] += j.rel[:n]
        valid = (
            is_format_valid(text, n) if text is not None else (len(items) == n and all(y is not None for _, y in items))
        )
        rows.append((sid, len(items), sum(s != OUT for s in j.status), sum(j.rel), j.n_gt, valid))
    ks = tuple(k for k in cfg.ks)
    m = ranking_metrics(filtered, n_gt, ks, cfg.convention)
    per_sample = pl.DataFrame(
        rows, schema=["sample_id", "n_items", "n_in_catalog", "n_hits", "n_gt", "format_valid"], orient="row"
    ).with_columns(pl.Series(k, v) for k, v in m.items())
    scored = np.asarray(n_gt) > 0
    total_items = int(per_sample["n_items"].sum())
    summary = {
        "samples": len(ids),
        "samples_without_prediction": sum(1 for s in ids if s not in lists),
        "predictions_not_in_split": unknown,
        "convention": cfg.convention,
        **{k: float(v[scored].mean()) if scored.any() else 0.0 for k, v in m.items()},
        "in_catalog": in_cat / total_first if total_first else 0.0,
        "format_valid": float(per_sample["format_valid"].mean()),
        "duplicate_ratio": dups / total_items if total_items else 0.0,
        "mean_list_length": total_items / len(ids),
        "hit_rate_per_rank": (per_rank / len(ids)).tolist(),
    }
    return summary, per_sample


def metric_columns(ks: Sequence[int]) -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
