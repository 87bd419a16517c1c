"""A real OpenAI-compatible HTTP server on loopback for tests: it misbehaves like production does.

`FlakyServer(titles, fail=0.3)` answers ``POST /v1/chat/completions``. A share ``fail`` of the
requests fails, split between 429 (with Retry-After: 0), 500 and a hang longer than the client's
timeout; another few percent come back as a 200 whose body is not JSON. The rest are answered: a
teacher prompt with a list of catalog titles (some misspelt, now and then a refusal with nothing
parseable), a judge prompt with JSON ratings (now and then not JSON, or out of range). Every
request is counted, so a test can prove a rerun sent none.
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


class FlakyServer:
    def __init__(self, titles: list[str], *, fail: float = 0.3, garbage: float = 0.05, hang_s: float = 1.5, seed=0):
        self.titles = titles
        self.fail = fail
        self.garbage = garbage
        self.hang_s = hang_s
        self.status = None  # force every answer to this HTTP status (e.g. 401)
        self.delay = 0.0  # seconds before each answer (lets a test kill a client mid-run)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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

    def _send(self, h, status: int, payload: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            h.wfile.write(payload)

    def handle(self, h, body: dict) -> None:
        self.count("request")
        if self.status is not None:
            self.count(f"http {self.status}")
            return self._send(h, self.status, json.dumps({"error": {"message": "no"}}).encode())
        with self.lock:
            u = self.rng.random()
        if u < self.fail / 3:
            self.count("429")
            return self._send(h, 429, b'{"error": {"message": "slow down"}}', {"retry-after": "0"})
        if u < 2 * self.fail / 3:
            self.count("500")
            return self._send(h, 500, b'{"error": {"message": "boom"}}')
        if u < self.fail:
            self.count("hang")
            time.sleep(self.hang_s)  # past the client's timeout
            return self._send(h, 200, b"{}")
        if u < self.fail + self.garbage:
            self.count("garbage body")
            return self._send(h, 200, b"<html>502 Bad Gateway</html>")
        prompt = body["messages"][-1]["content"]
        time.sleep(self.delay)
        if "Candidates:" in body["messages"][0]["content"]:
            text = self.judge(body)
        elif prompt.startswith("In one sentence, describe"):
            self.count("describe")
            text = "A tense thriller about a heist that goes wrong."
        else:
            text = self.teacher(prompt)
        self.count("answered")
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4, "total_tokens": 0},
        }
        return self._send(h, 200, json.dumps(payload).encode())

    def _rng(self, text: str) -> random.Random:
        return random.Random(int(hashlib.sha1(text.encode()).hexdigest()[:8], 16))

    def teacher(self, prompt: str) -> str:
        """A deterministic answer per prompt: 20 catalog titles, some misspelt; 1 in 10 is a refusal."""
        rng = self._rng(prompt)
        if rng.random() < 0.1:
            self.count("unparseable answer")
            return "I'm sorry, I cannot recommend movies for this conversation right now, please try again."
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
