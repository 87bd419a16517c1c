"""The real SFT loop on the synthetic world with the tiny model, through the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convrec.models.load import load_model
from convrec.train.distributed import torchrun_command
from convrec.train.sft import GROUP_SPAN, _order
from tests.conftest import assert_user_error, kill_after_first_checkpoint, run_cli, tiny_world

SFT_ARGS = ["--batch-size", "4", "--eval-every", "3", "--val-samples", "6", "--lr", "3e-3", "--seed", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("sft"))


def _losses(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _sft(setup, run, steps: int, *extra: str, **popen):
    return run_cli(
        "sft",
        "--data",
        setup / "data",
        "--model",
        setup / "model",
        "--out",
        run,
        "--max-steps",
        str(steps),
        *SFT_ARGS,
        *extra,
        **popen,
    )


def test_sft_trains_checkpoints_and_generates(setup, tmp_path):
    run = tmp_path / "run"
    proc = _sft(setup, run, 9, "--keep-last", "3")
    assert proc.returncode == 0, proc.stderr
    train_losses = [r["loss"] for r in _losses(run) if "loss" in r]
    assert len(train_losses) == 9 and train_losses[-1] < train_losses[0]
    vals = [r for r in _losses(run) if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6, 9] and vals[-1]["val_loss"] < vals[0]["val_loss"]
    for folder in ("last", "best"):
        assert load_model(run / folder).config.model_type == "llama"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step00000006", "step00000009"]
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


def test_val_constrained_scores_the_lists_generate_constrained_writes(setup, tmp_path):
    """After 3 steps the greedy lists are not yet catalog lines; --val-constrained validates (and picks
    RUN/best) on the catalog-constrained lists instead, which always are."""
    plain, constrained = tmp_path / "plain", tmp_path / "constrained"
    assert _sft(setup, plain, 3).returncode == 0
    proc = _sft(setup, constrained, 3, "--val-constrained")
    assert proc.returncode == 0, proc.stderr
    (p,), (c,) = ([r for r in _losses(run) if "val_ndcg@20" in r] for run in (plain, constrained))
    assert p["val_in_catalog"] < 1.0
    assert c["val_in_catalog"] == 1.0 and c["val_format_valid"] == 1.0 and c["val_mean_list_length"] == 20
    assert c["val_loss"] == pytest.approx(p["val_loss"])  # the same model: only the lists differ


@pytest.mark.parametrize("extra", [[], ["--lora-r", "4"]], ids=["full", "lora"])
def test_kill_and_resume_matches_uninterrupted(setup, tmp_path, extra):
    common = ["--data", setup / "data", "--model", setup / "model", "--max-steps", "6", *SFT_ARGS, *extra]
    full = run_cli("sft", "--out", tmp_path / "full", *common)
    assert full.returncode == 0, full.stderr
    expected = [r["loss"] for r in _losses(tmp_path / "full") if "loss" in r]

    run = tmp_path / "killed"
    kill_after_first_checkpoint(
        [sys.executable, "-m", "convrec.cli.main", "sft", "--out", str(run), *map(str, common)], run
    )
    state = torch.load(run / "last" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3  # killed between the first checkpoint and the end
    resumed = run_cli("sft", "--out", run, *common, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    got = [r["loss"] for r in _losses(run) if "loss" in r]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lora_trains_adapters_and_saves_plain_models(setup, tmp_path):
    run = tmp_path / "lora"
    proc = _sft(setup, run, 6, "--lora-r", "4")
    assert proc.returncode == 0, proc.stderr
    losses = [r["loss"] for r in _losses(run) if "loss" in r]
    assert losses[-1] < losses[0]
    assert (run / "last" / "adapter" / "adapter_config.json").exists()
    merged, base = load_model(run / "last"), load_model(setup / "model")
    assert not hasattr(merged, "peft_config")  # a plain transformers model: generate/eval/serve need no peft
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers moved


def test_weight_decay_shrinks_the_weights(setup, tmp_path):
    """Same seed and data, only --weight-decay differs: AdamW's decoupled decay gives smaller weights."""

    def norm(run) -> float:
        return float(sum(p.detach().float().norm() ** 2 for p in load_model(run / "last").parameters()) ** 0.5)

    for name, wd in (("plain", "0"), ("decay", "1.0")):
        proc = _sft(setup, tmp_path / name, 3, "--weight-decay", wd, "--val-samples", "2")  # validates at step 3
        assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "decay" / "config.json").read_text())["weight_decay"] == 1.0
    assert norm(tmp_path / "decay") < norm(tmp_path / "plain")


def test_sft_bad_input(setup, tmp_path):
    base = ["--data", setup / "data", "--out", tmp_path / "r", "--max-steps", "1"]
    assert_user_error(run_cli("sft", "--model", tmp_path / "nomodel", *base), "not a model folder")
    assert_user_error(run_cli("sft", "--model", setup / "model", *base, "--resume"), "no trainer state")
    assert_user_error(run_cli("sft", "--model", setup / "model", *base, "--max-length", "64"), "--max-length")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{}")
    assert_user_error(run_cli("sft", "--model", tmp_path / "corrupt", *base), "cannot load")
    assert_user_error(run_cli("sft", "--model", setup / "model", *base, "--deepspeed", tmp_path / "no.json"), "no such")


def test_zero2_two_processes_on_cpu(setup, tmp_path):
    """DeepSpeed ZeRO-2, 2 processes, gloo: loss falls, the checkpoint loads in one process and generates."""
    run = tmp_path / "ds"
    cmd = torchrun_command(
        2,
        "sft",
        "--data",
        str(setup / "data"),
        "--model",
        str(setup / "model"),
        "--out",
        str(run),
        "--max-steps",
        "6",
        "--deepspeed",
        "ds_configs/zero2.json",
        *SFT_ARGS,
    )
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in _losses(run) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert [p.name for p in (run / "ds_state").glob("step*")] == ["step6"]
    proc = run_cli(
        "generate",
        "--model",
        run / "last",
        "--data",
        setup / "data",
        "--limit",
        "2",
        "--max-new-tokens",
        "16",
        "--out",
        tmp_path / "pred.parquet",
    )
    assert proc.returncode == 0, proc.stderr


def test_sft_set_bad_input(setup, tmp_path):

    from convrec.data import load_split

    base = ["--data", setup / "data", "--model", setup / "model", "--out", tmp_path / "r", "--max-steps", "1"]
    train = load_split(setup / "data", "train")
    train.drop("ground_truth").write_parquet(tmp_path / "nogt.parquet")
    assert_user_error(run_cli("sft", *base, "--sft-set", tmp_path / "nogt.parquet"), "ground_truth")
    train.clear().write_parquet(tmp_path / "empty.parquet")
    assert_user_error(run_cli("sft", *base, "--sft-set", tmp_path / "empty.parquet"), "no training samples")


def test_resume_from_corrupt_checkpoint(setup, tmp_path):
    last = tmp_path / "r" / "last"
    last.mkdir(parents=True)
    (last / "trainer_state.pt").write_bytes(b"\x00\x01 not a torch file")
    base = ["--data", setup / "data", "--model", setup / "model", "--out", tmp_path / "r", "--max-steps", "1"]
    assert_user_error(run_cli("sft", *base, "--resume"), "corrupt trainer state")


def test_zero2_kill_and_resume(setup, tmp_path):
    """SIGKILL a 2-process ZeRO-2 run after its first checkpoint; --resume reproduces the uninterrupted losses."""

    cmd = torchrun_command(
        2,
        "sft",
        "--data",
        str(setup / "data"),
        "--model",
        str(setup / "model"),
        "--max-steps",
        "6",
        "--deepspeed",
        "ds_configs/zero2.json",
        *SFT_ARGS,
    )
    cwd = Path(__file__).resolve().parents[1]
    subprocess.run([*cmd, "--out", str(tmp_path / "full")], check=True, capture_output=True, cwd=cwd, timeout=600)
    run = tmp_path / "killed"
    kill_after_first_checkpoint([*cmd, "--out", str(run)], run, cwd=cwd)
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=False)["step"] == 3
    resumed = subprocess.run(
        [*cmd, "--out", str(run), "--resume"], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = [r["loss"] for r in _losses(tmp_path / "full") if "loss" in r]
    got = [r["loss"] for r in _losses(run) if "loss" in r]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(setup, tmp_path):
    """Writes past 1 MB fail (RLIMIT_FSIZE: EFBIG, as ENOSPC would) once the resumed run checkpoints
    again: one line naming the folder and the cause, no half-written folder, RUN/last as it was."""
    import resource

    run = tmp_path / "r"
    assert _sft(setup, run, 3).returncode == 0
    before = (run / "last" / "model.safetensors").read_bytes()

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # Python ignores SIGXFSZ: writes fail

    proc = _sft(setup, run, 6, "--resume", preexec_fn=small_files)
    assert_user_error(proc, "could not write the checkpoint", "File too large", "the previous one is kept")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert (run / "last" / "model.safetensors").read_bytes() == before
    assert torch.load(run / "last" / "trainer_state.pt", weights_only=False)["step"] == 3


def test_a_kill_between_the_two_renames_of_a_checkpoint_swap_resumes(setup, tmp_path):
    """`save` renames RUN/last to .last.old, then the complete .last.tmp to RUN/last: a kill in between
    leaves no RUN/last, and --resume continues from the newer folder (the losses of an unbroken run)."""
    import shutil

    full = tmp_path / "full"
    assert _sft(setup, full, 6).returncode == 0
    run = tmp_path / "r"
    common = ["--data", setup / "data", "--model", setup / "model", "--max-steps", "6", *SFT_ARGS]
    kill_after_first_checkpoint(
        [sys.executable, "-m", "convrec.cli.main", "sft", "--out", str(run), *map(str, common)], run
    )
    shutil.copytree(run / "last", run / ".last.tmp")  # the newer, complete checkpoint (here: the same step)
    (run / "last").rename(run / ".last.old")
    resumed = _sft(setup, run, 6, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["loss"] for r in _losses(run) if "loss" in r] == pytest.approx(
        [r["loss"] for r in _losses(full) if "loss" in r], rel=1e-5, abs=1e-6
    )
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_group_by_length_keeps_every_sample_once_and_cuts_the_padding():
    """--group-by-length: the epoch still visits every sample once, in seed-determined order, and its
    batches pad far less than shuffled ones (here 1,000 samples of lengths 100-199, batches of 16)."""
    g = torch.Generator().manual_seed(1)
    lengths = (100 + torch.randint(0, 100, (1000,), generator=g)).tolist()
    plain, grouped = _order(1000, 0, 3), _order(1000, 0, 3, lengths, 16)
    assert sorted(grouped) == list(range(1000)) and grouped != plain
    assert grouped == _order(1000, 0, 3, lengths, 16) and grouped != _order(1000, 0, 4, lengths, 16)

    def padding(order: list[int]) -> float:  # share of a batch's tokens that are padding
        batches = [order[i : i + 16] for i in range(0, len(order), 16)]
        real = sum(lengths[i] for b in batches for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padding(plain) > 0.15 and padding(grouped) < 0.03
    # a span's batches are shuffled, not served shortest first
    firsts = [max(lengths[i] for i in grouped[j : j + 16]) for j in range(0, 16 * GROUP_SPAN, 16)]
    assert firsts != sorted(firsts)
