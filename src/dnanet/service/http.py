"""The daemons' HTTP layer: one app factory with the project's error mapping and limits.

Errors leave as JSON ``{"error": {"type", "message", "field"}}``; never a 500 for bad input:

====================  ======
error                 status
====================  ======
CodecError            400
request body too big  413
rate limit            429
ProtocolError         422
CryptoError           422
ChainError            503
====================  ======
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from dnanet.errors import ChainError, CodecError, CryptoError, DnanetError, ProtocolError
from dnanet.protocol.codec import MAX_MESSAGE_BYTES, Message, parse_json

log = logging.getLogger("dnanet.http")


def error_body(exc: DnanetError | Exception, kind: str | None = None) -> dict[str, Any]:
    field = getattr(exc, "field", None)
    message = str(exc)
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    return {"error": {"type": kind or type(exc).__name__, "message": message, "field": field}}


def status_for(exc: DnanetError) -> int:
    if isinstance(exc, CodecError):
        return 400
    if isinstance(exc, ChainError):
        return 503
    if isinstance(exc, ProtocolError | CryptoError):
        return 422
    return 400


class TokenBucket:
    """Per-client rate limit: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._state: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self._state.get(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._state[client] = (tokens, now)
            return False
        self._state[client] = (tokens - 1, now)
        if len(self._state) > 10_000:
            self._state.clear()
        return True


@dataclass
class AppLimits:
    max_body_bytes: int = MAX_MESSAGE_BYTES
    rate_per_s: float = 2_000.0
    burst: int = 4_000


def create_app(
    title: str, *, limits: AppLimits | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    """A FastAPI app with dnanet's error mapping, body-size and rate limits, /health, /metrics."""
    limits = limits or AppLimits()
    registry = registry or CollectorRegistry()
    app = FastAPI(title=title, version="1", docs_url=None, redoc_url=None)
    app.state.registry = registry
    requests = Counter("dnanet_http_requests", "HTTP requests", ["path", "status"],
                       registry=registry)
    bucket = TokenBucket(limits.rate_per_s, limits.burst)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        client = request.client.host if request.client else "?"
        route = request.url.path
        if not bucket.allow(client):
            response: Response = JSONResponse(
                {"error": {"type": "RateLimited", "message": "too many requests; retry later",
                           "field": None}}, status_code=429, headers={"Retry-After": "1"})
        else:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
                response = JSONResponse(
                    {"error": {"type": "TooLarge", "field": None,
                               "message": f"body of {length} bytes exceeds {limits.max_body_bytes}"}},
                    status_code=413)
            else:
                try:
                    response = await call_next(request)
                except DnanetError as exc:
                    response = JSONResponse(error_body(exc), status_code=status_for(exc))
                except Exception:  # a bug: log it, answer 500 without details
                    log.exception("unhandled error on %s", route)
                    response = JSONResponse(
                        {"error": {"type": "InternalError", "message": "internal error",
                                   "field": None}}, status_code=500)
        if len(requests._metrics) < 500:  # bound label cardinality from unknown paths
            requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(DnanetError)
    async def dnanet_error(_: Request, exc: DnanetError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": {"type": "CodecError", "field": field or None,
                                       "message": first.get("msg", "invalid request")}},
                            status_code=400)

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def read_body(request: Request, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes even without a Content-Length."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise CodecError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_MESSAGE_BYTES) -> Any:
    return parse_json(await read_body(request, limit), max_bytes=limit)


def message_schema(cls: type[Message]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a message class (its JSON schema)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": cls.json_schema()}}}}


class Server:
    """A uvicorn server running inside the current event loop."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raise the start-up error (port in use...)
                raise DnanetError(f"server on {self.url} stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def serving(app: FastAPI, host: str, port: int) -> AsyncIterator[Server]:
    server = Server(app, host, port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
