"""Every Parquet artifact's schema, validated reads, atomic writes and provenance.

Each stage exchanges Parquet files. A schema lists required and optional columns with their
polars dtypes; `read` checks them and raises `ConvrecError` naming the file and column, so the
CLI can print one line and exit 2. `write` goes through a temporary file and `os.replace`, so a
crash never leaves a half-written artifact, and stores provenance (stage, parameters, input file
hashes, convrec version) in the Parquet key-value metadata under the key ``convrec``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from convrec import __version__
from convrec.errors import ConvrecError

ITEM = pl.Struct({"title": pl.String, "year": pl.Int64})
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})


@dataclass(frozen=True)
class Schema:
    name: str
    required: dict[str, pl.DataType]
    optional: dict[str, pl.DataType] = field(default_factory=dict)
    # at least one of these must be present (e.g. predictions need `text` or `items`)
    one_of: tuple[str, ...] = ()

    @property
    def columns(self) -> dict[str, pl.DataType]:
        return {**self.required, **self.optional}


CATALOG = Schema(
    "catalog",
    required={"item_id": pl.String, "title": pl.String, "year": pl.Int64},
    optional={"genres": pl.List(pl.String), "description": pl.String, "popularity": pl.Float64},
)
SAMPLES = Schema(
    "samples",
    required={
        "sample_id": pl.String,
        "conversation_id": pl.String,
        "messages": pl.List(MESSAGE),
        "seen": pl.List(ITEM),
        "ground_truth": pl.List(ITEM),
    },
)
PREDICTIONS = Schema(
    "predictions",
    required={"sample_id": pl.String},
    optional={"text": pl.String, "items": pl.List(ITEM)},
    one_of=("text", "items"),
)
SCHEMAS = {s.name: s for s in (CATALOG, SAMPLES, PREDICTIONS)}

_INTS = {pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64}
_FLOATS = {pl.Float32, pl.Float64}


def _compatible(actual: pl.DataType, expected: pl.DataType) -> bool:
    """Same type, or one `cast` can make it so without losing meaning (ints of any width, null)."""
    if actual == expected or actual == pl.Null:
        return True
    if expected.base_type() in _INTS and actual.base_type() in _INTS:
        return True
    if expected.base_type() in _FLOATS and actual.base_type() in _INTS | _FLOATS:
        return True
    if isinstance(expected, pl.List) and isinstance(actual, pl.List):
        return _compatible(actual.inner, expected.inner)
    if isinstance(expected, pl.Struct) and isinstance(actual, pl.Struct):
        have = {f.name: f.dtype for f in actual.fields}
        return all(f.name in have and _compatible(have[f.name], f.dtype) for f in expected.fields)
    return False


def validate(df: pl.DataFrame, schema: Schema, source: str) -> pl.DataFrame:
    """Check columns and types; return the frame cast to the schema's exact dtypes."""
    for col in schema.required:
        if col not in df.columns:
            raise ConvrecError(f"{source}: missing column '{col}' ({schema.name} needs {list(schema.required)})")
    if schema.one_of and not any(c in df.columns for c in schema.one_of):
        raise ConvrecError(f"{source}: needs one of the columns {list(schema.one_of)} ({schema.name})")
    casts = []
    for col, dtype in schema.columns.items():
        if col not in df.columns:
            continue
        if not _compatible(df.schema[col], dtype):
            raise ConvrecError(f"{source}: column '{col}' has type {df.schema[col]}, expected {dtype} ({schema.name})")
        if df.schema[col] != dtype:
            casts.append(pl.col(col).cast(dtype))
    return df.with_columns(casts) if casts else df


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ConvrecError(f"{path}: no such file")
    if path.is_dir():
        raise ConvrecError(f"{path}: is a directory, expected a Parquet file")


def read(path: str | Path, schema: Schema | str) -> pl.DataFrame:
    """Read and validate a Parquet artifact; every failure is a one-line ConvrecError."""
    schema = SCHEMAS[schema] if isinstance(schema, str) else schema
    path = Path(path)
    _check_file(path)
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for corrupt files
        raise ConvrecError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    return validate(df, schema, str(path))


def file_hash(path: str | Path) -> str:
    """sha256 of a file (or of a folder's files, sorted), for provenance and caches.

    Memoised on (path, size, mtime) of every file, so an importer writing four artifacts from one
    multi-GB source hashes it once.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(path, stamp)


@lru_cache(maxsize=256)
def _hash_files(path: Path, stamp: tuple, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        f = Path(name)
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def atomic_path(path: str | Path):
    """Context manager giving a temporary path next to `path`, renamed over it on success."""
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConvrecError(f"{self.path}: cannot write there, a parent path is a file") from None
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write(
    df: pl.DataFrame,
    path: str | Path,
    schema: Schema | str | None = None,
    *,
    stage: str,
    params: dict | None = None,
    inputs: list[str | Path] | None = None,
) -> Path:
    """Validate (when a schema is given) and write atomically with provenance metadata."""
    path = Path(path)
    if path.is_dir():
        raise ConvrecError(f"{path}: is a directory, expected a Parquet file path")
    if schema is not None:
        schema = SCHEMAS[schema] if isinstance(schema, str) else schema
        df = validate(df, schema, str(path))
    prov = {
        "stage": stage,
        "params": params or {},
        "inputs": {str(p): file_hash(p) for p in (inputs or []) if Path(p).exists()},
        "convrec_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": df.height,
    }
    table = df.to_arrow()
    meta = dict(table.schema.metadata or {})
    meta[b"convrec"] = json.dumps(prov, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def provenance(path: str | Path) -> dict:
    """The provenance dict `write` stored, or {} for files written by other tools."""
    path = Path(path)
    _check_file(path)
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as e:
        raise ConvrecError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    raw = meta.get(b"convrec")
    return json.loads(raw) if raw else {}


def write_json(obj, path: str | Path) -> Path:
    """Atomic JSON write (metrics, configs)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path
