"""A real OpenAI-compatible HTTP server on loopback for tests: it misbehaves like production does.

`FlakyServer(titles, fail=0.3)` answers ``POST /v1/chat/completions``. Which request fails, and
how, is a seeded schedule: request number n (in arrival order) draws from ``Random(f"{seed}:{n}")``,
so a share ``fail`` of them fails, split evenly between the kinds in ``kinds`` (by default 429 with
Retry-After, 500 and a hang past the client's timeout); another share ``garbage`` is a 200 whose
body is not JSON. ``schedule`` pins the fate of given request numbers (``{1: "503", 2: "drop"}``)
whatever the draw. Kinds:

- ``429`` (with ``Retry-After: retry_after``), ``500``, ``503``, ``401``, ``403``, ``404``;
- ``hang``: sleeps ``hang_s``, past the client's timeout; ``drop``: the connection closes half-way
  through the body; ``truncated``: a 200 whose JSON is cut short; ``garbage``: a 200 in HTML;
- ``prose``: a well-formed 200 whose answer has no list at all.

The rest are answered: a teacher prompt with a list of catalog titles (some misspelt; a share
``prose_share`` of the requests, decided by a hash of the whole conversation so a re-ask is a new
draw, refuses in prose; a conversation containing one of ``stubborn`` always does), a judge prompt
with JSON ratings (now and then not JSON, or out of range), a describe prompt with one sentence.

Every request is counted (`counts`) and logged (`log`: number, arrival time, key = sha256 of the
messages, first and last message heads, the fault served or "ok"), so a test can prove a rerun
sent none, a retry came after Retry-After, or an interrupt stopped the traffic.

The same server speaks the Files and Batches endpoints (``server.batches``, tests/fake_batches.py):
each batch line is answered as the request would be online (no faults: a batch's failures are its
statuses and error files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fake_batches import FakeBatches

DEFAULT_KINDS = ("429", "500", "hang")
PROSE = "I'm sorry, I cannot recommend movies for this conversation right now, please try again."


def messages_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


class FlakyServer:
    def __init__(
        self,
        titles: list[str],
        *,
        fail: float = 0.3,
        garbage: float = 0.05,
        hang_s: float = 1.5,
        seed=0,
        kinds: tuple[str, ...] = DEFAULT_KINDS,
        schedule: dict[int, str] | None = None,
        retry_after: str = "0",
        prose_share: float = 0.1,
        stubborn: tuple[str, ...] = (),
    ):
        self.titles = titles
        self.fail, self.garbage, self.hang_s, self.seed = fail, garbage, hang_s, seed
        self.kinds, self.schedule, self.retry_after = kinds, dict(schedule or {}), retry_after
        self.prose_share, self.stubborn = prose_share, stubborn
        self.status = None  # force every answer to this HTTP status (e.g. 401)
        self.delay = 0.0  # seconds before each answer (lets a test kill a client mid-run)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.log: list[dict] = []
        self.batches = FakeBatches(self)  # the Files and Batches endpoints (tests/fake_batches.py)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path.startswith(("/v1/files", "/v1/batches")):
                    return server.batches.post(self, raw)
                server.handle(self, json.loads(raw or b"{}"))

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.batches.get(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # a client that hung up is routine here
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    @property
    def requests(self) -> int:
        return self.counts.get("request", 0)

    def entries(self, fault: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.log if fault is None or e["fault"] == fault]

    def _send(self, h, status: int, payload: bytes, headers: dict | None = None, length: int | None = None) -> None:
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload) if length is None else length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            h.wfile.write(payload)
            h.wfile.flush()

    def _fate(self, n: int) -> str:
        if n in self.schedule:
            return self.schedule[n]
        u = random.Random(f"{self.seed}:{n}").random()
        if u < self.fail:
            return self.kinds[int(u / self.fail * len(self.kinds))]
        if u < self.fail + self.garbage:
            return "garbage"
        return "ok"

    def handle(self, h, body: dict) -> None:
        msgs = body.get("messages", [])
        with self.lock:
            self.counts["request"] = self.counts.get("request", 0) + 1
            n = self.counts["request"]
            fate = f"http {self.status}" if self.status is not None else self._fate(n)
            entry = {
                "n": n,
                "t": time.monotonic(),
                "key": messages_key(msgs),
                "first": msgs[0]["content"][:80] if msgs else "",
                "last": msgs[-1]["content"][:80] if msgs else "",
                "turns": len(msgs),
                "fault": fate,
            }
            self.log.append(entry)
        if fate != "ok":
            self.count(fate)
        if self.status is not None:
            return self._send(h, self.status, json.dumps({"error": {"message": "no"}}).encode())
        if fate in ("429", "500", "503", "401", "403", "404"):
            extra = {"retry-after": self.retry_after} if fate == "429" else {}
            return self._send(h, int(fate), b'{"error": {"message": "scheduled failure"}}', extra)
        if fate == "hang":
            time.sleep(self.hang_s)  # past the client's timeout
            return self._send(h, 200, b"{}")
        if fate == "garbage":
            return self._send(h, 200, b"<html>502 Bad Gateway</html>")
        time.sleep(self.delay)
        text = PROSE if fate == "prose" else self.answer_text(body)
        payload = json.dumps(completion(body, text)).encode()
        if fate == "truncated":
            return self._send(h, 200, payload[: len(payload) // 2])
        if fate == "drop":  # promise the whole body, send half, hang up
            h.close_connection = True
            return self._send(h, 200, payload[: len(payload) // 2], length=len(payload))
        with self.lock:
            entry["answered"] = True
            entry["text"] = text
        self.count("answered")
        return self._send(h, 200, payload)

    def respond(self, body: dict) -> dict:
        """The chat.completion a well-formed request gets (a batch line's response body)."""
        return completion(body, self.answer_text(body))

    def key(self, msgs: list[dict]) -> str:
        return messages_key(msgs)

    def answer_text(self, body: dict) -> str:
        """What the model says to a well-formed request (online, or one line of a batch)."""
        msgs = body.get("messages", [])
        if msgs and "Candidates:" in msgs[0]["content"]:
            return self.judge(body)
        if msgs and msgs[-1]["content"].startswith("In one sentence, describe"):
            self.count("describe")
            return "A tense thriller about a heist that goes wrong."
        return self.teacher(msgs)

    def _rng(self, text: str) -> random.Random:
        return random.Random(int(hashlib.sha1(text.encode()).hexdigest()[:8], 16))

    def teacher(self, msgs: list[dict]) -> str:
        """A deterministic answer per conversation: 20 catalog titles, some misspelt, or now and then prose."""
        rng = self._rng(json.dumps(msgs))
        if rng.random() < self.prose_share or any(s in msgs[0]["content"] for s in self.stubborn):
            self.count("unparseable answer")
            return PROSE
        picks = rng.sample(self.titles, min(20, len(self.titles)))
        lines = []
        for i, t in enumerate(picks, 1):
            if rng.random() < 0.2 and len(t) > 5:
                t = t[:2] + t[3] + t[2] + t[4:]  # swap two letters
            lines.append(f"{i}. {t}")
        if rng.random() < 0.5:
            lines.append(f"{len(lines) + 1}. Totally Invented Picture {rng.randint(0, 999)} (2001)")  # in no catalog
        return "Here are my picks:\n" + "\n".join(lines)

    def judge(self, body: dict) -> str:
        first = body["messages"][0]["content"]
        n = len(re.findall(r"^\d+\. ", first.split("Candidates:")[1], flags=re.MULTILINE))
        rng = self._rng(json.dumps(body["messages"]))
        u = rng.random()
        if u < 0.15:
            self.count("judge not json")
            return "Sure! Here are my ratings: 1 is great, 2 is bad."
        ratings = {str(i): rng.choice([-2, -1, 0, 1, 2]) for i in range(1, n + 1)}
        if u < 0.3:
            self.count("judge out of range")
            ratings["1"] = 5
        return "```json\n" + json.dumps({"ratings": ratings}) + "\n```"


def completion(body: dict, text: str) -> dict:
    """A chat.completion object answering ``body`` with ``text``."""
    msgs = body.get("messages", [])
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "m"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(str(msgs)) // 4, "completion_tokens": len(text) // 4, "total_tokens": 0},
    }


def client_config(base_url: str, cache, **kw):
    """An LLMConfig for the fake server: no real key, short timeouts and backoff, cache and usage log
    under ``cache``; ``kw`` overrides (each suite sets its own concurrency and retries)."""
    from convrec.llm.client import LLMConfig

    base = dict(
        model="fake-gpt",
        base_url=base_url,
        api_key_env="CONVREC_TEST_NO_SUCH_KEY",
        timeout=0.5,
        backoff=0.01,
        max_backoff=0.05,
        cache_dir=cache,
        usage_log=cache / "usage.jsonl",
    )
    return LLMConfig(**{**base, **kw})


def list_requests(n: int) -> list[list[dict]]:
    """n distinct one-turn conversations asking for a list."""
    return [[{"role": "user", "content": f"conversation {i}: recommend 20 movies"}] for i in range(n)]
