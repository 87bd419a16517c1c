"""Shared fixtures: a tiny hand-made world and a runner for the real `convrec` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import settings

from convrec import artifacts

# CI runs the same examples every time (a new counterexample must not turn CI red at random);
# locally hypothesis keeps exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CATALOG_ROWS = [
    ("A Movie", 2000, 5.0),
    ("Bee Story", 2001, 4.0),
    ("Cats & Dogs", 2002, 3.0),
    ("Dune", 1984, 2.0),
    ("Dune", 2021, 9.0),
    ("The Matrix", 1999, 8.0),
    ("Ocean's Eleven", 2001, 7.0),
    ("Amélie", 2001, 1.0),
    ("Elf", 2003, 6.0),
    ("Fargo", 1996, 2.5),
]


def item(title: str, year: int | None) -> dict:
    return {"title": title, "year": year}


def catalog_frame(rows=CATALOG_ROWS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": [f"m{i:03d}" for i in range(len(rows))],
            "title": [r[0] for r in rows],
            "year": [r[1] for r in rows],
            "popularity": [r[2] for r in rows],
        }
    )


def samples_frame(rows: list[tuple[str, list, list]]) -> pl.DataFrame:
    """rows: (sample_id, seen items, ground-truth items) with items as (title, year)."""
    return pl.DataFrame(
        {
            "sample_id": [r[0] for r in rows],
            "conversation_id": [f"c-{r[0]}" for r in rows],
            "messages": [[{"role": "user", "content": f"conversation {r[0]}"}] for r in rows],
            "seen": [[item(*x) for x in r[1]] for r in rows],
            "ground_truth": [[item(*x) for x in r[2]] for r in rows],
        },
        schema=artifacts.SAMPLES.required,
    )


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A data folder with the hand-made catalog and three small splits."""
    d = tmp_path / "data"
    artifacts.write(catalog_frame(), d / "catalog.parquet", "catalog", stage="test")
    train = samples_frame(
        [
            ("t1", [("The Matrix", 1999)], [("Dune", 2021)]),
            ("t2", [("The Matrix", 1999)], [("Dune", 2021), ("Elf", 2003)]),
            ("t3", [("Elf", 2003)], [("Fargo", 1996)]),
            ("t4", [], [("Dune", 2021)]),
        ]
    )
    test = samples_frame(
        [
            ("s1", [("The Matrix", 1999)], [("Dune", 2021)]),
            ("s2", [("Elf", 2003)], [("Fargo", 1996), ("A Movie", 2000)]),
            ("s3", [], [("Bee Story", 2001)]),
        ]
    )
    for split, df in (("train", train), ("val", test), ("test", test)):
        artifacts.write(df, d / f"{split}.parquet", "samples", stage="test")
    return d


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run the real `convrec` CLI in a fresh interpreter (``popen``: more `subprocess.run` options)."""
    return subprocess.run(
        [sys.executable, "-m", "convrec.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        **popen,
    )


def kill_after_first_checkpoint(cmd: list[str], run: Path, *, cwd: Path | None = None, timeout: float = 300) -> None:
    """Start a training command, SIGKILL it (its whole process group) once RUN/last holds trainer state."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (run / "last" / "trainer_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a launcher and its ranks too
    proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], env: dict, timeout: float) -> tuple[subprocess.Popen, str]:
    """`convrec serve ARGS` on a free loopback port, once /health answers: (process, base URL)."""
    import time

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "convrec.cli.main", "serve", *map(str, args), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not come up in {timeout:.0f} s")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> str:
    """Terminate a `start_server` process (kill it if it hangs) and return what it printed."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line on stderr that mentions the needles, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def tiny_world(root: Path, model: str = "model") -> Path:
    """The synthetic world (seed 0) in ROOT/data and an untrained tiny student in ROOT/MODEL; returns ROOT."""
    from convrec.data.synth import generate
    from convrec.models.tiny import init_model

    generate(root / "data", seed=0)
    init_model(root / "data", root / model)
    return root


@pytest.fixture(scope="session")
def sft_world(tmp_path_factory):
    """Synthetic world, tiny model and a short SFT run (80 steps): the policy RL tests start from."""
    from convrec.data.synth import generate
    from convrec.models.tiny import init_model
    from convrec.train.sft import SFTConfig
    from convrec.train.sft import train as sft_train

    root = tmp_path_factory.mktemp("sft_world")
    generate(root / "data", seed=0)
    init_model(root / "data", root / "model")
    cfg = SFTConfig(
        data=str(root / "data"),
        model=str(root / "model"),
        out=str(root / "sft"),
        max_steps=80,
        batch_size=8,
        lr=3e-3,
        eval_every=80,
        val_samples=2,
    )
    sft_train(cfg)
    return root
