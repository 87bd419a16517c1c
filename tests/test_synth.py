"""The synthetic world: files and schemas, determinism, splits, title hard cases, text, signal, CLI."""

import json
import re

import polars as pl
import pytest

from convrec import artifacts
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, load_catalog, load_split
from convrec.data.synth import GENRES, REMAKE_GAP, generate
from convrec.errors import ConvrecError
from convrec.evaluation.synth_signal import signal_note
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    report = generate(out, seed=0)
    return out, report


def _signal(note: str) -> dict[str, float]:
    """{"popularity": .., "text reader": .., "taste oracle": ..} from the report's signal line."""
    parts = (p.rsplit(" ", 1) for p in note.split("NDCG@20 ")[1].split(" vs "))
    return {name: float(v) for name, v in parts}


def test_files_and_schemas(world):
    out, report = world
    cat = load_catalog(out)
    assert 300 <= cat.height <= 400 and {"genres", "description", "popularity"} <= set(cat.columns)
    assert cat["item_id"][42] == "m00042" and cat["year"].is_between(1950, 2024).all()
    assert cat["genres"].list.len().is_between(1, 3).all() and 10 <= len(GENRES) <= 15
    keys = [(normalize_title(t), y) for t, y in zip(cat["title"], cat["year"], strict=True)]
    assert len(set(keys)) == len(keys)
    sizes = {s: load_split(out, s).height for s in SPLITS}
    assert 1300 <= sizes["train"] <= 1700 and 150 <= sizes["val"] <= 250 and 250 <= sizes["test"] <= 350
    assert report.counts["catalog items"] == cat.height and report.counts["train samples"] == sizes["train"]
    assert all(isinstance(v, int) for v in report.counts.values())
    latent = pl.read_parquet(out / "latent.parquet")
    assert latent.height == sum(sizes.values()) and latent["taste"].list.len().unique().to_list() == [len(GENRES)]
    assert set(latent["ground_truth_item_ids"].explode()) <= set(cat["item_id"])
    assert artifacts.provenance(out / "catalog.parquet")["params"] == {"seed": 0, "size": "small"}
    assert artifacts.provenance(out / "latent.parquet")["params"]["genres"] == list(GENRES)


def test_deterministic(world, tmp_path):
    out, _ = world
    generate(tmp_path / "again", seed=0)
    generate(tmp_path / "other", seed=1)
    for name in ("catalog", *SPLITS, "latent"):
        a = pl.read_parquet(out / f"{name}.parquet")
        assert a.equals(pl.read_parquet(tmp_path / "again" / f"{name}.parquet"))
        assert not a.equals(pl.read_parquet(tmp_path / "other" / f"{name}.parquet"))


def test_splits_share_no_conversation(world):
    out, _ = world
    convs = [set(load_split(out, s)["conversation_id"]) for s in SPLITS]
    assert not (convs[0] & convs[1] or convs[0] & convs[2] or convs[1] & convs[2])
    train = load_split(out, "train")
    assert train["conversation_id"].n_unique() < train.height  # some conversations have two answers


def test_ground_truth_never_seen_and_in_catalog(world):
    out, _ = world
    cat = Catalog(load_catalog(out))
    for s in SPLITS:
        df = load_split(out, s)
        for seen, gt in zip(df["seen"].to_list(), df["ground_truth"].to_list(), strict=True):
            assert 1 <= len(gt) <= 4
            for g in gt:
                assert cat.lookup(g["title"], g["year"]) >= 0
                # eval removes seen items (title, year within tolerance; a year-less mention matches any
                # year): no ground-truth item may look seen, or it could never be hit
                for x in seen:
                    same = normalize_title(x["title"]) == normalize_title(g["title"])
                    assert not (same and (x["year"] is None or abs(x["year"] - g["year"]) <= 2))


def test_conversations_mention_exactly_the_seen_items(world):
    out, _ = world
    df = pl.concat([load_split(out, s) for s in SPLITS])
    turns, with_year = set(), set()
    for msgs, seen in zip(df["messages"].to_list(), df["seen"].to_list(), strict=True):
        roles = [m["role"] for m in msgs]
        assert roles[0] == roles[-1] == "user" and all(a != b for a, b in zip(roles, roles[1:], strict=False))
        assert msgs[-1]["content"].rstrip().endswith(("?", "."))
        turns.add(roles.count("user"))
        text = " ".join(m["content"] for m in msgs if m["role"] == "user")
        for x in seen:
            assert x["title"] in text
            assert (f"{x['title']} ({x['year']})" in text) if x["year"] else (f"{x['title']} (" not in text)
            with_year.add(x["year"] is not None)
    assert turns == {1, 2, 3} and with_year == {True, False}
    assert df["messages"].list.first().struct.field("content").n_unique() >= 15  # varied wording


def test_mood_phrases_name_only_their_genre():
    for genre, moods in GENRES.items():
        for mood in moods:
            assert not any(other in mood for other in GENRES if other != genre), mood


def test_hard_title_cases_present(world):
    out, _ = world
    cat_df = load_catalog(out)
    titles = cat_df["title"].to_list()
    assert any(t.startswith("The ") for t in titles) and any(t.startswith(("A ", "An ")) for t in titles)
    assert any("'" in t for t in titles) and any(":" in t for t in titles) and any("&" in t for t in titles)
    assert any(re.search(r"\d", t) for t in titles)
    assert any(t.endswith((" 2", " II", ": Part Two")) for t in titles)
    norm = cat_df.with_columns(n=pl.col("title").map_elements(normalize_title, return_dtype=pl.String))
    remakes = norm.group_by("n").agg("title", pl.col("year").sort()).filter(pl.col("year").list.len() > 1)
    assert remakes["year"].list.len().sum() >= 0.03 * cat_df.height
    cat = Catalog(cat_df)
    for titles_, years in zip(remakes["title"], remakes["year"], strict=True):
        assert min(b - a for a, b in zip(years, years[1:], strict=False)) >= REMAKE_GAP
        rows = [cat.lookup(titles_[0], y) for y in years]
        assert len(set(rows)) == len(years) and all(cat.years[r] == y for r, y in zip(rows, years, strict=True))
        assert [cat.lookup(titles_[0], y + 2) for y in years] == rows  # the year tolerance never jumps to a remake


def test_signal_is_learnable(world):
    out, _ = world
    s = _signal(signal_note(out))
    assert s["taste oracle"] > 3 * s["popularity"] and s["text reader"] > 2 * s["popularity"]


def test_medium_size(tmp_path):
    report = generate(tmp_path / "m", size="medium")
    c = report.counts
    assert 2000 <= c["catalog items"] <= 3000 and 9000 <= c["train samples"] <= 11000
    assert 800 <= c["val samples"] <= 1200 and 1300 <= c["test samples"] <= 1700
    s = _signal(signal_note(tmp_path / "m"))
    assert s["taste oracle"] > 3 * s["popularity"]


def test_unknown_size_and_file_target(tmp_path):
    with pytest.raises(ConvrecError, match="unknown size"):
        generate(tmp_path / "x", size="huge")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConvrecError, match="is a file"):
        generate(tmp_path / "f")


def test_cli(tmp_path):
    proc = run_cli("data", "synth", "--out", tmp_path / "w", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "signal:" in proc.stdout
    assert all((tmp_path / "w" / f"{name}.parquet").exists() for name in ("catalog", *SPLITS, "latent"))
    proc = run_cli("data", "synth", "--out", tmp_path / "w", "--size", "huge")
    assert proc.returncode == 2 and "--size" in proc.stderr and "huge" in proc.stderr


def test_embedded_default_end_to_end(world, tmp_path):
    """synth -> both baselines -> eval through the real CLI: the README's first command in small."""
    out, _ = world
    for kind in ("popularity", "cooc"):
        proc = run_cli("baseline", kind, "--data", out, "--out", tmp_path / f"{kind}.parquet")
        assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "eval", tmp_path / "popularity.parquet", tmp_path / "cooc.parquet", "--data", out, "--json", tmp_path / "m.json"
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "m.json").read_text())["results"]
    pop, cooc = res[str(tmp_path / "popularity.parquet")], res[str(tmp_path / "cooc.parquet")]
    assert cooc["ndcg@20"] > pop["ndcg@20"] > 0
    assert pop["in_catalog"] == cooc["in_catalog"] == 1.0
