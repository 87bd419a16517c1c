"""The real RL loop (`convrec rl`) on the synthetic world with the tiny model, through the real CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convrec.models.load import load_model, load_tokenizer
from convrec.train.distributed import torchrun_command
from convrec.train.rollout import HFEngine, SamplingConfig
from tests.conftest import assert_user_error, kill_after_first_checkpoint, run_cli

# 2 prompts × 2 samples per step, 4-item lists: small enough for CI, big enough for every code path
# (overflow past item 4, EOS shaping, two micro-batches).
RL_ARGS = [
    "--group-size", "2", "--prompts-per-step", "2", "--micro-batch-size", "2", "--n-items", "4",
    "--max-new-tokens", "40", "--val-samples", "4", "--lr", "1e-3", "--seed", "3",
]  # fmt: skip
STEP_KEYS = {
    "loss", "objective", "kl", "clip_fraction", "entropy", "reward_mean", "reward_std", "dcg_mean", "rank_reward",
    "zero_std_groups", "zero_std_ranks", "items_per_list", "in_catalog", "format_valid", "rollout_s", "update_s",
    "rollout_tokens_per_s",
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(sft_world):
    return sft_world


def _records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _rl(setup, run, steps: int, *extra: str):
    base = ["--model", setup / "sft" / "best", "--data", setup / "data", "--out", run, "--max-steps", str(steps)]
    return run_cli("rl", *base, *RL_ARGS, *extra, timeout=600)


def _changed(a, b) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return [n for n in sa if not torch.equal(sa[n], sb[n])]


def test_rank_grpo_trains_logs_and_checkpoints(setup, tmp_path):
    run = tmp_path / "rank"
    proc = _rl(setup, run, 4, "--mu", "2", "--eval-every", "2")
    assert proc.returncode == 0, proc.stderr
    recs = _records(run)
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert r.keys() >= STEP_KEYS, STEP_KEYS - r.keys()
        assert len(r["rank_reward"]) == 4 and 0 <= r["in_catalog"] <= 1 and r["kl"] >= 0
        assert r["rollout_s"] > 0 and r["update_s"] > 0 and r["items_per_list"] > 0
    assert any(r["kl"] > 0 for r in steps)  # the policy leaves the reference
    vals = [r for r in recs if "val_ndcg@20" in r]
    assert [r["step"] for r in vals] == [0, 2, 4]
    init, last = load_model(setup / "sft" / "best"), load_model(run / "last")
    assert _changed(init, last)
    assert load_model(run / "best").config.model_type == "llama"
    assert json.loads((run / "config.json").read_text())["mu"] == 2
    proc = run_cli(
        "generate", "--model", run / "last", "--data", setup / "data", "--limit", "2", "--max-new-tokens", "16",
        "--out", tmp_path / "pred.parquet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_baselines_run_in_the_same_loop(setup, tmp_path, level):
    run = tmp_path / level
    proc = _rl(setup, run, 2, "--level", level, "--eval-every", "2", "--beta", "0")
    assert proc.returncode == 0, proc.stderr
    steps = [r for r in _records(run) if "loss" in r]
    assert len(steps) == 2 and all(r["kl"] == 0 for r in steps)  # beta 0: no reference model at all
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert _changed(load_model(setup / "sft" / "best"), load_model(run / "last"))


def test_constrained_rollouts_stay_in_the_catalog(setup, tmp_path):
    """--constrained-rollouts: every sampled line is a catalog item, so rollouts cannot drift; with
    --val-constrained validation scores the constrained greedy lists generate would write."""
    run = tmp_path / "constrained"
    proc = _rl(
        setup, run, 2, "--constrained-rollouts", "--max-new-tokens", "120", "--eval-every", "2", "--val-constrained"
    )
    assert proc.returncode == 0, proc.stderr
    steps = [r for r in _records(run) if "loss" in r]
    assert len(steps) == 2
    assert all(r["in_catalog"] == 1.0 and r["items_per_list"] == 4 and r["format_valid"] == 1.0 for r in steps)
    assert all(
        all(r[f"val_{k}"] == 1.0 for k in ("in_catalog", "format_valid")) for r in _records(run) if "val_ndcg@20" in r
    )
    assert json.loads((run / "config.json").read_text())["val_constrained"] is True


def test_kill_and_resume_matches_uninterrupted(setup, tmp_path):
    common = ["--model", setup / "sft" / "best", "--data", setup / "data", "--max-steps", "5", "--eval-every", "2"]
    common += ["--mu", "2", *RL_ARGS]
    full = run_cli("rl", "--out", tmp_path / "full", *common, timeout=600)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    kill_after_first_checkpoint(
        [sys.executable, "-m", "convrec.cli.main", "rl", "--out", str(run), *map(str, common)], run
    )
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=False)["step"] == 2
    resumed = run_cli("rl", "--out", run, *common, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    keys = ("loss", "reward_mean", "kl", "in_catalog")
    expected = [r[k] for r in _records(tmp_path / "full") if "loss" in r for k in keys]
    got = [r[k] for r in _records(run) if "loss" in r for k in keys]
    assert len(got) == 5 * len(keys)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    a, b = load_model(tmp_path / "full" / "last"), load_model(run / "last")
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_zero2_two_processes_on_cpu(setup, tmp_path):
    """DeepSpeed ZeRO-2, 2 processes, gloo: both ranks roll out and update; the saved policy loads and generates."""
    run = tmp_path / "ds"
    cmd = torchrun_command(
        2, "rl", "--model", str(setup / "sft" / "best"), "--data", str(setup / "data"), "--out", str(run),
        "--max-steps", "2", "--eval-every", "2", "--deepspeed", "ds_configs/zero2.json", *RL_ARGS,
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in _records(run) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # rank 0 alone logs
    assert [p.name for p in (run / "ds_state").glob("step*")] == ["step2"]
    assert _changed(load_model(setup / "sft" / "best"), load_model(run / "last"))
    proc = run_cli(
        "generate", "--model", run / "last", "--data", setup / "data", "--limit", "2", "--max-new-tokens", "16",
        "--out", tmp_path / "pred.parquet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_shared_prompt_prefill_samples_the_same_lists(setup):
    """Prefilling a prompt once and repeating its KV cache G times is an optimisation, not a change."""
    from convrec.data import load_split
    from convrec.decoding.generate import encode_prompts

    tok, model = load_tokenizer(setup / "sft" / "best"), load_model(setup / "sft" / "best")
    msgs = load_split(setup / "data", "val")["messages"].to_list()[:2]
    prompts = encode_prompts(tok, msgs, 4, 512)
    cfg = SamplingConfig(group_size=3, max_new_tokens=20, prompts_per_batch=2)
    outs = []
    for share in (True, False):
        torch.manual_seed(0)
        outs.append(HFEngine(model, tok, share_prompt=share).generate(prompts, cfg))
    assert len(outs[0]) == 6 and outs[0] == outs[1]
    assert len({tuple(c) for c in outs[0]}) > 1  # sampled, not greedy


def test_rl_bad_input(setup, tmp_path):
    base = ["--data", setup / "data", "--out", tmp_path / "r", "--max-steps", "1"]
    init = ["--model", setup / "sft" / "best"]
    assert_user_error(run_cli("rl", "--model", tmp_path / "nomodel", *base), "not a model folder")
    assert_user_error(run_cli("rl", *init, *base, "--level", "list"), "--level", "list")
    assert_user_error(run_cli("rl", *init, *base, "--reward", "ndcg"), "--reward", "ndcg")
    assert_user_error(run_cli("rl", *init, *base, "--engine", "tgi"), "--engine", "tgi")
    assert_user_error(run_cli("rl", *init, *base, "--group-size", "1"), "--group-size")
    assert_user_error(run_cli("rl", *init, *base, "--micro-batch-size", "3"), "--micro-batch-size")
    assert_user_error(run_cli("rl", *init, *base, "--resume"), "no trainer state")
    if not torch.cuda.is_available():
        assert_user_error(run_cli("rl", *init, *base, "--engine", "vllm"), "vllm")
    (tmp_path / "file").write_text("x")
    assert_user_error(run_cli("rl", *init, "--data", setup / "data", "--out", tmp_path / "file"), "is a file")


def test_rl_needs_rewardable_training_samples(setup, tmp_path):
    import shutil

    import polars as pl

    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    train = pl.read_parquet(data / "train.parquet")
    train.with_columns(pl.col("ground_truth").list.head(0)).write_parquet(data / "train.parquet")
    proc = run_cli("rl", "--model", setup / "sft" / "best", "--data", data, "--out", tmp_path / "r", "--max-steps", "1")
    assert_user_error(proc, "no sample with a ground truth")


def test_no_traceback_on_missing_split(setup, tmp_path):
    proc = run_cli("rl", "--model", setup / "sft" / "best", "--data", tmp_path, "--out", tmp_path / "r")
    assert_user_error(proc)
    assert os.path.exists(tmp_path) and not (tmp_path / "r" / "last").exists()
