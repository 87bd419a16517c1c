"""Stage 1 through the OpenAI Batch API: the requests the cache lacks go out as batch jobs.

`BatchConfig` is a backend of `LLMClient.complete_many` (``LLMConfig.batch``), so the teacher, the
judge and ``--describe`` all use it unchanged, and their answers land in the same response cache as
online calls (same key, same record): a rerun costs 0 requests, online or batch.

- Input files follow the API's documented format, one request per line,
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``, the cache key as the
  custom id, and are split to stay within the documented limits (50,000 requests and 200 MB per
  file). They are kept in the run folder: vLLM's ``run-batch`` reads the same files.
- Every step is recorded in the run folder's journal (``jobs.json``, written atomically) before the
  next one: the file is written, uploaded (its id recorded), the batch created (its id recorded). A
  killed command rerun with the same flags polls the same jobs and submits nothing they hold; a
  job uploaded but not recorded as created is looked up among the account's batches (by its input
  file) before it is created, so not even that window submits twice.
- A finished job's output file gives answers in any order (matched by custom id); its error file
  and lines missing from both (expired, cancelled) are resubmitted, each request at most
  ``resubmits`` more times in a run. A line the API rejected for good (a 4xx other than 408/409/429) is
  not resubmitted: it comes back unanswered with its cause, as online. A batch that failed because
  the account's enqueued-token limit was reached is resubmitted after the running ones finish.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from convrec.artifacts import atomic_path, write_json
from convrec.errors import ConvrecError
from convrec.llm.client import RETRYABLE_STATUS, Answer, Interrupted, LLMClient

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # per input file (the API's documented limit)
MAX_BYTES = 200 * 1000 * 1000  # 200 MB per input file, read as the smaller (decimal) megabyte
TERMINAL = ("completed", "failed", "expired", "cancelled")
JOURNAL = "jobs.json"
QUEUE_FULL = "token_limit_exceeded"  # a failed batch's code when the account's enqueued-token limit is reached


@dataclass
class BatchConfig:
    folder: Path  # the run folder: input files and the journal of jobs
    poll_s: float = 30.0  # seconds between status polls
    resubmits: int = 2  # times a failed or expired request is sent again
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES

    def complete(self, client: LLMClient, todo: dict[str, list[int]], requests: Sequence, out: list, desc: str) -> None:
        if todo:
            _Run(self, client, todo, requests, out, desc).go()


class _Journal:
    """The run folder's record of jobs: [{file, keys, input_file_id, batch_id, status, collected}]."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL
        try:
            self.jobs: list[dict] = json.loads(self.path.read_text())["jobs"] if self.path.exists() else []
        except (OSError, ValueError, KeyError, TypeError):
            raise ConvrecError(f"{self.path}: not a readable batch journal (move it away to start over)") from None

    def save(self) -> None:
        write_json({"jobs": self.jobs}, self.path)


class _Run:
    def __init__(self, cfg: BatchConfig, client: LLMClient, todo: dict, requests: Sequence, out: list, desc: str):
        self.cfg, self.client, self.todo, self.requests, self.out, self.desc = cfg, client, todo, requests, out, desc
        self.journal = _Journal(cfg.folder)
        self.causes: dict[str, str] = {}  # key -> why it has no answer yet
        self.final: set[str] = set()  # keys that are not sent again (rejected for good, or over budget)
        self.sent: Counter = Counter()  # submissions per key in this run
        from openai import OpenAI

        # control-plane calls (upload, create, poll, download) are few: the SDK's own retries suffice
        llm = client.cfg
        self.sdk = OpenAI(
            api_key=client.api_key, base_url=llm.base_url, timeout=llm.timeout, max_retries=max(2, llm.max_retries)
        )

    # -- the plan --------------------------------------------------------------------------------
    def go(self) -> None:
        """Collect what earlier runs submitted, submit what no job holds, poll, repeat for the failed."""
        while True:
            pending = {k for k in self.todo if self.out[self.todo[k][0]] is None and k not in self.final}
            live = [j for j in self.journal.jobs if not j.get("collected") and pending & set(j["keys"])]
            held = {k for j in live for k in j["keys"]}
            fresh = [k for k in self.todo if k in pending and k not in held]
            fresh = self._within_limits(fresh)
            live += self._submit(fresh)
            if not live:
                break
            self._wait(live)
        self._give_up()

    def _within_limits(self, keys: list[str]) -> list[str]:
        """Keys sent too often already, or beyond --max-calls, stay unanswered (with their cause)."""
        ok = []
        for k in keys:
            if self.sent[k] > self.cfg.resubmits:
                self.final.add(k)
            else:
                ok.append(k)
        cap = self.client.cfg.max_calls
        if cap is not None:
            room = max(0, cap - self.client.usage.requests)
            for k in ok[room:]:
                self.final.add(k)
                self.causes[k] = "not sent: --max-calls reached"
                self.client.usage.not_sent += 1
            ok = ok[:room]
        return ok

    def _give_up(self) -> None:
        for k, idx in self.todo.items():
            if self.out[idx[0]] is None:
                cause = self.causes.get(k, "no answer")
                if not cause.startswith("not sent"):
                    self.client.usage.failed += 1
                for i in idx:
                    self.out[i] = Answer(None, error=cause)

    # -- submitting ------------------------------------------------------------------------------
    def _line(self, key: str) -> bytes:
        llm = self.client.cfg
        body = {"model": llm.model, "messages": self.requests[self.todo[key][0]], **llm.params()}
        return json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}).encode() + b"\n"

    def _chunks(self, keys: list[str]) -> list[list[tuple[str, bytes]]]:
        chunks: list[list[tuple[str, bytes]]] = [[]]
        size = 0
        for k in keys:
            line = self._line(k)
            if len(line) > self.cfg.max_bytes:
                raise ConvrecError(f"one request is {len(line):,} bytes, over the Batch API's file limit")
            if len(chunks[-1]) >= self.cfg.max_requests or size + len(line) > self.cfg.max_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append((k, line))
            size += len(line)
        return [c for c in chunks if c]

    def _submit(self, keys: list[str]) -> list[dict]:
        jobs = []
        for chunk in self._chunks(keys):
            name = f"input-{len(self.journal.jobs) + 1:04d}.jsonl"
            with atomic_path(self.cfg.folder / name) as tmp:
                tmp.write_bytes(b"".join(line for _, line in chunk))
            job = {"file": name, "keys": [k for k, _ in chunk], "status": "written", "collected": False}
            self.journal.jobs.append(job)
            self.journal.save()
            self.client.usage.requests += len(chunk)
            self.sent.update(job["keys"])
            jobs.append(job)
        for job in jobs:
            self._ensure_created(job)
        return jobs

    def _ensure_created(self, job: dict) -> None:
        """Upload and create, each step recorded before the next; a resumed job skips the steps done."""
        if job.get("batch_id"):
            return
        if not job.get("input_file_id"):
            with open(self.cfg.folder / job["file"], "rb") as fh:
                job["input_file_id"] = self.sdk.files.create(file=fh, purpose="batch").id
            job["uploaded_at"] = time.time()
            self.journal.save()
        batch = self._existing(job) or self.sdk.batches.create(
            input_file_id=job["input_file_id"],
            endpoint=ENDPOINT,
            completion_window="24h",
            metadata={"convrec_file": job["file"]},
        )
        job["batch_id"], job["status"] = batch.id, batch.status
        self.journal.save()

    def _existing(self, job: dict):
        """A batch already created from this job's file (a kill came between create and the record)."""
        since = job.get("uploaded_at", 0) - 600
        for batch in self.sdk.batches.list(limit=100):
            if batch.input_file_id == job["input_file_id"]:
                return batch
            if batch.created_at < since:  # newest first: older ones cannot be ours
                return None
        return None

    # -- waiting and collecting ------------------------------------------------------------------
    def _wait(self, jobs: list[dict]) -> None:
        for job in jobs:
            self._ensure_created(job)
        waiting = list(jobs)
        try:
            while waiting:
                for job in list(waiting):
                    batch = self.sdk.batches.retrieve(job["batch_id"])
                    if batch.status != job.get("status"):
                        job["status"] = batch.status
                        self.journal.save()
                        print(f"{self.desc}: batch {batch.id} {batch.status}", file=sys.stderr, flush=True)
                    if batch.status in TERMINAL:
                        self._collect(job, batch)
                        waiting.remove(job)
                if waiting:
                    time.sleep(self.cfg.poll_s)
        except KeyboardInterrupt:
            ids = ", ".join(j["batch_id"] for j in waiting)
            msg = (
                f"interrupted: batch jobs {ids} keep running on the server (recorded in "
                f"{self.journal.path}); rerun the same command to collect them, nothing is sent twice"
            )
            print(msg, file=sys.stderr, flush=True)
            raise Interrupted(msg) from None

    def _collect(self, job: dict, batch) -> None:
        """Answers into the cache, causes for the rest; the job is marked collected only after."""
        keys = set(job["keys"])
        if batch.status == "failed":
            errs = (batch.errors.data or []) if batch.errors else []
            why = f"{errs[0].code}: {errs[0].message}" if errs else "no reason given"
            job["collected"] = True
            self.journal.save()
            if any(e.code == QUEUE_FULL for e in errs):  # too many tokens queued: resubmitted once others finish
                for key in keys:
                    self.causes[key] = f"batch {batch.id} failed: {QUEUE_FULL}"
                return
            raise ConvrecError(f"batch {batch.id} failed validation ({why}); fix the cause and rerun")
        for line in self._lines(batch.output_file_id) + self._lines(batch.error_file_id):
            key = line.get("custom_id")
            if key in keys:
                self._take(key, line, batch.id)
        for key in keys:
            if key in self.todo and self.out[self.todo[key][0]] is None:
                self.causes.setdefault(key, f"batch {batch.status} before answering")
        job["collected"] = True
        self.journal.save()

    def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        text = self.sdk.files.content(file_id).text
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]

    def _take(self, key: str, line: dict, batch_id: str) -> None:
        """One output or error line: an answer, a cause to retry, or a cause to stop asking."""
        resp, err = line.get("response") or {}, line.get("error") or {}
        status = resp.get("status_code")
        body = resp.get("body") or {}
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "key": key[:16], "batch": batch_id}
        if status == 200:
            try:
                text = body["choices"][0]["message"]["content"] or ""
                usage = body.get("usage") or {}
                pin, pout = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            except (KeyError, IndexError, TypeError):
                self.causes[key] = "unreadable response"
            else:
                answer = self.client.store_answer(key, text, pin, pout)  # paid for: cached even if not asked now
                for i in self.todo.get(key, ()):
                    self.out[i] = answer
                self.client.log({**record, "outcome": "ok", "prompt_tokens": pin, "completion_tokens": pout})
                return
        elif status is not None:
            message = ((body.get("error") or {}).get("message") or "")[:160]
            self.causes[key] = f"HTTP {status}" + (f" ({message})" if message else "")
            if status not in RETRYABLE_STATUS:
                self.final.add(key)  # a bad request stays bad: do not pay for it again
        else:
            self.causes[key] = err.get("code") or "error without a code"
        self.client.log({**record, "outcome": self.causes[key]})
