"""Importers: catalog files, ReDIAL jsonl, the Reddit-v2 save_to_disk release."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from datetime import date
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import polars as pl
import pytest

from convrec import artifacts
from convrec.catalog import normalize_title
from convrec.data import SPLITS, catalog_path, split_path
from convrec.data.catalog_import import catalog_frame, import_catalog, parse_year
from convrec.data.reddit_v2 import import_reddit_v2
from convrec.data.redial import import_redial
from convrec.errors import ConvrecError
from tests.conftest import assert_user_error, run_cli

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")


def items_of(structs: list[dict]) -> list[tuple[str, int | None]]:
    return [(x["title"], x["year"]) for x in structs]


def load_samples(d: Path) -> dict[str, pl.DataFrame]:
    return {s: artifacts.read(split_path(d, s), artifacts.SAMPLES) for s in SPLITS}


def all_samples(d: Path) -> pl.DataFrame:
    return pl.concat(load_samples(d).values())


# ---------------------------------------------------------------- catalog


def test_parse_year() -> None:
    assert parse_year(1999) == (1999, None)
    assert parse_year(np.int64(1999)) == (1999, None)
    assert parse_year(" 1999 ") == (1999, None)
    assert parse_year(1999.0) == (1999, None)
    assert parse_year("1999.0") == (1999, None)
    assert parse_year(None)[1] == "missing year"
    assert parse_year("")[1] == "missing year"
    assert parse_year(float("nan"))[1] == "missing year"
    assert parse_year("nineteen")[1] == "year not an integer"
    assert parse_year(1999.5)[1] == "year not an integer"
    assert parse_year(True)[1] == "year not an integer"
    assert parse_year("201")[1].startswith("year outside")


CSV_TEXT = """title,year,genres,popularity
The Matrix,1999,Action|Sci-Fi,8.5
Dune,1984,Sci-Fi,2
Dune,2021,Sci-Fi,9
"Matrix, The",1999,,1
,2000,,
Nameless Year,,,
Bad Year,19x9,,
Typo Year,201,,
Amélie,2001,Comedy|Romance,not-a-number
"""


def test_import_catalog_csv(tmp_path: Path) -> None:
    src = tmp_path / "cat.csv"
    src.write_text(CSV_TEXT, encoding="utf-8")
    report = import_catalog(src, tmp_path / "catalog.parquet")
    df = artifacts.read(tmp_path / "catalog.parquet", artifacts.CATALOG)
    assert report.counts == {"catalog rows read": 9, "catalog items": 4}
    assert report.rejected == Counter(
        {
            "duplicate title and year": 1,
            "empty title": 1,
            "missing year": 1,
            "year not an integer": 1,
            "year outside 1870-2100": 1,
        }
    )
    # ids follow the input row, so fixing one row never renames another; remakes are two items
    assert df.select("item_id", "title", "year").rows() == [
        ("m00001", "The Matrix", 1999),
        ("m00002", "Dune", 1984),
        ("m00003", "Dune", 2021),
        ("m00009", "Amélie", 2001),
    ]
    assert df["genres"].to_list()[0] == ["Action", "Sci-Fi"]
    assert df["popularity"].to_list() == [8.5, 2.0, 9.0, None]  # a bad number is left empty, not fatal
    assert artifacts.provenance(tmp_path / "catalog.parquet")["stage"] == "data.catalog"


def test_import_catalog_parquet_keeps_item_ids(tmp_path: Path) -> None:
    src = tmp_path / "cat.parquet"
    pl.DataFrame(
        {
            "item_id": ["tt1", "tt2", "tt2", None, "tt5"],
            "Title": ["Heat", "Elf", "Fargo", "Up", "Heat"],
            "Year": [1995, 2003, 1996, 2009, 1986],
            "description": ["a heist", None, "snow", "balloons", "a remake"],
        }
    ).write_parquet(src)
    report = import_catalog(src, tmp_path / "out.parquet")
    df = artifacts.read(tmp_path / "out.parquet", artifacts.CATALOG)
    assert df.select("item_id", "title", "year").rows() == [
        ("tt1", "Heat", 1995),
        ("tt2", "Elf", 2003),
        ("tt5", "Heat", 1986),
    ]
    assert df["description"].to_list() == ["a heist", None, "a remake"]
    assert "genres" not in df.columns
    assert report.rejected == Counter({"duplicate item_id": 1, "empty item_id": 1})


def test_import_catalog_pickle(tmp_path: Path) -> None:
    src = tmp_path / "gt_catalog.pkl"
    rows = [("Heat", 1995), ("Heat", np.int64(1986)), ["Elf", "2003"], ("heat", 1995), ("No Year", None), "junk"]
    src.write_bytes(pickle.dumps(rows))
    report = import_catalog(src, tmp_path / "out.parquet")
    df = artifacts.read(tmp_path / "out.parquet", artifacts.CATALOG)
    assert df.select("title", "year").rows() == [("Heat", 1995), ("Heat", 1986), ("Elf", 2003)]
    assert report.counts["catalog rows read"] == 6
    assert report.rejected == Counter({"duplicate title and year": 1, "missing year": 1, "not a (title, year) pair": 1})


def test_pickle_with_classes_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps([("Heat", date(1995, 1, 1))]))  # names a class: never loaded
    with pytest.raises(ConvrecError, match="not a readable catalog pickle"):
        import_catalog(src, tmp_path / "out.parquet")


def test_catalog_frame_helper() -> None:
    df, report = catalog_frame([("Dune", 1984), ("DUNE", 1984), ("Dune", 2021), ("", 2000), ("X", None)])
    assert df.select("item_id", "title", "year").rows() == [("m00001", "Dune", 1984), ("m00003", "Dune", 2021)]
    assert report.rejected == Counter({"duplicate title and year": 1, "empty title": 1, "missing year": 1})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cat.txt", "title,year\nA,2000\n", "unknown catalog format"),
        ("cat.csv", "name,year\nA,2000\n", "missing column 'title'"),
        ("cat.csv", "title,year\n,\n", "no valid catalog rows"),
        ("cat.parquet", "not parquet", "not a readable Parquet file"),
        ("cat.pkl", "not a pickle", "not a readable catalog pickle"),
    ],
)
def test_bad_catalog_files(tmp_path: Path, name: str, content: str, message: str) -> None:
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(ConvrecError, match=message):
        import_catalog(src, tmp_path / "out.parquet")


# ---------------------------------------------------------------- ReDIAL

GENRE = 900  # a non-movie entity ("comedy") that appears in many rows


def turn(dialog: str, turn_id: int, context: list[str], resp: str, rec: list[int], **kw) -> dict:
    row = {
        "context": ["", *context],
        "resp": resp,
        "rec": rec,
        "entity": kw.get("entity", rec),
        "entity_name": kw.get("entity_name", []),
        "prev_entity": kw.get("prev_entity", []),
        "dialog_id": dialog,
        "turn_id": turn_id,
        "is_user": 0,
    }
    row["input"] = "".join(f"\nUser: {u}" for u in context)
    return row


def hand_rows() -> list[dict]:
    """Dialog d1: names that must be recovered despite entity / entity_name misalignment."""
    c1 = ["Hi, I want a movie like Super Troopers (2001)"]
    r1 = "You should watch Police Academy (1984)"
    c2 = [*c1, r1, "Is it good? I loved American Pie (1999)"]
    r2 = "Yes Police Academy (1984) is funny and so is Police Academy 2: Their First Assignment (1985)"
    c3 = [*c2, r2, "Anything newer?"]
    return [
        # same lengths, yet "You" stands where the id of Police Academy is: zipping them would be wrong
        turn(
            "d1", 1, c1, r1, [101], entity=[101, GENRE], entity_name=["You", "Police Academy (1984)"], prev_entity=[102]
        ),
        turn(
            "d1",
            2,
            c2,
            r2,
            [101, 103],
            entity_name=["Police Academy (1984)", "Police Academy 2: Their First Assignment (1985)"],
            prev_entity=[102, 101, 104],
        ),
        # no entity_name: the name is read from resp
        turn("d1", 3, c3, "Try Hot Fuzz (2007) , it is great", [105], entity=[105, GENRE], prev_entity=[101, 103]),
        # a movie written without a year has no name: the row has no ground truth
        turn("d1", 4, [*c3, "Try Hot Fuzz (2007)", "ok"], "My favourite is The Big Lebowski", [106]),
    ]


def filler_rows(n_dialogs: int = 40) -> list[dict]:
    """Dialogs g0..g{n-1}, two recommending turns each, every movie named in entity_name."""
    rows = []
    for d in range(n_dialogs):
        a, b = 2 * d, 2 * d + 1
        name_a, name_b = f"Film Number {a} ({1950 + a % 60})", f"Film Number {b} ({1950 + b % 60})"
        ctx = ["hello, I like comedy films"]
        rows.append(turn(f"g{d}", 1, ctx, f"How about {name_a}", [1000 + a], entity_name=[name_a]))
        rows.append(
            turn(
                f"g{d}",
                2,
                [*ctx, f"How about {name_a}", "seen it, another?"],
                f"Then {name_b}",
                [1000 + b],
                entity=[1000 + b, GENRE],
                entity_name=[name_b, "comedy"],
                prev_entity=[1000 + a],
            )
        )
    return rows


def write_jsonl(path: Path, rows: list[dict], bad_lines: list[bytes] = ()) -> Path:
    lines = [json.dumps(r).encode() for r in rows]
    path.write_bytes(b"\n".join([*lines[:2], *bad_lines, *lines[2:]]) + b"\n\n")
    return path


BAD_LINES = [
    b'{"context": ["", "hi"], "resp": "x"',  # truncated
    b'\xff\xfe{"context": []}',  # not UTF-8
    json.dumps({"context": ["", "hi"], "resp": "Watch Heat (1995)", "dialog_id": "x1", "turn_id": 1}).encode(),
    b"[1, 2, 3]",
    json.dumps({"context": "hi", "resp": "", "rec": [1], "dialog_id": "x2", "turn_id": 1}).encode(),
    json.dumps({"context": ["", "hi"], "resp": "no", "rec": [], "dialog_id": "x3", "turn_id": 1}).encode(),
    b"",  # blank lines are skipped, not rejected
]


@pytest.fixture
def redial_file(tmp_path: Path) -> Path:
    rows = hand_rows() + filler_rows()
    rows.append(rows[0])  # a repeated row
    return write_jsonl(tmp_path / "redial.jsonl", rows, BAD_LINES)


def test_redial_counts_and_rejections(redial_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    report = import_redial(redial_file, out)
    samples = load_samples(out)
    catalog = artifacts.read(catalog_path(out), artifacts.CATALOG)
    assert report.rejected == Counter(
        {
            "malformed JSON": 1,
            "not valid UTF-8": 1,
            "missing field 'rec'": 1,
            "not a JSON object": 1,
            "bad field 'context'": 1,
            "empty rec": 1,
            "duplicate dialog_id and turn_id": 1,
            "no rec id has a movie name": 1,
            "rec id without a movie name (counted per id, dropped)": 1,
        }
    )
    assert report.counts["lines read"] == 4 + 80 + 1 + 6
    assert report.counts["dialogs"] == 42  # d1, g0..g39 and x3 (its row is valid, only its rec is empty)
    assert sum(report.counts[f"{s} samples"] for s in SPLITS) == 3 + 80
    assert {s: df.height for s, df in samples.items()} == {s: report.counts[f"{s} samples"] for s in SPLITS}
    # Police Academy 1 and 2, Hot Fuzz, two films per filler dialog; not the context-only mentions
    assert report.counts["catalog items"] == catalog.height == 3 + 80
    assert "You" not in catalog["title"].to_list()
    assert catalog.filter(pl.col("title") == "Hot Fuzz")["year"].to_list() == [2007]


def test_redial_ground_truth_seen_and_messages(redial_file: Path, tmp_path: Path) -> None:
    import_redial(redial_file, tmp_path / "data")
    rows = {r["sample_id"]: r for r in all_samples(tmp_path / "data").to_dicts()}
    first = rows["d1:1"]
    assert items_of(first["ground_truth"]) == [("Police Academy", 1984)]
    assert items_of(first["seen"]) == [("Super Troopers", 2001)]
    assert first["messages"] == [{"role": "user", "content": "Hi, I want a movie like Super Troopers (2001)"}]
    assert first["conversation_id"] == "d1:1"

    second = rows["d1:2"]
    # Police Academy was already recommended: only the new movie is ground truth
    assert items_of(second["ground_truth"]) == [("Police Academy 2: Their First Assignment", 1985)]
    assert set(items_of(second["seen"])) == {("Super Troopers", 2001), ("Police Academy", 1984), ("American Pie", 1999)}
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]  # the last is the user's

    assert items_of(rows["d1:3"]["ground_truth"]) == [("Hot Fuzz", 2007)]
    assert "d1:4" not in rows
    assert items_of(rows["g0:2"]["seen"]) == [("Film Number 0", 1950)]


def test_redial_split_is_by_dialog_and_deterministic(redial_file: Path, tmp_path: Path) -> None:
    import_redial(redial_file, tmp_path / "a", seed=3)
    import_redial(redial_file, tmp_path / "b", seed=3)
    import_redial(redial_file, tmp_path / "c", seed=4)

    def assignment(d: Path) -> dict[str, str]:
        return {sid: s for s, df in load_samples(d).items() for sid in df["sample_id"].to_list()}

    a, b, c = assignment(tmp_path / "a"), assignment(tmp_path / "b"), assignment(tmp_path / "c")
    assert a == b
    assert a != c
    dialog_splits: dict[str, set[str]] = {}
    for sid, split in a.items():
        dialog_splits.setdefault(sid.split(":")[0], set()).add(split)
    assert all(len(s) == 1 for s in dialog_splits.values())
    assert set(a.values()) == set(SPLITS)  # 41 dialogs at 70/10/20: every split gets some
    for s in SPLITS:
        assert load_samples(tmp_path / "a")[s].equals(load_samples(tmp_path / "b")[s])


def test_redial_fractions(redial_file: Path, tmp_path: Path) -> None:
    report = import_redial(redial_file, tmp_path / "d", val_fraction=0.0, test_fraction=1.0)
    assert report.counts["train samples"] == report.counts["val samples"] == 0
    with pytest.raises(ConvrecError, match="at most 1"):
        import_redial(redial_file, tmp_path / "e", val_fraction=0.5, test_fraction=0.6)


def test_redial_all_malformed(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"{not json\n\xff\xff\n[]\n")
    with pytest.raises(ConvrecError, match="no valid rows in"):
        import_redial(src, tmp_path / "out")


# ---------------------------------------------------------------- Reddit-v2


def reddit_row(prompt: str, gt: list[list[str]], seen: list[str]) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "groundtruth_with_release_year": gt,
        "seen_titles": seen,
        "post_id": "p-" + prompt[:8],  # an extra column the importer ignores
    }


def save_reddit(path: Path, splits: dict[str, list[dict]]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(path))
    return path


REDDIT = {
    "train": [
        reddit_row("Post A: sci-fi like The Matrix?", [["Dune", "2021"], ["Arrival", "2016"]], ["The Matrix"]),
        reddit_row("Post A: sci-fi like The Matrix?", [["Dune", "1984"]], ["The Matrix"]),  # another user, remake
        reddit_row("Post B: feel-good films", [], []),
        reddit_row("Post C: heist movies", [["Heat", "not a year"], ["Inside Man", "2006"]], []),
    ],
    "validation": [reddit_row("Post D: horror", [["Hereditary", "2018"]], ["It"])],
    "test": [
        reddit_row("Post E: westerns", [["Unforgiven", "1992"], ["Tombstone", "1993"]], []),
        reddit_row("Post F: musicals", [["Cabaret", "1972"]], []),
    ],
}


def test_reddit_v2_import(tmp_path: Path) -> None:
    src = save_reddit(tmp_path / "reddit", REDDIT)
    out = tmp_path / "data"
    report = import_reddit_v2(src, out)
    samples = load_samples(out)
    catalog = artifacts.read(catalog_path(out), artifacts.CATALOG)
    assert {s: df.height for s, df in samples.items()} == {"train": 3, "val": 1, "test": 2}
    assert report.counts["train samples"] == 3 and report.counts["val samples"] == 1
    assert report.rejected == Counter(
        {"empty ground truth": 1, "malformed ground-truth item (counted per item, dropped)": 1}
    )
    train = samples["train"].to_dicts()
    assert [r["sample_id"] for r in train] == ["train:0", "train:1", "train:3"]
    assert train[0]["conversation_id"] == train[1]["conversation_id"] != train[2]["conversation_id"]
    assert items_of(train[0]["ground_truth"]) == [("Dune", 2021), ("Arrival", 2016)]
    assert items_of(train[0]["seen"]) == [("The Matrix", None)]
    assert train[0]["messages"] == [{"role": "user", "content": "Post A: sci-fi like The Matrix?"}]
    assert samples["val"]["sample_id"].to_list() == ["val:0"]
    assert set(catalog.select("title", "year").rows()) == {
        ("Dune", 2021),
        ("Dune", 1984),
        ("Arrival", 2016),
        ("Inside Man", 2006),
        ("Hereditary", 2018),
        ("Unforgiven", 1992),
        ("Tombstone", 1993),
        ("Cabaret", 1972),
    }
    assert report.counts["catalog items"] == 8
    assert report.counts["conversations"] == 5


def test_reddit_v2_with_catalog_and_missing_split(tmp_path: Path) -> None:
    src = save_reddit(tmp_path / "reddit", {"train": REDDIT["train"], "test": REDDIT["test"]})
    cat = tmp_path / "cat.csv"
    cat.write_text("title,year\nDune,2021\nDune,1984\nUnforgiven,1992\nCabaret,1972\nCabaret,1972\n")
    report = import_reddit_v2(src, tmp_path / "data", catalog=cat)
    samples = load_samples(tmp_path / "data")
    assert samples["val"].height == 0  # written, empty: the folder layout stays complete
    assert report.counts["missing splits"] == 1
    assert any("no val split" in n for n in report.notes)
    assert report.counts["catalog items"] == 4
    assert report.rejected["catalog: duplicate title and year"] == 1
    # Arrival, Inside Man, Tombstone are not in the given catalog
    assert report.counts["ground-truth items not in catalog"] == 3


def test_reddit_v2_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("hello")
    with pytest.raises(ConvrecError, match="not a saved Hugging Face dataset"):
        import_reddit_v2(tmp_path / "folder", tmp_path / "out")


def test_reddit_v2_single_dataset_and_bad_out(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list(REDDIT["test"]).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ConvrecError, match="single Dataset"):
        import_reddit_v2(tmp_path / "single", tmp_path / "out")
    src = save_reddit(tmp_path / "reddit", REDDIT)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConvrecError, match="is a file, expected a data folder"):
        import_reddit_v2(src, tmp_path / "taken")


# ---------------------------------------------------------------- the real CLI on bad input


@pytest.mark.parametrize("command", ["redial", "reddit-v2", "catalog"])
def test_cli_missing_input(tmp_path: Path, command: str) -> None:
    assert_user_error(run_cli("data", command, tmp_path / "nope", "--out", tmp_path / "out"), "nope")


@pytest.mark.parametrize("command", ["redial", "catalog"])
def test_cli_directory_instead_of_file(tmp_path: Path, command: str) -> None:
    assert_user_error(run_cli("data", command, tmp_path, "--out", tmp_path / "out"), "is a directory")


def test_cli_file_instead_of_dataset_folder(tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text("{}\n")
    assert_user_error(run_cli("data", "reddit-v2", src, "--out", tmp_path / "out"), "is a file")


def test_cli_all_malformed_redial(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"{oops\n\xff\n")
    assert_user_error(run_cli("data", "redial", src, "--out", tmp_path / "out"), "no valid rows in")


def test_cli_not_a_dataset_folder(tmp_path: Path) -> None:
    assert_user_error(run_cli("data", "reddit-v2", tmp_path, "--out", tmp_path / "out"), "not a saved Hugging Face")


def test_cli_redial_ok(redial_file: Path, tmp_path: Path) -> None:
    proc = run_cli("data", "redial", redial_file, "--out", tmp_path / "data", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "test samples" in proc.stdout
    assert catalog_path(tmp_path / "data").is_file()


# ---------------------------------------------------------------- real data (../shared/data)


@pytest.mark.shared
@needs_shared
def test_real_redial(tmp_path: Path) -> None:
    out = tmp_path / "redial"
    report = import_redial(SHARED_DATA / "redial" / "test.jsonl", out)
    samples = load_samples(out)
    catalog = artifacts.read(catalog_path(out), artifacts.CATALOG)
    total = sum(df.height for df in samples.values())
    assert report.counts["lines read"] == 3552
    assert report.counts["dialogs"] == 1322
    assert 2500 <= total <= 3552
    assert samples["test"].height > samples["val"].height > 0
    assert 1000 <= catalog.height <= 5000
    assert not {"malformed JSON", "not valid UTF-8"} & set(report.rejected)
    rows = {r["sample_id"]: r for r in pl.concat(samples.values()).to_dicts()}
    assert items_of(rows["test_20001:204172"]["ground_truth"]) == [("Police Academy", 1984)]
    # ground truth always comes from the turn's own reply
    with open(SHARED_DATA / "redial" / "test.jsonl", encoding="utf-8") as fh:
        resp = {f"{r['dialog_id']}:{r['turn_id']}": unquote(r["resp"]) for r in map(json.loads, fh)}
    for sid, r in rows.items():
        assert all(t in resp[sid] for t, _ in items_of(r["ground_truth"]))


@pytest.mark.shared
@needs_shared
def test_real_reddit_catalog(tmp_path: Path) -> None:
    report = import_catalog(SHARED_DATA / "reddit_v2" / "catalog.csv", tmp_path / "catalog.parquet")
    df = artifacts.read(tmp_path / "catalog.parquet", artifacts.CATALOG)
    assert report.counts["catalog rows read"] == 7404
    assert df.height + sum(report.rejected.values()) == 7404
    # 20 rows only differ in punctuation from another ("Adaptation" / "Adaptation."), one year is "201"
    assert report.rejected == Counter({"duplicate title and year": 20, "year outside 1870-2100": 1})
    years = df.with_columns(pl.col("title").map_elements(normalize_title, return_dtype=pl.String).alias("n"))
    remakes = years.group_by("n").agg(pl.col("year").n_unique().alias("k")).filter(pl.col("k") > 1)
    assert remakes.height > 100
