"""Fault injection against the teacher client: a local OpenAI-compatible server with a seeded
failure schedule and a request log (tests/fake_openai.py). Every test asserts on that log and on
the outputs: what must hold (retries, Retry-After, a rerun pays nothing, SIGKILL-and-resume loses
nothing) and the five defects of issue 15 (prose answers, a dead endpoint, Ctrl-C; the server's
bad bodies and keep-alive live in test_serve.py)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from convrec.errors import ConvrecError
from convrec.llm.client import DEAD_AFTER, LLMClient, LLMConfig, cache_key, require_all
from convrec.pipeline import teachers
from convrec.prompts import LIST_REASK, build_messages
from tests.conftest import assert_user_error, run_cli
from tests.fake_openai import PROSE, FlakyServer, client_config, list_requests, messages_key
from tests.stage1_data import small_world

TITLES = [f"Film Number {i} ({1950 + i})" for i in range(40)]
KEY_ENV = "CONVREC_TEST_NO_SUCH_KEY"


def _cfg(base_url: str, cache: Path, **kw) -> LLMConfig:
    return client_config(base_url, cache, **{"api_key_env": KEY_ENV, "concurrency": 4, "max_retries": 8, **kw})


_requests = list_requests


def _usage_log(cache: Path) -> list[dict]:
    return [json.loads(x) for x in (cache / "usage.jsonl").read_text().splitlines()]


def _dead_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what held before issue 15, pinned on the request log -----------------------------------------
def test_every_fault_kind_is_retried_then_a_rerun_sends_nothing(tmp_path: Path) -> None:
    faults = ["429", "500", "503", "hang", "drop", "truncated", "garbage"]
    schedule = dict(enumerate(faults, 1))
    with FlakyServer(TITLES, fail=0.0, garbage=0.0, hang_s=2.5, schedule=schedule) as server:
        # a generous timeout: on a loaded machine a slow normal answer must not count as a retry
        client = LLMClient(_cfg(server.base_url, tmp_path, concurrency=1, timeout=2.0))
        answers = client.complete_many(_requests(5), progress=False)
        require_all(answers, client.usage, "test")
        log = server.entries()
        # one request at a time: the first one met every fault in turn, and was retried through them
        assert [e["fault"] for e in log[:8]] == [*faults, "ok"]
        assert len({e["key"] for e in log[:8]}) == 1
        assert [e["fault"] for e in log[8:]] == ["ok"] * 4 and len(log) == 12
        assert client.usage.retries == len(faults) and client.usage.answered == 5
        outcomes = [r["outcome"] for r in _usage_log(tmp_path)]
        assert outcomes[:4] == ["HTTP 429", "HTTP 500", "HTTP 503", "APITimeoutError"]
        assert all(o != "ok" for o in outcomes[4:7]) and outcomes[7:] == ["ok"] * 5
        texts = {e["key"]: e["text"] for e in log if e.get("answered")}
        assert [a.text for a in answers] == [texts[messages_key(m)] for m in _requests(5)]

        again = LLMClient(_cfg(server.base_url, tmp_path))
        answers2 = again.complete_many(_requests(5), progress=False)
        assert len(server.entries()) == 12  # a rerun is served from the cache: 0 requests
        assert [a.text for a in answers2] == [a.text for a in answers] and all(a.cached for a in answers2)


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=0.0, garbage=0.0, schedule={1: "429"}, retry_after="1") as server:
        client = LLMClient(_cfg(server.base_url, tmp_path, backoff=0.01, max_backoff=5.0))
        (answer,) = client.complete_many(_requests(1), progress=False)
        first, second = server.entries()
        assert first["fault"] == "429" and second["fault"] == "ok" and first["key"] == second["key"]
        assert second["t"] - first["t"] >= 0.95  # the server's 1 s, not the client's 10 ms backoff
        assert answer.text is not None


def test_sigkill_then_resume_loses_and_repays_nothing(tmp_path: Path) -> None:
    """SIGKILL (no cleanup) mid-run; the rerun asks only what was not cached, and gets everything."""
    n = 30
    with FlakyServer(TITLES, fail=0.2, garbage=0.05, hang_s=0.8, seed=3) as server:
        server.delay = 0.1
        driver = textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            from convrec.llm.client import LLMClient, LLMConfig
            cfg = LLMConfig(model="fake-gpt", base_url={server.base_url!r}, api_key_env={KEY_ENV!r}, concurrency=3,
                            timeout=0.5, max_retries=8, backoff=0.01, max_backoff=0.05,
                            cache_dir=Path({str(tmp_path)!r}))
            reqs = [[{{"role": "user", "content": f"conversation {{i}}: recommend 20 movies"}}] for i in range({n})]
            LLMClient(cfg).complete_many(reqs, progress=False)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while server.counts.get("answered", 0) < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # requests the dead client left in flight finish on the server side
        server.delay = 0.0
        cfg = _cfg(server.base_url, tmp_path)
        keys = [cache_key(cfg.model, m, cfg.params()) for m in _requests(n)]
        cached_before = {k for k in keys if (tmp_path / "llm" / k[:2] / f"{k}.json").exists()}
        assert 0 < len(cached_before) < n
        sent_before = len(server.entries())

        client = LLMClient(cfg)
        answers = client.complete_many(_requests(n), progress=False)
        require_all(answers, client.usage, "test")
        asked_again = {e["key"] for e in server.entries()[sent_before:]}
        by_cache_key = dict(zip(keys, (messages_key(m) for m in _requests(n)), strict=True))
        assert not asked_again & {by_cache_key[k] for k in cached_before}  # nothing cached was paid twice
        assert len(asked_again) == n - len(cached_before)  # and everything else was asked
        assert client.usage.cached == len(cached_before)
        served = {e["key"]: e["text"] for e in server.entries() if e.get("answered")}
        assert [a.text for a in answers] == [served[messages_key(m)] for m in _requests(n)]  # nothing lost


# --- issue 15.1: a 200 with no list is re-asked, never taken as final ---------------------------
def _convs(n: int) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": f"Conversation {i}: I liked thrillers, anything similar?"}] for i in range(n)]
    return pl.DataFrame({"conversation_id": [f"c{i}" for i in range(n)], "messages": msgs})


def test_prose_answers_are_reasked_and_what_stays_prose_is_reported(tmp_path: Path) -> None:
    convs = _convs(24)
    flaky = dict(fail=0.1, garbage=0.0, kinds=("429", "500"), prose_share=0.3, stubborn=("Conversation 7:",))
    with FlakyServer(TITLES, **flaky) as server:
        cfg = _cfg(server.base_url, tmp_path, timeout=5.0)
        out = teachers.answer("fake-gpt", convs, data=tmp_path, split="train", catalog=None, n=20, seed=0, llm=cfg)
        log = [e for e in server.entries() if e.get("answered")]
        prose = [e for e in log if e["text"] == PROSE]
        reasks = [e for e in log if e["turns"] > 1]
        assert len(prose) > 3, server.counts  # the server really answered prose ...
        assert all(e["last"] == LIST_REASK.format(n=20)[:80] for e in reasks)
        assert len(reasks) == out.reasked  # ... every prose answer was asked again (counted) ...
        stubborn = [e for e in log if e["first"].startswith(build_messages(convs["messages"][7])[0]["content"][:80])]
        assert [e["turns"] for e in stubborn] == [1 + 2 * k for k in range(teachers.LIST_REASKS + 1)]  # ... bounded
        assert out.unparseable == ["c7"]  # what stayed prose is reported per conversation
        assert [teachers.has_list(t) for t in out.texts] == [i != 7 for i in range(24)]
        assert out.usage.answered == len(log)

        sent = server.requests
        again = teachers.answer("fake-gpt", convs, data=tmp_path, split="train", catalog=None, n=20, seed=0, llm=cfg)
        assert server.requests == sent  # the re-asks are cached too: a rerun pays nothing ...
        assert again.texts == out.texts and again.unparseable == ["c7"]  # ... and prose is still not taken


# --- issue 15.2: a dead endpoint fails fast and says why ----------------------------------------
@pytest.mark.parametrize(
    ("url", "cause"),
    [("refused", "connection refused"), ("http://convrec.invalid/v1", "cannot resolve")],
)
def test_a_dead_endpoint_fails_fast_with_its_cause(tmp_path: Path, url: str, cause: str) -> None:
    url = f"http://127.0.0.1:{_dead_port()}/v1" if url == "refused" else url
    # the defaults a user gets: 6 retries from 1 s backoff would take over a minute per request
    cfg = LLMConfig(model="fake-gpt", base_url=url, api_key_env=KEY_ENV, cache_dir=tmp_path, usage_log=tmp_path / "u")
    start = time.monotonic()
    with pytest.raises(ConvrecError, match=cause) as e:
        LLMClient(cfg).complete_many(_requests(40), progress=False)
    assert url in str(e.value) and "\n" not in str(e.value)
    attempts = [json.loads(x) for x in (tmp_path / "u").read_text().splitlines()]
    assert DEAD_AFTER <= len(attempts) <= cfg.concurrency  # the first wave only: no retries, no backoff
    assert all(a["attempt"] == 0 for a in attempts)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refusing_endpoint_stops_at_once(tmp_path: Path, status: int) -> None:
    with FlakyServer(TITLES) as server:
        server.status = status
        with pytest.raises(ConvrecError, match=f"HTTP {status}"):
            LLMClient(_cfg(server.base_url, tmp_path)).complete_many(_requests(30), progress=False)
        assert server.requests <= 4  # the first wave, no retries


def test_a_dead_endpoint_is_one_line_from_the_cli(tmp_path: Path) -> None:
    data = small_world(tmp_path / "data")
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    usage = tmp_path / "usage.jsonl"
    proc = run_cli(
        *("remap", "--data", data, "--teacher", "fake-gpt", "--out", tmp_path / "r.parquet", "--base-url", url),
        *("--api-key-env", KEY_ENV, "--cache-dir", tmp_path / "cache", "--usage-log", usage),
    )
    assert_user_error(proc, "connection refused", url)
    assert len(usage.read_text().splitlines()) <= 8  # default concurrency: one wave, no retries


def test_transient_failures_first_do_not_look_dead(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=0.0, garbage=0.0, schedule={1: "500", 2: "503", 3: "drop", 4: "500"}) as server:
        client = LLMClient(_cfg(server.base_url, tmp_path, concurrency=1))
        require_all(client.complete_many(_requests(2), progress=False), client.usage, "test")
        assert [e["fault"] for e in server.entries()] == ["500", "503", "drop", "500", "ok", "ok"]


def test_failures_are_counted_with_their_cause(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=1.0, garbage=0.0, kinds=("503",)) as server:
        client = LLMClient(_cfg(server.base_url, tmp_path, max_retries=1))
        answers = client.complete_many(_requests(3), progress=False)
        assert len(server.entries("503")) == 6 and client.usage.failed == 3
        with pytest.raises(ConvrecError, match=r"3 of 3 requests failed after all retries \(.*HTTP 503\)"):
            require_all(answers, client.usage, "teacher")


def test_the_progress_bar_shows_failures(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=0.0, garbage=0.0, schedule={1: "503", 2: "503", 3: "503"}) as server:
        driver = textwrap.dedent(
            f"""
            from pathlib import Path
            from convrec.llm.client import LLMClient, LLMConfig
            cfg = LLMConfig(model="fake-gpt", base_url={server.base_url!r}, api_key_env={KEY_ENV!r}, concurrency=1,
                            max_retries=0, backoff=0.01, cache_dir=Path({str(tmp_path)!r}))
            reqs = [[{{"role": "user", "content": f"conversation {{i}}"}}] for i in range(5)]
            LLMClient(cfg).complete_many(reqs, desc="teacher fake-gpt")
            """
        )
        proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "5/5" in proc.stdout and "3 failed" in proc.stdout, proc.stdout


# --- issue 15.3: Ctrl-C stops paying at once ----------------------------------------------------
def test_sigint_cancels_queued_requests_and_keeps_the_answers(tmp_path: Path) -> None:
    data = small_world(tmp_path / "data")
    cache = tmp_path / "cache"
    with FlakyServer(TITLES, fail=0.0, garbage=0.0, prose_share=0.0) as server:
        server.delay = 1.0  # without the fix the 30-odd requests left would take another 15 s
        cmd = [sys.executable, "-m", "convrec.cli.main", "remap", "--data", str(data), "--teacher", "fake-gpt"]
        cmd += ["--out", str(tmp_path / "r.parquet"), "--base-url", server.base_url, "--api-key-env", KEY_ENV]
        cmd += ["--cache-dir", str(cache), "--concurrency", "2", "--timeout", "5"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while server.counts.get("answered", 0) < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        sent_at_signal = server.requests
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
        time.sleep(1.2)  # anything still queued would arrive now
        assert proc.returncode == 130, (out, err)
        assert took < 2.5, took
        assert "Traceback" not in err
        # the requests in flight at the signal may land; no queued one is sent
        assert server.requests - sent_at_signal <= 2, (server.requests, sent_at_signal)
        total = pl.read_parquet(data / "train.parquet")["conversation_id"].n_unique()
        assert server.requests < total
        line = next(ln for ln in err.splitlines() if ln.startswith("interrupted:"))
        answered = int(line.split()[1])
        assert f"of {total} requests answered and cached" in line
        cached = list((cache / "llm").rglob("*.json"))
        assert answered <= len(cached) <= answered + 2  # in-flight answers may still have been stored
        served = {e["text"] for e in server.entries() if e.get("answered")}
        assert all(json.loads(f.read_text())["text"] in served for f in cached)  # whole answers, atomically


# --- issue 15.1, downstream: sft leaves out what the teacher never answered ----------------------
@pytest.mark.slow  # two sft CLI starts: 15 s idle, 45 s on a busy 2-core machine
def test_sft_skips_samples_marked_unparseable(tmp_path: Path) -> None:
    """Two cheap runs that stop before training: rows marked False are trained on, rows marked True are not."""
    from convrec.models.tiny import init_model

    data = small_world(tmp_path / "data")
    init_model(data, tmp_path / "model")
    train = pl.read_parquet(data / "train.parquet")
    huge = [{"title": "Long " * 3000, "year": 2000}]  # a target no context holds: sft stops on it at once
    sft_set = train.with_columns(pl.Series("ground_truth", [huge] * train.height, dtype=train["ground_truth"].dtype))
    base = ["sft", "--data", data, "--model", tmp_path / "model", "--out", tmp_path / "run", "--max-steps", "1"]
    sft_set.with_columns(pl.lit(False).alias("unparseable")).write_parquet(tmp_path / "kept.parquet")
    assert_user_error(run_cli(*base, "--sft-set", tmp_path / "kept.parquet"), "--max-length")
    sft_set.with_columns(pl.lit(True).alias("unparseable")).write_parquet(tmp_path / "marked.parquet")
    assert_user_error(run_cli(*base, "--sft-set", tmp_path / "marked.parquet"), "no training samples")
