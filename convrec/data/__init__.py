"""Datasets: the on-disk layout of a data folder, and its importers and synthetic world.

A data folder holds ``catalog.parquet`` and one samples file per split
(``train.parquet``, ``val.parquet``, ``test.parquet``), all in the schemas of `convrec.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from convrec import artifacts
from convrec.errors import ConvrecError

SPLITS = ("train", "val", "test")


def catalog_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "catalog.parquet"


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.parquet"


def _check_dir(data_dir: str | Path) -> Path:
    d = Path(data_dir)
    if not d.exists():
        raise ConvrecError(f"{d}: no such data folder")
    if not d.is_dir():
        raise ConvrecError(f"{d}: is a file, expected a data folder (catalog.parquet + split files)")
    return d


def load_catalog(data_dir: str | Path) -> pl.DataFrame:
    df = artifacts.read(catalog_path(_check_dir(data_dir)), artifacts.CATALOG)
    if df.height == 0:
        raise ConvrecError(f"{catalog_path(data_dir)}: catalog is empty")
    return df


def load_split(data_dir: str | Path, split: str) -> pl.DataFrame:
    if split not in SPLITS:
        raise ConvrecError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    return artifacts.read(split_path(_check_dir(data_dir), split), artifacts.SAMPLES)


def item_lists(col: pl.Series) -> list[list[tuple[str, int | None]]]:
    """A whole list-of-title/year-struct column as (title, year) tuples per row.

    Goes through Arrow's flat buffers instead of per-row dicts from `to_list()`, which matters when
    eval scores 100k samples. Null lists become empty lists; items without a title are skipped.
    """
    arr = col.to_arrow()
    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    flat = arr.flatten()
    titles = flat.field("title").to_pylist()
    years = flat.field("year").to_pylist()
    offsets = arr.offsets.to_pylist()
    start0 = offsets[0]
    pairs = list(zip(titles, years, strict=True))
    return [[p for p in pairs[a - start0 : b - start0] if p[0]] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
