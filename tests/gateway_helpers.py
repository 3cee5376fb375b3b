"""Nodes and gateways on loopback for the gateway tests (no chain needed)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import FastAPI

from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory, create_gateway_app
from dnanet.gateway.scheduler import NodeStats
from dnanet.node.ai_api import mount_ai_api
from dnanet.node.backends import Backend, BackendSet
from dnanet.service.http import Server, create_app
from dnanet.service.network import NodeRecord

API_KEY = "dn-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            server = Server(app, "127.0.0.1", free_port())
            await server.start()
            servers.append(server)
            records.append(record(f"0x{i + 1:040x}", server.url))
        config = config or GatewayConfig(api_keys=frozenset({API_KEY}), seed=7,
                                         canary_rate=0.0, canary_interval_s=0)
        gateway = Gateway(config, StaticDirectory([*records, *extra_records], stats))
        gserver = Server(create_gateway_app(gateway), "127.0.0.1", free_port())
        await gserver.start()
        servers.append(gserver)
        try:
            yield Net(gateway, gserver.url, [s.url for s in servers[:-1]])
        finally:
            await gateway.stop()
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
