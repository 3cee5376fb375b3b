"""In-flight accounting that cannot leak (issue 13, bug 3): a request running across any number
of the gateway's refreshes releases its node exactly once, so a burst never leaves a node
looking busy (and every later request a 503)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp
import pytest
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from dnanet.ai.backends import TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL, TrivialBackend
from dnanet.gateway.scheduler import NodeState, NodeStats, Scheduler, SchedulingPolicy
from dnanet.service.http import Server, create_app
from gateway_helpers import API_KEY, Net, ScriptedNode, gateway_config, network, record

NODE = f"0x{0xabc:040x}"
AUTH = {"authorization": f"Bearer {API_KEY}"}
EMBED = {"model": TRIVIAL_EMBED_MODEL, "input": ["a", "b"]}
CHAT = {"model": TRIVIAL_CHAT_MODEL, "messages": [{"role": "user", "content": "one two"}]}


def states(*addresses: str) -> list[NodeState]:
    return [NodeState(a, f"http://{a}", frozenset({"m"}), NodeStats(score=1)) for a in addresses]


def test_a_lease_taken_before_refreshes_is_released_once_into_the_current_state() -> None:
    scheduler = Scheduler(SchedulingPolicy(max_concurrency=2), rng=random.Random(1))
    scheduler.update(states("0x1"))
    lease = scheduler.acquire(scheduler.nodes["0x1"])
    for _ in range(3):
        scheduler.update(states("0x1"))  # each refresh builds new states
    assert scheduler.nodes["0x1"].in_flight == 1
    scheduler.release(lease, ok=True)
    scheduler.release(lease, ok=False)  # a second release changes nothing
    assert scheduler.nodes["0x1"].in_flight == 0
    assert scheduler.nodes["0x1"].consecutive_failures == 0
    assert scheduler.in_flight() == 0


def test_a_node_that_leaves_and_returns_keeps_its_count_while_a_request_runs() -> None:
    scheduler = Scheduler(rng=random.Random(1), clock=lambda: 0.0)
    scheduler.update(states("0x1", "0x2"))
    lease = scheduler.acquire(scheduler.nodes["0x1"])
    scheduler.update(states("0x2"))
    assert scheduler.in_flight() == 1  # still counted while gone
    scheduler.update(states("0x1", "0x2"))
    assert scheduler.nodes["0x1"].in_flight == 1
    scheduler.release(lease, ok=False)
    assert scheduler.nodes["0x1"].in_flight == 0
    assert scheduler.nodes["0x1"].consecutive_failures == 1
    scheduler.release(scheduler.acquire(scheduler.nodes["0x1"]), ok=True)
    scheduler.update(states("0x2"))
    assert "0x1" not in scheduler._loads  # an idle node that left is forgotten


def test_failures_and_canary_verdicts_survive_refreshes() -> None:
    scheduler = Scheduler(SchedulingPolicy(failure_threshold=2), rng=random.Random(1),
                          clock=lambda: 0.0)
    scheduler.update(states("0x1", "0x2"))
    lease = scheduler.acquire(scheduler.nodes["0x1"])
    scheduler.update(states("0x1", "0x2"))
    scheduler.release(lease, ok=False)
    scheduler.update(states("0x1", "0x2"))
    scheduler.release(scheduler.acquire(scheduler.nodes["0x1"]), ok=False)
    assert [n.address for n in scheduler.eligible("m")] == ["0x2"]  # cooling down
    scheduler.mark_canary("0x2", passed=False)
    scheduler.update(states("0x1", "0x2"))
    assert scheduler.eligible("m") == []


async def _wait_in_flight(net: Net, address: str, count: int) -> None:
    for _ in range(1000):
        state = net.gateway.scheduler.nodes.get(address)
        if state is not None and state.in_flight == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{address} never had {count} request(s) in flight")


@pytest.mark.parametrize("path", ["/embeddings", "/chat/completions"])
def test_a_request_spanning_refreshes_releases_its_node(path: str) -> None:
    async def go() -> None:
        policy = SchedulingPolicy(max_concurrency=1)
        async with ScriptedNode("hang") as slow, network(
                [], extra_records=[record(NODE, slow.url)],
                config=gateway_config(policy=policy)) as net, \
                aiohttp.ClientSession(headers=AUTH) as h:
            body = EMBED if path == "/embeddings" else CHAT
            first = asyncio.create_task(h.post(f"{net.base_url}{path}", json=body))
            await _wait_in_flight(net, NODE, 1)
            for _ in range(3):
                await net.gateway.refresh()
            slow.release.set()
            async with await first as response:
                assert response.status == 200
            assert net.gateway.scheduler.nodes[NODE].in_flight == 0
            # The node takes requests again (max_concurrency 1: a leak would make it busy).
            async with h.post(f"{net.base_url}{path}", json=body) as again:
                assert again.status == 200
            assert net.gateway.scheduler.in_flight() == 0

    asyncio.run(go())


def _slow_stream_node(started: asyncio.Event, finish: asyncio.Event) -> Server:
    """A node whose chat stream sends one event, then waits for ``finish``."""
    app = create_app("slow stream node")

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [{"id": TRIVIAL_CHAT_MODEL}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        await request.body()

        async def events() -> Any:
            yield (b'data: {"id": "x", "object": "chat.completion.chunk", "choices": '
                   b'[{"index": 0, "delta": {"content": "a"}}]}\n\n')
            started.set()
            await finish.wait()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Server(app, "127.0.0.1", 0)


def test_a_client_leaving_a_stream_releases_the_node_without_a_failure() -> None:
    async def go() -> None:
        started, finish = asyncio.Event(), asyncio.Event()
        node = _slow_stream_node(started, finish)
        await node.start()
        try:
            async with network([], extra_records=[record(NODE, node.url)]) as net:
                async with aiohttp.ClientSession(headers=AUTH) as h:
                    response = await h.post(f"{net.base_url}/chat/completions",
                                            json={**CHAT, "stream": True})
                    assert response.status == 200
                    await response.content.readline()
                    await net.gateway.refresh()
                    response.close()  # the client goes away mid-stream
                    await _wait_in_flight(net, NODE, 0)
                state = net.gateway.scheduler.nodes[NODE]
                assert state.consecutive_failures == 0
                finish.set()
        finally:
            await node.stop()

    asyncio.run(go())


def test_a_burst_of_2000_requests_across_refreshes_leaves_nothing_in_flight() -> None:
    """2,000 embedding requests at concurrency 32 while the gateway refreshes every 20 ms:
    every one answered 200, and afterwards no node counts a request in flight."""
    total, concurrency = 2000, 32

    async def go() -> None:
        config = gateway_config(refresh_s=0.02, policy=SchedulingPolicy(max_concurrency=32))
        async with network([[TrivialBackend()], [TrivialBackend()]], config=config) as net, \
                aiohttp.ClientSession(headers=AUTH) as h:
            await net.gateway.start()  # the refresh loop, as in a mixer
            statuses: Counter[int] = Counter()
            queue = iter(range(total))

            async def client() -> None:
                for _ in queue:
                    async with h.post(f"{net.base_url}/embeddings", json=EMBED) as response:
                        await response.read()
                        statuses[response.status] += 1

            await asyncio.gather(*(client() for _ in range(concurrency)))
            assert statuses == Counter({200: total})
            scheduler = net.gateway.scheduler
            assert scheduler.in_flight() == 0
            assert [n.in_flight for n in scheduler.nodes.values()] == [0, 0]

    asyncio.run(go())
