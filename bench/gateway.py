"""Gateway overhead and throughput with a trivial backend, from one run.

Starts one node (trivial deterministic embedding backend) and one gateway, each in its own
process (uvicorn), then measures:

* added latency: sequential embeddings requests straight to the node vs through the gateway
  (p50, p99; target p50 <= 3 ms);
* throughput: requests/s through the gateway with concurrent clients (target >= 500 on
  2 cores).

Usage: ``.venv/bin/python bench/gateway.py [--requests 2000] [--concurrency 32]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import time
from typing import Any

import httpx

KEY = "dn-bench"
MODEL = "dnanet-trivial-embed"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_node(port: int) -> None:
    import uvicorn

    from dnanet.node.ai_api import mount_ai_api
    from dnanet.node.backends import BackendSet, TrivialBackend
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


async def _wait(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _latencies(url: str, n: int) -> list[float]:
    body = {"model": MODEL, "input": "benchmark sentence"}
    headers = {"authorization": f"Bearer {KEY}"}
    out = []
    async with httpx.AsyncClient() as client:
        for _ in range(50):  # warm-up
            await client.post(f"{url}/v1/embeddings", json=body, headers=headers)
        for _ in range(n):
            t0 = time.perf_counter()
            response = await client.post(f"{url}/v1/embeddings", json=body, headers=headers)
            out.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, response.text
    return out


def _load_worker(url: str, n: int, concurrency: int, queue: Any) -> None:
    """One load-generating process: ``concurrency`` clients, ``n`` requests in all."""

    async def run() -> tuple[int, int]:
        body = {"model": MODEL, "input": "benchmark sentence"}
        headers = {"authorization": f"Bearer {KEY}"}
        ok = 0
        errors = 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            remaining = n

            async def one() -> None:
                nonlocal remaining, ok, errors
                while remaining > 0:
                    remaining -= 1
                    response = await client.post(f"{url}/v1/embeddings", json=body,
                                                 headers=headers)
                    if response.status_code == 200:
                        ok += 1
                    else:
                        errors += 1

            await asyncio.gather(*(one() for _ in range(concurrency)))
        return ok, errors

    queue.put(asyncio.run(run()))


def _throughput(url: str, n: int, concurrency: int, workers: int) -> tuple[float, int, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load_worker, args=(url, n // workers, concurrency // workers,
                                                    queue)) for _ in range(workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return ok / elapsed, ok, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--load-processes", type=int, default=2)
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
        direct = asyncio.run(_latencies(node_url, args.latency_requests))
        through = asyncio.run(_latencies(gateway_url, args.latency_requests))
        rps, ok, errors = _throughput(gateway_url, args.requests, args.concurrency,
                                      args.load_processes)
    finally:
        for p in servers:
            p.terminate()
            p.join(5)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    d50, d99 = statistics.median(direct), _pct(direct, 0.99)
    g50, g99 = statistics.median(through), _pct(through, 0.99)
    print(f"gateway bench on {cores} cores (node, gateway and load each in own processes)")
    print(f"  direct to node : p50 {d50:6.2f} ms  p99 {d99:6.2f} ms  ({len(direct)} requests)")
    print(f"  through gateway: p50 {g50:6.2f} ms  p99 {g99:6.2f} ms")
    print(f"  added latency  : p50 {g50 - d50:6.2f} ms  p99 {g99 - d99:6.2f} ms  "
          f"(target p50 <= 3 ms: {'OK' if g50 - d50 <= 3 else 'MISSED'})")
    print(f"  throughput     : {rps:8.0f} requests/s through one gateway ({ok} ok, {errors} "
          f"errors, concurrency {args.concurrency}; target >= 500: "
          f"{'OK' if rps >= 500 else 'MISSED'})")


if __name__ == "__main__":
    main()
