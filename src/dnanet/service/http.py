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
Unavailable, Busy     503
====================  ======

Every request is counted (``dnanet_http_requests_total``, by route and status) and timed
(``dnanet_http_request_duration_seconds``, by route) under its route's template, such as
``/v1/batches/{batch_hash}``, never the raw path: the number of series is bounded by the
routes an app declares (requests that match none count as ``unmatched``).

Besides each route's body limit, a daemon holds at most ``AppLimits.max_held_body_bytes`` of
request bodies at once, over all requests (a body counts from its first byte read until its
request is answered): past it a request is refused with 503 ``Busy`` and ``Retry-After``,
before its body is read when it declares its length. Many large bodies at once cannot exhaust
a daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.datastructures import URL
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from dnanet.errors import (
    ChainError,
    CodecError,
    ConfigError,
    CryptoError,
    DnanetError,
    ProtocolError,
    Unavailable,
)
from dnanet.protocol.codec import MAX_MESSAGE_BYTES, Message, parse_json

log = logging.getLogger("dnanet.http")


class TooLarge(CodecError):
    """A request body over its route's limit (413)."""


class Busy(Unavailable):
    """The daemon holds as many request bodies as it takes; retry later (503)."""


class BodyBudget:
    """Bytes of request bodies held at once, over all of an app's requests."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def check(self, size: int) -> None:
        """Raise Busy unless ``size`` more bytes fit."""
        if self.held + size > self.limit:
            raise Busy(f"the daemon holds {self.held} bytes of request bodies, at most "
                       f"{self.limit}: retry later", field="body")

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise Busy (holding nothing more)."""
        self.check(size)
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


def error_body(exc: DnanetError | Exception, kind: str | None = None) -> dict[str, Any]:
    field = getattr(exc, "field", None)
    if field is None and isinstance(exc, CodecError):
        field = "body"  # the document as a whole: not JSON, too deep, too large
    message = exc.detail if isinstance(exc, DnanetError) else str(exc)
    return {"error": {"type": kind or type(exc).__name__, "message": message, "field": field}}


def error_response(exc: DnanetError) -> JSONResponse:
    """The JSON error answer of ``exc`` (with ``Retry-After`` where retrying helps)."""
    headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
    return JSONResponse(error_body(exc), status_code=status_for(exc), headers=headers)


def status_for(exc: DnanetError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, CodecError):
        return 400
    if isinstance(exc, ChainError | Unavailable):
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


_RATE_LIMITED = {"error": {"type": "RateLimited", "message": "too many requests; retry later",
                           "field": None}}
_INTERNAL_ERROR = {"error": {"type": "InternalError", "message": "internal error",
                             "field": None}}
# Paths that Starlette's ``request.url.path`` returns unchanged: printable ASCII without the
# characters it escapes (``?``, ``#``, ``\``) or a leading ``//``.
_PLAIN_PATH = re.compile(r"/(?!/)[!-~]*")
_PLAIN_PATH_CHARS = re.compile(r"[^?#\\]*")


def _route_label(scope: Scope) -> str:
    """``request.url.path`` of the request, without building the URL in the common case."""
    path: str = scope["path"]
    if _PLAIN_PATH.fullmatch(path) and _PLAIN_PATH_CHARS.fullmatch(path):
        return path
    return URL(scope=scope).path


UNMATCHED = "unmatched"
"""The route label of a request that matches no route."""
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0, 60.0)
"""Request durations: from a cached GET (under a millisecond) to a settlement signature or a
streamed completion (a minute)."""


def route_template(scope: Scope, routes: Sequence[BaseRoute],
                   fixed: Container[str] = ()) -> str:
    """The template of the route that serves (or would serve) the request: the route Starlette
    picked (``scope["route"]``), else a path in ``fixed`` (direct routes), else the first of
    ``routes`` that matches its path (with any method), else ``UNMATCHED``."""
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        return template
    if scope["path"] in fixed:
        return str(scope["path"])
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(getattr(route, "path", UNMATCHED))
    return UNMATCHED


def _declared_length(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return cast(bytes, value).decode("latin-1")
    return None


class GuardMiddleware:
    """Pure ASGI middleware in front of every route: per-client rate limit (429), declared
    body size (413), DnanetError -> JSON error, anything else -> logged 500 without details,
    the request counter and the duration histogram, labelled by route template
    (``route_template`` over ``routes`` and the direct routes' ``fixed`` paths).

    Replaces a ``BaseHTTPMiddleware``, which cost a task group and memory streams per request.
    """

    def __init__(self, app: ASGIApp, *, bucket: TokenBucket, max_body_bytes: int,
                 requests: Counter, durations: Histogram | None = None,
                 routes: Sequence[BaseRoute] = (), fixed: Container[str] = (),
                 own_body_limit: set[str] | None = None,
                 bodies: BodyBudget | None = None) -> None:
        self.app = app
        self.bucket = bucket
        self.max_body_bytes = max_body_bytes
        self.bodies = bodies if bodies is not None else BodyBudget(1 << 62)
        self.requests = requests
        self.durations = durations
        self.routes = routes
        """The app's routes (the list itself: routes declared later are seen)."""
        self.fixed = fixed
        self.own_body_limit = own_body_limit if own_body_limit is not None else set()
        """Paths whose routes enforce a body limit of their own, in their own error format."""

    def _count(self, route: str, status: int) -> None:
        if len(self.requests._metrics) < 500:  # a bound, should an app declare very many routes
            self.requests.labels(route, str(status)).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        answered: list[str] = []  # the route template, once the response has started
        try:
            await self._guard(scope, receive, send, answered)
        finally:
            if self.durations is not None and answered:
                self.durations.labels(answered[0]).observe(time.perf_counter() - began)

    async def _guard(self, scope: Scope, receive: Receive, send: Send,
                     answered: list[str]) -> None:
        client = scope.get("client")
        route = _route_label(scope)

        async def send_counted(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start" and not answered:
                # Counted when the response starts, before its body goes out (routed by then).
                answered.append(route_template(scope, self.routes, self.fixed))
                self._count(answered[0], message["status"])
            await send(message)

        if not self.bucket.allow(client[0] if client else "?"):
            await JSONResponse(_RATE_LIMITED, status_code=429, headers={"Retry-After": "1"})(
                scope, receive, send_counted)
            return
        declared = _declared_length(scope)
        length = None if scope["path"] in self.own_body_limit else declared
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await JSONResponse(
                {"error": {"type": "TooLarge", "field": "body",
                           "message": f"body of {length} bytes exceeds {self.max_body_bytes}"}},
                status_code=413)(scope, receive, send_counted)
            return
        held = 0

        async def receive_counted() -> AsgiMessage:
            nonlocal held
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                self.bodies.take(size)
                held += size
            return message

        try:
            if declared is not None and declared.isdigit():
                self.bodies.check(int(declared))  # refused unread; counted as it is read
            await self.app(scope, receive_counted, send_counted)
        except DnanetError as exc:
            if answered:  # too late for an error response: let the server drop the connection
                raise
            await error_response(exc)(scope, receive, send_counted)
            return
        except Exception:  # a bug: log it, answer 500 without details
            if answered:
                raise
            log.exception("unhandled error on %s", route)
            await JSONResponse(_INTERNAL_ERROR, status_code=500)(scope, receive, send_counted)
            return
        finally:
            self.bodies.give(held)
        if not answered:  # the app returned without answering
            log.error("unhandled error on %s: no response returned", route)
            await JSONResponse(_INTERNAL_ERROR, status_code=500)(scope, receive, send_counted)


@dataclass
class AppLimits:
    max_body_bytes: int = MAX_MESSAGE_BYTES
    rate_per_s: float = 2_000.0
    burst: int = 4_000
    max_held_body_bytes: int = 256 * 1024 * 1024
    """Request bodies held at once, over all requests (see the module docstring)."""


_shared_metrics_dir: Path | None = None


def share_metrics(directory: Path, *, clear: bool = False) -> None:
    """Keep every metric this process creates from now on in ``directory``, shared by the
    processes of one daemon (prometheus_client's multiprocess mode): the ``/metrics`` of an app
    created with ``shared_metrics=True`` then answers the sums over all of them, whichever
    process serves it. ``clear`` first empties the directory (the process that starts the
    others, before it does). Counters and histograms add up across processes; a gauge says
    in its ``multiprocess_mode`` how its processes' values combine."""
    global _shared_metrics_dir
    directory.mkdir(parents=True, exist_ok=True)
    if clear:
        for old in directory.glob("*.db"):
            old.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _shared_metrics_dir = directory


def create_app(
    title: str, *, limits: AppLimits | None = None, registry: CollectorRegistry | None = None,
    shared_metrics: bool = False,
) -> FastAPI:
    """A FastAPI app with dnanet's error mapping, body-size and rate limits, /health, /metrics.

    Metrics are registered on ``app.state.registry`` and read from ``app.state.exposition``:
    the same registry, or with ``shared_metrics`` (after ``share_metrics``) a registry that
    sums every process's."""
    limits = limits or AppLimits()
    registry = registry or CollectorRegistry()
    app = FastAPI(title=title, version="1", docs_url=None, redoc_url=None)
    app.state.registry = registry
    exposition = registry
    if shared_metrics:
        if _shared_metrics_dir is None:
            raise ConfigError("shared metrics need share_metrics(directory) first")
        exposition = CollectorRegistry()
        MultiProcessCollector(exposition, path=str(_shared_metrics_dir))  # type: ignore[no-untyped-call]
    app.state.exposition = exposition
    requests = Counter("dnanet_http_requests", "HTTP requests by route template and status",
                       ["path", "status"], registry=registry)
    durations = Histogram("dnanet_http_request_duration_seconds",
                          "time from a request's arrival to the end of its answer, by route "
                          "template", ["path"], buckets=LATENCY_BUCKETS_S, registry=registry)
    bucket = TokenBucket(limits.rate_per_s, limits.burst)

    own_body_limit: set[str] = set()
    app.state.own_body_limit = own_body_limit  # see GuardMiddleware.own_body_limit
    app.state.direct_routes = {}
    guard: dict[str, Any] = {"bucket": bucket, "max_body_bytes": limits.max_body_bytes,
                             "requests": requests, "durations": durations,
                             "routes": app.router.routes, "fixed": app.state.direct_routes,
                             "own_body_limit": own_body_limit,
                             "bodies": BodyBudget(limits.max_held_body_bytes)}
    app.add_middleware(GuardMiddleware, **guard)
    # Direct routes share the guard's state: one limit per client, one count.
    app.state.direct_guard = lambda inner: GuardMiddleware(inner, **guard)

    @app.exception_handler(DnanetError)
    async def dnanet_error(_: Request, exc: DnanetError) -> JSONResponse:
        return error_response(exc)

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
        return Response(generate_latest(exposition), media_type=CONTENT_TYPE_LATEST)

    return app


async def read_body(request: Request, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes even without a Content-Length."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_MESSAGE_BYTES) -> Any:
    return parse_json(await read_body(request, limit), max_bytes=limit)


DirectHandler = Callable[[bytes], Awaitable[tuple[int, bytes]]]
"""A POST handler on the raw body: returns the status and a JSON body; raises DnanetError."""


def add_direct_route(app: FastAPI, path: str, handler: DirectHandler, *, max_body_bytes: int,
                     tags: list[str], openapi_extra: dict[str, Any] | None = None) -> None:
    """A POST route for a hot path: ``Server`` answers it in plain ASGI behind the same guard
    (rate limit, size limit, error mapping, request counter) without FastAPI's routing,
    request and response objects, which cost several times the handler's own work on a
    small request. The route is also declared to FastAPI, so the OpenAPI spec documents it
    and an ASGI client of ``app`` itself reaches the same handler."""
    app.state.direct_routes[path] = (handler, max_body_bytes)

    async def route(request: Request) -> Response:
        status, body = await handler(await read_body(request, max_body_bytes))
        return Response(body, status_code=status, media_type="application/json")

    app.post(path, tags=list(tags), openapi_extra=openapi_extra)(route)


class DirectRoutes:
    """The ASGI app ``Server`` runs: direct routes (see ``add_direct_route``), else ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes: dict[str, tuple[DirectHandler, int]] = getattr(
            app.state, "direct_routes", {})
        guard = getattr(app.state, "direct_guard", None)
        self.guarded: ASGIApp = guard(self._serve) if guard is not None else self._serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            await self.guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler, limit = self.routes[scope["path"]]
        try:
            raw = await read_body(Request(scope, receive), limit)
        except ClientDisconnect:
            return  # the client left: nothing to answer
        status, body = await handler(raw)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def message_schema(cls: type[Message]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a message class (its JSON schema)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": cls.json_schema()}}}}


KEEP_ALIVE_S = 15.0
"""How long a server keeps an idle keep-alive connection open: longer than any dnanet client
keeps one idle in its pool (httpx's default 5 s; ``NodeHttpClient`` and the gateway 4 s). With
uvicorn's default of 5 s, a client that reused a connection after 5 s idle could send its
request just as the server closed it, and read an error instead of an answer."""


def listen(host: str, port: int, *, share: bool = False, join: bool = False,
           backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), for ``Server(sock=...)``.

    ``share``: other processes may listen on the same port with ``join`` (``SO_REUSEPORT``); the
    kernel then spreads new connections evenly over them. The port must be free first: a
    process left listening with ``SO_REUSEPORT`` from an earlier run is an error, not a
    process that silently shares the port. ``join``: listen beside a process that ``share``d.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if share and not join:
        # Refused if anyone listens there, with SO_REUSEPORT or without (port 0: a free one).
        probe = listen(host, port)
        port = int(probe.getsockname()[1])
        probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share or join:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise DnanetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          field="port") from exc
    return sock


class Server:
    """A uvicorn server running inside the current event loop: on ``host``:``port``, or on a
    listening socket ``sock`` (see ``listen``), which it closes when it stops."""

    def __init__(self, app: FastAPI, host: str, port: int,
                 sock: socket.socket | None = None) -> None:
        config = uvicorn.Config(DirectRoutes(app), host=host, port=port, log_level="warning",
                                lifespan="off", access_log=False,
                                timeout_keep_alive=int(KEEP_ALIVE_S))
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port
        self.sock = sock
        self.sock_port = None if sock is None else int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        """The base URL: with port 0, the port the OS bound once the server has started."""
        if self.sock_port is not None:
            return f"http://{self.host}:{self.sock_port}"
        servers = self.server.servers if self.server.started else []
        if servers and servers[0].sockets:
            return f"http://{self.host}:{servers[0].sockets[0].getsockname()[1]}"
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        sockets = None if self.sock is None else [self.sock]
        self.task = asyncio.create_task(self.server.serve(sockets=sockets))
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
