"""Datasets: the on-disk layout of a data folder, and its importers and synthetic world.

A data folder holds ``catalog.parquet``, one samples file per split (``train.parquet``,
``val.parquet``, ``test.parquet``), all in the schemas of `convrec.artifacts`, and
``matching.json``: the catalog's matching rules (year tolerance, year-less or not), written when the
folder is made. Every stage builds its `Catalog` with `open_catalog`, so eval, rl rewards, sft,
baselines, generate and serve match titles by the same rules; a flag overrides a rule only there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import polars as pl

from convrec import artifacts
from convrec.catalog import Catalog
from convrec.errors import ConvrecError

SPLITS = ("train", "val", "test")
RULES_FILE = "matching.json"


@dataclass(frozen=True)
class MatchRules:
    """How listed titles are matched to this folder's catalog (`Catalog`'s keyword arguments)."""

    year_tolerance: int = 2  # years may differ by this much (the paper's metrics use 2)
    use_year: bool = True  # False: titles alone decide (catalogs whose titles carry no year)


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


def rules_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / RULES_FILE


def write_rules(data_dir: str | Path, rules: MatchRules) -> Path:
    """Record the folder's matching rules (atomic JSON), done once by whatever makes the folder."""
    return artifacts.write_json(asdict(rules), rules_path(data_dir))


def read_rules(data_dir: str | Path, catalog: pl.DataFrame | None = None) -> MatchRules:
    """The rules ``matching.json`` records; without one (a folder made before it existed) the
    defaults, year-less when the catalog has no year at all."""
    path = rules_path(data_dir)
    if not path.exists():
        yearless = catalog is not None and catalog.height > 0 and catalog["year"].null_count() == catalog.height
        return MatchRules(use_year=not yearless)
    try:
        raw = json.loads(path.read_text())
        rules = MatchRules(year_tolerance=raw.get("year_tolerance", 2), use_year=raw.get("use_year", True))
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise ConvrecError(f"{path}: not a readable matching-rules file ({type(e).__name__})") from None
    if not isinstance(rules.use_year, bool) or not isinstance(rules.year_tolerance, int) or rules.year_tolerance < 0:
        raise ConvrecError(f"{path}: year_tolerance must be an integer >= 0 and use_year true or false")
    return rules


def open_catalog(
    data: str | Path, *, year_tolerance: int | None = None, use_year: bool | None = None, allow_file: bool = False
) -> Catalog:
    """The `Catalog` of a data folder (with ``allow_file``, also of a catalog file, by the rules of
    its folder), matching by the folder's recorded rules; a non-None argument overrides that rule
    (the one place flags do)."""
    data = Path(data)
    if allow_file and data.is_file():
        df, folder = artifacts.read(data, artifacts.CATALOG), data.parent
        if df.height == 0:
            raise ConvrecError(f"{data}: catalog is empty")
    else:
        df, folder = load_catalog(data), data
    rules = read_rules(folder, df)
    if year_tolerance is not None:
        if year_tolerance < 0:
            raise ConvrecError(f"--year-tolerance must be >= 0, got {year_tolerance}")
        rules = replace(rules, year_tolerance=year_tolerance)
    if use_year is not None:
        rules = replace(rules, use_year=use_year)
    return Catalog(df, year_tolerance=rules.year_tolerance, use_year=rules.use_year)


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
