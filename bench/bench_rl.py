"""Seconds per RL step (rollout and update separately) and rollout tokens/s for the tiny model.

Run with `make bench` (or `python bench/bench_rl.py [--init SFT_MODEL --data DIR]`). Without
--init it builds a synthetic world and a tiny model and gives it a short SFT first, so the
rollouts are real lists. Each level (Rank-GRPO, GRPO, GSPO) runs a few steps through the real CLI
with the default shape (8 samples × 4 prompts, 20-item lists); the table shows means over the
steps after the first, read from the run's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "convrec.cli.main", *args], check=True, cwd=ROOT, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", help="an SFT model folder (default: a tiny model after a short SFT)")
    ap.add_argument("--data", help="its data folder (default: a synthetic world)")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, init = args.data, args.init
        if init is None:
            from convrec.data.synth import generate
            from convrec.models.tiny import init_model

            data = str(tmp / "data")
            generate(data, seed=0)
            init_model(data, tmp / "model")
            cli("sft", "--data", data, "--model", str(tmp / "model"), "--out", str(tmp / "sft"),
                "--max-steps", "150", "--eval-every", "150", "--val-samples", "2", "--lr", "2e-3")  # fmt: skip
            init = str(tmp / "sft" / "best")
        table = Table(title=f"convrec rl benchmark · {args.steps} steps · G=8 × 4 prompts · N=20 · hf engine")
        for col in ("level", "mu", "rollout s/step", "update s/step", "total s/step", "rollout tokens/s", "items/list"):
            table.add_column(col, justify="left" if col == "level" else "right")
        for level, mu in (("rank", 1), ("rank", 2), ("token", 1), ("sequence", 1)):
            run = tmp / f"rl_{level}_{mu}"
            cli("rl", "--model", init, "--data", data, "--out", str(run), "--level", level, "--mu", str(mu),
                "--max-steps", str(args.steps), "--eval-every", str(args.steps), "--val-samples", "2")  # fmt: skip
            rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
            rows = [r for r in rows if "rollout_s" in r][1:]

            def mean(key: str, rows=rows) -> float:
                return sum(r[key] for r in rows) / len(rows)

            table.add_row(
                level,
                str(mu),
                f"{mean('rollout_s'):.2f}",
                f"{mean('update_s'):.2f}",
                f"{mean('rollout_s') + mean('update_s'):.2f}",
                f"{mean('rollout_tokens_per_s'):,.0f}",
                f"{mean('items_per_list'):.1f}",
            )
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
