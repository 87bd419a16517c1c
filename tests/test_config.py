"""`convrec --config FILE`: every command's flags from one TOML or YAML file; the command line wins."""

import polars as pl
import pytest

from tests.conftest import assert_user_error, run_cli


def _lists(path) -> int:
    return pl.read_parquet(path).height


def test_toml_shared_and_per_command_settings(tiny_data, tmp_path):
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text(f'data = "{tiny_data}"\n\n[baseline.popularity]\nsplit = "train"\nn-items = 3\n')
    proc = run_cli("--config", cfg, "baseline", "popularity", "--out", tmp_path / "p.parquet")
    assert proc.returncode == 0, proc.stderr
    preds = pl.read_parquet(tmp_path / "p.parquet")
    assert preds.height == 4  # the train split (4 samples), not the default test split (3)
    assert all(t.count("\n") == 2 for t in preds["text"])  # n-items = 3 lines
    # a flag on the command line wins over the file
    proc = run_cli("--config", cfg, "baseline", "popularity", "--split", "test", "--out", tmp_path / "q.parquet")
    assert proc.returncode == 0, proc.stderr
    assert _lists(tmp_path / "q.parquet") == 3


def test_yaml_with_underscored_keys(tiny_data, tmp_path):
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"baseline:\n  cooc:\n    data: {tiny_data}\n    split: train\n")
    proc = run_cli("--config", cfg, "baseline", "cooc", "--out", tmp_path / "c.parquet")
    assert proc.returncode == 0, proc.stderr
    assert _lists(tmp_path / "c.parquet") == 4


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("typo.toml", "[sft]\nlrr = 1\n", "[sft] has no setting 'lrr'"),
        ("nested.toml", "[baseline.popularity]\nk = 1\n", "see 'convrec baseline popularity --help'"),
        ("cmd.toml", "[train]\nlr = 1\n", "[train] is not a convrec command"),
        ("shared.toml", "dataa = 'x'\n", "no command has a setting 'dataa'"),
        ("broken.toml", "[sft\n", "not valid TOML"),
        ("broken.yaml", "sft: [1, 2\n", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "top level must be a table"),
        ("pipeline.json", "{}", "must end in .toml, .yaml or .yml"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, name, text, needle):
    cfg = tmp_path / name
    cfg.write_text(text)
    assert_user_error(run_cli("--config", cfg, "eval", "x.parquet"), needle)


def test_missing_config_file(tmp_path):
    assert_user_error(run_cli("--config", tmp_path / "nope.toml", "eval", "x.parquet"), "no such config file")
