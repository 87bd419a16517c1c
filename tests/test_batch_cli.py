"""`remap --batch` / `reflect --batch` / `--dry-run` through the real CLI against the loopback server:
a batch run killed while its jobs are in progress resumes them, submits no request twice, and ends
with the same Stage 1 output as an uninterrupted batch run and as an online run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from convrec.prompts import build_messages
from tests.conftest import assert_user_error, run_cli
from tests.fake_openai import FlakyServer
from tests.stage1_data import small_world

KEY_ENV = "CONVREC_TEST_NO_SUCH_KEY"


def _titles(data: Path) -> list[str]:
    cat = pl.read_parquet(data / "catalog.parquet")
    return [f"{t} ({y})" for t, y in zip(cat["title"], cat["year"], strict=True)]


def _flags(server: FlakyServer, cache: Path) -> list:
    return ["--base-url", server.base_url, "--api-key-env", KEY_ENV, "--cache-dir", cache]


def _stage1(data: Path, out: Path, server: FlakyServer, cache: Path, *batch: str) -> None:
    remap = ["remap", "--data", data, "--teacher", "fake-gpt", "--out", out / "remap.parquet"]
    proc = run_cli(*remap, *_flags(server, cache), *batch)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    reflect = ["reflect", "--in", out / "remap.parquet", "--data", data, "--judge", "fake-gpt", "--top-n", "30"]
    proc = run_cli(*reflect, "--out", out / "reflect.parquet", *_flags(server, cache), *batch)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def _kill_when_in_progress(cmd: list, journal: Path, server: FlakyServer, timeout: float = 240) -> None:
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        jobs = json.loads(journal.read_text())["jobs"] if journal.exists() else []
        ids = [j.get("batch_id") for j in jobs]
        if ids and all(ids) and all(server.batches.batches[i]["status"] == "in_progress" for i in ids):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before its jobs were in progress"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_batch_killed_and_rerun_equals_uninterrupted_and_online(tmp_path: Path) -> None:
    data = small_world(tmp_path / "data")
    titles = _titles(data)
    (tmp_path / "online").mkdir()
    with FlakyServer(titles, fail=0.0, garbage=0.0) as online:
        _stage1(data, tmp_path / "online", online, tmp_path / "cache-online")

    out = tmp_path / "batch"
    out.mkdir()
    batch = ["--batch", "--batch-poll", "0.05"]
    with FlakyServer(titles, fail=0.0, garbage=0.0) as server:
        server.batches.in_progress_polls = 60  # ~3 s in progress: time to kill the command there
        cache = tmp_path / "cache-batch"
        remap = ["remap", "--data", data, "--teacher", "fake-gpt", "--out", out / "remap.parquet"]
        cmd = [sys.executable, "-m", "convrec.cli.main", *map(str, [*remap, *_flags(server, cache), *batch])]
        journal = Path(f"{out / 'remap.parquet'}.batches") / "jobs.json"
        _kill_when_in_progress(cmd, journal, server)
        killed_jobs = [j["batch_id"] for j in json.loads(journal.read_text())["jobs"]]
        assert not (out / "remap.parquet").exists() and len(server.batches.created) == len(killed_jobs)

        server.batches.in_progress_polls = 2
        _stage1(data, out, server, cache, *batch)
        assert not server.batches.submitted_twice()  # no request went out in two batch lines
        assert server.requests == 0  # and none went out online
        jobs = json.loads(journal.read_text())["jobs"]
        assert [j["batch_id"] for j in jobs[: len(killed_jobs)]] == killed_jobs  # the same jobs were polled
        assert len(server.batches.lines) > 40  # the teacher's 40 conversations and their re-asks

        lines = len(server.batches.lines)
        proc = run_cli(*remap, *_flags(server, cache), *batch)
        assert proc.returncode == 0, proc.stderr
        assert len(server.batches.lines) == lines  # a rerun costs 0 requests

        reflect = ["reflect", "--in", out / "remap.parquet", "--data", data, "--judge", "fake-gpt", "--top-n", "30"]
        proc = run_cli(*reflect, "--out", out / "again.parquet", *_flags(server, cache), "--dry-run")
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"requests to send\s+│\s+0\s", proc.stdout), proc.stdout  # every judge answer is cached
        assert not (out / "again.parquet").exists()

    for name in ("remap.parquet", "reflect.parquet"):  # identical answers, identical Stage 1 output
        assert_frame_equal(pl.read_parquet(out / name), pl.read_parquet(tmp_path / "online" / name))


def test_dry_run_counts_and_prices_without_sending(tmp_path: Path) -> None:
    data = small_world(tmp_path / "data")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"fake-gpt": {"input": 10.0, "output": 30.0}}))
    with FlakyServer(_titles(data), fail=0.0, garbage=0.0) as server:
        remap = ["remap", "--data", data, "--teacher", "fake-gpt", "--out", tmp_path / "r.parquet"]
        proc = run_cli(*remap, *_flags(server, tmp_path / "cache"), "--dry-run", "--batch", "--prices", prices)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert server.requests == 0 and not server.batches.created and not (tmp_path / "r.parquet").exists()
        convs = pl.read_parquet(data / "train.parquet")["messages"].to_list()
        distinct = len({json.dumps(build_messages(m, 20)) for m in convs})  # identical requests are sent once
        assert re.search(rf"requests to send\s+│\s+{distinct}\s", proc.stdout), proc.stdout
        assert "half price" in proc.stdout and "$" in proc.stdout and "unknown" not in proc.stdout
        proc = run_cli(*remap, *_flags(server, tmp_path / "cache"), "--dry-run", "--prices", tmp_path / "none.json")
        assert_user_error(proc, "none.json", "not a readable JSON price table")
        proc = run_cli(*remap, *_flags(server, tmp_path / "cache"), "--batch", "--batch-poll", "-1")
        assert_user_error(proc, "--batch-poll")
