"""The HTTP API: OpenAI-compatible chat completions, `/v1/recommend`, `/health`, `/metrics` and `/`.

Every error, including malformed JSON, unknown routes and failed authentication, is OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so the official `openai` client raises its
usual exceptions. Bodies are read and validated here (not by FastAPI's automatic parsing) to
bound their size while reading and to word the errors the OpenAI way.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from convrec.listfmt import parse_line
from convrec.serve.engine import Engine, Job, Overloaded
from convrec.serve.metrics import Metrics
from convrec.serve.page import PAGE
from convrec.serve.schemas import ChatCompletionRequest, ChatMessage, RecommendRequest

log = logging.getLogger("convrec.serve")


@dataclass(frozen=True)
class ServeSettings:
    model_name: str = "convrec"
    api_key: str | None = None
    timeout_s: float = 60.0
    max_k: int = 100
    max_tokens: int = 1024
    max_body_bytes: int = 1 << 20
    max_messages: int = 256
    max_input_chars: int = 100_000


class APIError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error"}
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/recommend"}


class _MetricsMiddleware:
    """Counts every response (streams included, timed to their last byte) by route and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(scope["path"], scope["method"], status, time.perf_counter() - start)


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    metrics = Metrics(ROUTES)
    catalog = engine.catalog
    max_k = min(settings.max_k, len(engine.constraints.trie))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="convrec", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "invalid_request_error")).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, "The server had an error while processing your request.", "server_error").response()

    # --- helpers ------------------------------------------------------------------------------
    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(
                401, "You didn't provide an API key: send 'Authorization: Bearer KEY'.", code="missing_api_key"
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(request: Request, schema: type[BaseModel]):
        limit = settings.max_body_bytes
        too_big = APIError(413, f"The request body is over the {limit:,}-byte limit.", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise APIError(
                400, "We could not parse the JSON body of your request: it is not valid JSON.", code="invalid_json"
            ) from None
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            where = f"'{param}'" if param else "the body"
            raise APIError(
                400, f"Invalid value for {where}: {err['msg']}.", param=param, code="invalid_value"
            ) from None

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{settings.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def conversation(messages: list[ChatMessage]) -> list[dict]:
        if len(messages) > settings.max_messages:
            raise APIError(400, f"At most {settings.max_messages} messages are allowed.", param="messages")
        msgs = [{"role": m.role, "content": m.text()} for m in messages]
        chars = sum(len(m["content"]) for m in msgs)
        if chars > settings.max_input_chars:
            raise APIError(
                400,
                f"The conversation has {chars:,} characters, over the {settings.max_input_chars:,} allowed.",
                param="messages",
                code="context_length_exceeded",
            )
        return msgs

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise APIError(400, f"k must be between 1 and {max_k}.", param="k", code="invalid_value")
        return k

    async def run(job: Job) -> Job:
        try:
            engine.submit(job)
        except Overloaded as e:
            raise APIError(503, f"The server is overloaded: {e}.", "server_overloaded", code="overloaded") from None
        try:
            # the worker stops the row at the deadline; this only guards against a stuck worker
            done = await asyncio.wait_for(asyncio.shield(job.future), settings.timeout_s + 30)
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        except asyncio.TimeoutError:
            job.cancelled = True
            raise APIError(504, "The request timed out in the queue.", "timeout", code="timeout") from None
        if done.finish_reason == "timeout":
            raise APIError(504, f"The request took longer than {settings.timeout_s:g} s.", "timeout", code="timeout")
        return done

    def new_job(prompt: list[int], constraint, max_new: int, temperature: float | None, top_p: float | None) -> Job:
        loop = asyncio.get_running_loop()
        sample = temperature is not None and temperature > 0
        return Job(
            prompt=prompt,
            constraint=constraint,
            max_new_tokens=max_new,
            do_sample=sample,
            temperature=temperature if sample else 1.0,
            top_p=top_p if (sample and top_p is not None) else 1.0,
            deadline=time.monotonic() + settings.timeout_s,
            loop=loop,
            future=loop.create_future(),
        )

    def usage(job: Job) -> dict:
        return {
            "prompt_tokens": len(job.prompt),
            "completion_tokens": len(job.tokens),
            "total_tokens": len(job.prompt) + len(job.tokens),
        }

    def output_text(job: Job) -> str:
        text = engine.decode(job.tokens)
        # a constrained list cut by the token budget ends in a partial title: drop that line
        return text if job.complete else text.rpartition("\n")[0]

    # --- routes -------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        body = (
            PAGE.replace("MODEL_NAME", html.escape(settings.model_name))
            .replace("CATALOG_SIZE", f"{len(catalog):,}")
            .replace("MAX_K", str(max_k))
        )
        return HTMLResponse(body)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": settings.model_name,
            "catalog_items": len(catalog),
            "queued": engine.queue.qsize(),
        }

    @app.get("/metrics")
    async def metrics_page() -> PlainTextResponse:
        gauges = {
            "queue_depth": engine.queue.qsize(),
            "batches_total": engine.batches,
            "batched_requests_total": engine.batched_rows,
            "mean_batch_size": engine.batched_rows / engine.batches if engine.batches else 0.0,
            "generated_tokens_total": engine.generated_tokens,
            "uptime_seconds": time.time() - metrics.started,
        }
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {
            "object": "list",
            "data": [
                {"id": settings.model_name, "object": "model", "created": int(metrics.started), "owned_by": "convrec"}
            ],
        }

    @app.get("/v1/models/{name}")
    async def model_info(name: str, request: Request) -> dict:
        authorize(request)
        check_model(name)
        return {"id": name, "object": "model", "created": int(metrics.started), "owned_by": "convrec"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorize(request)
        req: ChatCompletionRequest = await read_body(request, ChatCompletionRequest)
        check_model(req.model)
        msgs = conversation(req.messages)
        k = check_k(req.k if req.k is not None else engine.n_items)
        max_new = req.max_completion_tokens or req.max_tokens or engine.constraints.max_new_tokens(k)
        if max_new > settings.max_tokens:
            raise APIError(400, f"max_tokens must be at most {settings.max_tokens}.", param="max_tokens")
        prompt = await asyncio.to_thread(engine.encode, msgs)
        constraint = None
        if req.constrained:
            seen = await asyncio.to_thread(engine.mentions.rows_in_messages, msgs) if req.exclude_seen else ()
            constraint = engine.constraints.row_constraint(k, seen)
        job = new_job(prompt, constraint, max_new, req.temperature, req.top_p)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream_chat(job, cid, created, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        done = await run(job)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": settings.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": output_text(done)},
                    "finish_reason": "length" if done.finish_reason == "length" else "stop",
                    "logprobs": None,
                }
            ],
            "usage": usage(done),
        }

    async def stream_chat(job: Job, cid: str, created: int, include_usage: bool) -> AsyncIterator[str]:
        tokens: asyncio.Queue[int | None] = asyncio.Queue()
        loop = job.loop
        job.on_token = lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t)

        def event(delta: dict | None, finish: str | None = None, **extra) -> str:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": settings.model_name,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n"

        try:
            try:
                engine.submit(job)
            except Overloaded as e:
                err = APIError(503, f"The server is overloaded: {e}.", "server_overloaded", code="overloaded")
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            yield event({"role": "assistant", "content": ""})
            generated: list[int] = []
            sent = ""
            while (tok := await tokens.get()) is not None:
                generated.append(tok)
                text = engine.decode(generated)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                if len(text) > len(sent):
                    yield event({"content": text[len(sent) :]})
                    sent = text
            done = await job.future
            if done.finish_reason == "timeout":
                err = APIError(
                    504, f"The request took longer than {settings.timeout_s:g} s.", "timeout", code="timeout"
                )
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            yield event({}, "length" if done.finish_reason == "length" else "stop")
            if include_usage:
                yield event(None, usage=usage(done))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # a client that went away frees its batch row at the next token

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> dict:
        authorize(request)
        req: RecommendRequest = await read_body(request, RecommendRequest)
        check_model(req.model)
        msgs = conversation(req.messages)
        k = check_k(req.k)
        prompt = await asyncio.to_thread(engine.encode, msgs)
        seen = await asyncio.to_thread(engine.mentions.rows_in_messages, msgs)
        constraint = engine.constraints.row_constraint(k, seen if req.exclude_seen else ()) if req.constrained else None
        done = await run(new_job(prompt, constraint, engine.constraints.max_new_tokens(k), None, None))
        lines = await asyncio.to_thread(engine.line_scores, done)
        data = []
        if done.items is not None:  # constrained: the trie says which item each line is
            for row, (_, score) in zip(done.items, lines, strict=False):
                data.append(item_entry(len(data) + 1, row, catalog.titles[row], catalog.years[row], score))
        else:
            for line, score in lines:
                parsed = parse_line(line).item
                if parsed is None:
                    continue
                row = catalog.lookup(*parsed)
                if req.exclude_seen and row in seen:
                    continue
                data.append(item_entry(len(data) + 1, row, parsed[0], parsed[1], score))
                if len(data) == k:
                    break
        return {
            "object": "list",
            "model": settings.model_name,
            "constrained": req.constrained,
            "data": data,
            "seen": [
                {"item_id": catalog.item_ids[r], "title": catalog.titles[r], "year": catalog.years[r]}
                for r in sorted(seen)
            ],
            "usage": usage(done),
        }

    def item_entry(rank: int, row: int, title: str, year: int | None, score: float) -> dict:
        return {
            "rank": rank,
            "item_id": catalog.item_ids[row] if row >= 0 else None,
            "title": catalog.titles[row] if row >= 0 else title,
            "year": catalog.years[row] if row >= 0 else year,
            "score": round(score, 4),
        }

    return app
