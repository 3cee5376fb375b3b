"""How the gateway forwards to nodes: retries on another node after a timeout, an error or a
malformed answer; a node's 4xx passed on as the request's fault; streams retried until one
starts, and ended with an error event when a node fails mid-stream; per-node concurrency
limits; canaries that cannot be delivered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from dnanet.ai.backends import TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL, TrivialBackend
from dnanet.gateway.canary import ReferenceModels
from dnanet.gateway.scheduler import NodeState, NodeStats, SchedulingPolicy
from gateway_helpers import API_KEY, Net, ScriptedNode, gateway_config, network, record

BAD = f"0x{0xbad:040x}"
GOOD = f"0x{0x600d:040x}"
# The bad node is drawn first (its weight dwarfs the good one's), the good one next.
FAVOUR_BAD = {BAD: NodeStats(score=1_000_000), GOOD: NodeStats(score=1)}
AUTH = {"authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "one two three four"}]


async def post(net: Net, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as h:
        return await h.post(f"{net.base_url}{path}", headers=AUTH, json=body)


async def stream_events(net: Net, body: dict[str, Any]) -> tuple[int, list[Any]]:
    """The status and the events (parsed ``data:`` lines but ``[DONE]``) of a streamed chat
    request."""
    async with httpx.AsyncClient(timeout=10) as h, h.stream(
            "POST", f"{net.base_url}/chat/completions", headers=AUTH,
            json={**body, "stream": True}) as response:
        lines = [line async for line in response.aiter_lines()]
    events = [json.loads(line[len("data: "):]) for line in lines
              if line.startswith("data: ") and line != "data: [DONE]"]
    return response.status_code, events


def streamed_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events)


def assert_tried_bad_then_good(net: Net, bad: ScriptedNode, good: ScriptedNode) -> None:
    """Each node was asked once; the bad one's failure counts, and neither holds a slot."""
    assert (bad.calls, good.calls) == (1, 1)
    nodes = net.gateway.scheduler.nodes
    assert nodes[BAD].consecutive_failures == 1
    assert nodes[GOOD].consecutive_failures == 0
    assert nodes[BAD].in_flight == nodes[GOOD].in_flight == 0


EMBED = ("/embeddings", {"model": TRIVIAL_EMBED_MODEL, "input": ["a", "b"]})
CHAT = ("/chat/completions", {"model": TRIVIAL_CHAT_MODEL, "messages": MESSAGES})


@pytest.mark.parametrize("mode", ["hang", "error", "malformed"])
@pytest.mark.parametrize(("path", "body"), [EMBED, CHAT], ids=["embeddings", "chat"])
def test_a_failing_node_is_retried_on_another(mode: str, path: str,
                                              body: dict[str, Any]) -> None:
    async def go() -> None:
        async with ScriptedNode(mode) as bad, ScriptedNode() as good, network(
                [], extra_records=[record(BAD, bad.url), record(GOOD, good.url)],
                stats=FAVOUR_BAD, config=gateway_config(request_timeout_s=0.5)) as net:
            response = await post(net, path, body)
            assert response.status_code == 200, response.text
            reference = TrivialBackend()
            if path == "/embeddings":
                data = response.json()["data"]
                assert len(data) == len(body["input"])
                for item, text in zip(data, body["input"], strict=True):
                    assert item["embedding"] == pytest.approx(reference.embed_one(text))
            else:
                content = response.json()["choices"][0]["message"]["content"]
                assert content == reference.answer({"messages": MESSAGES})
            assert_tried_bad_then_good(net, bad, good)

    asyncio.run(go())


@pytest.mark.parametrize(("mode", "why"), [("hang", "node timed out"),
                                           ("error", "node answered HTTP 500")])
def test_when_every_node_fails_the_answer_is_503_saying_why(mode: str, why: str) -> None:
    async def go() -> None:
        async with ScriptedNode(mode) as bad, network(
                [], extra_records=[record(BAD, bad.url)],
                config=gateway_config(request_timeout_s=0.3)) as net:
            for path, body in (EMBED, CHAT, (CHAT[0], {**CHAT[1], "stream": True})):
                response = await post(net, path, body)
                assert response.status_code == 503
                assert int(response.headers["retry-after"]) > 0
                error = response.json()["error"]
                assert error["code"] == "no_node_available"
                assert f"1 node(s) tried, last: {why}" in error["message"]
            assert net.gateway.scheduler.nodes[BAD].in_flight == 0

    asyncio.run(go())


def test_a_node_that_does_not_take_a_large_request_times_out() -> None:
    """Its socket buffers fill and the gateway's write stalls: still bounded by the timeout."""
    # 7.4 MB: beyond what the sockets buffer (4 MB by default), within the app's 8 MiB limit.
    texts = [f"{i:03d}" + "x" * 62_000 for i in range(120)]

    async def go() -> None:
        async with ScriptedNode("hang") as bad, network(
                [], extra_records=[record(BAD, bad.url)],
                config=gateway_config(request_timeout_s=0.5)) as net:
            response = await post(net, EMBED[0], {"model": TRIVIAL_EMBED_MODEL, "input": texts})
            assert response.status_code == 503
            assert "last: node timed out" in response.json()["error"]["message"]
            assert net.gateway.scheduler.nodes[BAD].in_flight == 0

    asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_a_node_refusal_is_passed_on_and_not_held_against_it(stream: bool) -> None:
    async def go() -> None:
        async with ScriptedNode("refuse") as bad, ScriptedNode() as good, network(
                [], extra_records=[record(BAD, bad.url), record(GOOD, good.url)],
                stats=FAVOUR_BAD) as net:
            response = await post(net, CHAT[0], {**CHAT[1], "stream": stream})
            assert response.status_code == 400
            assert response.json() == {"error": {
                "message": "bad messages", "type": "invalid_request_error",
                "param": "messages", "code": "invalid_value"}}
            assert (bad.calls, good.calls) == (1, 0)
            state = net.gateway.scheduler.nodes[BAD]
            assert (state.consecutive_failures, state.in_flight) == (0, 0)

    asyncio.run(go())


@pytest.mark.parametrize("mode", ["hang", "error", "empty"])
def test_a_stream_is_retried_on_another_node_until_one_starts(mode: str) -> None:
    async def go() -> None:
        async with ScriptedNode(mode) as bad, ScriptedNode() as good, network(
                [], extra_records=[record(BAD, bad.url), record(GOOD, good.url)],
                stats=FAVOUR_BAD, config=gateway_config(request_timeout_s=0.5)) as net:
            status, events = await stream_events(net, CHAT[1])
            assert status == 200
            assert streamed_text(events) == TrivialBackend().answer({"messages": MESSAGES})
            assert_tried_bad_then_good(net, bad, good)

    asyncio.run(go())


def test_a_node_failing_mid_stream_ends_it_with_an_error_event() -> None:
    async def go() -> None:
        async with ScriptedNode("cut") as bad, network(
                [], extra_records=[record(BAD, bad.url)]) as net:
            status, events = await stream_events(net, CHAT[1])
            assert status == 200
            assert len(events) == 2
            assert events[0]["choices"][0]["delta"]["content"]
            assert events[1]["error"]["code"] == "node_failed"
            state = net.gateway.scheduler.nodes[BAD]
            assert (state.consecutive_failures, state.in_flight) == (1, 0)

    asyncio.run(go())


def test_a_node_answering_too_much_fails_and_is_not_held_in_memory() -> None:
    """An answer over ``max_answer_bytes`` fails the node (another one answers, or a 503 says
    why); a streamed line over 1 MiB ends the stream with an error event."""
    limit = 1 << 20

    async def go() -> None:
        async with ScriptedNode("huge") as bad, ScriptedNode() as good, network(
                [], extra_records=[record(BAD, bad.url), record(GOOD, good.url)],
                stats=FAVOUR_BAD, config=gateway_config(max_answer_bytes=limit)) as net:
            response = await post(net, *EMBED)
            assert response.status_code == 200, response.text
            assert_tried_bad_then_good(net, bad, good)
        async with ScriptedNode("huge") as bad, network(
                [], extra_records=[record(BAD, bad.url)],
                config=gateway_config(max_answer_bytes=limit)) as net:
            response = await post(net, *CHAT)
            assert response.status_code == 503
            assert f"last: node answered more than {limit} bytes" in response.json()[
                "error"]["message"]
        async with ScriptedNode("endless") as bad, network(
                [], extra_records=[record(BAD, bad.url)]) as net:
            status, events = await stream_events(net, CHAT[1])
            assert status == 200
            assert events[0]["choices"][0]["delta"]["content"]
            assert events[-1]["error"]["code"] == "node_failed"
            state = net.gateway.scheduler.nodes[BAD]
            assert (state.consecutive_failures, state.in_flight) == (1, 0)

    asyncio.run(go())


def test_event_lines_split_once_whatever_the_chunks() -> None:
    """Lines end with \\n, \\r\\n or \\r, also across chunks; a stream cut into one-byte
    chunks gives the same lines."""
    from dnanet.gateway.app import _event_lines

    stream = b"data: a\n\ndata: b\r\n\r\ndata: c\rdata: d\n: tail"

    async def lines(chunks: list[bytes]) -> list[bytes]:
        reader = FakeReader(chunks)
        return [line async for line in _event_lines(reader)]  # type: ignore[arg-type]

    expected = [b"data: a", b"data: b", b"data: c", b"data: d", b": tail"]
    assert asyncio.run(lines([stream])) == expected
    assert asyncio.run(lines([stream[i:i + 1] for i in range(len(stream))])) == expected


class FakeReader:
    """``iter_any`` over fixed chunks, as aiohttp's StreamReader gives what arrived."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def test_a_node_at_its_concurrency_limit_gets_no_more_requests() -> None:
    async def go() -> None:
        policy = SchedulingPolicy(max_concurrency=1)
        async with ScriptedNode("hang") as slow, network(
                [], extra_records=[record(BAD, slow.url)], config=gateway_config(policy=policy)) as net:
            state: NodeState | None = None
            first = asyncio.create_task(post(net, *EMBED))
            for _ in range(500):
                state = net.gateway.scheduler.nodes.get(BAD)
                if state is not None and state.in_flight == 1:
                    break
                await asyncio.sleep(0.01)
            assert state is not None and state.in_flight == 1
            busy = await post(net, *EMBED)
            assert busy.status_code == 503
            assert "busy or failing" in busy.json()["error"]["message"]
            assert slow.calls == 1
            slow.release.set()
            assert (await first).status_code == 200
            assert state.in_flight == 0

    asyncio.run(go())


def test_an_undelivered_canary_is_no_verdict() -> None:
    async def go() -> None:
        async with ScriptedNode("error") as bad, network(
                [], extra_records=[record(BAD, bad.url)]) as net:
            gw = net.gateway
            gw.references = ReferenceModels({TRIVIAL_EMBED_MODEL: TrivialBackend()})
            await gw.refresh()
            node = gw.scheduler.nodes[BAD]
            assert await gw.run_canary(node, TRIVIAL_EMBED_MODEL) is None
            assert bad.calls == 1
            assert gw.canaries.pending(BAD) == [] and not node.canary_failed
            assert node.in_flight == 0

    asyncio.run(go())


def test_the_openapi_spec_documents_the_gateway_routes() -> None:
    async def go() -> None:
        async with network([[TrivialBackend()]]) as net, httpx.AsyncClient() as h:
            paths = (await h.get(f"{net.url}/openapi.json")).json()["paths"]
            for path in ("/v1/embeddings", "/v1/chat/completions"):
                assert paths[path]["post"]["tags"] == ["gateway"]
            assert (await h.get(f"{net.base_url}/embeddings", headers=AUTH)).status_code == 405

    asyncio.run(go())
