"""What remap, reflect and adjust share: the deduplicated catalog, item and conversation texts, and
the candidates column (per sample, the top-M catalog items with their score parts).

The candidates column is a list of structs, one per candidate, best first: ``item_id``, ``score``
(the stage's score) and the parts that made it (``exact``, ``semantic``, ``context`` from remap,
``rating`` and ``remap`` from reflect, ``reflect`` from adjust). It is packed and unpacked through
Arrow buffers and padded numpy arrays, never per-row Python dicts, so 10k conversations x 200
candidates stay fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from convrec.catalog import Catalog, normalize_title
from convrec.errors import ConvrecError
from convrec.prompts import render_conversation

CONTEXT_CHARS = 1200  # the embedder reads ~256 tokens: keep the latest part of long conversations


def pipeline_catalog(df: pl.DataFrame | Catalog) -> tuple[Catalog, int]:
    """The catalog with duplicate rows dropped (same item_id, or same normalised title and year):
    a duplicate would split an item's score in two. Returns the catalog and how many were dropped.
    Given a `Catalog` (`data.open_catalog`), its matching rules carry over."""
    rules = {"year_tolerance": df.year_tolerance, "use_year": df.use_year} if isinstance(df, Catalog) else {}
    df = df.df if isinstance(df, Catalog) else df
    if df.height == 0:
        raise ConvrecError("catalog is empty: it needs at least one item")
    key = pl.Series([f"{normalize_title(t)}\x1f{y}" for t, y in zip(df["title"], df["year"], strict=True)])
    keep = ~(df["item_id"].is_duplicated() & ~df["item_id"].is_first_distinct()) & key.is_first_distinct()
    out = df.filter(keep)
    return Catalog(out, **rules), df.height - out.height


def item_texts(catalog: Catalog) -> list[str]:
    """Metadata text of every catalog item: `Title (Year). Genres: a, b. Description`."""
    df = catalog.df
    genres = df["genres"].to_list() if "genres" in df.columns else [None] * df.height
    desc = df["description"].to_list() if "description" in df.columns else [None] * df.height
    out = []
    for row, (g, d) in enumerate(zip(genres, desc, strict=True)):
        parts = [catalog.label(row) + "."]
        if g:
            parts.append(f"Genres: {', '.join(g)}.")
        if d:
            parts.append(d.strip())
        out.append(" ".join(parts))
    return out


def conversation_text(messages: Sequence[dict]) -> str:
    text = render_conversation(messages)
    return text[-CONTEXT_CHARS:]


def conversations(samples: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation (its first sample's messages and seen items), in first-seen order."""
    return samples.unique("conversation_id", keep="first", maintain_order=True).select(
        "sample_id", "conversation_id", "messages", "seen"
    )


def pack_candidates(rows: np.ndarray, fields: dict[str, np.ndarray], catalog: Catalog) -> pl.Series:
    """rows: (n, M) catalog rows, -1 = padding; fields: name -> (n, M) values (NaN = null)."""
    valid = rows >= 0
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    flat_rows = rows[valid]
    ids = np.asarray(catalog.item_ids, dtype=object)[flat_rows] if flat_rows.size else np.array([], dtype=object)
    arrays, names = [pa.array(ids.tolist(), type=pa.string())], ["item_id"]
    for name, vals in fields.items():
        v = vals[valid]
        if name == "rating":
            arrays.append(pa.array(np.nan_to_num(v).astype(np.int8), mask=np.isnan(v), type=pa.int8()))
        else:
            arrays.append(pa.array(v.astype(np.float32), mask=np.isnan(v), type=pa.float32()))
        names.append(name)
    structs = pa.StructArray.from_arrays(arrays, names=names)
    return pl.Series("candidates", pa.ListArray.from_arrays(pa.array(offsets), structs))


def unpack_candidates(col: pl.Series, catalog: Catalog) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The inverse of `pack_candidates`: padded (n, M) rows (-1 padding) and float fields (NaN = null).
    Candidates whose item_id is not in the catalog are dropped (counted by the caller via -1s)."""
    arr = col.to_arrow()
    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise ConvrecError("candidates column is not a list of structs: was this file written by remap/reflect?")
    offsets = np.asarray(arr.offsets.to_pylist(), dtype=np.int64)
    offsets = offsets - offsets[0]
    counts = np.diff(offsets)
    n, m = len(counts), int(counts.max()) if len(counts) else 0
    flat = arr.flatten()
    ids = flat.field("item_id").to_pylist()
    row_of = catalog.row_of_id
    flat_rows = np.fromiter((row_of.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
    pos = np.arange(len(ids)) - np.repeat(offsets[:-1], counts)
    which = np.repeat(np.arange(n), counts)
    rows = np.full((n, m), -1, dtype=np.int64)
    rows[which, pos] = flat_rows
    fields = {}
    for f in flat.type:
        if f.name == "item_id":
            continue
        vals = np.asarray(flat.field(f.name).to_numpy(zero_copy_only=False), dtype=np.float64)
        grid = np.full((n, m), np.nan)
        grid[which, pos] = vals
        grid[rows < 0] = np.nan
        fields[f.name] = grid
    return rows, fields


def top_lists(rows: np.ndarray, catalog: Catalog, n: int) -> tuple[pl.Series, list[str]]:
    """The first n valid rows of each candidate list as an `items` column and `Title (Year)` texts
    (built from flat Arrow arrays: 10k lists x 20 items is no per-item Python dict)."""
    sub = np.stack([np.concatenate([r[r >= 0][:n], np.full(n, -1)])[:n] for r in rows]) if len(rows) else rows
    valid = sub >= 0 if len(rows) else np.zeros((0, n), dtype=bool)
    flat = sub[valid] if len(rows) else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    titles = np.asarray(catalog.titles, dtype=object)
    years = np.array([y if y is not None else 0 for y in catalog.years], dtype=np.int64)
    no_year = np.array([y is None for y in catalog.years])
    structs = pa.StructArray.from_arrays(
        [pa.array(titles[flat].tolist(), type=pa.string()), pa.array(years[flat], mask=no_year[flat], type=pa.int64())],
        names=["title", "year"],
    )
    items = pl.Series("items", pa.ListArray.from_arrays(pa.array(offsets), structs))
    labels = np.asarray([catalog.label(i) for i in range(len(catalog))], dtype=object)
    texts = ["\n".join(labels[r[r >= 0]]) for r in sub]
    return items, texts


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores per row, best first; -1 where a row has fewer."""
    import torch

    k = min(k, scores.shape[1])
    vals, top = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1)  # sorted, multi-threaded
    top = top.numpy().astype(np.int64)
    top[~np.isfinite(vals.numpy())] = -1
    return top


def seen_mask_rows(catalog: Catalog, seen_col: pl.Series) -> list[np.ndarray]:
    from convrec.baselines import resolve_rows

    return resolve_rows(catalog, seen_col)
