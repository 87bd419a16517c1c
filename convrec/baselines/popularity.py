"""Popularity: the items most often recommended in the training split, minus what was seen."""

from __future__ import annotations

import numpy as np
import polars as pl

from convrec.baselines import predictions_frame, resolve_rows
from convrec.catalog import Catalog


def item_counts(train: pl.DataFrame, catalog: Catalog) -> np.ndarray:
    """How often each catalog item is a ground-truth answer in ``train``, with the catalog's own
    popularity as a tie-breaker (and the whole signal when train is empty)."""
    counts = np.zeros(len(catalog))
    for rows in resolve_rows(catalog, train["ground_truth"]):
        np.add.at(counts, rows, 1.0)
    pop = catalog.popularity
    tie = pop / (pop.max() + 1.0) if pop.max() > 0 else np.zeros_like(pop)
    return counts + tie


def recommend(train: pl.DataFrame, samples: pl.DataFrame, catalog: Catalog, n: int = 20) -> pl.DataFrame:
    scores = item_counts(train, catalog)
    seen = resolve_rows(catalog, samples["seen"])
    rows = []
    order = np.argsort(-scores, kind="stable")
    for ex in seen:  # one global order: skip the seen items per sample
        ex_set = set(ex.tolist())
        rows.append(np.array([r for r in order[: n + len(ex_set)] if r not in ex_set][:n], dtype=np.int64))
    return predictions_frame(samples["sample_id"].to_list(), rows, catalog)
