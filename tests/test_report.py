"""`convrec report` through the real CLI: run folders as sft/rl write them, eval JSON, PNGs, index.md, bad input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from convrec.report.plots import moving_average
from tests.conftest import assert_user_error, run_cli

N = 20
SFT_VAL = {20: 0.1384, 40: 0.2213, 60: 0.2191}  # best 0.2213 at step 40
RL_VAL = {
    "rank_mu1_s0": {0: 0.2213, 10: 0.2305, 20: 0.2841, 30: 0.2790},  # best 0.2841 at step 20
    "token_mu2_s1": {0: 0.2213, 10: 0.2250, 20: 0.2236, 30: 0.2262},
}
PNG_SIZE = (600, 960)  # 8 x 5 inches at 120 dpi


def _val(step: int, ndcg: float, **extra) -> dict:
    return {
        "step": step,
        **extra,
        "val_recall@5": round(ndcg * 0.9, 4),
        "val_recall@20": round(ndcg * 1.6, 4),
        "val_ndcg@5": round(ndcg * 0.8, 4),
        "val_ndcg@20": ndcg,
        "val_in_catalog": 0.99 - step / 10_000,
        "val_format_valid": 0.93,
        "val_mean_list_length": 19.9,
    }


def write_sft_run(folder: Path, steps: int = 60, val: dict[int, float] = SFT_VAL, val_samples: int = 200) -> Path:
    """What `convrec sft` writes: a record per step, validation records as separate lines."""
    folder.mkdir(parents=True)
    config = {"data": "d", "model": "m", "out": str(folder), "sft_set": None, "val_samples": val_samples}
    (folder / "config.json").write_text(json.dumps({**config, "val_constrained": True}))
    rng = random.Random(0)
    lines = []
    for s in range(1, steps + 1):
        loss = 0.5 + 6.7 * math.exp(-s / 12) + rng.uniform(-0.05, 0.05)
        lines.append(
            {"step": s, "loss": loss, "lr": 1e-3 * min(1.0, s / 5), "tokens_per_s": 5800 + rng.uniform(-300, 300)}
        )
        if s in val:
            lines.append(_val(s, val[s], val_loss=loss + 0.1))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def write_rl_run(
    folder: Path,
    level: str,
    mu: int,
    seed: int,
    steps: int = 30,
    val: dict[int, float] | None = None,
    val_samples: int = 200,
    in_catalog: float | None = None,
) -> Path:
    """What `convrec rl` writes: validation at step 0 and every 10 steps, N per-rank mean rewards per step."""
    folder.mkdir(parents=True)
    config = {"model": "sft/best", "level": level, "reward": "exp_inf", "mu": mu, "seed": seed, "n_items": N}
    config |= {"val_samples": val_samples, "val_constrained": True}
    (folder / "config.json").write_text(json.dumps(config))
    rng = random.Random(f"{level}-{mu}-{seed}")
    val = val or {}
    lines = [_val(0, val[0])] if 0 in val else []
    for s in range(1, steps + 1):
        gain = 1 + 0.3 * s / steps  # the policy slowly improves, the top ranks most
        rank_reward = [round(max(0.0, 0.6 / k * gain + rng.uniform(-0.05, 0.05)), 5) for k in range(1, N + 1)]
        lines.append(
            {
                "step": s,
                "loss": rng.uniform(-0.005, 0.001),
                "objective": rng.uniform(0, 0.005),
                "kl": 0.0005 * s * mu * (1 + rng.uniform(-0.2, 0.2)),
                "clip_fraction": rng.uniform(0, 0.02),
                "entropy": 0.23 - 0.001 * s,
                "reward_mean": sum(rank_reward),
                "reward_std": 1.1,
                "dcg_mean": 0.95 + 0.01 * s,
                "hits_per_list": 1.4,
                "rank_reward": rank_reward,
                "zero_std_groups": 0.0,
                "zero_std_ranks": 0.4,
                "items_per_list": 19.8,
                "in_catalog": 0.95 + rng.uniform(-0.02, 0.02) if in_catalog is None else in_catalog,
                "format_valid": 0.9,
                "rollout_s": 3.2,
                "update_s": 1.1,
                "rollout_tokens_per_s": 900.0,
            }
        )
        if s in val:
            lines.append(_val(s, val[s]))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def write_eval_json(path: Path, baseline: bool = True) -> Path:
    """The layout `convrec eval ... --json [--baseline pred/cooc.parquet]` writes."""
    results = {}
    for name, base in (("pred/cooc.parquet", 0.25), ("pred/rank_best.parquet", 0.31)):
        m = {"samples": 201, "samples_without_prediction": 0, "convention": "paper", "in_catalog": 0.98}
        for k in (5, 10, 15, 20):
            m[f"recall@{k}"], m[f"ndcg@{k}"] = base * (0.6 + k / 25), base * (0.7 + k / 60)
        m["intervals"] = {
            f"{c}@{k}": [m[f"{c}@{k}"] - 0.03, m[f"{c}@{k}"] + 0.04]
            for c in ("recall", "ndcg")
            for k in (5, 10, 15, 20)
        }
        if baseline:  # eval compares every file with the baseline, the baseline itself too
            m["paired_vs_baseline"] = {"baseline": "pred/cooc.parquet"} | {
                f"{c}@{k}": {
                    "diff": (base - 0.25),
                    "low": (base - 0.25) / 2,
                    "high": (base - 0.25) * 2,
                    "share_le_0": 0.001,
                }
                for c in ("ndcg", "recall")
                for k in (5, 10, 15, 20)
            }
        results[name] = m
    path.write_text(json.dumps({"split": "test", "data": "data/synth", "results": results}, indent=2))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_sft_run(tmp_path / "sft"),
        write_rl_run(tmp_path / "rank_mu1_s0", "rank", 1, 0, val=RL_VAL["rank_mu1_s0"]),
        write_rl_run(tmp_path / "token_mu2_s1", "token", 2, 1, val=RL_VAL["token_mu2_s1"]),
    ]


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    assert img.shape[:2] == PNG_SIZE, (path, img.shape)
    assert img[..., :3].std() > 0.05, f"{path} looks blank"


def test_report_end_to_end(runs, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("report", *runs, "--metrics", write_eval_json(tmp_path / "m.json"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    pngs = [
        "loss.png",
        "reward.png",
        "kl.png",
        "val_ndcg.png",
        "rank_reward_rank_mu1_s0.png",
        "rank_reward_token_mu2_s1.png",
        "eval_bars.png",
        "in_catalog.png",
    ]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(pngs)
    for name in pngs:
        _assert_png(out / name)
    page = (out / "index.md").read_text()
    for name in pngs:
        assert f"]({name})" in page, name
    assert "Skipped" not in page
    # labels: RL runs by their config (level, mu, seed), the SFT run by its folder
    for label in ("sft", "Rank-GRPO μ=1 seed 0", "GRPO μ=2 seed 1"):
        assert f"| {label} |" in page, label
    # best validation NDCG@20 and its step, by hand from RL_VAL and SFT_VAL
    assert "| 0.2841 (20) |" in page
    assert "| 0.2213 (40) |" in page
    assert "| 0.2262 (30) |" in page
    # eval table: both prediction files, all k the file has, each mean with its 95 % interval
    assert "| rank_best | test | 201 |" in page and "| cooc |" in page
    ndcg20 = 0.31 * (0.7 + 20 / 60)
    assert f"| {ndcg20:.4f} [{ndcg20 - 0.03:.3f}, {ndcg20 + 0.04:.3f}] |" in page  # rank_best NDCG@20
    # paired differences against the baseline: one row (the baseline's own is left out)
    assert "### Paired differences" in page and "| rank_best | cooc | +0.0600 [+0.030, +0.120] · 0.001 |" in page
    assert "| cooc | cooc |" not in page
    # the reading comes first and says who wins, by how much, and whether the paired difference excludes 0
    reading = page.split("\n\n")[1]
    assert reading.startswith("**Reading:** On the test split, **rank_best** ranks first by NDCG@20"), reading
    assert "ahead of cooc" in reading and "+0.0600 [+0.030, +0.120], above 0" in reading
    assert "reading: On the test split" in proc.stdout.replace("\n", " ")
    # every run validated on the same samples: said once, no warning
    assert "Every run on the same samples (first 200 val samples, constrained)" in page
    # console: the table and where the page is
    assert "Rank-GRPO μ=1 seed 0" in proc.stdout and str(out / "index.md") in proc.stdout.replace("\n", "")
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_eval_bars_draw_the_intervals(tmp_path):
    """The 95 % intervals of the eval JSON are read and drawn as error bars (the PNG changes)."""
    from convrec.report.plots import plot_eval_bars
    from convrec.report.runs import load_eval

    evals = load_eval(write_eval_json(tmp_path / "m.json"))
    assert evals[0].intervals["ndcg@20"] == pytest.approx(
        (evals[0].metrics["ndcg@20"] - 0.03, evals[0].metrics["ndcg@20"] + 0.04)
    )
    assert plot_eval_bars(evals, tmp_path / "with.png")
    for e in evals:
        e.intervals = {}
    assert plot_eval_bars(evals, tmp_path / "without.png")
    with_bars, without = mpimg.imread(tmp_path / "with.png"), mpimg.imread(tmp_path / "without.png")
    assert with_bars.shape == without.shape and np.abs(with_bars - without).max() > 0.1


def test_report_sft_only_skips_rl_plots_and_says_so(tmp_path):
    out = tmp_path / "report"
    proc = run_cli("report", write_sft_run(tmp_path / "sft"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["in_catalog.png", "loss.png", "val_ndcg.png"]
    page = (out / "index.md").read_text()
    for what in ("reward_mean", "`kl`", "rank_reward", "--metrics"):
        assert any(what in line for line in page.splitlines() if line.startswith("*Skipped")), what
    assert "skipped" in proc.stdout


def test_report_tolerates_a_run_being_written(tmp_path):
    """A live run's torn last line (no newline yet) is skipped with a note, not an error."""
    run = write_rl_run(tmp_path / "live", "rank", 2, 0, steps=12, val={0: 0.2})
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 13, "loss": -0.00')
    proc = run_cli("report", run, "--out", tmp_path / "report")
    assert proc.returncode == 0, proc.stderr
    assert "unfinished last line 14" in proc.stdout
    _assert_png(tmp_path / "report" / "rank_reward_live.png")


def test_clashing_labels_get_folder_names(tmp_path):
    a = write_rl_run(tmp_path / "a", "rank", 1, 0, steps=5)
    b = write_rl_run(tmp_path / "b", "rank", 1, 0, steps=5)
    sft_x, sft_y = write_sft_run(tmp_path / "x" / "sft", steps=5), write_sft_run(tmp_path / "y" / "sft", steps=5)
    proc = run_cli("report", a, b, sft_x, sft_y, a, "--out", tmp_path / "report")  # `a` twice counts once
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "report" / "index.md").read_text()
    for label in ("Rank-GRPO μ=1 seed 0 (a)", "Rank-GRPO μ=1 seed 0 (b)", "x/sft", "y/sft"):
        assert page.count(f"| {label} |") == 1, label


def test_curves_on_different_validation_samples_are_flagged(tmp_path):
    """SFT on 200 and RL on 50 samples: RL's step 0 is not SFT's end, and the report says so."""
    sft = write_sft_run(tmp_path / "sft", val_samples=200)
    rl = write_rl_run(tmp_path / "rl", "rank", 1, 0, val=RL_VAL["rank_mu1_s0"], val_samples=50)
    same = write_rl_run(tmp_path / "same", "rank", 1, 1, val=RL_VAL["rank_mu1_s0"])
    out = tmp_path / "report"
    assert run_cli("report", sft, rl, "--out", out).returncode == 0
    page = (out / "index.md").read_text()
    assert "**The runs validated on different samples** (sft: first 200 val samples, constrained; " in page
    assert "| first 50 val samples, constrained |" in page
    assert "compare values within a kind only" in page.split("\n\n")[1]  # the reading warns too
    flagged = mpimg.imread(out / "val_ndcg.png")
    assert run_cli("report", sft, same, "--out", tmp_path / "same").returncode == 0
    assert "different samples" not in (tmp_path / "same" / "index.md").read_text()
    plain = mpimg.imread(tmp_path / "same" / "val_ndcg.png")
    red = np.array([0xB2, 0x22, 0x22]) / 255  # the warning above the panels is firebrick
    assert np.abs(flagged[..., :3] - red).max(axis=-1).min() < 0.05
    assert np.abs(plain[..., :3] - red).max(axis=-1).min() > 0.05


def test_in_catalog_axis_ends_at_100_percent(tmp_path):
    """A constrained run is at 100 % throughout: the axis must not run to 104 %, and the panel says it."""
    from convrec.report.plots import plot_in_catalog
    from convrec.report.runs import load_runs

    runs = load_runs([write_rl_run(tmp_path / "c", "rank", 1, 0, steps=20, val={0: 0.2, 20: 0.3}, in_catalog=1.0)])
    runs[0].records = [{**r, "val_in_catalog": 1.0} if "val_in_catalog" in r else r for r in runs[0].records]
    captured = {}

    def keep(fig, path):  # look at the figure itself: its limits and texts
        captured["fig"] = fig
        return True

    import convrec.report.plots as plots

    original, plots._save = plots._save, keep
    try:
        assert plot_in_catalog(runs, tmp_path / "x.png")
    finally:
        plots._save = original
    (ax,) = captured["fig"].axes
    low, high = ax.get_ylim()
    assert 0.85 <= low <= 0.9 and 1.0 < high <= 1.005
    assert [t.get_text() for t in ax.texts] == ["100 % at every point"]
    assert max(t for t in ax.get_yticks() if low <= t <= high) == pytest.approx(1.0)


def test_moving_average_is_centred_and_keeps_length():
    x = np.array([0.0, 3.0, 0.0, 3.0, 6.0])
    assert moving_average(x, 3).tolist() == [1.5, 1.0, 2.0, 3.0, 4.5]  # the window is cut at the ends
    ranks = np.array([[0.0, 6.0], [3.0, 0.0], [0.0, 6.0]])  # steps x ranks: smoothed per rank
    assert moving_average(ranks, 3).tolist() == [[1.5, 3.0], [1.0, 4.0], [1.5, 3.0]]
    assert moving_average(x, 1) is x


def test_report_bad_input(tmp_path, runs):
    out = tmp_path / "report"
    assert_user_error(run_cli("report", "--out", out), "no runs given")
    assert_user_error(run_cli("report", tmp_path / "nope", "--out", out), "nope", "no such run folder")
    assert_user_error(
        run_cli("report", write_eval_json(tmp_path / "m.json"), "--out", out), "not a folder", "--metrics"
    )
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("report", tmp_path / "empty", "--out", out), "empty", "no metrics.jsonl")
    bad = runs[1] / "metrics.jsonl"
    lines = bad.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]))
    assert_user_error(run_cli("report", runs[0], runs[1], "--out", out), "metrics.jsonl line 3", "not valid JSON")
    (tmp_path / "x.json").write_text('{"split": "test"}')
    assert_user_error(run_cli("report", runs[0], "--metrics", tmp_path / "x.json", "--out", out), "x.json", "results")
    out.parent.joinpath("file").write_text("")
    assert_user_error(run_cli("report", runs[0], "--out", tmp_path / "file"), "is a file")
    assert not out.exists(), "nothing is written for bad input"
