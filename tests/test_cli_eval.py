"""The real CLI on the tiny world: baselines, eval, and one-line errors for bad input."""

import json

import polars as pl
import pytest

from convrec import artifacts
from tests.conftest import assert_user_error, run_cli


def test_baselines_and_eval_end_to_end(tiny_data, tmp_path):
    for kind in ("popularity", "cooc"):
        proc = run_cli("baseline", kind, "--data", tiny_data, "--split", "test", "--out", tmp_path / f"{kind}.parquet")
        assert proc.returncode == 0, proc.stderr
    pop = artifacts.read(tmp_path / "popularity.parquet", "predictions")
    # popularity from train answers: Dune (2021) first, never a seen item (s1 saw The Matrix)
    assert pop["items"][0][0] == {"title": "Dune", "year": 2021}
    cooc = artifacts.read(tmp_path / "cooc.parquet", "predictions")
    assert artifacts.provenance(tmp_path / "cooc.parquet")["stage"] == "baseline.cooc"
    # s2 mentioned Elf; in train, Elf was followed by Fargo: cooc ranks Fargo first
    s2 = cooc.filter(pl.col("sample_id") == "s2")["items"].item()
    assert s2[0] == {"title": "Fargo", "year": 1996}
    assert all(it["title"] != "Elf" for it in s2)

    proc = run_cli(
        "eval",
        tmp_path / "popularity.parquet",
        tmp_path / "cooc.parquet",
        "--data",
        tiny_data,
        "--k",
        "1,5",
        "--json",
        tmp_path / "m.json",
        "--per-sample",
        tmp_path / "ps",
    )
    assert proc.returncode == 0, proc.stderr
    assert "popularity" in proc.stdout and "cooc" in proc.stdout and "R@5" in proc.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())["results"]
    cooc_m = metrics[str(tmp_path / "cooc.parquet")]
    pop_m = metrics[str(tmp_path / "popularity.parquet")]
    assert cooc_m["recall@1"] > pop_m["recall@1"]
    assert cooc_m["in_catalog"] == 1.0
    per = artifacts.read(tmp_path / "ps" / "cooc.parquet", artifacts.Schema("ps", {"sample_id": pl.String}))
    assert per.height == 3 and "ndcg@5" in per.columns


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in (
        "data",
        "baseline",
        "eval",
        "remap",
        "reflect",
        "adjust",
        "model",
        "sft",
        "generate",
        "rl",
        "serve",
        "demo",
        "report",
    ):
        assert cmd in proc.stdout


@pytest.fixture
def preds(tmp_path):
    p = tmp_path / "p.parquet"
    pl.DataFrame({"sample_id": ["s1"], "text": ["Dune (2021)"]}).write_parquet(p)
    return p


def test_eval_missing_prediction_file(tiny_data, tmp_path):
    assert_user_error(run_cli("eval", tmp_path / "nope.parquet", "--data", tiny_data), "nope.parquet", "no such file")


def test_eval_missing_data_folder(preds, tmp_path):
    assert_user_error(run_cli("eval", preds, "--data", tmp_path / "nodata"), "no such data folder")


def test_eval_wrong_columns(tiny_data, tmp_path):
    p = tmp_path / "wrong.parquet"
    pl.DataFrame({"id": ["s1"], "text": ["x"]}).write_parquet(p)
    assert_user_error(run_cli("eval", p, "--data", tiny_data), "wrong.parquet", "sample_id")


def test_eval_empty_catalog(tiny_data, preds):
    artifacts.read(tiny_data / "catalog.parquet", "catalog").clear().write_parquet(tiny_data / "catalog.parquet")
    assert_user_error(run_cli("eval", preds, "--data", tiny_data), "catalog is empty")


def test_eval_non_utf8_bytes(tiny_data, tmp_path):
    p = tmp_path / "binary.parquet"
    p.write_bytes(b"\xff\xfe\xfa\x00 caf\xe9 \x81\x82")
    assert_user_error(run_cli("eval", p, "--data", tiny_data), "binary.parquet", "not a readable Parquet")


def test_eval_directory_instead_of_file(tiny_data, tmp_path):
    assert_user_error(run_cli("eval", tmp_path, "--data", tiny_data), "is a directory")
    assert_user_error(run_cli("eval", tiny_data / "test.parquet", "--data", tiny_data / "test.parquet"), "is a file")


def test_eval_bad_flags(tiny_data, preds):
    assert_user_error(run_cli("eval", preds, "--data", tiny_data, "--k", "5,x"), "--k")
    assert_user_error(run_cli("eval", preds, "--data", tiny_data, "--split", "dev"), "--split", "dev")
    assert_user_error(run_cli("eval", preds, "--data", tiny_data, "--convention", "mine"), "--convention")


def test_eval_predictions_for_another_split(tiny_data, tmp_path):
    p = tmp_path / "other.parquet"
    pl.DataFrame({"sample_id": ["zzz"], "text": ["Dune (2021)"]}).write_parquet(p)
    assert_user_error(run_cli("eval", p, "--data", tiny_data), "no prediction's sample_id")


def test_usage_errors_are_one_line(tiny_data):
    assert_user_error(run_cli("eval", "x.parquet"), "Missing option '--data'")
    assert_user_error(run_cli("baseline", "nope"), "No such command")


def _baselines(tiny_data, tmp_path):
    for kind in ("popularity", "cooc"):
        proc = run_cli("baseline", kind, "--data", tiny_data, "--split", "test", "--out", tmp_path / f"{kind}.parquet")
        assert proc.returncode == 0, proc.stderr
    return tmp_path / "popularity.parquet", tmp_path / "cooc.parquet"


def test_eval_protocols_with_a_baseline_and_per_sample_files(tiny_data, tmp_path):
    pop, cooc = _baselines(tiny_data, tmp_path)
    for protocol in ("convrec", "rank-grpo", "he2023"):
        out = tmp_path / protocol
        proc = run_cli(
            "eval", cooc, "--data", tiny_data, "--protocol", protocol, "--baseline", pop,
            "--json", out / "m.json", "--per-sample", out, "--bootstrap", "200",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "paired difference vs popularity" in proc.stdout
        res = json.loads((out / "m.json").read_text())["results"]
        assert set(res) == {str(pop), str(cooc)}  # the baseline gets its own row
        diff = res[str(cooc)]["paired_vs_baseline"]
        a = pl.read_parquet(out / "cooc.parquet")
        b = pl.read_parquet(out / "popularity.parquet")
        if protocol == "he2023":
            assert res[str(cooc)]["ks"] == [1, 5, 10, 20] and set(a["condition"]) <= {"rec", "dis"}
            k = "ndcg@10"
        else:
            assert res[str(cooc)]["ks"] == [5, 10, 15, 20]
            a, b = a.filter(pl.col("n_gt") > 0), b.filter(pl.col("n_gt") > 0)
            k = "ndcg@20"
        # the paired difference is the mean of the per-sample differences the files keep
        assert diff[k]["diff"] == pytest.approx((a[k] - b[k]).mean())
        assert diff[k]["low"] <= diff[k]["diff"] <= diff[k]["high"] and 0.0 <= diff[k]["share_le_0"] <= 1.0
        lo, hi = res[str(cooc)]["intervals"][k]
        assert lo <= res[str(cooc)][k] <= hi


def test_eval_protocol_flag_errors(tiny_data, preds):
    assert_user_error(run_cli("eval", preds, "--data", tiny_data, "--protocol", "paper"), "--protocol")
    proc = run_cli("eval", preds, "--data", tiny_data, "--protocol", "rank-grpo", "--convention", "textbook")
    assert_user_error(proc, "--convention")
    assert_user_error(run_cli("eval", preds, "--data", tiny_data, "--year-tolerance", "-1"), "--year-tolerance")


def test_an_unwritable_output_is_one_line(tiny_data):
    """An OSError from the machine (here: a folder /proc refuses to create) is one line, not a traceback."""
    proc = run_cli("baseline", "popularity", "--data", tiny_data, "--split", "test", "--out", "/proc/convrec/x.parquet")
    assert_user_error(proc, "/proc/convrec")
