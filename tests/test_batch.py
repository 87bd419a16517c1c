"""The Batch API path (convrec.llm.batch) and --dry-run (convrec.llm.pricing) through the official
openai client against the loopback server's Files and Batches endpoints (tests/fake_batches.py)."""

from __future__ import annotations

import json

import pytest

from convrec.errors import ConvrecError
from convrec.llm.batch import BatchConfig
from convrec.llm.client import LLMClient, require_all
from convrec.llm.pricing import DryRun, DryRunDone, load_prices, price_of
from tests.fake_openai import FlakyServer, client_config, list_requests

TITLES = [f"Movie Number {i} ({1980 + i % 40})" for i in range(60)]


def _batch_client(server, tmp_path, name="cache", **batch):
    cfg = client_config(server.base_url, tmp_path / name, max_retries=2)
    cfg.batch = BatchConfig(tmp_path / f"{name}.batches", poll_s=0.01, **batch)
    return LLMClient(cfg)


def _server(**kw):
    return FlakyServer(TITLES, fail=0.0, garbage=0.0, prose_share=0.0, **kw)


def test_batch_answers_equal_online_and_a_rerun_costs_nothing(tmp_path):
    requests = list_requests(12) + list_requests(3)  # duplicates are sent once
    with _server() as online:
        expected = LLMClient(client_config(online.base_url, tmp_path / "online")).complete_many(requests)
    with _server() as server:
        client = _batch_client(server, tmp_path)
        got = client.complete_many(requests)
        assert [a.text for a in got] == [a.text for a in expected]
        assert client.usage.requests == 12 and client.usage.answered == 12
        assert len(server.batches.lines) == 12 and not server.batches.submitted_twice()
        before = (len(server.batches.created), server.batches.uploads, server.requests)
        again = _batch_client(server, tmp_path)
        assert [a.text for a in again.complete_many(requests)] == [a.text for a in expected]
        assert again.usage.requests == 0 and again.usage.cached == 15
        assert (len(server.batches.created), server.batches.uploads, server.requests) == before
    # the same cache serves online calls: an online client after the batch one sends nothing
    with _server() as idle:
        cfg = client_config(idle.base_url, tmp_path / "cache")
        assert [a.text for a in LLMClient(cfg).complete_many(requests)] == [a.text for a in expected]
        assert idle.requests == 0


def test_input_files_respect_the_request_and_byte_limits(tmp_path):
    requests = list_requests(10)
    with _server() as server:
        client = _batch_client(server, tmp_path, max_requests=4)
        assert all(a.text for a in client.complete_many(requests))
        assert [server.batches.batches[b]["request_counts"]["total"] for b in server.batches.created] == [4, 4, 2]
    with _server() as server:
        one = len(json.dumps({"x": requests[0]})) + 200  # about one line
        client = _batch_client(server, tmp_path, name="bytes", max_bytes=2 * one)
        assert all(a.text for a in client.complete_many(requests))
        fake = server.batches
        sizes = [len(fake.files[fake.batches[b]["input_file_id"]]["data"]) for b in fake.created]
        assert len(sizes) >= 5 and max(sizes) <= 2 * one
    for f in (tmp_path / "cache.batches").glob("input-*.jsonl"):  # the documented line format
        for line in f.read_text().splitlines():
            obj = json.loads(line)
            assert set(obj) == {"custom_id", "method", "url", "body"} and obj["url"] == "/v1/chat/completions"


@pytest.mark.parametrize("fate", ["expired", "cancelled"])
def test_expired_or_cancelled_lines_and_line_errors_are_resubmitted_alone(tmp_path, fate):
    requests = list_requests(20)
    with _server() as server:
        server.batches.fates = [fate]
        server.batches.line_errors = 0.2
        client = _batch_client(server, tmp_path)
        answers = client.complete_many(requests)
        require_all(answers, client.usage, "test")
        first, *later = server.batches.created
        assert later, "the unanswered lines went out again"
        answered_first = {
            json.loads(ln)["custom_id"]
            for ln in server.batches.files[server.batches.batches[first]["output_file_id"]]["data"].splitlines()
        }
        resent = {ln["custom_id"] for ln in server.batches.lines if ln["batch"] != first}
        assert answered_first and not answered_first & resent  # nothing answered is paid for twice
        assert len(answered_first) + len(resent) >= 20
        assert client.usage.requests == len(server.batches.lines)


def test_a_rejected_line_is_not_resubmitted_and_stops_the_stage_in_one_line(tmp_path):
    requests = list_requests(6)
    with _server() as server:
        server.batches.rejected = ("conversation 3:",)
        client = _batch_client(server, tmp_path)
        answers = client.complete_many(requests)
        assert answers[3].text is None and "HTTP 400" in answers[3].error
        assert sum(a.text is not None for a in answers) == 5
        assert len(server.batches.created) == 1  # a bad request stays bad: not sent again
        with pytest.raises(ConvrecError, match="1 of 6 requests failed"):
            require_all(answers, client.usage, "teacher")


def test_a_batch_that_fails_validation_is_one_line(tmp_path):
    with _server() as server:
        server.batches.fates = ["failed"]
        with pytest.raises(ConvrecError, match=r"batch batch_0001 failed validation"):
            _batch_client(server, tmp_path).complete_many(list_requests(3))


def test_a_batch_over_the_enqueued_token_limit_is_resubmitted(tmp_path):
    requests = list_requests(6)
    with _server() as server:
        server.batches.fates = ["completed", "token_limit_exceeded"]
        client = _batch_client(server, tmp_path, max_requests=3)
        answers = client.complete_many(requests)
        assert all(a.text for a in answers)
        assert len(server.batches.created) == 3  # the refused file went out once more, after the others
        assert len(server.batches.lines) == 9 and client.usage.requests == 9


def test_a_kill_between_create_and_its_record_finds_the_batch_instead_of_creating_another(tmp_path):
    requests = list_requests(5)
    with _server() as server:
        _batch_client(server, tmp_path).complete_many(requests)
        journal = tmp_path / "cache.batches" / "jobs.json"
        jobs = json.loads(journal.read_text())
        for job in jobs["jobs"]:  # as if killed right after batches.create returned
            job.pop("batch_id")
            job["collected"] = False
        journal.write_text(json.dumps(jobs))
        for f in (tmp_path / "cache" / "llm").rglob("*.json"):
            f.unlink()
        client = _batch_client(server, tmp_path)
        assert all(a.text for a in client.complete_many(requests))
        assert len(server.batches.created) == 1 and server.batches.uploads == 1
        assert client.usage.requests == 0  # collected, not sent


def test_max_calls_caps_the_lines_submitted(tmp_path):
    with _server() as server:
        client = _batch_client(server, tmp_path)
        client.cfg.max_calls = 4
        answers = client.complete_many(list_requests(7))
        assert sum(a.text is not None for a in answers) == 4 and len(server.batches.lines) == 4
        with pytest.raises(ConvrecError, match="--max-calls reached"):
            require_all(answers, client.usage, "teacher")


def test_dry_run_counts_uncached_requests_and_prices_them(tmp_path):
    with _server() as server:
        cfg = client_config(server.base_url, tmp_path / "c")
        LLMClient(cfg).complete_many(list_requests(2))  # two answers cached
        cfg.batch = DryRun(load_prices(None), batch=True)
        cfg.model = "gpt-4o-mini-2024-07-18"
        with pytest.raises(DryRunDone) as done:
            LLMClient(cfg).complete_many(list_requests(5))
        est = done.value.estimate
        assert server.requests == 2  # the dry run sent nothing
    # the model name changed the cache key, so all 5 are uncached here
    assert (est.requests, est.cached) == (5, 0)
    assert est.input_tokens > 0 and est.max_output_tokens == 5 * cfg.max_tokens
    assert est.input_usd == pytest.approx(est.input_tokens * 0.075 / 1e6)  # gpt-4o-mini at half price


def test_price_table_override_and_bad_files(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"my-teacher": {"input": 1.0, "output": 2.0, "batch_input": 0.2, "batch_output": 0.4}}))
    table = load_prices(f)
    assert price_of("my-teacher", table, batch=False) == (1.0, 2.0)
    assert price_of("my-teacher", table, batch=True) == (0.2, 0.4)
    assert price_of("unknown-model", table, batch=False) is None
    f.write_text(json.dumps({"m": {"input": -1, "output": 2}}))
    with pytest.raises(ConvrecError, match="non-negative"):
        load_prices(f)
    f.write_text("{not json")
    with pytest.raises(ConvrecError, match="not a readable JSON price table"):
        load_prices(f)
