"""The OpenAI-compatible client against a real loopback server that fails ~30 % of requests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from convrec import artifacts
from convrec.errors import ConvrecError
from convrec.llm.client import LLMClient, LLMConfig, require_all
from convrec.pipeline.common import conversations
from convrec.prompts import build_messages
from tests.conftest import assert_user_error, run_cli
from tests.fake_openai import FlakyServer, client_config, list_requests
from tests.stage1_data import small_world

TITLES = [f"Film Number {i} ({1950 + i})" for i in range(40)]


def _cfg(server: FlakyServer, cache: Path, **kw) -> LLMConfig:
    return client_config(server.base_url, cache, **{"concurrency": 8, "max_retries": 12, **kw})


_requests = list_requests


def test_retries_through_faults_and_a_rerun_pays_nothing(tmp_path: Path) -> None:
    # a generous timeout: on a loaded machine a slow normal answer must not count as an extra retry
    with FlakyServer(TITLES, fail=0.3, hang_s=2.5) as server:
        client = LLMClient(_cfg(server, tmp_path, timeout=2.0))
        answers = client.complete_many(_requests(60), progress=False)
        require_all(answers, client.usage, "test")
        assert all(a.text is not None and not a.cached for a in answers)
        faults = sum(server.counts.get(k, 0) for k in ("429", "500", "hang", "garbage"))
        assert faults >= 10, server.counts  # the server really failed, the client really retried
        assert client.usage.retries == faults
        assert client.usage.answered == 60
        assert client.usage.prompt_tokens > 0 and client.usage.completion_tokens > 0
        log = [json.loads(x) for x in (tmp_path / "usage.jsonl").read_text().splitlines()]
        assert len(log) == server.requests
        assert {r["outcome"] for r in log} >= {"ok", "HTTP 429", "HTTP 500"}
        assert sum(r["prompt_tokens"] for r in log) == client.usage.prompt_tokens

        before = server.requests
        again = LLMClient(_cfg(server, tmp_path))
        answers2 = again.complete_many(_requests(60), progress=False)
        assert server.requests == before  # zero new calls
        assert [a.text for a in answers2] == [a.text for a in answers]
        assert all(a.cached for a in answers2)


def test_max_calls_stops_and_the_rerun_continues(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=0.0, garbage=0.0) as server:
        client = LLMClient(_cfg(server, tmp_path, max_calls=5, concurrency=2))
        answers = client.complete_many(_requests(20), progress=False)
        assert server.requests == 5
        assert sum(a.text is not None for a in answers) == 5
        with pytest.raises(ConvrecError, match="--max-calls reached with 15 of 20"):
            require_all(answers, client.usage, "teacher")
        rest = LLMClient(_cfg(server, tmp_path))
        answers = rest.complete_many(_requests(20), progress=False)
        require_all(answers, rest.usage, "teacher")
        assert server.requests == 20 and rest.usage.cached == 5


def test_a_bad_key_stops_at_once_with_one_line(tmp_path: Path) -> None:
    with FlakyServer(TITLES) as server:
        server.status = 401
        client = LLMClient(_cfg(server, tmp_path))
        with pytest.raises(ConvrecError, match="HTTP 401"):
            client.complete_many(_requests(30), progress=False)
        assert server.requests < 30  # no retries on a 4xx, the pool is cancelled


def test_identical_requests_are_sent_once(tmp_path: Path) -> None:
    with FlakyServer(TITLES, fail=0.0, garbage=0.0) as server:
        client = LLMClient(_cfg(server, tmp_path))
        answers = client.complete_many(_requests(3) * 4, progress=False)
        assert server.requests == 3 and len(answers) == 12


def test_missing_key_without_base_url_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CONVREC_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConvrecError, match="CONVREC_TEST_NO_SUCH_KEY"):
        LLMClient(LLMConfig(model="gpt-4o", api_key_env="CONVREC_TEST_NO_SUCH_KEY", cache_dir=tmp_path))


@pytest.mark.slow  # about a minute on a busy 2-core machine (embeddings, three CLI stages)
def test_remap_and_reflect_against_a_flaky_server(tmp_path: Path, stage1_cache: Path) -> None:
    """Real CLI: every conversation is present despite 30 % failures; a rerun makes zero new calls."""
    data = small_world(tmp_path / "data")
    titles = [f"{t} ({y})" for t, y in pl.read_parquet(data / "catalog.parquet").select("title", "year").iter_rows()]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "embeddings").symlink_to(stage1_cache / "embeddings", target_is_directory=True)
    flags = ["--base-url", None, "--api-key-env", "CONVREC_TEST_NO_SUCH_KEY", "--timeout", "0.5"]
    flags += ["--backoff", "0.01", "--max-retries", "12", "--cache-dir", str(cache)]
    convs = conversations(pl.read_parquet(data / "train.parquet"))
    # two conversations the teacher never answers with a list, however often it is asked
    stubborn = tuple(build_messages(m)[0]["content"] for m in convs["messages"].to_list()[:2])
    with FlakyServer(titles, fail=0.3, hang_s=0.8, stubborn=stubborn) as server:
        flags[1] = server.base_url
        remap = ["remap", "--data", data, "--teacher", "fake-gpt", "--out", tmp_path / "remap.parquet", "--describe"]
        # killed mid-run (SIGKILL, no cleanup): the answers it got are on disk
        server.delay = 0.2
        killed = subprocess.Popen(
            [sys.executable, "-m", "convrec.cli.main", *map(str, remap), *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while server.counts.get("answered", 0) < 8 and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.02)
        killed.kill()
        killed.wait()
        time.sleep(server.delay + 0.5)  # let the server finish the requests the dead client left in flight
        server.delay = 0.0
        cached_before = len(list((cache / "llm").rglob("*.json")))
        answered_before = server.counts.get("answered", 0)
        assert cached_before > 0 and not (tmp_path / "remap.parquet").exists()

        proc = run_cli(*remap, "--raw-out", tmp_path / "teacher.parquet", *flags)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        answered_now = server.counts.get("answered", 0) - answered_before
        cached_after = len(list((cache / "llm").rglob("*.json")))
        assert cached_after - cached_before == answered_now  # it continued: nothing cached was asked again
        faults = sum(server.counts.get(k, 0) for k in ("429", "500", "hang", "garbage"))
        assert faults > 0, server.counts
        train = pl.read_parquet(data / "train.parquet")
        out = artifacts.read(tmp_path / "remap.parquet", "predictions")
        raw = artifacts.read(tmp_path / "teacher.parquet", "predictions")
        assert set(out["sample_id"]) == set(train["sample_id"]) == set(raw["sample_id"])
        assert out["items"].list.len().min() == 20  # every conversation got a full catalog list
        refusals = raw.unique("conversation_id").filter(pl.col("items").list.len() == 0)
        assert set(refusals["conversation_id"]) == set(convs["conversation_id"][:2])  # re-asked, still prose
        assert refusals["text"].str.contains("sorry").all()
        assert server.counts["unparseable answer"] > 2 * 3  # other prose answers were fixed by a re-ask
        assert int(out.unique("conversation_id")["unparseable"].sum()) == refusals.height  # marked, counted
        assert "answers with nothing parseable" in proc.stdout and "teacher re-asks" in proc.stdout
        assert "no list from the teacher for 2 conversations" in proc.stdout
        meta = artifacts.provenance(tmp_path / "remap.parquet")["params"]
        assert sorted(meta["teacher_unparseable"]) == sorted(convs["conversation_id"][:2])  # reported per sample
        assert meta["teacher_reasked"] >= 2 * 2
        assert server.counts.get("describe", 0) > 0  # out-of-catalog titles were described (and cached)

        sent = server.requests
        proc = run_cli(*remap, *flags)
        assert proc.returncode == 0, proc.stderr
        assert server.requests == sent  # the rerun is served from the cache

        reflect = ["reflect", "--in", tmp_path / "remap.parquet", "--data", data, "--judge", "fake-gpt"]
        proc = run_cli(*reflect, "--out", tmp_path / "reflect.parquet", "--top-n", "30", "--chunk", "15", *flags)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert server.counts.get("judge not json", 0) > 0 and server.counts.get("judge out of range", 0) > 0
        res = artifacts.read(tmp_path / "reflect.parquet", "predictions")
        assert set(res["sample_id"]) == set(train["sample_id"])
        assert res["judge_order"].list.len().min() == 30
        ratings = res.select(pl.col("candidates").list.eval(pl.element().struct.field("rating"))).explode("candidates")
        assert ratings["candidates"].drop_nulls().is_between(-2, 2).all()
        assert "re-asked" in proc.stdout and "ratings out of range" in proc.stdout

        # the SFT set carries remap's mark, so sft can leave those demonstrations out
        proc = run_cli("adjust", "--in", tmp_path / "reflect.parquet", "--data", data, "--out", tmp_path / "sft.pq")
        assert proc.returncode == 0, proc.stderr + proc.stdout
        sft = artifacts.read(tmp_path / "sft.pq", "samples")
        marked = set(sft.filter(pl.col("unparseable"))["conversation_id"])
        assert marked == set(convs["conversation_id"][:2]) and sft.height == train.height


def test_llm_teacher_without_key_is_one_line(tmp_path: Path, tiny_data: Path) -> None:
    proc = run_cli(
        "remap",
        "--data",
        tiny_data,
        "--teacher",
        "gpt-4o",
        "--api-key-env",
        "CONVREC_TEST_NO_SUCH_KEY",
        "--out",
        tmp_path / "r.parquet",
    )
    assert_user_error(proc, "CONVREC_TEST_NO_SUCH_KEY")


@pytest.fixture(scope="module")
def stage1_cache(tmp_path_factory) -> Path:
    """One embedding cache for the module: the catalog is embedded once."""
    d = tmp_path_factory.mktemp("stage1-cache")
    (d / "embeddings").mkdir()
    return d
