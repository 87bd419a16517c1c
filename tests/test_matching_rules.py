"""A data folder's matching rules (matching.json) are recorded when it is made and read by every
stage that builds a catalog: a year-less folder is scored, rewarded and served year-less with no flag."""

import json
from pathlib import Path

import polars as pl
import pytest

from convrec import artifacts
from convrec.catalog import Catalog
from convrec.data import MatchRules, load_catalog, open_catalog, read_rules, write_rules
from tests.conftest import assert_user_error, catalog_frame, run_cli

SAN_ANDREAS = "<http://dbpedia.org/resource/San_Andreas_(film)>"  # INSPIRED names entities by DBpedia URI


def _row(dialog, turn, context, resp, rec, entity, prev, names):
    return {
        "context": context,
        "resp": resp,
        "rec": rec,
        "entity": entity,
        "prev_entity": prev,
        "dialog_id": dialog,
        "turn_id": turn,
        "is_user": 0,
        "entity_name": names,
    }


def write_inspired(path: Path) -> Path:
    """A small file in He et al.'s jsonl format whose titles carry no year (as INSPIRED's)."""
    rows = [
        _row("d1", "t1", ["", "Hi! any ideas?"], "Have you seen Hustlers?", [1], [1], [], ["Hustlers"]),
        _row(
            "d1",
            "t3",
            ["", "Hi! any ideas?", "Have you seen Hustlers?", "Yes, I love drama"],
            "Then Deadpool",
            [2],
            [2, 9],
            [1, 9],
            ["drama", "Deadpool"],
        ),
        _row(
            "d2",
            "t1",
            ["", "I like action"],
            "Try San Andreas or Die Hard",
            [3, 4],
            [3, 4],
            [],
            [SAN_ANDREAS, "Die Hard"],
        ),
        _row("d2", "t3", ["", "I like action", "Try San Andreas"], "San Andreas!", [3], [3], [3, 4], [SAN_ANDREAS]),
        _row("d3", "t1", ["", "Christmas movie?"], "Elf!", [5], [5], [], ["Elf"]),
        _row(
            "d3", "t3", ["", "Christmas movie?", "Elf!", "Seen it"], "Die Hard", [4], [4, 9], [5], ["Die Hard", "drama"]
        ),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def yearless(tmp_path: Path) -> Path:
    src = write_inspired(tmp_path / "inspired.jsonl")
    out = tmp_path / "inspired"
    proc = run_cli("data", "redial", src, "--out", out, "--val-fraction", "0", "--test-fraction", "1")
    assert proc.returncode == 0, proc.stderr
    assert "year-less" in proc.stdout
    return out


def test_import_names_movies_without_years(yearless: Path):
    cat = load_catalog(yearless)
    assert sorted(cat["title"].to_list()) == ["Deadpool", "Die Hard", "Elf", "Hustlers", "San Andreas"]
    assert cat["year"].null_count() == cat.height  # no years, and the genre "drama" is no catalog item
    assert json.loads((yearless / "matching.json").read_text()) == {"year_tolerance": 2, "use_year": False}
    test = artifacts.read(yearless / "test.parquet", "samples")
    row = test.filter(pl.col("sample_id") == "d1:t3")
    assert row["seen"].item().to_list() == [{"title": "Hustlers", "year": None}]  # prev movies, not the genre
    assert row["ground_truth"].item().to_list() == [{"title": "Deadpool", "year": None}]
    assert "d2:t3" not in test["sample_id"].to_list()  # its answer was already mentioned


def test_yearless_folder_is_scored_yearless_without_a_flag(yearless: Path, tmp_path: Path):
    preds = pl.DataFrame({"sample_id": ["d1:t3", "d3:t3"], "text": ["Hustlers\nDeadpool", "Die Hard\nElf"]})
    artifacts.write(preds, tmp_path / "p.parquet", "predictions", stage="test")
    args = ["eval", tmp_path / "p.parquet", "--data", yearless, "--k", "1", "--n-items", "2"]
    proc = run_cli(*args, "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["rules"] == "year-less"
    res = m["results"][str(tmp_path / "p.parquet")]
    # d1:t3: Hustlers seen, Deadpool hit at rank 1; d3:t3: Die Hard at rank 1; 3 samples without a list
    assert res["recall@1"] == pytest.approx(2 / 5)
    assert res["in_catalog"] == 1.0
    # a flag still overrides the folder's rule, in the one place (open_catalog)
    run_cli(*args, "--use-year", "--json", tmp_path / "y.json")
    assert json.loads((tmp_path / "y.json").read_text())["results"][str(tmp_path / "p.parquet")]["recall@1"] == 0.0


def test_yearless_folder_is_rewarded_yearless(yearless: Path):
    from convrec.models.tiny import train_tokenizer, training_texts
    from convrec.train.rl_rewards import score

    tok = train_tokenizer(training_texts(yearless), 400)
    ids = tok("Hustlers\nDeadpool\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    gt, seen = [[("Deadpool", None)]], [[("Hustlers", None)]]
    rl_catalog = open_catalog(yearless)  # what `convrec rl` builds (train/rl.py)
    assert score(tok, [ids], gt, seen, rl_catalog, 2).rel.tolist() == [[0.0, 1.0]]  # seen 0, hit 1
    default = Catalog(load_catalog(yearless))  # the rules' defaults would judge both out of catalog
    assert score(tok, [ids], gt, seen, default, 2).rel.tolist() == [[0.0, 0.0]]


def test_yearless_folder_is_served_yearless(yearless: Path):
    from convrec.decoding.mentions import MentionFinder

    for where in (yearless, yearless / "catalog.parquet"):  # `convrec serve --catalog` takes either
        cat = open_catalog(where, allow_file=True)  # what cli/serve.py builds
        assert not cat.use_year
        row = cat.lookup("Deadpool", None)  # a generated line without a year resolves to the item
        assert row >= 0 and cat.label(row) == "Deadpool"
        assert MentionFinder(cat).rows("I loved Hustlers") == {cat.lookup("Hustlers", None)}


def test_rules_recorded_by_synth_and_read_back(tmp_path: Path):
    proc = run_cli("data", "synth", "--out", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr
    assert read_rules(tmp_path / "w") == MatchRules(year_tolerance=2, use_year=True)
    write_rules(tmp_path / "w", MatchRules(year_tolerance=0))
    assert open_catalog(tmp_path / "w").year_tolerance == 0
    assert open_catalog(tmp_path / "w", year_tolerance=3).year_tolerance == 3


def test_folders_without_rules_and_bad_rules(tmp_path: Path, tiny_data: Path):
    assert read_rules(tiny_data) == MatchRules()  # made before matching.json existed: the defaults
    d = tmp_path / "noyears"
    artifacts.write(catalog_frame([("Up", None, 1.0), ("Elf", None, 2.0)]), d / "catalog.parquet", "catalog", stage="t")
    assert not open_catalog(d).use_year  # a catalog without any year is year-less
    (tiny_data / "matching.json").write_text('{"year_tolerance": -1}')
    assert_user_error(run_cli("eval", tiny_data / "test.parquet", "--data", tiny_data), "matching.json")
    (tiny_data / "matching.json").write_text("{not json")
    assert_user_error(
        run_cli("baseline", "popularity", "--data", tiny_data, "--out", tmp_path / "p.parquet"), "matching"
    )
