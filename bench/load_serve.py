"""Bounded load test of `convrec serve` on loopback: N requests, C at a time, then it stops.

    python bench/load_serve.py [--model RUN/best --data DIR] [--requests 500] [--concurrency 32]
    python bench/load_serve.py --url http://127.0.0.1:8000 --api-key KEY --data DIR

Without --url it starts the real server (`convrec serve`) on a free 127.0.0.1 port and stops it
at the end; without --model that server runs an untrained tiny model on the synthetic world.
Requests mix `/v1/recommend` (k 1..10) and `/v1/chat/completions` (constrained or not, streamed
or not) over the test split's conversations, with ``--bad`` malformed ones among them (broken or
50,000-deep JSON, a lone surrogate, an unknown field, a wrong type), each of which must get a 4xx.
Only loopback addresses are accepted. Prints the status counts, p50/p95/p99 latency and
throughput; exits 1 on any 5xx or transport error, or a malformed request not answered 4xx.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from rich.console import Console
from rich.table import Table

from convrec.data import load_split

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

KEY_ENV = "CONVREC_LOAD_TEST_KEY"


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "convrec.cli.main", *args], check=True, capture_output=True)


def _loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"error: {url}: the load test only targets loopback addresses (127.0.0.0/8, ::1, localhost)")


def start_server(model: str, data: Path, key: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "convrec.cli.main", "serve", "--model", model, "--data", str(data)]
    cmd += ["--port", str(port), "--api-key-env", KEY_ENV, *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, KEY_ENV: key}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("error: the server did not come up in 300 s")


BAD_BODIES = {
    "broken json": b'{"messages": [',
    "deep json": b"[" * 50_000 + b"]" * 50_000,
    "lone surrogate": b'{"messages": [{"role": "user", "content": "hi \\ud800"}], "k": 3}',
    "unknown field": b'{"messages": [{"role": "user", "content": "hi"}], "k": 3, "temprature": 0.5}',
    "wrong type": b'{"messages": "hi", "k": "3"}',
}


def make_requests(convs: list[list[dict]], n: int, seed: int, bad: int = 0) -> list[tuple[str, dict | bytes, bool]]:
    """n well-formed requests, then ``bad`` malformed ones (raw bytes) spread among them."""
    rng = random.Random(seed)
    out: list[tuple[str, dict | bytes, bool]] = []
    for i in range(n):
        msgs = convs[i % len(convs)]
        roll = rng.random()
        if roll < 0.7:
            out.append(("/v1/recommend", {"messages": msgs, "k": rng.randint(1, 10)}, False))
        else:
            stream = roll > 0.9
            body = {"model": "convrec", "messages": msgs, "max_tokens": 48, "constrained": roll < 0.8, "k": 5}
            out.append(("/v1/chat/completions", {**body, "stream": stream}, stream))
    kinds = list(BAD_BODIES.values())
    for i in range(bad):
        path = "/v1/recommend" if i % 2 else "/v1/chat/completions"
        out.insert(rng.randrange(len(out) + 1), (path, kinds[i % len(kinds)], False))
    return out


async def run_load(url: str, key: str, requests: list, concurrency: int, max_seconds: float) -> tuple[list, float]:
    sem = asyncio.Semaphore(concurrency)
    results: list[tuple[str, int, float]] = []
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:

        async def one(path: str, body: dict, stream: bool) -> None:
            async with sem:
                start = time.perf_counter()
                try:
                    if stream:
                        async with client.stream("POST", path, json=body) as r:
                            async for _ in r.aiter_lines():
                                pass
                            status = r.status_code
                    elif isinstance(body, bytes):  # malformed on purpose
                        status = (await client.post(path, content=body)).status_code
                    else:
                        status = (await client.post(path, json=body)).status_code
                except httpx.HTTPError as e:
                    status = -1
                    print(f"transport error on {path}: {type(e).__name__}: {e}", file=sys.stderr)
                route = f"{path} (malformed)" if isinstance(body, bytes) else path
                results.append((route, status, time.perf_counter() - start))

        start = time.perf_counter()
        tasks = [asyncio.create_task(one(*r)) for r in requests]
        done, pending = await asyncio.wait(tasks, timeout=max_seconds)
        for t in pending:  # bounded in time as well as in count
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return results, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (loopback only); default: start one")
    ap.add_argument("--api-key", default="load-test-key")
    ap.add_argument("--model", help="model folder for the started server (default: an untrained tiny model)")
    ap.add_argument("--data", help="data folder: conversations from its test split (default: synthetic world)")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--bad", type=int, default=60, help="malformed requests mixed in (each must get a 4xx)")
    ap.add_argument("--max-seconds", type=float, default=900, help="stop after this long whatever is left")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-args", default="--threads 1 --max-batch 32", help="extra flags for convrec serve")
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.requests > 100_000 or args.bad < 0:
        sys.exit("error: --requests must be 1..100000, --concurrency at least 1 and --bad at least 0")
    tmp = Path(tempfile.mkdtemp(prefix="load_serve_"))
    data = Path(args.data) if args.data else tmp / "data"
    if not args.data:
        _cli("data", "synth", "--out", str(data), "--seed", "0")
    proc = None
    if args.url:
        _loopback(args.url)
        url = args.url.rstrip("/")
    else:
        model = args.model or str(tmp / "model")
        if not args.model:
            _cli("model", "init", "--data", str(data), "--out", model)
        proc, url = start_server(model, data, args.api_key, args.server_args.split())
    try:
        convs = load_split(data, "test")["messages"].to_list()
        reqs = make_requests(convs, args.requests, args.seed, args.bad)
        results, wall = asyncio.run(run_load(url, args.api_key, reqs, args.concurrency, args.max_seconds))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    console = Console()
    table = Table(title=f"load test: {len(results)}/{len(reqs)} requests, {args.concurrency} concurrent, {wall:.1f} s")
    for col in ("route", "requests", "statuses", "p50 s", "p95 s", "p99 s"):
        table.add_column(col, justify="left" if col in ("route", "statuses") else "right")
    for path in sorted({p for p, _, _ in results}) + ["all"]:
        rows = [r for r in results if path in ("all", r[0])]
        lat = np.array([r[2] for r in rows])
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(Counter(r[1] for r in rows).items()))
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        table.add_row(path, str(len(rows)), statuses, f"{p50:.2f}", f"{p95:.2f}", f"{p99:.2f}")
    console.print(table)
    bad = [r for r in results if r[1] >= 500 or r[1] < 0]
    malformed = [r for r in results if r[0].endswith("(malformed)")]
    not_4xx = [r for r in malformed if not 400 <= r[1] < 500]
    console.print(
        f"throughput {len(results) / wall:.2f} requests/s; 5xx or transport errors: {len(bad)}; "
        f"malformed answered 4xx: {len(malformed) - len(not_4xx)}/{len(malformed)}; "
        f"unfinished: {len(reqs) - len(results)}"
    )
    sys.exit(1 if bad or not_4xx or len(results) < len(reqs) else 0)


if __name__ == "__main__":
    main()
