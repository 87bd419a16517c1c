import polars as pl
import pytest

from convrec import artifacts
from convrec.catalog import Catalog, normalize_title
from convrec.data import SPLITS, load_catalog, load_split
from convrec.data.synth import generate
from convrec.errors import ConvrecError
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    report = generate(out, seed=0)
    return out, report


def test_files_and_schemas(world):
    out, report = world
    cat = load_catalog(out)
    assert 300 <= cat.height <= 400 and {"genres", "description", "popularity"} <= set(cat.columns)
    sizes = {s: load_split(out, s).height for s in SPLITS}
    assert 1300 <= sizes["train"] <= 1700 and 150 <= sizes["val"] <= 250 and 250 <= sizes["test"] <= 350
    assert report.counts["train samples"] == sizes["train"]
    latent = pl.read_parquet(out / "latent.parquet")
    assert latent.height == sum(sizes.values())
    assert artifacts.provenance(out / "catalog.parquet")["params"] == {"seed": 0, "size": "small"}


def test_deterministic(world, tmp_path):
    out, _ = world
    generate(tmp_path / "again", seed=0)
    generate(tmp_path / "other", seed=1)
    for name in ("catalog", "train", "test"):
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


def test_hard_title_cases_present(world):
    out, _ = world
    cat_df = load_catalog(out)
    titles = cat_df["title"].to_list()
    assert any(t.startswith("The ") for t in titles) and any("'" in t for t in titles)
    assert any(":" in t for t in titles) and any("&" in t for t in titles)
    assert any(t.endswith((" 2", " II", ": Part Two")) for t in titles)
    remakes = cat_df.group_by("title").agg(pl.col("year")).filter(pl.col("year").list.len() > 1)
    assert remakes.height >= 5
    cat = Catalog(cat_df)
    title, years = remakes.row(0)
    rows = {cat.lookup(title, y) for y in years}
    assert len(rows) == len(years)  # each remake resolves by its year


def test_signal_is_learnable(world):
    _, report = world
    note = report.notes[0]
    pop = float(note.split("popularity ")[1].split()[0])
    oracle = float(note.split("oracle ")[1].split()[0])
    assert oracle > 2 * pop


def test_unknown_size_and_file_target(tmp_path):
    with pytest.raises(ConvrecError, match="unknown size"):
        generate(tmp_path / "x", size="huge")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConvrecError, match="is a file"):
        generate(tmp_path / "f")


def test_cli(tmp_path):
    proc = run_cli("data", "synth", "--out", tmp_path / "w", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "signal:" in proc.stdout and (tmp_path / "w" / "test.parquet").exists()


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
    import json

    res = json.loads((tmp_path / "m.json").read_text())["results"]
    pop, cooc = res[str(tmp_path / "popularity.parquet")], res[str(tmp_path / "cooc.parquet")]
    assert cooc["ndcg@20"] > pop["ndcg@20"] > 0
    assert pop["in_catalog"] == cooc["in_catalog"] == 1.0
