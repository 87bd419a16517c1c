"""Non-LLM baselines every model is compared with: popularity and item co-occurrence."""

from __future__ import annotations

import numpy as np
import polars as pl

from convrec.catalog import Catalog
from convrec.data import item_lists
from convrec.listfmt import format_list


def resolve_rows(catalog: Catalog, col: pl.Series) -> list[np.ndarray]:
    """Catalog rows of each sample's (title, year) list; unknown items are dropped."""
    out = []
    for items in item_lists(col):
        rows = catalog.lookup_many([t for t, _ in items], [y for _, y in items], allow_missing_year=True)
        out.append(rows[rows >= 0])
    return out


def top_n_excluding(scores: np.ndarray, exclude: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Per row of ``scores`` (samples x items), the n best items not in that sample's ``exclude``."""
    scores = scores.copy()
    out = []
    for i, ex in enumerate(exclude):
        s = scores[i]
        s[ex] = -np.inf
        k = min(n, s.size)
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top], kind="stable")]
        out.append(top[np.isfinite(s[top])])
    return out


def predictions_frame(sample_ids: list[str], rows: list[np.ndarray], catalog: Catalog) -> pl.DataFrame:
    """The predictions artifact: items (title/year structs) plus the same list as text."""
    items = [[(catalog.titles[r], catalog.years[r]) for r in rs] for rs in rows]
    return pl.DataFrame(
        {
            "sample_id": sample_ids,
            "items": [[{"title": t, "year": y} for t, y in its] for its in items],
            "text": [format_list(its) for its in items],
        }
    )
