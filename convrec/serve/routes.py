"""The routes of the HTTP API: `/`, `/health`, `/metrics`, `/v1/models`, `/v1/chat/completions`
(OpenAI-compatible, streamed or not) and `/v1/recommend` (ranked catalog items).

Each handler validates with `convrec.serve.validation`, turns the conversation into engine
`Job`s, awaits them and shapes the answer the OpenAI way (`convrec.serve.chat`). Every route
decodes under the catalog constraint unless the request says ``"constrained": false``.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse

from convrec.listfmt import parse_line
from convrec.serve.chat import ChoiceStream, answer_logprobs, final_text
from convrec.serve.engine import Engine, Overloaded
from convrec.serve.metrics import Metrics
from convrec.serve.page import PAGE, placeholder
from convrec.serve.rows import Job
from convrec.serve.schemas import ChatCompletionRequest, RecommendRequest
from convrec.serve.validation import (
    APIError,
    ServeSettings,
    authorize,
    check_k,
    check_max_tokens,
    check_model,
    check_supported,
    conversation,
    read_body,
    stop_sequences,
    token_biases,
)

ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/recommend"}


def usage(jobs: list[Job]) -> dict:
    """One prompt, however many choices were generated from it."""
    prompt, completion = len(jobs[0].prompt), sum(len(j.tokens) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(job: Job) -> str:
    return "length" if job.finish_reason == "length" else "stop"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def overloaded(e: Overloaded) -> APIError:
    return APIError(503, f"The server is overloaded: {e}.", "server_overloaded", code="overloaded")


class Routes:
    """The handlers, bound to one engine and its settings."""

    def __init__(self, engine: Engine, settings: ServeSettings, metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        self.catalog = engine.catalog
        self.max_k = min(settings.max_k, len(engine.constraints.trie))

    def register(self, app: FastAPI) -> None:
        app.add_api_route("/", self.page, methods=["GET"], response_class=HTMLResponse)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.metrics_page, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route("/v1/models/{name}", self.model_info, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/recommend", self.recommend, methods=["POST"])

    # --- helpers ------------------------------------------------------------------------------
    def timed_out(self) -> APIError:
        return APIError(504, f"The request took longer than {self.settings.timeout_s:g} s.", "timeout", code="timeout")

    async def run(self, job: Job) -> Job:
        try:
            self.engine.submit(job)
        except Overloaded as e:
            raise overloaded(e) from None
        try:
            # the worker stops the row at the deadline; this only guards against a stuck worker
            done = await asyncio.wait_for(asyncio.shield(job.future), self.settings.timeout_s + 30)
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        except asyncio.TimeoutError:
            job.cancelled = True
            raise APIError(504, "The request timed out in the queue.", "timeout", code="timeout") from None
        if done.finish_reason == "timeout":
            raise self.timed_out()
        return done

    def new_job(
        self, prompt: list[int], constraint, max_new: int, temperature: float | None, top_p: float | None, **options
    ) -> Job:
        loop = asyncio.get_running_loop()
        sample = temperature is not None and temperature > 0
        return Job(
            prompt=prompt,
            constraint=constraint,
            max_new_tokens=max_new,
            do_sample=sample,
            temperature=temperature if sample else 1.0,
            top_p=top_p if (sample and top_p is not None) else 1.0,
            deadline=time.monotonic() + self.settings.timeout_s,
            loop=loop,
            future=loop.create_future(),
            **options,
        )

    def chat_jobs(self, req: ChatCompletionRequest, prompt: list[int], constraint, max_new: int) -> list[Job]:
        """One job per choice (`n`), carrying every generation field of the request; choice i samples
        with seed + i, so the choices differ and each is reproducible."""
        options = {
            "stop": stop_sequences(req.stop),
            "presence_penalty": req.presence_penalty or 0.0,
            "frequency_penalty": req.frequency_penalty or 0.0,
            "logit_bias": token_biases(req.logit_bias, self.engine.vocab_size),
            "top_logprobs": (req.top_logprobs or 0) if req.logprobs else 0,
        }
        return [
            self.new_job(
                prompt,
                constraint,
                max_new,
                req.temperature,
                req.top_p,
                seed=None if req.seed is None else req.seed + i,
                **options,
            )
            for i in range(req.n or 1)
        ]

    def item_entry(self, rank: int, row: int, title: str, year: int | None, score: float, logprob: float) -> dict:
        cat = self.catalog
        return {
            "rank": rank,
            "item_id": cat.item_ids[row] if row >= 0 else None,
            "title": cat.titles[row] if row >= 0 else title,
            "year": cat.years[row] if row >= 0 else year,
            "score": round(score, 4),
            "logprob": round(logprob, 4),
        }

    # --- pages and status ---------------------------------------------------------------------
    async def page(self) -> HTMLResponse:
        body = (
            PAGE.replace("MODEL_NAME", html.escape(self.settings.model_name))
            .replace("CATALOG_SIZE", f"{len(self.catalog):,}")
            .replace("MAX_K", str(self.max_k))
            .replace("PLACEHOLDER", html.escape(placeholder(self.catalog)))
        )
        return HTMLResponse(body)

    async def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.settings.model_name,
            "catalog_items": len(self.catalog),
            "queued": self.engine.queue.qsize(),
        }

    async def metrics_page(self) -> PlainTextResponse:
        e = self.engine
        gauges = {
            "queue_depth": e.queue.qsize(),
            "batches_total": e.batches,
            "batched_requests_total": e.batched_rows,
            "mean_batch_size": e.batched_rows / e.batches if e.batches else 0.0,
            "generated_tokens_total": e.generated_tokens,
            "uptime_seconds": time.time() - self.metrics.started,
        }
        return PlainTextResponse(self.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    def model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": int(self.metrics.started), "owned_by": "convrec"}

    async def models(self, request: Request) -> dict:
        authorize(request, self.settings.api_key)
        return {"object": "list", "data": [self.model_card(self.settings.model_name)]}

    async def model_info(self, name: str, request: Request) -> dict:
        authorize(request, self.settings.api_key)
        check_model(name, self.settings.model_name)
        return self.model_card(name)

    # --- chat completions ---------------------------------------------------------------------
    async def chat(self, request: Request):
        s, engine = self.settings, self.engine
        authorize(request, s.api_key)
        req: ChatCompletionRequest = await read_body(request, ChatCompletionRequest, s.max_body_bytes)
        check_model(req.model, s.model_name)
        check_supported(req, engine.vocab_size)
        msgs = conversation(req.messages, s)
        k = check_k(req.k if req.k is not None else engine.n_items, self.max_k)
        max_new = req.max_completion_tokens or req.max_tokens or engine.constraints.max_new_tokens(k)
        check_max_tokens(max_new, s.max_tokens)
        prompt = await asyncio.to_thread(engine.encode, msgs)
        constraint = None
        if req.constrained:
            seen = await asyncio.to_thread(engine.mentions.rows_in_messages, msgs) if req.exclude_seen else ()
            constraint = engine.constraints.row_constraint(k, seen)
        jobs = self.chat_jobs(req, prompt, constraint, max_new)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self.stream_chat(jobs, cid, created, include_usage, bool(req.logprobs)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            done = await asyncio.gather(*(self.run(j) for j in jobs))
        except BaseException:
            for job in jobs:  # one choice failed (or the client left): free the others' batch rows
                job.cancelled = True
            raise
        choices = []
        for i, job in enumerate(done):
            text = await asyncio.to_thread(final_text, engine, job)
            logprobs = await asyncio.to_thread(answer_logprobs, engine, job, text) if req.logprobs else None
            message = {"role": "assistant", "content": text}
            choices.append({"index": i, "message": message, "finish_reason": finish_reason(job), "logprobs": logprobs})
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": s.model_name,
            "choices": choices,
            "usage": usage(done),
        }

    async def stream_chat(
        self, jobs: list[Job], cid: str, created: int, include_usage: bool, logprobs: bool
    ) -> AsyncIterator[str]:
        """Server-sent chunks of every choice as its tokens arrive, then each one's finish reason."""
        tokens: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()
        loop = jobs[0].loop
        for i, job in enumerate(jobs):
            job.on_token = lambda t, i=i: loop.call_soon_threadsafe(tokens.put_nowait, (i, t))

        def event(i: int | None, delta: dict | None = None, finish: str | None = None, lps=None, **extra) -> str:
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": lps}
            name = self.settings.model_name
            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
            return sse({**head, "choices": [] if i is None else [choice], **extra})

        def content(i: int, delta) -> str:
            text, entries = delta
            return event(i, {"content": text}, lps=None if entries is None else {"content": entries, "refusal": None})

        try:
            try:
                for job in jobs:
                    self.engine.submit(job)
            except Overloaded as e:
                yield sse(overloaded(e).body())
                return
            for i in range(len(jobs)):
                yield event(i, {"role": "assistant", "content": ""})
            streams = [ChoiceStream(self.engine, job, logprobs) for job in jobs]
            running = len(jobs)
            while running:
                i, tok = await tokens.get()
                if tok is None:
                    running -= 1
                elif delta := streams[i].push():
                    yield content(i, delta)
            done = [await job.future for job in jobs]
            if any(j.finish_reason == "timeout" for j in done):
                yield sse(self.timed_out().body())
                return
            for i, (job, stream) in enumerate(zip(done, streams, strict=True)):
                if rest := stream.finish():
                    yield content(i, rest)
                yield event(i, {}, finish_reason(job))
            if include_usage:
                yield event(None, usage=usage(done))
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:  # a client that went away frees its batch rows at the next token
                job.cancelled = True

    # --- recommendations ----------------------------------------------------------------------
    async def recommend(self, request: Request) -> dict:
        s, engine, cat = self.settings, self.engine, self.catalog
        authorize(request, s.api_key)
        req: RecommendRequest = await read_body(request, RecommendRequest, s.max_body_bytes)
        check_model(req.model, s.model_name)
        msgs = conversation(req.messages, s)
        k = check_k(req.k, self.max_k)
        prompt = await asyncio.to_thread(engine.encode, msgs)
        seen = await asyncio.to_thread(engine.mentions.rows_in_messages, msgs)
        constraint = engine.constraints.row_constraint(k, seen if req.exclude_seen else ()) if req.constrained else None
        done = await self.run(self.new_job(prompt, constraint, engine.constraints.max_new_tokens(k), None, None))
        lines = await asyncio.to_thread(engine.line_scores, done)
        # score: log P(the list up to and including this line | conversation), so it never rises down the
        # list; logprob: the line's own log-probability given the lines above it
        cumulative = itertools.accumulate(lp for _, lp in lines)
        scored = [(line, cum, lp) for (line, lp), cum in zip(lines, cumulative, strict=True)]
        data = []
        if done.items is not None:  # constrained: the trie says which item each line is
            for row, (_, cum, lp) in zip(done.items, scored, strict=False):
                data.append(self.item_entry(len(data) + 1, row, cat.titles[row], cat.years[row], cum, lp))
        else:
            for line, cum, lp in scored:
                parsed = parse_line(line).item
                if parsed is None:
                    continue
                row = cat.lookup(*parsed)
                if req.exclude_seen and row in seen:
                    continue
                data.append(self.item_entry(len(data) + 1, row, parsed[0], parsed[1], cum, lp))
                if len(data) == k:
                    break
        return {
            "object": "list",
            "model": s.model_name,
            "constrained": req.constrained,
            "data": data,
            "seen": [{"item_id": cat.item_ids[r], "title": cat.titles[r], "year": cat.years[r]} for r in sorted(seen)],
            "usage": usage([done]),
        }
