"""The real SFT loop on the synthetic world with the tiny model, through the real CLI."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from convrec.models.load import load_model
from tests.conftest import assert_user_error, run_cli

SFT_ARGS = ["--batch-size", "4", "--eval-every", "3", "--val-samples", "6", "--lr", "3e-3", "--seed", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from convrec.data.synth import generate
    from convrec.models.tiny import init_model

    root = tmp_path_factory.mktemp("sft")
    generate(root / "data", seed=0)
    init_model(root / "data", root / "model")
    return root


def _losses(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_sft_trains_checkpoints_and_generates(setup, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "sft", "--data", setup / "data", "--model", setup / "model", "--out", run, "--max-steps", "9", *SFT_ARGS
    )
    assert proc.returncode == 0, proc.stderr
    train_losses = [r["loss"] for r in _losses(run) if "loss" in r]
    assert len(train_losses) == 9 and train_losses[-1] < train_losses[0]
    vals = [r for r in _losses(run) if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6, 9] and vals[-1]["val_loss"] < vals[0]["val_loss"]
    for folder in ("last", "best"):
        assert load_model(run / folder).config.model_type == "llama"
    proc = run_cli(
        "generate",
        "--model",
        run / "best",
        "--data",
        setup / "data",
        "--split",
        "test",
        "--limit",
        "4",
        "--max-new-tokens",
        "24",
        "--out",
        tmp_path / "pred.parquet",
    )
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", tmp_path / "pred.parquet", "--data", setup / "data")
    assert proc.returncode == 0 and "pred" in proc.stdout


def test_kill_and_resume_matches_uninterrupted(setup, tmp_path):
    common = ["--data", setup / "data", "--model", setup / "model", "--max-steps", "6", *SFT_ARGS]
    full = run_cli("sft", "--out", tmp_path / "full", *common)
    assert full.returncode == 0, full.stderr
    expected = [r["loss"] for r in _losses(tmp_path / "full") if "loss" in r]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "convrec.cli.main", "sft", "--out", str(run), *map(str, common)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "last" / "trainer_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(run / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3  # killed between the first checkpoint and the end
    resumed = run_cli("sft", "--out", run, *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    got = [r["loss"] for r in _losses(run) if "loss" in r]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_sft_bad_input(setup, tmp_path):
    base = ["--data", setup / "data", "--out", tmp_path / "r", "--max-steps", "1"]
    assert_user_error(run_cli("sft", "--model", tmp_path / "nomodel", *base), "not a model folder")
    assert_user_error(run_cli("sft", "--model", setup / "model", *base, "--resume"), "no trainer state")
    assert_user_error(run_cli("sft", "--model", setup / "model", *base, "--max-length", "64"), "--max-length")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{}")
    assert_user_error(run_cli("sft", "--model", tmp_path / "corrupt", *base), "cannot load")
