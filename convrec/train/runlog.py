"""A training run's folder: config.json, metrics.jsonl, TensorBoard when installed, the progress bar.

Shared by the sft and rl loops. Only rank 0 writes. On `--resume` the records a killed run wrote
after its last checkpoint are dropped, so metrics.jsonl reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from convrec import artifacts


def _tensorboard(folder: Path):
    """A SummaryWriter when tensorboard is installed; metrics.jsonl is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def _step(line: str) -> float:
    """A record's step; a line cut short by a kill mid-write counts as past every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class RunLog:
    def __init__(self, out: Path, config: dict, *, resumed_step: int | None, main: bool):
        self.path, self.main, self.board = Path(out) / "metrics.jsonl", main, None
        if not main:
            return
        Path(out).mkdir(parents=True, exist_ok=True)
        artifacts.write_json(config, Path(out) / "config.json")
        if resumed_step is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _step(ln) <= resumed_step]
            with artifacts.atomic_path(self.path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in kept))
        elif resumed_step is None:
            self.path.write_text("")
        self.board = _tensorboard(Path(out) / "tensorboard")

    def __call__(self, rec: dict) -> None:
        """Append one record (it must hold "step")."""
        if not self.main:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.board is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.board.add_scalar(k, v, rec["step"])


def progress_bar(name: str, console, main: bool) -> Progress:
    return Progress(
        TextColumn(name),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not main,
    )


def prune_deepspeed_states(out: Path, step: int) -> None:
    """Keep only the newest DeepSpeed state (RUN/ds_state/stepN)."""
    for old in (Path(out) / "ds_state").glob("step*"):
        if old.name != f"step{step}":
            shutil.rmtree(old, ignore_errors=True)
