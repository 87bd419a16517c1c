"""`convrec data import`: a team's own logs (chat JSONL, CSV/Parquet rows, a datasets folder) and
catalog into a data folder with its report; one test per input shape and per bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest

from convrec import artifacts
from convrec.data import SPLITS, split_path
from convrec.data.log_import import SplitOptions, import_logs
from convrec.data.logs import LogFields
from tests.conftest import assert_user_error, run_cli

CATALOG = """title,year,genres
The Matrix,1999,Action|Sci-Fi
Inception,2010,Sci-Fi
Heat,1995,Crime
Alien,1979,Horror
Up,2009,Animation
"""
# (id, day, [(role, text, items field)])
CONVS = [
    (
        "c1",
        1,
        [
            ("user", "I loved The Matrix (1999). Something similar?", None),
            ("assistant", "Try Inception (2010)!", ["Inception (2010)"]),
            ("user", "Seen it. Other ideas?", None),
            ("assistant", "Then Alien, a classic.", [{"title": "Alien", "year": 1979}, "Nope Movie (2001)"]),
        ],
    ),
    (
        "c2",
        2,
        [("system", "be nice", None), ("user", "A crime movie please", None), ("assistant", "Heat (1995).", None)],
    ),
    ("c3", 3, [("user", "hi", None), ("assistant", "What do you like?", None)]),
    ("c4", 4, [("user", "Something animated?", None), ("assistant", "Up (2009), and The Matrix (1999).", None)]),
]
EXPECTED = {  # sample id -> (turns in the prompt, seen, ground truth), from catalog mentions
    "c1:1": (1, {("The Matrix", 1999)}, {("Inception", 2010)}),
    "c1:3": (3, {("The Matrix", 1999), ("Inception", 2010)}, {("Alien", 1979)}),
    "c2:1": (1, set(), {("Heat", 1995)}),
    "c4:1": (1, set(), {("Up", 2009), ("The Matrix", 1999)}),
}


def _ts(day: int, turn: int = 0) -> str:
    return f"2024-01-{day:02d}T10:{turn:02d}:00Z"


def write_jsonl(path: Path, *, with_time: bool = True, gt_key: str | None = None) -> Path:
    lines = []
    for cid, day, turns in CONVS:
        msgs = [{"role": r, "content": t, **({gt_key: gt} if gt_key and gt else {})} for r, t, gt in turns]
        lines.append(
            json.dumps({"conversation_id": cid, "messages": msgs, **({"timestamp": _ts(day)} if with_time else {})})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_rows(path: Path) -> Path:
    rows = [
        {
            "conv": cid,
            "speaker": r,
            "text": t,
            "ts": _ts(day, k),
            "recs": "|".join(gt) if gt and all(isinstance(g, str) for g in gt) else None,
        }
        for cid, day, turns in CONVS
        for k, (r, t, gt) in enumerate(turns)
    ]
    random.Random(0).shuffle(rows)  # the timestamps put them back in order
    df = pl.DataFrame(rows)
    df.write_csv(path) if path.suffix == ".csv" else df.write_parquet(path)
    return path


def samples(d: Path) -> dict[str, tuple]:
    out = {}
    for s in SPLITS:
        for r in artifacts.read(split_path(d, s), artifacts.SAMPLES).iter_rows(named=True):
            key = lambda xs: {(x["title"], x["year"]) for x in xs}  # noqa: E731
            out[r["sample_id"]] = (len(r["messages"]), key(r["seen"]), key(r["ground_truth"]), s)
    return out


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    (tmp_path / "catalog.csv").write_text(CATALOG)
    return tmp_path / "catalog.csv"


def test_chat_jsonl_samples_report_and_time_split(tmp_path: Path, catalog: Path) -> None:
    logs = write_jsonl(tmp_path / "chats.jsonl")
    with open(logs, "a") as fh:
        fh.write("not json\n")
    report, data = import_logs(
        logs, catalog, tmp_path / "data", split=SplitOptions(val_fraction=0.25, test_fraction=0.25)
    )
    got = samples(tmp_path / "data")
    assert {k: v[:3] for k, v in got.items()} == EXPECTED
    assert {k: v[3] for k, v in got.items()} == {"c1:1": "train", "c1:3": "train", "c2:1": "train", "c4:1": "test"}
    msgs = artifacts.read(split_path(tmp_path / "data", "train"), artifacts.SAMPLES).filter(
        pl.col("sample_id") == "c2:1"
    )
    assert msgs["messages"][0].to_list() == [{"role": "user", "content": "A crime movie please"}]  # system dropped
    assert report.rejected["malformed JSON line"] == 1 and report.rejected["system message (dropped)"] == 1
    on_disk = json.loads((tmp_path / "data" / "report.json").read_text())
    assert on_disk["samples"] == {"train": 3, "val": 0, "test": 1} == data["samples"]
    assert on_disk["conversations"] == 4 and on_disk["conversations_with_samples"] == 3
    assert on_disk["catalog_coverage"]["as_ground_truth"] == 5
    # "Title (Year)" written by assistants: Inception, Heat, Up, The Matrix; all in the catalog
    assert {k: on_disk["ground_truth_in_catalog"][k] for k in ("items", "in_catalog")} == {"items": 4, "in_catalog": 4}
    assert on_disk["ground_truth_never_in_train"]["test"] == {"items": 2, "never_in_train": 2, "share": 1.0}
    assert len(on_disk["top_items"]) == 5 and {x["count"] for x in on_disk["top_items"]} == {1}
    assert on_disk["dropped"] == {"malformed JSON line": 1, "system message (dropped)": 1}
    text = (tmp_path / "data" / "REPORT.md").read_text()
    assert "samples: train 3, val 0, test 1" in text and "| malformed JSON line | 1 |" in text


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_give_the_same_samples_as_jsonl(tmp_path: Path, catalog: Path, suffix: str) -> None:
    logs = write_rows(tmp_path / f"rows{suffix}")
    fields = LogFields(conversation_id="conv", role="speaker", text="text", time="ts")
    import_logs(logs, catalog, tmp_path / "data", fields=fields)
    assert {k: v[:3] for k, v in samples(tmp_path / "data").items()} == EXPECTED


def test_a_datasets_folder(tmp_path: Path, catalog: Path) -> None:
    datasets = pytest.importorskip("datasets")
    records = [json.loads(x) for x in write_jsonl(tmp_path / "c.jsonl").read_text().splitlines()]
    folder = tmp_path / "hf"
    half = len(records) // 2
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(records[:half]), "test": datasets.Dataset.from_list(records[half:])}
    ).save_to_disk(str(folder))
    import_logs(folder, catalog, tmp_path / "data")
    assert {k: v[:3] for k, v in samples(tmp_path / "data").items()} == EXPECTED


def test_ground_truth_from_a_named_field_and_the_share_in_the_catalog(tmp_path: Path, catalog: Path) -> None:
    logs = write_jsonl(tmp_path / "chats.jsonl", gt_key="recommended")
    _, data = import_logs(logs, catalog, tmp_path / "data", fields=LogFields(ground_truth="recommended"))
    got = samples(tmp_path / "data")
    # only turns with the field are samples; an item outside the catalog is kept and counted
    assert {k: v[2] for k, v in got.items()} == {
        "c1:1": {("Inception", 2010)},
        "c1:3": {("Alien", 1979), ("Nope Movie", 2001)},
    }
    assert data["ground_truth_in_catalog"] == {
        "items": 3,
        "in_catalog": 2,
        "share": round(2 / 3, 4),
        "basis": "the items of the field 'recommended'",
    }


def test_split_by_id_keeps_conversations_together_and_is_seeded(tmp_path: Path, catalog: Path) -> None:
    logs = write_jsonl(tmp_path / "chats.jsonl", with_time=False)
    import_logs(logs, catalog, tmp_path / "a", split=SplitOptions(seed=3))
    import_logs(logs, catalog, tmp_path / "b", split=SplitOptions(seed=3))
    a, b = samples(tmp_path / "a"), samples(tmp_path / "b")
    assert a == b and a["c1:1"][3] == a["c1:3"][3]
    assert "seeded hash" in json.loads((tmp_path / "a" / "report.json").read_text())["split"]


BAD = [
    ("rows.csv", "conv,speaker\nc1,user\n", ["--id-field", "conv"], "missing column 'role'"),
    ("empty.jsonl", "", [], "no conversation could be read"),
    (
        "users.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "The Matrix (1999)"}]}) + "\n",
        [],
        "no assistant turn",
    ),
    (
        "plain.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n",
        [],
        "no sample",
    ),
    ("shape.jsonl", json.dumps({"text": "hi"}) + "\n", [], "no line has a 'messages' list"),
    ("logs.txt", "x\n", [], "cannot tell the format"),
]


@pytest.mark.parametrize(("name", "content", "flags", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, catalog: Path, name, content, flags, needle) -> None:
    (tmp_path / name).write_text(content)
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier import")
    proc = run_cli("data", "import", tmp_path / name, "--catalog", catalog, "--out", out, *flags)
    assert_user_error(proc, needle)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_bad_catalog_and_split_flags_are_one_line(tmp_path: Path, catalog: Path) -> None:
    logs = write_jsonl(tmp_path / "chats.jsonl")
    (tmp_path / "cat.csv").write_text("name,year\nX,1999\n")
    proc = run_cli("data", "import", logs, "--catalog", tmp_path / "cat.csv", "--out", tmp_path / "d")
    assert_user_error(proc, "missing column 'title'")
    proc = run_cli("data", "import", logs, "--catalog", catalog, "--out", tmp_path / "d", "--split-by", "week")
    assert_user_error(proc, "--split-by")
    proc = run_cli(
        "data",
        "import",
        logs,
        "--catalog",
        catalog,
        "--out",
        tmp_path / "d",
        "--val-fraction",
        "0.5",
        "--test-fraction",
        "0.5",
    )
    assert_user_error(proc, "--val-fraction + --test-fraction")
    assert not (tmp_path / "d").exists()


def test_cli_prints_the_report(tmp_path: Path, catalog: Path) -> None:
    logs = write_jsonl(tmp_path / "chats.jsonl")
    proc = run_cli("data", "import", logs, "--catalog", catalog, "--out", tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "# Data report" in proc.stdout and "most frequent" in proc.stdout
    assert (tmp_path / "data" / "REPORT.md").exists() and (tmp_path / "data" / "matching.json").exists()


def test_rows_with_a_list_column_of_ground_truth(tmp_path: Path, catalog: Path) -> None:
    rows = [
        {"conversation_id": "a", "role": "human", "content": "Something with The Matrix (1999) vibes?", "recs": None},
        {"conversation_id": "a", "role": "bot", "content": "Here you go.", "recs": ["Inception (2010)", "Heat (1995)"]},
        {"conversation_id": "b", "role": "customer", "content": "Scary please", "recs": None},
        {"conversation_id": "b", "role": "agent", "content": "Try this.", "recs": ["Alien (1979)"]},
        {"conversation_id": "b", "role": "narrator", "content": "(ends)", "recs": None},
    ]
    pl.DataFrame(rows).write_parquet(tmp_path / "rows.parquet")
    report, _ = import_logs(
        tmp_path / "rows.parquet", catalog, tmp_path / "data", fields=LogFields(ground_truth="recs")
    )
    got = samples(tmp_path / "data")
    assert {k: (v[1], v[2]) for k, v in got.items()} == {
        "a:1": ({("The Matrix", 1999)}, {("Inception", 2010), ("Heat", 1995)}),
        "b:1": (set(), {("Alien", 1979)}),
    }
    assert report.rejected["unknown role 'narrator'"] == 1


def test_sharegpt_style_jsonl(tmp_path: Path, catalog: Path) -> None:
    line = {
        "id": "s1",
        "conversations": [
            {"from": "human", "value": "Loved Heat (1995). Another?"},
            {"from": "gpt", "value": "Alien (1979), a different kind of tension."},
        ],
    }
    (tmp_path / "share.jsonl").write_text(json.dumps(line) + "\n")
    fields = LogFields(conversation_id="id", role="from", text="value", messages="conversations")
    import_logs(tmp_path / "share.jsonl", catalog, tmp_path / "data", fields=fields)
    assert {k: v[1:3] for k, v in samples(tmp_path / "data").items()} == {"s1:1": ({("Heat", 1995)}, {("Alien", 1979)})}
