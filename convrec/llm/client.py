"""An OpenAI-compatible chat client built for batch stages that must finish, resume and not overspend.

- Any model behind any base URL (OpenAI, vLLM, llama.cpp, a test server); the key comes from
  ``OPENAI_API_KEY`` or the variable named by ``api_key_env`` (local servers get a dummy key).
- Bounded concurrency with a thread pool: calls are network-bound, and the openai client is sync.
- Retries on 429, 5xx, timeouts, dropped connections and unreadable bodies, with exponential
  backoff and jitter (a ``Retry-After`` header is honoured); other 4xx stop the stage at once
  with one line, since retrying a bad key or model name only burns time.
- A dead endpoint fails fast: when the first ``DEAD_AFTER`` attempts of a run all fail the same
  non-transient way (connection refused, a host that does not resolve) before any answer came,
  the stage stops with that cause in its one line instead of retrying every request for minutes.
- Ctrl-C stops paying at once: queued requests are dropped, backoff sleeps end, requests in flight
  are abandoned (the workers are daemon threads), what was answered stays cached, and the stage
  raises `Interrupted` saying how much was answered.
- An on-disk response cache keyed by sha256(model, messages, parameters), one JSON file per call
  written atomically: a rerun or a resumed run never pays twice for an answer it already has.
- ``max_calls`` caps the HTTP requests a run may send (retries included); the rest come back as
  not made, and the caller says how to continue.
- A usage log, one JSON line per request: tokens in/out, latency, attempt, outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from convrec.artifacts import atomic_path
from convrec.errors import ConvrecError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
DEAD_AFTER = 3  # first attempts failing the same non-transient way that make an endpoint dead


class Backend(Protocol):
    """Another way to answer the uncached requests (the Batch API, a dry run): fills ``out[i]`` for
    every index in ``todo`` (cache key -> indices of identical requests), caching through the client."""

    def complete(
        self, client: LLMClient, todo: dict[str, list[int]], requests: Sequence, out: list, desc: str
    ) -> None: ...


@dataclass
class LLMConfig:
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6
    backoff: float = 1.0  # the first retry waits about this long, then it doubles (with jitter)
    max_backoff: float = 60.0
    max_calls: int | None = None  # HTTP requests this run may send, retries included
    temperature: float = 0.0
    max_tokens: int = 1024
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    usage_log: Path | None = None
    batch: Backend | None = None  # answers what the cache lacks instead of online calls (convrec.llm.batch)

    def params(self) -> dict:
        """What changes an answer, and so belongs in the cache key."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


def default_cache_dir() -> Path:
    return Path(os.environ.get("CONVREC_CACHE_DIR") or Path.home() / ".cache" / "convrec")


@dataclass
class Answer:
    text: str | None  # None: no answer (failed after retries, or not sent because of --max-calls)
    cached: bool = False
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    requests: int = 0  # HTTP requests sent (retries included)
    answered: int = 0  # fresh answers
    cached: int = 0
    retries: int = 0
    failed: int = 0  # no answer after all retries
    not_sent: int = 0  # stopped by max_calls
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class _Fatal(Exception):
    """A non-retryable API error: stop the whole batch."""


class _Budget(Exception):
    """max_calls reached (or the run interrupted) before this request could be sent."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a batch: the message says how much was answered (and cached)."""


def cache_key(model: str, messages: Sequence[dict], params: dict) -> str:
    blob = json.dumps({"model": model, "messages": list(messages), "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class LLMClient:
    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env)
        if not key:
            if cfg.base_url is None:
                raise ConvrecError(
                    f"model '{cfg.model}' needs an API key: set {cfg.api_key_env} (or --api-key-env VAR), "
                    "or point --base-url at a local OpenAI-compatible server"
                )
            key = "EMPTY"  # local servers (vLLM, llama.cpp) accept any key
        self.api_key = key
        self._client = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set on Ctrl-C or a fatal error: no more requests
        self._first: list[str] = []  # outcomes of the first attempts ("" when transient), for fail-fast
        self.usage = Usage()
        self.cache_root = Path(cfg.cache_dir) / "llm"

    # -- cache ---------------------------------------------------------------------------------
    def _cache_file(self, key: str) -> Path:
        return self.cache_root / key[:2] / f"{key}.json"

    def cached(self, key: str) -> dict | None:
        f = self._cache_file(key)
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):  # absent, or a file someone truncated: ask again
            return None

    def store_answer(self, key: str, text: str, pin: int, pout: int) -> Answer:
        """Cache a fresh answer (online, or a line of a batch output file) and count it."""
        record = {"model": self.cfg.model, "text": text, "prompt_tokens": pin, "completion_tokens": pout}
        with atomic_path(self._cache_file(key)) as tmp:
            tmp.write_text(json.dumps(record))
        with self._lock:
            self.usage.answered += 1
            self.usage.prompt_tokens += pin
            self.usage.completion_tokens += pout
        return Answer(text, prompt_tokens=pin, completion_tokens=pout)

    def log(self, record: dict) -> None:
        if self.cfg.usage_log is None:
            return
        with self._lock:
            self.cfg.usage_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cfg.usage_log, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # -- calls ---------------------------------------------------------------------------------
    def _openai(self):
        if self._client is None:
            from openai import OpenAI

            # retries are ours (jitter, budget, logging), so the SDK's own are off
            self._client = OpenAI(
                api_key=self.api_key, base_url=self.cfg.base_url, timeout=self.cfg.timeout, max_retries=0
            )
        return self._client

    def _take_budget(self) -> None:
        with self._lock:
            if self._stop.is_set():
                raise _Budget
            if self.cfg.max_calls is not None and self.usage.requests >= self.cfg.max_calls:
                raise _Budget
            self.usage.requests += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.max_backoff, self.cfg.backoff * 2**attempt)
        d = cap / 2 + random.uniform(0, cap / 2)  # equal jitter: spread retries, keep the growth
        return max(d, min(retry_after or 0.0, self.cfg.max_backoff))

    def _where(self) -> str:
        return f"model '{self.cfg.model}'" + (f" at {self.cfg.base_url}" if self.cfg.base_url else "")

    def _first_outcome(self, outcome: str, dead: bool) -> None:
        """Fail fast when the first attempts, before any answer, all failed the same non-transient way."""
        with self._lock:
            if len(self._first) < DEAD_AFTER:
                self._first.append(outcome if dead else "")
            if dead and not self.usage.answered and len(self._first) == DEAD_AFTER and set(self._first) == {outcome}:
                raise _Fatal(
                    f"{self._where()}: {outcome} (the first {DEAD_AFTER} attempts all failed this way; "
                    "is the server running and the URL right?)"
                )

    def _call(self, key: str, messages: list[dict]) -> Answer:
        import openai

        last = "unknown error"
        for attempt in range(self.cfg.max_retries + 1):
            self._take_budget()
            t0 = time.monotonic()
            retry_after, dead = None, False
            try:
                resp = self._openai().chat.completions.create(
                    model=self.cfg.model, messages=messages, **self.cfg.params()
                )
                if isinstance(resp, str) or not getattr(resp, "choices", None):
                    raise ValueError("response without choices")
                text = resp.choices[0].message.content or ""
                u = getattr(resp, "usage", None)
                pin, pout = (u.prompt_tokens or 0, u.completion_tokens or 0) if u else (0, 0)
                answer = self.store_answer(key, text, pin, pout)
                self.log(_record(key, attempt, t0, "ok", pin, pout))
                self._first_outcome("ok", False)
                return answer
            except openai.APIStatusError as e:
                if e.status_code not in RETRYABLE_STATUS:
                    self.log(_record(key, attempt, t0, f"http {e.status_code}"))
                    raise _Fatal(f"{self._where()}: HTTP {e.status_code} ({_short(e)})") from None
                last = f"HTTP {e.status_code}"
                retry_after = _retry_after(e)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                cause = _dead_cause(e)
                last, dead = cause or type(e).__name__, cause is not None
            except (ValueError, openai.APIResponseValidationError, openai.APIError) as e:
                last = f"unreadable response ({type(e).__name__})"
            self.log(_record(key, attempt, t0, last))
            self._first_outcome(last, dead)
            if attempt < self.cfg.max_retries:
                with self._lock:
                    self.usage.retries += 1
                if self._stop.wait(self._delay(attempt, retry_after)):
                    break  # interrupted while waiting to retry
        with self._lock:
            self.usage.failed += 1
        return Answer(None, error=f"no answer after {attempt + 1} attempts (last: {last})")

    def complete_many(
        self, requests: Sequence[list[dict]], *, desc: str = "LLM calls", progress: bool = True
    ) -> list[Answer]:
        """One answer per request, in order: cached ones first, the rest through the pool."""
        keys = [cache_key(self.cfg.model, m, self.cfg.params()) for m in requests]
        out: list[Answer | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}  # identical requests are sent once
        for i, k in enumerate(keys):
            hit = self.cached(k)
            if hit is not None:
                out[i] = Answer(hit["text"], cached=True)
                self.usage.cached += 1
            else:
                todo.setdefault(k, []).append(i)
        if self.cfg.batch is not None:  # called even with nothing to send: a dry run reports that too
            self.cfg.batch.complete(self, todo, requests, out, desc)
        elif todo:
            self._run(todo, requests, out, desc, progress)
        return [a if a is not None else Answer(None, error="not sent") for a in out]

    def _run(self, todo: dict[str, list[int]], requests, out: list, desc: str, progress: bool) -> None:
        """Daemon worker threads take keys off a queue; the caller's thread collects the answers.

        Daemon threads, not a ThreadPoolExecutor: the executor joins its threads at exit, so a
        Ctrl-C would still wait for every queued request to be sent and answered."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
        for k in todo:
            jobs.put(k)
        results: queue.SimpleQueue[tuple[str, Answer | BaseException]] = queue.SimpleQueue()
        self._stop.clear()

        def work() -> None:
            while not self._stop.is_set():
                try:
                    k = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    results.put((k, self._call_or_budget(k, requests[todo[k][0]])))
                except BaseException as e:  # _Fatal, or a bug: no more requests; the caller's thread raises it
                    self._stop.set()
                    results.put((k, e))

        for _ in range(max(1, min(self.cfg.concurrency, len(todo)))):
            threading.Thread(target=work, daemon=True, name="convrec-llm").start()
        cols = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/] · {task.fields[retries]} retries"),
            TimeRemainingColumn(),
        )
        before = self.usage.answered
        with Progress(*cols, disable=not progress) as bar:
            task = bar.add_task(desc, total=len(todo), failed=0, retries=0)
            failed = 0
            try:
                for _ in range(len(todo)):
                    k, ans = _get(results)
                    if isinstance(ans, _Fatal):
                        raise ConvrecError(str(ans))
                    if isinstance(ans, BaseException):
                        raise ans
                    for i in todo[k]:
                        out[i] = ans
                    failed += ans.text is None
                    bar.update(task, advance=1, failed=failed, retries=self.usage.retries)
            except BaseException as e:
                self._stop.set()  # queued requests are dropped, sleeping retries wake up and give up
                if isinstance(e, KeyboardInterrupt):
                    fresh = self.usage.answered - before
                    msg = (
                        f"interrupted: {fresh:,} of {len(todo):,} requests answered and cached "
                        f"({self.usage.cached:,} more were cached already); rerun to continue"
                    )
                    # typer turns a KeyboardInterrupt into exit code 130 and drops its message: say it here
                    print(msg, file=sys.stderr, flush=True)
                    raise Interrupted(msg) from None
                raise

    def _call_or_budget(self, key: str, messages: list[dict]) -> Answer:
        try:
            return self._call(key, messages)
        except _Budget:
            with self._lock:
                self.usage.not_sent += 1
            return Answer(None, error="not sent: --max-calls reached")


def _get(results: queue.SimpleQueue):
    """A blocking get that Ctrl-C can interrupt on every platform."""
    while True:
        try:
            return results.get(timeout=0.2)
        except queue.Empty:
            continue


def _dead_cause(e: BaseException) -> str | None:
    """'connection refused' or 'cannot resolve the host' when that is the root cause, else None (transient)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "cannot resolve the host"
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _record(key: str, attempt: int, t0: float, outcome: str, pin: int = 0, pout: int = 0) -> dict:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "key": key[:16],
        "attempt": attempt,
        "outcome": outcome,
        "latency_s": round(time.monotonic() - t0, 3),
        "prompt_tokens": pin,
        "completion_tokens": pout,
    }


def _retry_after(e) -> float | None:
    try:
        return float(e.response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _short(e) -> str:
    msg = str(getattr(e, "message", e)).splitlines()[0] if str(e) else type(e).__name__
    return msg[:160]


def require_all(answers: Sequence[Answer], usage: Usage, what: str) -> None:
    """Stop the stage when some requests got no answer; what did arrive is cached for the rerun."""
    missing = sum(a.text is None for a in answers)
    if not missing:
        return
    done = len(answers) - missing
    if usage.not_sent:
        raise ConvrecError(
            f"{what}: --max-calls reached with {missing:,} of {len(answers):,} requests unanswered "
            f"({done:,} answered and cached); rerun, with a higher --max-calls, to continue"
        )
    causes = Counter(a.error for a in answers if a.text is None and a.error)
    cause = f" ({causes.most_common(1)[0][0]})" if causes else ""
    raise ConvrecError(
        f"{what}: {missing:,} of {len(answers):,} requests failed after all retries{cause}; {done:,} answered and "
        "cached, rerun to retry only the missing ones"
    )
