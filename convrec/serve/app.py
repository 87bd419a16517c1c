"""The HTTP app: the routes of `convrec.serve.routes`, validated by `convrec.serve.validation`.

Every error, including malformed JSON, unknown routes and failed authentication, is OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so the official `openai` client raises its
usual exceptions. An unexpected exception is logged once and answered here with a well-formed 500
(or, when a stream has begun, an error event and a properly ended body): it never reaches
uvicorn, which would drop the keep-alive connection under the client's next request.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from convrec.serve.engine import Engine
from convrec.serve.metrics import Metrics
from convrec.serve.routes import ROUTES, Routes, sse
from convrec.serve.validation import APIError, ServeSettings, server_error

__all__ = ["APIError", "ServeSettings", "create_app"]

log = logging.getLogger("convrec.serve")

_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error"}


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


class _ErrorMiddleware:
    """Turns an unexpected exception into a complete response instead of re-raising it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = ended = False
        stream = False

        async def track(message) -> None:
            nonlocal started, ended, stream
            if message["type"] == "http.response.start":
                started = True
                stream = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                ended = True
            await send(message)

        try:
            await self.app(scope, receive, track)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if not started:
                resp = server_error().response()
                await resp(scope, receive, send)
            elif not ended:  # headers are out: end the body properly, with an error event on a stream
                body = sse(server_error().body()).encode() if stream else b""
                await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    metrics = Metrics(ROUTES)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="convrec", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # an exception passing through is counted as a 500
    app.add_middleware(_ErrorMiddleware)  # added last, so outermost: nothing the app raises reaches uvicorn

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return APIError(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "invalid_request_error")).response()

    Routes(engine, settings, metrics).register(app)
    return app
