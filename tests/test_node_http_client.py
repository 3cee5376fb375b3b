"""The mixer's client for nodes' challenge sessions (``NodeHttpClient``, ``HttpNodeTransport``)
against a WebSocket server that answers as scripted: each way a node can fail is the node's
fault, named (unreachable, or a bad answer), and the per-node connection limit holds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from dnanet.errors import ChallengeError, CodecError, NodeUnreachable
from dnanet.mixer.node_client import HttpNodeTransport, NodeHttpClient, session_url
from dnanet.node.api import ACCEPTED, COMPUTE, ECHO, ERROR, START
from dnanet.params import TEST
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.messages import SignedChallenge
from protocol_fixtures import DOMAIN, make_mixers, make_nodes

MIXER = make_mixers(1, "client-mixer")[0]
NODE = make_nodes(1, "client-node")[0]
Script = Callable[[ServerConnection], Awaitable[None]]


def signed(index: int = 0) -> SignedChallenge:
    challenge = compute_challenge(beta=bytes([index]) * 64, epoch=0, round_=0,
                                  mixer=MIXER.address, node=NODE.address, hardware_class=0,
                                  preset=TEST)
    return SignedChallenge(challenge=challenge,
                           signature=MIXER.identity.sign_typed(DOMAIN, challenge.hash_struct()))


class ScriptedNode:
    """A WebSocket server whose every connection runs ``script``; counts open connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.open_now = 0
        self.most_open = 0
        self.frames: list[bytes] = []

    async def _serve(self, connection: ServerConnection) -> None:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.script(connection)
        finally:
            self.open_now -= 1

    async def accept_start(self, connection: ServerConnection) -> None:
        frame = await connection.recv(decode=False)
        assert isinstance(frame, bytes)
        self.frames.append(frame)
        await connection.send(ACCEPTED)


def run(script: Script, body: Callable[[ScriptedNode, HttpNodeTransport], Awaitable[Any]],
        *, timeout_s: float = 5.0, **client: Any) -> Any:
    async def go() -> Any:
        node = ScriptedNode(script)
        async with serve(node._serve, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with NodeHttpClient(limit=16, timeout_s=timeout_s, **client) as http:
                return await body(node, HttpNodeTransport(http, f"http://127.0.0.1:{port}"))

    return asyncio.run(go())


def started_then(answer: Callable[[ScriptedNode, ServerConnection], Awaitable[None]]) -> Any:
    """A script: accept the start, then ``answer`` the next frame; the test's node binds it."""
    holder: dict[str, ScriptedNode] = {}

    async def script(connection: ServerConnection) -> None:
        node = holder["node"]
        await node.accept_start(connection)
        await connection.recv(decode=False)
        await answer(node, connection)
        await connection.wait_closed()

    return holder, script


def echo_after(answer: Callable[[ServerConnection], Awaitable[None]]) -> Any:
    async def body(node: ScriptedNode, transport: HttpNodeTransport) -> Any:
        challenge = signed().challenge
        await transport.start(signed())
        try:
            return await transport.echo(challenge.challenge_id, bytes(16))
        finally:
            await transport.close(challenge.challenge_id)

    async def script(connection: ServerConnection) -> None:
        await connection.recv(decode=False)
        await connection.send(ACCEPTED)
        await connection.recv(decode=False)
        await answer(connection)
        await connection.wait_closed()

    return script, body


def test_a_session_is_one_connection_that_starts_with_the_signed_challenge() -> None:
    async def answer(connection: ServerConnection) -> None:
        await connection.send(ECHO + bytes(16))

    script, body = echo_after(answer)
    assert run(script, body) == bytes(16)


@pytest.mark.parametrize(("answer", "error", "match"), [
    (lambda c: c.send(ERROR + json.dumps({"error": {"type": "ChallengeError", "field": "nonce",
                                                    "message": "a nonce is 16 bytes"}}).encode()),
     ChallengeError, "node refused: nonce: a nonce is 16 bytes"),
    (lambda c: c.send(COMPUTE + bytes(32)), ChallengeError, "expected b'E'"),
    (lambda c: c.send(ERROR + b"\xff{not json"), ChallengeError, "node refused: b'"),
    (lambda c: c.close(), NodeUnreachable, "closed the connection"),
    (lambda c: asyncio.sleep(5), NodeUnreachable, "timed out"),
    (lambda c: c.send(ECHO + bytes(4096)), NodeUnreachable, "closed"),
], ids=["error-frame", "wrong-step", "garbled-error", "closes", "hangs", "too-large"])
def test_each_bad_answer_is_the_nodes_fault(answer: Callable[[ServerConnection], Any],
                                           error: type[Exception], match: str) -> None:
    script, body = echo_after(answer)
    with pytest.raises(error, match=match):
        run(script, body, timeout_s=0.5, max_response_bytes=1024)


def test_a_digest_must_be_32_bytes() -> None:
    async def script(connection: ServerConnection) -> None:
        await connection.recv(decode=False)
        await connection.send(ACCEPTED)
        await connection.recv(decode=False)
        await connection.send(COMPUTE + bytes(31))
        await connection.wait_closed()

    async def body(node: ScriptedNode, transport: HttpNodeTransport) -> None:
        await transport.start(signed())
        try:
            await transport.compute(signed().challenge.challenge_id, bytes(32))
        finally:
            await transport.close(signed().challenge.challenge_id)

    with pytest.raises(CodecError, match="32 bytes"):
        run(script, body)


def test_an_unreachable_node_and_a_refused_upgrade() -> None:
    async def refused() -> None:
        async with NodeHttpClient(limit=4, timeout_s=2) as http:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))  # bound, not listening: refused
                port = s.getsockname()[1]
                with pytest.raises(NodeUnreachable):
                    await HttpNodeTransport(http, f"http://127.0.0.1:{port}").start(signed())

    asyncio.run(refused())

    async def plain_http(status: int) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, NodeHttpClient(limit=4, timeout_s=2) as http:
            await HttpNodeTransport(http, f"http://127.0.0.1:{port}").start(signed())

    with pytest.raises(ChallengeError, match="HTTP 404"):
        asyncio.run(plain_http(404))
    with pytest.raises(NodeUnreachable, match="HTTP 503"):
        asyncio.run(plain_http(503))


def test_the_session_url_follows_the_endpoint() -> None:
    assert session_url("http://10.0.0.1:8700/") == "ws://10.0.0.1:8700/v1/challenges"
    assert session_url("https://node.example/n/3") == "wss://node.example/n/3/v1/challenges"
    with pytest.raises(NodeUnreachable, match="not an http"):
        session_url("ftp://node.example")


def test_at_most_limit_per_host_sessions_to_one_node_at_once() -> None:
    async def script(connection: ServerConnection) -> None:
        await connection.recv(decode=False)
        await connection.send(ACCEPTED)
        await connection.wait_closed()

    async def body(node: ScriptedNode, transport: HttpNodeTransport) -> int:
        challenges = [signed(i) for i in range(5)]

        async def one(s: SignedChallenge) -> None:
            await transport.start(s)
            await asyncio.sleep(0.05)
            await transport.close(s.challenge.challenge_id)

        await asyncio.gather(*(one(s) for s in challenges))
        assert node.open_now == 0 or node.most_open <= 2
        return node.most_open

    assert run(script, body, limit_per_host=2) <= 2


def test_a_closed_client_opens_nothing() -> None:
    async def go() -> None:
        http = NodeHttpClient(limit=4, timeout_s=1)
        await http.close()
        with pytest.raises(NodeUnreachable, match="closed"):
            await HttpNodeTransport(http, "http://127.0.0.1:9").start(signed())

    asyncio.run(go())


def test_start_frames_carry_the_signed_challenge() -> None:
    holder, script = started_then(lambda node, c: c.send(ECHO + bytes(16)))

    async def body(node: ScriptedNode, transport: HttpNodeTransport) -> None:
        holder["node"] = node
        challenge = signed().challenge
        await transport.start(signed())
        await transport.echo(challenge.challenge_id, bytes(16))
        await transport.close(challenge.challenge_id)
        assert node.frames == [START + signed().to_json()]

    run(script, body)
