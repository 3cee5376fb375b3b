"""Gateway overhead and throughput with a trivial backend, from one run.

Starts one node (trivial deterministic embedding backend) and one gateway, each in its own
process (uvicorn), then measures:

* added latency: sequential embeddings requests straight to the node and through the gateway,
  taking turns (p50, p99 of each, and their differences; target p50 <= 3 ms);
* throughput: requests/s through the gateway with concurrent clients (target >= 500 on
  2 cores), and the CPU time the node, the gateway and the load client spent meanwhile.

The client is a raw keep-alive HTTP/1.1 connection per concurrent request (an asyncio protocol
parsing status line and ``content-length``), so that on a 2-core machine the load generator
takes little of the CPU the node and the gateway share with it. Only ``200`` answers carrying
an embeddings list count; the clock of the throughput run starts once every connection is
open (process start-up is not counted) and stops at the last answer.

Usage: ``.venv/bin/python bench/gateway.py [--requests 4000] [--concurrency 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

from cputime import process_cpu_s
from dnanet.mixer.node_client import _Exchange

KEY = "dn-bench"
MODEL = "dnanet-trivial-embed"
BODY = json.dumps({"model": MODEL, "input": "benchmark sentence"}).encode()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_node(port: int) -> None:
    import uvicorn

    from dnanet.ai.backends import BackendSet, TrivialBackend
    from dnanet.node.ai_api import mount_ai_api
    from dnanet.service.http import create_app

    backends = BackendSet([TrivialBackend()])
    asyncio.run(backends.load())
    app = create_app("bench node")
    mount_ai_api(app, backends)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_gateway(port: int, node_url: str) -> None:
    import uvicorn

    from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory, create_gateway_app
    from dnanet.service.network import NodeRecord

    record = NodeRecord(address="0x" + "01" * 20, endpoint=node_url, hardware_class=0, stake=1,
                        jailed=False, active=True)
    gateway = Gateway(GatewayConfig(api_keys=frozenset({KEY}), canary_rate=0.0,
                                    canary_interval_s=0),
                      StaticDirectory([record]))
    uvicorn.run(create_gateway_app(gateway), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time: the mixer's node client's
    exchange (``dnanet.mixer.node_client``), answers parsed by httptools."""

    def __init__(self, exchange: _Exchange) -> None:
        self.exchange = exchange

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        _, exchange = await asyncio.get_running_loop().create_connection(
            lambda: _Exchange(1 << 20), parts.hostname or "127.0.0.1", parts.port or 80)
        return cls(exchange)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        return await self.exchange.send(raw, b"")

    def close(self) -> None:
        if self.exchange.transport is not None:
            self.exchange.transport.close()


def embeddings_request(url: str) -> bytes:
    """``POST /v1/embeddings`` of one sentence, as raw bytes."""
    host = urlsplit(url).netloc
    return (f"POST /v1/embeddings HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
            ).encode() + BODY


def succeeded(status: int, body: bytes) -> bool:
    return status == 200 and body.startswith(b'{"object":"list"') and b'"embedding"' in body


async def _wait(url: str) -> None:
    for _ in range(400):
        try:
            connection = await Connection.open(url)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        connection.close()
        return
    raise RuntimeError(f"{url} did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latencies(urls: list[str], n: int) -> list[list[float]]:
    """``n`` sequential requests to each of ``urls``, taking turns (so that each sees the
    same moments of a noisy machine); the milliseconds of each, per URL."""
    connections = [await Connection.open(url) for url in urls]
    raws = [embeddings_request(url) for url in urls]
    out: list[list[float]] = [[] for _ in urls]
    try:
        for _ in range(50):  # warm-up
            for connection, raw in zip(connections, raws, strict=True):
                await connection.request(raw)
        for _ in range(n):
            for connection, raw, times in zip(connections, raws, out, strict=True):
                t0 = time.perf_counter()
                status, body = await connection.request(raw)
                times.append((time.perf_counter() - t0) * 1000)
                assert succeeded(status, body), (status, body[:200])
    finally:
        for connection in connections:
            connection.close()
    return out


def _load_worker(url: str, n: int, concurrency: int, go: Any, queue: Any) -> None:
    """One load-generating process: ``concurrency`` connections, ``n`` requests in all.
    Reports (ok, errors, start, end, cpu seconds) with ``time.monotonic`` stamps."""

    async def run() -> tuple[int, int, float, float, float]:
        raw = embeddings_request(url)
        connections = [await Connection.open(url) for _ in range(concurrency)]
        queue.put("ready")
        await asyncio.to_thread(go.wait)
        ok = errors = 0
        remaining = n

        async def one(connection: Connection) -> None:
            nonlocal remaining, ok, errors
            while remaining > 0:
                remaining -= 1
                status, body = await connection.request(raw)
                if succeeded(status, body):
                    ok += 1
                else:
                    errors += 1

        cpu0 = process_cpu_s()
        start = time.monotonic()
        await asyncio.gather(*(one(c) for c in connections))
        end = time.monotonic()
        cpu = process_cpu_s() - cpu0
        for connection in connections:
            connection.close()
        return ok, errors, start, end, cpu

    queue.put(asyncio.run(run()))


def _throughput(url: str, n: int, concurrency: int, workers: int,
                servers: list[Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    go = ctx.Event()
    share = [concurrency // workers + (i < concurrency % workers) for i in range(workers)]
    procs = [ctx.Process(target=_load_worker,
                         args=(url, n * share[i] // concurrency, share[i], go, queue))
             for i in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        assert queue.get() == "ready"
    before = [process_cpu_s(s.pid) for s in servers]
    go.set()
    results = [queue.get() for _ in procs]
    after = [process_cpu_s(s.pid) for s in servers]
    for p in procs:
        p.join()
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    ok = sum(r[0] for r in results)
    return {"rps": ok / elapsed, "ok": ok, "errors": sum(r[1] for r in results),
            "elapsed": elapsed, "client_cpu": sum(r[4] for r in results),
            "server_cpu": [a - b for a, b in zip(after, before, strict=True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-processes", type=int, default=1)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    node_port, gateway_port = _port(), _port()
    node_url = f"http://127.0.0.1:{node_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    servers = [ctx.Process(target=_serve_node, args=(node_port,), daemon=True),
               ctx.Process(target=_serve_gateway, args=(gateway_port, node_url), daemon=True)]
    for p in servers:
        p.start()
    try:
        asyncio.run(_wait(node_url))
        asyncio.run(_wait(gateway_url))
        direct, through = asyncio.run(_latencies([node_url, gateway_url],
                                                 args.latency_requests))
        load = _throughput(gateway_url, args.requests, args.concurrency, args.load_processes,
                           servers)
    finally:
        for p in servers:
            p.terminate()
            p.join(5)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    d50, d99 = statistics.median(direct), _pct(direct, 0.99)
    g50, g99 = statistics.median(through), _pct(through, 0.99)
    rps, ok = load["rps"], load["ok"]
    node_cpu, gateway_cpu = load["server_cpu"]
    per_request = {name: 1000 * cpu / max(ok, 1) for name, cpu in
                   (("node", node_cpu), ("gateway", gateway_cpu),
                    ("load client", load["client_cpu"]))}
    print(f"gateway bench on {cores} cores (node, gateway and load each in own processes;"
          " raw keep-alive HTTP/1.1 client)")
    print(f"  direct to node : p50 {d50:6.2f} ms  p99 {d99:6.2f} ms  ({len(direct)} sequential"
          " requests each, taking turns)")
    print(f"  through gateway: p50 {g50:6.2f} ms  p99 {g99:6.2f} ms")
    print(f"  added latency  : p50 {g50 - d50:6.2f} ms  p99 {g99 - d99:6.2f} ms  "
          f"(target p50 <= 3 ms: {'OK' if g50 - d50 <= 3 else 'MISSED'})")
    print(f"  throughput     : {rps:8.0f} requests/s through one gateway ({ok} answered 200 in "
          f"{load['elapsed']:.2f} s, {load['errors']} other answers, {args.concurrency} "
          f"connections in {args.load_processes} load process(es); target >= 500: "
          f"{'OK' if rps >= 500 else 'MISSED'})")
    print("  CPU per request during the throughput run: " + ", ".join(
        f"{name} {ms:.2f} ms" for name, ms in per_request.items()))


if __name__ == "__main__":
    main()
