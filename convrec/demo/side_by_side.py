"""Independent `convrec` commands as child processes sharing the cores (the demo's two RL runs).

A tiny model's RL step is latency-bound: one process uses 2 cores poorly, two processes of one
thread each finish both runs sooner (measured on the default world: GRPO and Rank-GRPO, 20 steps
each, 47 s side by side against 61 s one after the other, starts included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from convrec import CLI_MODULE


@dataclass
class Finished:
    code: int
    seconds: float
    log: Path


def cores() -> int:
    return os.cpu_count() or 1


def tail(log: Path, lines: int = 5) -> str:
    """The last ``lines`` non-empty lines of a log, joined on one line."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return " | ".join([ln.strip() for ln in text if ln.strip()][-lines:])


def run(commands: Sequence[list[str]], logs: Sequence[Path], poll_s: float = 0.2) -> list[Finished]:
    """Run `convrec WORDS` for each command at once, ``cores() // len(commands)`` threads each (at
    least 1), stdout and stderr to its log; wait for all of them. Interrupted, it stops them all."""
    threads = max(1, cores() // max(1, len(commands)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0, procs = time.perf_counter(), []
    try:
        for words, log in zip(commands, logs, strict=True):
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:  # the child holds its own copy of the descriptor
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", CLI_MODULE, *words], stdout=f, stderr=subprocess.STDOUT, env=env
                    )
                )
        ends: dict[int, float] = {}
        while len(ends) < len(procs):
            for i, p in enumerate(procs):
                if i not in ends and p.poll() is not None:
                    ends[i] = time.perf_counter() - t0
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [Finished(p.returncode, ends[i], log) for i, (p, log) in enumerate(zip(procs, logs, strict=True))]
