"""`convrec demo`: the plan's command lines against the real CLI, config overrides, and the real
pipeline end to end on a cut-down synthetic world (rerun skips, a changed setting reruns)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from convrec.cli import config
from convrec.cli.main import click_root
from convrec.demo import plan as demo
from convrec.demo import runner
from tests.conftest import assert_user_error, run_cli
from tests.stage1_data import small_world


def _opts(tmp_path: Path, text: str | None = None, **kw) -> demo.Options:
    settings, path = {}, None
    if text is not None:
        path = tmp_path / "pipeline.toml"
        path.write_text(text)
        settings = config.load(click_root(), path)
    return demo.Options(out=tmp_path / "out", config=path, settings=settings, **kw)


def _argv(opts: demo.Options) -> dict[str, list[str]]:
    return {s.key: demo.argv(s, opts, click_root()) for s in demo.plan(opts)}


def _flag(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


@pytest.mark.parametrize("size", sorted(demo.SIZES))
def test_every_step_is_a_valid_command_line(tmp_path, size):
    """Each step parses with the real click commands (a misspelt option would fail here)."""
    root = click_root()
    for key, words in _argv(_opts(tmp_path, size=size)).items():
        cmd, rest = root, list(words)
        while hasattr(cmd, "commands"):
            cmd = cmd.commands[rest.pop(0)]
        ctx = cmd.make_context(key, rest, resilient_parsing=False)
        assert "out" in ctx.params or key == "eval", key
    keys = list(_argv(_opts(tmp_path, size=size)))
    assert keys[0] == "synth" and keys[-2:] == ["eval", "report"]
    assert keys.index("sft") < keys.index("grpo") < keys.index("rank-grpo") < keys.index("generate-sft-rank-grpo")


def test_wiring_sizes_and_levels(tmp_path):
    a = _argv(_opts(tmp_path))
    out = str(tmp_path / "out")
    assert _flag(a["synth"], "--size") == "small" and _flag(a["model-init"], "--size") == "tiny"
    assert _flag(a["sft"], "--sft-set") == f"{out}/stage1/sft_set.parquet"
    assert _flag(a["grpo"], "--level") == "token" and _flag(a["rank-grpo"], "--level") == "rank"
    assert _flag(a["rank-grpo"], "--model") == f"{out}/runs/sft/last"  # the SFT schedule's end
    assert _flag(a["generate-sft"], "--model") == f"{out}/runs/sft/last"
    assert "--ground-truth-first" in a["adjust"]
    assert _flag(a["teacher-test"], "--split") == "test" and _flag(a["remap"], "--split") == "train"
    # the small student has one token per catalog line; trained rows' final lists are constrained
    assert "--item-tokens" in a["model-init"] and "--instruction-token" in a["model-init"]
    assert all("--constrained" in a[k] for k in ("generate-sft", "generate-sft-grpo", "generate-sft-rank-grpo"))
    # ... and so are the RL rollouts (scored under the masked policy) and every validation
    assert all("--constrained-rollouts" in a[k] and "--val-constrained" in a[k] for k in ("grpo", "rank-grpo"))
    assert "--val-constrained" in a["sft"]
    off = _argv(_opts(tmp_path, text="[generate]\nconstrained = false\n[rl]\nconstrained-rollouts = false\n"))
    assert "--constrained" not in off["generate-sft"]
    assert "--constrained-rollouts" not in off["grpo"] and "--no-constrained-rollouts" not in off["grpo"]
    m = _argv(_opts(tmp_path, size="medium"))
    assert _flag(m["synth"], "--size") == "medium" and int(_flag(m["sft"], "--max-steps")) > 300


def test_config_overrides_defaults_but_not_wiring(tmp_path):
    a = _argv(
        _opts(
            tmp_path,
            '[sft]\nlr = 0.01\nmax-steps = 7\nout = "elsewhere"\n[rl]\nlevel = "sequence"\nmu = 2\n'
            '[remap]\nteacher = "gpt-4o"\n',
        )
    )
    cfg = str(tmp_path / "pipeline.toml")
    sft = a["sft"]
    assert sft[:3] == ["--config", cfg, "sft"]
    assert "--lr" not in sft and "--max-steps" not in sft  # the file's values reach sft through --config
    assert _flag(sft, "--out") == str(tmp_path / "out" / "runs" / "sft")  # the demo's wiring wins
    assert _flag(a["rank-grpo"], "--level") == "rank" and _flag(a["grpo"], "--level") == "token"
    assert "--teacher" not in a["remap"] and "--teacher" not in a["teacher-test"]
    assert _flag(a["reflect"], "--judge") == "embed"  # untouched defaults stay


def test_own_data_and_own_model_skip_their_steps(tmp_path):
    data = small_world(tmp_path / "world")
    (data / "latent.parquet").unlink()  # not a synthetic world: the offline teacher is cooc
    opts = _opts(tmp_path, '[sft]\nmodel = "Qwen/Qwen2.5-0.5B-Instruct"\n', data=data)
    a = _argv(opts)
    assert "synth" not in a and "model-init" not in a
    assert _flag(a["remap"], "--teacher") == "cooc" and _flag(a["sft"], "--data") == str(data)
    assert "--model" not in a["sft"]


def test_bad_input_is_one_line(tmp_path):
    assert_user_error(run_cli("demo", "--size", "huge", "--out", tmp_path / "o"), "--size")
    assert_user_error(run_cli("demo", "--data", tmp_path / "nope", "--out", tmp_path / "o"), "no such data folder")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sft]\nmax_stepz = 3\n")
    assert_user_error(run_cli("demo", "--config", bad, "--out", tmp_path / "o"), "max_stepz")
    (tmp_path / "f").write_text("x")
    assert_user_error(run_cli("demo", "--out", tmp_path / "f"), "not a folder")
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "demo.json").write_text("{")
    assert_user_error(run_cli("demo", "--out", tmp_path / "o2"), "demo.json")


def test_the_plan_imports_no_cli_app():
    """No import circle: the plan is handed the click tree; it never imports `convrec.cli.main`
    (which imports `cli/demo.py`, which imports the plan)."""
    import subprocess
    import sys

    code = (
        "import sys, convrec.demo.runner, convrec.demo.results, convrec.cli.demo; "
        "print([m for m in sys.modules if m.startswith('convrec.cli')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "convrec.cli.main" not in out and "convrec.cli.config" in out


TINY = """
seed = 1
[sft]
max-steps = {sft_steps}
eval-every = 3
val-samples = 4
[rl]
max-steps = {rl_steps}
eval-every = 1
val-samples = 4
group-size = 2
prompts-per-step = 2
micro-batch-size = 4
[generate]
max-new-tokens = 40
"""


def test_the_rl_runs_form_one_side_by_side_batch(tmp_path):
    """With 2+ cores the two RL runs are one batch (run at once), every other step its own; one core,
    or torchrun processes, keep the plan one step at a time."""
    steps = demo.plan(_opts(tmp_path))
    together = [[s.key for s in b] for b in runner.batches(steps, True) if len(b) > 1]
    assert together == [["grpo", "rank-grpo"]]
    assert all(len(b) == 1 for b in runner.batches(steps, False))


def test_side_by_side_runs_each_command_and_reports_its_exit_and_log(tmp_path):
    """Two real `convrec` commands at once, one thread each: the good one writes its output, the bad
    one's exit code and one-line error come back with its log; both logs are kept."""
    from convrec.demo import side_by_side

    data = small_world(tmp_path / "world")
    ok = ["baseline", "popularity", "--data", str(data), "--split", "test", "--out", str(tmp_path / "pop.parquet")]
    bad = [*ok[:2], "--data", str(tmp_path / "missing"), *ok[4:6], "--out", str(tmp_path / "x.parquet")]
    logs = [tmp_path / "logs" / "ok.log", tmp_path / "logs" / "bad.log"]
    good, failed = side_by_side.run([ok, bad], logs)
    assert good.code == 0 and pl.read_parquet(tmp_path / "pop.parquet").height > 0
    assert failed.code == 2 and "missing" in side_by_side.tail(failed.log, 1) and not (tmp_path / "x.parquet").exists()
    assert "Traceback" not in logs[1].read_text() and good.seconds > 0 and failed.seconds > 0


@pytest.mark.slow
def test_demo_end_to_end_rerun_and_change(tmp_path):
    """The real pipeline on a cut-down world: every artifact, the table, the report; a rerun skips
    everything; a changed rl setting reruns rl and what follows, never sft."""
    data = small_world(tmp_path / "world")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(sft_steps=6, rl_steps=2))
    out = tmp_path / "demo"
    proc = run_cli("demo", "--config", cfg, "--data", data, "--out", out, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for label in demo.ROWS.values():
        assert label in proc.stdout
    assert "convrec serve --model" in proc.stdout and "wall time" in proc.stdout
    for path in (
        "stage1/remap_train.parquet",
        "stage1/reflect_train.parquet",
        "stage1/sft_set.parquet",
        "model/config.json",
        "runs/sft/last/config.json",
        "runs/grpo/metrics.jsonl",
        "runs/rank_grpo/last/trainer_state.pt",
        "pred/teacher_raw.parquet",
        "pred/sft_rank_grpo.parquet",
        "report/index.md",
        "report/val_ndcg.png",
    ):
        assert (out / path).exists(), path
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert {Path(p).stem for p in metrics} == set(demo.ROWS)
    assert all(0 <= s["ndcg@20"] <= 1 for s in metrics.values())
    # the seed and the config reached the stages: sft ran 6 steps with seed 1
    sft_cfg = json.loads((out / "runs/sft/config.json").read_text())
    assert sft_cfg["max_steps"] == 6 and sft_cfg["seed"] == 1
    assert pl.read_parquet(out / "pred/sft.parquet").height == 20
    state = json.loads((out / "demo.json").read_text())
    assert all(s["ok"] for s in state["steps"].values()) and len(state["ran"]) == len(state["steps"])

    again = run_cli("demo", "--config", cfg, "--data", data, "--out", out, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "demo.json").read_text())["ran"] == []
    assert again.stdout.count("skipped") == len(state["steps"])

    sft_mtime = (out / "runs/sft/last/config.json").stat().st_mtime
    cfg.write_text(TINY.format(sft_steps=6, rl_steps=3))
    changed = run_cli("demo", "--config", cfg, "--data", data, "--out", out, timeout=900)
    assert changed.returncode == 0, changed.stderr[-3000:]
    ran = json.loads((out / "demo.json").read_text())["ran"]
    assert ran[0] == "grpo" and "sft" not in ran and ran[-1] == "report"
    assert (out / "runs/sft/last/config.json").stat().st_mtime == sft_mtime
    assert json.loads((out / "runs/grpo/config.json").read_text())["max_steps"] == 3

    # killed while both RL runs went side by side: each one continues from its own RUN/last
    state = json.loads((out / "demo.json").read_text())
    for key in ("grpo", "rank-grpo"):
        state["steps"][key]["ok"] = False
    (out / "demo.json").write_text(json.dumps(state))
    resumed = run_cli("demo", "--config", cfg, "--data", data, "--out", out, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rl_lines = [ln for ln in resumed.stdout.splitlines() if ln.startswith("$ convrec") and " rl " in ln]
    assert len(rl_lines) == 2 and all(ln.rstrip().endswith("--resume") for ln in rl_lines), rl_lines
    assert "side by side" in resumed.stdout and (out / "logs/rank-grpo.log").exists()
    ran = json.loads((out / "demo.json").read_text())["ran"]
    assert ran[:2] == ["grpo", "rank-grpo"] and "sft" not in ran


def test_readme_pipeline_file_is_valid(tmp_path):
    """The GPU pipeline file the README shows is read by the real config code and wires the demo."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = readme.split("from one pipeline file:\n\n```toml\n", 1)[1].split("```", 1)[0]
    opts = _opts(tmp_path, text)
    opts.data = Path(opts.settings["demo"]["data"])  # the shared `data` key reaches the demo too
    a = _argv(opts)
    assert "synth" not in a and "model-init" not in a  # own data, a hub model
    assert _flag(a["sft"], "--data") == "data/reddit_v2" and "--model" not in a["sft"]
    assert opts.settings["rl"]["engine"] == "vllm" and opts.settings["sft"]["deepspeed"] == "ds_configs/zero2.json"


@pytest.mark.slow
def test_killed_demo_continues_sft_with_resume(tmp_path):
    """SIGKILL the demo once sft has a checkpoint: the rerun skips Stage 1 and resumes sft exactly."""
    import sys

    from tests.conftest import kill_after_first_checkpoint

    data = small_world(tmp_path / "world")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(sft_steps=9, rl_steps=1))
    out = tmp_path / "demo"
    args = ["demo", "--config", cfg, "--data", data, "--out", out]
    kill_after_first_checkpoint([sys.executable, "-m", "convrec.cli.main", *map(str, args)], out / "runs" / "sft")
    state = json.loads((out / "demo.json").read_text())
    assert state["steps"]["adjust"]["ok"] and not state["steps"]["sft"]["ok"]
    proc = run_cli(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sft_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("$ convrec") and " sft " in ln)
    assert sft_line.rstrip().endswith("--resume")
    ran = json.loads((out / "demo.json").read_text())["ran"]
    assert ran[0] == "sft" and "remap" not in ran
    steps = [json.loads(ln)["step"] for ln in (out / "runs/sft/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 9 and len([s for s in steps if s == 9]) >= 1
