"""The routes of the HTTP API: `/`, `/health`, `/metrics`, `/v1/models`, `/v1/chat/completions`
(OpenAI-compatible, streamed or not) and `/v1/recommend` (ranked catalog items).

Each handler validates with `convrec.serve.validation`, turns the conversation into an engine
`Job`, awaits it and shapes the answer the OpenAI way.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse

from convrec.listfmt import parse_line
from convrec.serve.engine import Engine, Job, Overloaded
from convrec.serve.metrics import Metrics
from convrec.serve.page import PAGE
from convrec.serve.schemas import ChatCompletionRequest, RecommendRequest
from convrec.serve.validation import (
    APIError,
    ServeSettings,
    authorize,
    check_k,
    check_max_tokens,
    check_model,
    conversation,
    read_body,
)

ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/recommend"}


def usage(job: Job) -> dict:
    return {
        "prompt_tokens": len(job.prompt),
        "completion_tokens": len(job.tokens),
        "total_tokens": len(job.prompt) + len(job.tokens),
    }


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

    def new_job(self, prompt: list[int], constraint, max_new: int, temperature: float | None, top_p: float | None):
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
        )

    def output_text(self, job: Job) -> str:
        text = self.engine.decode(job.tokens)
        # a constrained list cut by the token budget ends in a partial title: drop that line
        return text if job.complete else text.rpartition("\n")[0]

    def item_entry(self, rank: int, row: int, title: str, year: int | None, score: float) -> dict:
        cat = self.catalog
        return {
            "rank": rank,
            "item_id": cat.item_ids[row] if row >= 0 else None,
            "title": cat.titles[row] if row >= 0 else title,
            "year": cat.years[row] if row >= 0 else year,
            "score": round(score, 4),
        }

    # --- pages and status ---------------------------------------------------------------------
    async def page(self) -> HTMLResponse:
        body = (
            PAGE.replace("MODEL_NAME", html.escape(self.settings.model_name))
            .replace("CATALOG_SIZE", f"{len(self.catalog):,}")
            .replace("MAX_K", str(self.max_k))
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
        msgs = conversation(req.messages, s)
        k = check_k(req.k if req.k is not None else engine.n_items, self.max_k)
        max_new = req.max_completion_tokens or req.max_tokens or engine.constraints.max_new_tokens(k)
        check_max_tokens(max_new, s.max_tokens)
        prompt = await asyncio.to_thread(engine.encode, msgs)
        constraint = None
        if req.constrained:
            seen = await asyncio.to_thread(engine.mentions.rows_in_messages, msgs) if req.exclude_seen else ()
            constraint = engine.constraints.row_constraint(k, seen)
        job = self.new_job(prompt, constraint, max_new, req.temperature, req.top_p)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self.stream_chat(job, cid, created, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        done = await self.run(job)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": s.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.output_text(done)},
                    "finish_reason": finish_reason(done),
                    "logprobs": None,
                }
            ],
            "usage": usage(done),
        }

    async def stream_chat(self, job: Job, cid: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        loop = job.loop
        job.on_token = lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t)

        def event(delta: dict | None, finish: str | None = None, **extra) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            name = self.settings.model_name
            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
            return sse({**head, "choices": choices, **extra})

        try:
            try:
                self.engine.submit(job)
            except Overloaded as e:
                yield sse(overloaded(e).body())
                return
            yield event({"role": "assistant", "content": ""})
            generated: list[int] = []
            sent = ""
            while (tok := await tokens.get()) is not None:
                generated.append(tok)
                text = self.engine.decode(generated)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                if len(text) > len(sent):
                    yield event({"content": text[len(sent) :]})
                    sent = text
            done = await job.future
            if done.finish_reason == "timeout":
                yield sse(self.timed_out().body())
                return
            yield event({}, finish_reason(done))
            if include_usage:
                yield event(None, usage=usage(done))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # a client that went away frees its batch row at the next token

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
        data = []
        if done.items is not None:  # constrained: the trie says which item each line is
            for row, (_, score) in zip(done.items, lines, strict=False):
                data.append(self.item_entry(len(data) + 1, row, cat.titles[row], cat.years[row], score))
        else:
            for line, score in lines:
                parsed = parse_line(line).item
                if parsed is None:
                    continue
                row = cat.lookup(*parsed)
                if req.exclude_seen and row in seen:
                    continue
                data.append(self.item_entry(len(data) + 1, row, parsed[0], parsed[1], score))
                if len(data) == k:
                    break
        return {
            "object": "list",
            "model": s.model_name,
            "constrained": req.constrained,
            "data": data,
            "seen": [{"item_id": cat.item_ids[r], "title": cat.titles[r], "year": cat.years[r]} for r in sorted(seen)],
            "usage": usage(done),
        }
