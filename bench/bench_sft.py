"""SFT throughput and peak memory for the tiny model: single process and 2-process ZeRO-2 (CPU, gloo).

Run with `make bench`. Builds a synthetic world and a tiny model in a temporary folder, trains a
few steps through the real CLI, and reads tokens/s from the run's metrics.jsonl (mean over steps
after the first) and peak RSS from the finished child processes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def run(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak_kib, before) / 1024


def main() -> None:
    from convrec.data.synth import generate
    from convrec.models.tiny import init_model
    from convrec.train.distributed import torchrun_command

    table = Table(title=f"convrec sft benchmark · tiny model · {STEPS} steps · batch 16")
    for col in ("setup", "tokens/s", "wall s", "peak RSS MiB (largest process)"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", seed=0)
        init_model(tmp / "data", tmp / "model")
        sft = [
            "sft",
            "--data",
            str(tmp / "data"),
            "--model",
            str(tmp / "model"),
            "--max-steps",
            str(STEPS),
            "--eval-every",
            str(STEPS),
            "--val-samples",
            "2",
            "--batch-size",
            "16",
        ]
        setups = {
            "1 process": [sys.executable, "-m", "convrec.cli.main", *sft, "--out", str(tmp / "r1")],
            "2 processes, ZeRO-2 (gloo)": torchrun_command(
                2, *sft, "--out", str(tmp / "r2"), "--deepspeed", "ds_configs/zero2.json"
            ),
        }
        for name, cmd in setups.items():
            wall, peak = run(cmd)
            run_dir = Path(cmd[cmd.index("--out") + 1])
            rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
            tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
            table.add_row(name, f"{sum(tps) / len(tps):,.0f}", f"{wall:.1f}", f"{peak:,.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
