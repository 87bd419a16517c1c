import polars as pl
import pytest

from convrec import artifacts
from convrec.errors import ConvrecError
from tests.conftest import catalog_frame


def test_write_read_round_trip_with_provenance(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("hello")
    path = artifacts.write(
        catalog_frame(), tmp_path / "cat.parquet", "catalog", stage="unit", params={"a": 1}, inputs=[src]
    )
    df = artifacts.read(path, "catalog")
    assert df.equals(catalog_frame())
    prov = artifacts.provenance(path)
    assert prov["stage"] == "unit" and prov["params"] == {"a": 1} and prov["rows"] == len(df)
    assert prov["inputs"][str(src)] == artifacts.file_hash(src)
    assert prov["convrec_version"]


def test_read_casts_compatible_types(tmp_path):
    df = catalog_frame().with_columns(pl.col("year").cast(pl.Int32))
    df.write_parquet(tmp_path / "c.parquet")  # written by another tool: no provenance
    assert artifacts.read(tmp_path / "c.parquet", "catalog").schema["year"] == pl.Int64
    assert artifacts.provenance(tmp_path / "c.parquet") == {}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (catalog_frame().drop("year"), "missing column 'year'"),
        (catalog_frame().with_columns(pl.col("year").cast(pl.String)), "column 'year' has type String"),
        (catalog_frame().with_columns(pl.col("title").cast(pl.Categorical)), "column 'title'"),
    ],
)
def test_bad_columns_are_named(tmp_path, frame, message):
    frame.write_parquet(tmp_path / "c.parquet")
    with pytest.raises(ConvrecError, match=message) as e:
        artifacts.read(tmp_path / "c.parquet", "catalog")
    assert str(tmp_path / "c.parquet") in str(e.value) and "\n" not in str(e.value)


def test_predictions_need_text_or_items(tmp_path):
    pl.DataFrame({"sample_id": ["a"]}).write_parquet(tmp_path / "p.parquet")
    with pytest.raises(ConvrecError, match="one of the columns"):
        artifacts.read(tmp_path / "p.parquet", "predictions")


def test_missing_file_directory_and_garbage(tmp_path):
    with pytest.raises(ConvrecError, match="no such file"):
        artifacts.read(tmp_path / "nope.parquet", "catalog")
    with pytest.raises(ConvrecError, match="is a directory"):
        artifacts.read(tmp_path, "catalog")
    (tmp_path / "bad.parquet").write_bytes(b"\xff\xfe not parquet \x00\x81")
    with pytest.raises(ConvrecError, match="not a readable Parquet file"):
        artifacts.read(tmp_path / "bad.parquet", "catalog")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = artifacts.write(catalog_frame(), tmp_path / "cat.parquet", "catalog", stage="unit")
    before = path.read_bytes()
    with pytest.raises(ConvrecError):  # validation fails before anything is replaced
        artifacts.write(catalog_frame().drop("title"), path, "catalog", stage="unit")
    with pytest.raises(RuntimeError), artifacts.atomic_path(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat.parquet"]  # no temporary left behind


def test_write_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConvrecError, match="parent path is a file"):
        artifacts.write(catalog_frame(), tmp_path / "f" / "cat.parquet", "catalog", stage="unit")


def test_file_hash_follows_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = artifacts.file_hash(f)
    f.write_text("two!")
    assert artifacts.file_hash(f) != first
    assert artifacts.file_hash(tmp_path) == artifacts.file_hash(tmp_path)
