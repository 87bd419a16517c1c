"""Rank-GRPO vs token-level GRPO vs sequence-level GSPO from one SFT model, same rollout budget.

    python bench/rl_compare.py --init RUN/best --data DIR --out OUT [--levels rank,token,sequence]
        [--mus 1,2] [--seeds 0,1] [--steps 60] [--parallel 2] [-- extra convrec rl flags]

Every run gets the same number of steps × prompts × samples (the same rollouts budget); runs go
`--parallel` at a time with one torch thread each. Afterwards the SFT model and every run's
`last` and `best` are evaluated on the test split (greedy, `convrec generate` + `convrec eval`),
and the table prints test and validation NDCG@20 with the lowest rollout in-catalog ratio seen
during training. Finished runs are skipped on a rerun, so a killed comparison continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "convrec.cli.main"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def finished(run: Path, steps: int) -> bool:
    return any(r.get("step") == steps and "val_ndcg@20" in r for r in records(run))


def test_metrics(model: Path, data: str, out: Path) -> dict:
    """Greedy test-split predictions of a model folder, evaluated; cached as JSON beside them."""
    summary = out.with_suffix(".json")
    if not summary.exists():
        pred = out.with_suffix(".parquet")
        subprocess.run([*CLI, "generate", "--model", str(model), "--data", data, "--split", "test", "--out", str(pred)],
                       check=True, capture_output=True, env=ENV)  # fmt: skip
        subprocess.run([*CLI, "eval", str(pred), "--data", data, "--split", "test", "--json", str(summary)],
                       check=True, capture_output=True, env=ENV)  # fmt: skip
    return next(iter(json.loads(summary.read_text())["results"].values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--levels", default="rank,token,sequence")
    ap.add_argument("--mus", default="1")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--no-best", action="store_true", help="evaluate each run's last policy only")
    ap.add_argument("extra", nargs="*", help="extra `convrec rl` flags, after --")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [
        (level, int(mu), int(seed))
        for seed in args.seeds.split(",")
        for mu in args.mus.split(",")
        for level in args.levels.split(",")
    ]
    pending = [p for p in plan if not finished(args.out / f"{p[0]}_mu{p[1]}_s{p[2]}", args.steps)]
    running: list[subprocess.Popen] = []
    console = Console(width=140)
    while pending or running:
        running = [p for p in running if p.poll() is None]
        while pending and len(running) < args.parallel:
            level, mu, seed = pending.pop(0)
            run = args.out / f"{level}_mu{mu}_s{seed}"
            cmd = [*CLI, "rl", "--model", args.init, "--data", args.data, "--out", str(run), "--level", level,
                   "--mu", str(mu), "--seed", str(seed), "--max-steps", str(args.steps), *args.extra]  # fmt: skip
            if (run / "last" / "trainer_state.pt").exists():
                cmd.append("--resume")
            console.print(f"start {run.name}")
            log = open(args.out / f"{run.name}.log", "a")  # noqa: SIM115 (closed with the process)
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV))
        time.sleep(5)

    table = Table(title=f"RL from {args.init} · {args.steps} steps each · test split (greedy)")
    for col in ("run", "test N@20 last", "test N@20 best", "test R@20 last", "val N@20 start → end (max)",
                "min rollout in-cat", "test in-cat last", "test format-valid last",
                "test duplicates last"):  # fmt: skip
        table.add_column(col, justify="left" if col == "run" else "right")
    jobs = [(Path(args.init), args.out / "test_sft")]
    for level, mu, seed in plan:
        name = f"{level}_mu{mu}_s{seed}"
        cks = ("last",) if args.no_best else ("last", "best")
        jobs += [(args.out / name / ck, args.out / f"test_{name}_{ck}") for ck in cks]
    with ThreadPoolExecutor(args.parallel) as pool:  # each job is its own process
        list(pool.map(lambda j: test_metrics(j[0], args.data, j[1]), jobs))
    sft = test_metrics(Path(args.init), args.data, args.out / "test_sft")
    table.add_row(
        "SFT", f"{sft['ndcg@20']:.4f}", "", f"{sft['recall@20']:.4f}", "", "", f"{sft['in_catalog']:.1%}",
        f"{sft['format_valid']:.1%}", f"{sft['duplicate_ratio']:.1%}",
    )  # fmt: skip
    for level, mu, seed in plan:
        run = args.out / f"{level}_mu{mu}_s{seed}"
        recs = records(run)
        vals = [r["val_ndcg@20"] for r in recs if "val_ndcg@20" in r]
        incat = [r["in_catalog"] for r in recs if "in_catalog" in r and "loss" in r]
        last = test_metrics(run / "last", args.data, args.out / f"test_{run.name}_last")
        best = last if args.no_best else test_metrics(run / "best", args.data, args.out / f"test_{run.name}_best")
        table.add_row(
            run.name,
            f"{last['ndcg@20']:.4f}",
            f"{best['ndcg@20']:.4f}",
            f"{last['recall@20']:.4f}",
            f"{vals[0]:.4f} → {vals[-1]:.4f} ({max(vals):.4f})",
            f"{min(incat):.1%}",
            f"{last['in_catalog']:.1%}",
            f"{last['format_valid']:.1%}",
            f"{last['duplicate_ratio']:.1%}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
