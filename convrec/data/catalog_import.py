"""Catalog import, and the one place that turns (title, year) records into a catalog frame.

`import_catalog` reads a CSV, Parquet or the paper's pickle (a list of ``(title, year)`` tuples)
and writes the catalog artifact. `build_catalog` / `catalog_frame` are what every importer uses
to make its catalog, so validation (empty titles, bad years, duplicates) and item ids are the
same everywhere. `write_dataset` writes a whole data folder (catalog + the three splits).
"""

from __future__ import annotations

import numbers
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from convrec import artifacts
from convrec.catalog import normalize_title
from convrec.data import SPLITS, MatchRules, catalog_path, split_path, write_rules
from convrec.data.report import ImportReport
from convrec.errors import ConvrecError

# Outside this range a "year" is a data error (the Reddit-v2 catalog has "The Wall (201)").
MIN_YEAR, MAX_YEAR = 1870, 2100
OPTIONAL = ("genres", "description", "popularity")
_CSV = {".csv": ",", ".tsv": "\t"}
_PARQUET = {".parquet", ".pq"}
_PICKLE = {".pkl", ".pickle"}


def parse_year(value: Any) -> tuple[int | None, str | None]:
    """(year, None) for a usable year, else (None, rejection reason).

    Accepts ints (numpy ones too), integral floats (a CSV column with gaps read by pandas) and
    digit strings; a bool is not a year.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "missing year"
    if isinstance(value, bool):
        return None, "year not an integer"
    if isinstance(value, numbers.Integral):
        year = int(value)
    elif isinstance(value, numbers.Real):
        if value != value or not float(value).is_integer():  # NaN or 1999.5
            return (None, "missing year") if value != value else (None, "year not an integer")
        year = int(value)
    elif isinstance(value, str):
        text = value.strip()
        text = text[:-2] if text.endswith(".0") else text
        if not text.isdigit():
            return None, "year not an integer"
        year = int(text)
    else:
        return None, "year not an integer"
    if not MIN_YEAR <= year <= MAX_YEAR:
        return None, f"year outside {MIN_YEAR}-{MAX_YEAR}"
    return year, None


def _genres(value: Any) -> list[str] | None:
    if value is None:
        return None
    parts = value.split("|") if isinstance(value, str) else value  # MovieLens style "Action|Comedy"
    return [str(g).strip() for g in parts if g is not None and str(g).strip()]


def _popularity(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        pop = float(value)
    except (TypeError, ValueError):
        return None
    return pop if pop == pop else None


def build_catalog(
    records: Iterable[Mapping[str, Any]], report: ImportReport, *, reason_prefix: str = "", require_year: bool = True
) -> pl.DataFrame:
    """A catalog frame from records (dicts with title, year and optional item_id/genres/...).

    Records are taken in order; rejected ones are counted in ``report`` under their reason.
    Without an ``item_id`` a record gets ``m`` + its 1-based position (``m00001``): the id of a row
    does not change when another row is fixed or removed. The first of several records with the
    same normalised (title, year) wins. Optional columns appear when any record has the key.
    ``require_year=False`` keeps records without a year (year-less catalogs such as INSPIRED's).
    """
    rows: list[dict[str, Any]] = []
    keys: set[tuple[str, int]] = set()
    ids: set[str] = set()
    present: set[str] = set()
    for pos, rec in enumerate(records, start=1):
        title = rec.get("title")
        if title is not None and not isinstance(title, str):
            report.reject(reason_prefix + "title not text")
            continue
        title = (title or "").strip()
        if not title:
            report.reject(reason_prefix + "empty title")
            continue
        year, why = parse_year(rec.get("year"))
        if why == "missing year" and not require_year:
            why = None
        if why:
            report.reject(reason_prefix + why)
            continue
        key = (normalize_title(title), year)
        if key in keys:
            report.reject(reason_prefix + "duplicate title and year")
            continue
        if "item_id" in rec:
            item_id = "" if rec["item_id"] is None else str(rec["item_id"]).strip()
            if not item_id:
                report.reject(reason_prefix + "empty item_id")
                continue
            if item_id in ids:
                report.reject(reason_prefix + "duplicate item_id")
                continue
        else:
            item_id = f"m{pos:05d}"
        keys.add(key)
        ids.add(item_id)
        present.update(c for c in OPTIONAL if c in rec)
        description = rec.get("description")
        rows.append(
            {
                "item_id": item_id,
                "title": title,
                "year": year,
                "genres": _genres(rec.get("genres")),
                "description": description if isinstance(description, str) else None,
                "popularity": _popularity(rec.get("popularity")),
            }
        )
    columns = ["item_id", "title", "year", *(c for c in OPTIONAL if c in present)]
    schema = {c: artifacts.CATALOG.columns[c] for c in columns}
    return pl.DataFrame({c: [r[c] for r in rows] for c in columns}, schema=schema)


def catalog_frame(
    items: Iterable[tuple[str, Any]], source: str = "items", *, require_year: bool = True
) -> tuple[pl.DataFrame, ImportReport]:
    """`build_catalog` over plain (title, year) pairs, with a fresh report."""
    report = ImportReport(source)
    records = ({"title": t, "year": y} for t, y in items)
    return build_catalog(records, report, require_year=require_year), report


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles builtins (lists, tuples, str, int) and numpy scalars only: a catalog is data,
    and a pickle that names any other class could run code on load."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _pickle_records(path: Path, report: ImportReport, reason_prefix: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            data = _PlainUnpickler(fh).load()
    except Exception as e:  # pickle raises many types for junk and for refused classes
        raise ConvrecError(f"{path}: not a readable catalog pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, list | tuple):
        raise ConvrecError(f"{path}: the pickle holds a {type(data).__name__}, expected a list of (title, year)")
    records = []
    for entry in data:
        if isinstance(entry, Mapping):
            records.append(dict(entry))
        elif isinstance(entry, list | tuple) and len(entry) >= 2:
            records.append({"title": entry[0], "year": entry[1]})
        else:
            report.reject(reason_prefix + "not a (title, year) pair")
    return records


def _table_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        # CSV as all strings: years and ids are parsed here, with reasons, not by inference
        df = pl.read_csv(path, separator=_CSV[suffix], infer_schema=False) if suffix in _CSV else pl.read_parquet(path)
    except Exception as e:  # polars raises several types for unreadable files
        kind = "CSV" if suffix in _CSV else "Parquet"
        raise ConvrecError(f"{path}: not a readable {kind} file ({type(e).__name__})") from None
    df = df.rename({c: c.strip().lower() for c in df.columns})
    for col in ("title", "year"):
        if col not in df.columns:
            raise ConvrecError(f"{path}: missing column '{col}' (a catalog needs title and year; found {df.columns})")
    keep = [c for c in ("item_id", "title", "year", *OPTIONAL) if c in df.columns]
    return df.select(keep).to_dicts()


def read_catalog_file(path: str | Path, report: ImportReport, *, reason_prefix: str = "") -> pl.DataFrame:
    """A catalog frame from a CSV/TSV, Parquet or pickle file; row problems go to ``report``."""
    path = Path(path)
    if not path.exists():
        raise ConvrecError(f"{path}: no such file")
    if path.is_dir():
        raise ConvrecError(f"{path}: is a directory, expected a CSV, Parquet or pickle catalog file")
    suffix = path.suffix.lower()
    if suffix in _PICKLE:
        rejected_before = sum(report.rejected.values())
        records = _pickle_records(path, report, reason_prefix)
        malformed = sum(report.rejected.values()) - rejected_before
    elif suffix in _CSV or suffix in _PARQUET:
        records, malformed = _table_records(path), 0
    else:
        raise ConvrecError(f"{path}: unknown catalog format '{suffix}' (use .csv, .tsv, .parquet or .pkl)")
    report.counts["catalog rows read"] = len(records) + malformed
    return build_catalog(records, report, reason_prefix=reason_prefix)


def import_catalog(path: str | Path, out: str | Path) -> ImportReport:
    """Convert a catalog file into the catalog artifact at ``out``."""
    report = ImportReport(str(path))
    df = read_catalog_file(path, report)
    if df.height == 0:
        raise ConvrecError(f"{path}: no valid catalog rows ({_reasons(report)})")
    artifacts.write(df, out, artifacts.CATALOG, stage="data.catalog", inputs=[path])
    report.counts["catalog items"] = df.height
    return report


def _reasons(report: ImportReport) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in report.rejected.most_common()) or "the file is empty"


def check_out_dir(out: str | Path) -> Path:
    """The data folder to write; a user error when it exists as a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConvrecError(f"{out}: is a file, expected a data folder to write")
    return out


_ARROW_SAMPLES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("conversation_id", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("seen", pa.list_(pa.struct([("title", pa.string()), ("year", pa.int64())]))),
        ("ground_truth", pa.list_(pa.struct([("title", pa.string()), ("year", pa.int64())]))),
    ]
)


def samples_frame(columns: Mapping[str, list]) -> pl.DataFrame:
    """A samples frame from Python columns (messages, seen, ground_truth as lists of dicts).

    Goes through Arrow: polars builds list-of-struct columns from Python objects ~5x slower,
    which is most of an import of Reddit-v2's 383k training samples.
    """
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in _ARROW_SAMPLES}, schema=_ARROW_SAMPLES)
    return pl.from_arrow(table)


def write_dataset(
    out: Path,
    catalog: pl.DataFrame,
    splits: Mapping[str, pl.DataFrame],
    *,
    stage: str,
    params: dict,
    inputs: list,
    rules: MatchRules = MatchRules(),
) -> None:
    """Write catalog.parquet, one samples file per split (all three, empty ones included) and the
    folder's matching rules (``matching.json``), which every later stage reads."""
    write_rules(out, rules)
    artifacts.write(catalog, catalog_path(out), artifacts.CATALOG, stage=stage, params=params, inputs=inputs)
    for split in SPLITS:
        df = splits.get(split)
        if df is None:
            df = samples_frame({c: [] for c in artifacts.SAMPLES.required})
        artifacts.write(df, split_path(out, split), artifacts.SAMPLES, stage=stage, params=params, inputs=inputs)
