"""Nodes and gateways on loopback for the gateway tests (no chain needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dnanet.ai.backends import (
    TRIVIAL_CHAT_MODEL,
    TRIVIAL_EMBED_MODEL,
    Backend,
    BackendSet,
    TrivialBackend,
)
from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory, create_gateway_app
from dnanet.gateway.scheduler import NodeStats
from dnanet.node.ai_api import mount_ai_api
from dnanet.service.http import Server, create_app
from dnanet.service.network import NodeRecord

API_KEY = "dn-test-key"


def gateway_config(**changes: Any) -> GatewayConfig:
    """The tests' gateway: their API key, a fixed seed, no canaries (unless ``changes``)."""
    return GatewayConfig(api_keys=frozenset({API_KEY}), seed=7, canary_rate=0.0,
                         canary_interval_s=0, **changes)


def node_app(backends: Sequence[Backend]) -> tuple[FastAPI, BackendSet]:
    backend_set = BackendSet(backends)
    app = create_app("test node")
    mount_ai_api(app, backend_set)
    return app, backend_set


def record(address: str, endpoint: str, *, active: bool = True,
           jailed: bool = False) -> NodeRecord:
    return NodeRecord(address=address, endpoint=endpoint, hardware_class=0, stake=1,
                      jailed=jailed, active=active)


@dataclass
class Net:
    gateway: Gateway
    url: str
    node_urls: list[str]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@contextlib.asynccontextmanager
async def network(
    backends: Sequence[Sequence[Backend]],
    *,
    stats: dict[str, NodeStats] | None = None,
    extra_records: Sequence[NodeRecord] = (),
    config: GatewayConfig | None = None,
) -> AsyncIterator[Net]:
    """One node per entry of ``backends`` (addresses 0x..01, 0x..02, ...) and a gateway."""
    servers: list[Server] = []
    records: list[NodeRecord] = []
    try:
        for i, node_backends in enumerate(backends):
            app, backend_set = node_app(node_backends)
            await backend_set.load()
            server = Server(app, "127.0.0.1", 0)
            await server.start()
            servers.append(server)
            records.append(record(f"0x{i + 1:040x}", server.url))
        gateway = Gateway(config or gateway_config(),
                          StaticDirectory([*records, *extra_records], stats))
        gserver = Server(create_gateway_app(gateway), "127.0.0.1", 0)
        await gserver.start()
        servers.append(gserver)
        try:
            yield Net(gateway, gserver.url, [s.url for s in servers[:-1]])
        finally:
            await gateway.stop()
    finally:
        await asyncio.gather(*(s.stop() for s in servers))


HUGE_BYTES = 2 << 20
"""What a ``huge`` or ``endless`` scripted node sends: over the gateway's 1 MiB event line,
and over the answer limit the tests set."""


class ScriptedNode:
    """A node that serves the trivial models and misbehaves as told by ``mode``:

    * ``ok``: answers like a real node;
    * ``hang``: answers only once ``release`` is set (or after 10 s), and reads the request's
      body only then (so a large one stalls in the network);
    * ``error``: HTTP 500; ``malformed``: 200 with a body that is not an answer;
    * ``refuse``: HTTP 400 in OpenAI's format naming ``messages`` (the request's fault);
    * ``cut``: streams its first event, then drops the connection;
    * ``empty``: a 200 stream that ends before its first event;
    * ``huge``: a 200 answer of ``HUGE_BYTES`` (a well-formed one, padded), streamed in chunks
      without a length; ``endless``: streams its first event, then a line that never ends.
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.release = asyncio.Event()
        self.server = Server(self._app(), "127.0.0.1", 0)

    @property
    def url(self) -> str:
        return self.server.url

    async def __aenter__(self) -> ScriptedNode:
        await self.server.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release.set()
        await self.server.stop()

    def _app(self) -> FastAPI:
        app = create_app("scripted node")
        trivial = TrivialBackend()

        @app.get("/v1/models")
        async def models() -> Response:
            return JSONResponse({"object": "list", "data": [
                {"id": m, "object": "model"} for m in (TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL)]})

        async def misbehave() -> Response | None:
            self.calls += 1
            if self.mode == "hang":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 10)
            if self.mode == "error":
                return Response(b"boom", status_code=500)
            if self.mode == "malformed":
                return JSONResponse({"object": "list", "data": "not vectors"})
            if self.mode == "huge":
                async def padded() -> AsyncIterator[bytes]:
                    yield b'{"object": "list", "data": [], "padding": "'
                    for _ in range(HUGE_BYTES // 65536):
                        yield b"x" * 65536
                    yield b'"}'

                return StreamingResponse(padded(), media_type="application/json")
            if self.mode == "refuse":
                return JSONResponse({"error": {"message": "bad messages", "type": "invalid_request_error",
                                               "param": "messages", "code": "invalid_value"}},
                                    status_code=400)
            return None

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Response:
            answer = await misbehave()
            body = json.loads(await request.body())
            if answer is not None:
                return answer
            vectors = await trivial.embeddings(body["model"], body["input"])
            return JSONResponse({"object": "list", "data": [
                {"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(vectors)]})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            answer = await misbehave()
            body = json.loads(await request.body())
            if answer is not None:
                return answer
            if not body.get("stream"):
                return JSONResponse(await trivial.chat(body["model"], body))
            mode = self.mode

            async def events() -> AsyncIterator[bytes]:
                if mode == "empty":
                    return
                async for chunk in trivial.chat_stream(body["model"], body):
                    yield b"data: " + chunk + b"\n\n"
                    if mode == "cut":
                        raise ConnectionResetError("the node went away mid-stream")
                    if mode == "endless":
                        yield b"data: "
                        for _ in range(HUGE_BYTES // 65536):
                            yield b"x" * 65536

            return StreamingResponse(events(), media_type="text/event-stream")

        return app
