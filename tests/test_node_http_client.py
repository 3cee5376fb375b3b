"""The mixer's HTTP/1.1 client for nodes' challenge APIs (``NodeHttpClient``), against a raw
TCP server that answers as scripted: keep-alive reuse, chunked answers, a closed or stale
connection, a hang, garbage, an oversized answer, and the per-node connection limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dnanet.errors import NodeUnreachable
from dnanet.mixer import node_client as http_transport
from dnanet.mixer.node_client import NodeHttpClient

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class ScriptedServer:
    """Reads each request (head and Content-Length body) and lets ``handler`` answer it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/challenges"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                await self.handler(body, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


def run(handler: Handler, body: Callable[[ScriptedServer, NodeHttpClient], Awaitable[Any]],
        **client: Any) -> Any:
    async def go() -> Any:
        async with ScriptedServer(handler) as server, \
                NodeHttpClient(limit=16, timeout_s=client.pop("timeout_s", 5.0),
                               **client) as http:
            return await body(server, http)

    return asyncio.run(go())


async def echo(body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(ok(body))


def test_requests_reuse_one_keep_alive_connection() -> None:
    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        for i in range(5):
            status, data = await http.request("POST", server.url + f"/0x01/echo?i={i}",
                                              b'{"n":%d}' % i)
            assert (status, data) == (200, b'{"n":%d}' % i)
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/challenges/0x01/echo?i=0 HTTP/1.1\r\n")
        assert b"Content-Type: application/json\r\n" in first
        assert b"Content-Length: 7\r\n" in first
        status, data = await http.request("GET", server.url + "/0x01/upload")
        assert (status, data) == (200, b"")
        assert server.requests[-1].startswith(b"GET /v1/challenges/0x01/upload HTTP/1.1\r\n")

    run(echo, body)


def test_a_chunked_answer_and_an_error_status_are_read_whole() -> None:
    async def handler(body: bytes, writer: asyncio.StreamWriter) -> None:
        if body == b"chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")

    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        assert await http.request("POST", server.url, b"chunked") == (200, b"hello world")
        assert await http.request("POST", server.url, b"x") == (503, b"busy")
        assert await http.request("POST", server.url, b"chunked") == (200, b"hello world")
        assert server.connections == 1

    run(handler, body)


def test_connection_close_and_a_stale_connection_are_not_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(body, close=body == b"last"))

    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        assert await http.request("POST", server.url, b"last") == (200, b"last")
        assert await http.request("POST", server.url, b"a") == (200, b"a")
        assert server.connections == 2
        monkeypatch.setattr(http_transport, "IDLE_S", 0.0)  # idle too long: dropped
        assert await http.request("POST", server.url, b"b") == (200, b"b")
        assert server.connections == 3

    run(handler, body)


def test_a_node_that_hangs_times_out_and_its_connection_is_dropped() -> None:
    async def handler(body: bytes, writer: asyncio.StreamWriter) -> None:
        if body == b"hang":
            await asyncio.sleep(5)
        writer.write(ok(body))

    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        with pytest.raises(NodeUnreachable, match="timed out"):
            await http.request("POST", server.url, b"hang")
        # The late answer of the hung request must never be read as the next one's.
        assert await http.request("POST", server.url, b"next") == (200, b"next")
        assert server.connections == 2

    run(handler, body, timeout_s=0.3)


@pytest.mark.parametrize(("answer", "why"), [
    (b"SMTP ready\r\n\r\n", "malformed HTTP answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, "exceeds 1000 bytes"),
])
def test_garbage_a_cut_answer_or_an_oversized_one_is_unreachable(answer: bytes,
                                                                 why: str) -> None:
    async def handler(body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        with pytest.raises(NodeUnreachable, match=why):
            await http.request("POST", server.url, b"x")

    run(handler, body, max_response_bytes=1000)


def test_unreachable_and_non_http_endpoints() -> None:
    async def go() -> None:
        async with NodeHttpClient(limit=4, timeout_s=2) as http:
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            server.close()
            await server.wait_closed()
            with pytest.raises(NodeUnreachable, match="ConnectionRefusedError"):
                await http.request("POST", f"http://127.0.0.1:{port}/v1/challenges")
            with pytest.raises(NodeUnreachable, match="not an http:// endpoint"):
                await http.request("POST", "https://node.example/v1/challenges")
        with pytest.raises(NodeUnreachable, match="closed"):
            await http.request("POST", "http://127.0.0.1:1/")

    asyncio.run(go())


def test_at_most_limit_per_host_connections_to_one_node() -> None:
    async def slow(body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(ok(body))

    async def body(server: ScriptedServer, http: NodeHttpClient) -> None:
        answers = await asyncio.gather(*(http.request("POST", server.url, b"%d" % i)
                                         for i in range(12)))
        assert [a[1] for a in answers] == [b"%d" % i for i in range(12)]
        assert server.most_open <= 3
        assert server.connections == 3

    run(slow, body, limit_per_host=3)


def test_each_node_is_parsed_once_and_every_path_goes_out_as_given() -> None:
    async def body(server: ScriptedServer, http: NodeHttpClient) -> list[bytes]:
        base = server.url.removesuffix("/v1/challenges")
        for i in range(3):
            assert (await http.request("POST", f"{base}/v1/challenges/0x{i:02x}/echo"))[0] == 200
        assert (await http.request("GET", f"{base}?probe=1#ignored"))[0] == 200
        assert list(http._origins) == [base]  # one parse for the node, not one per step
        return [r.split(b"\r\n", 1)[0] for r in server.requests]

    assert run(echo, body) == [b"POST /v1/challenges/0x00/echo HTTP/1.1",
                               b"POST /v1/challenges/0x01/echo HTTP/1.1",
                               b"POST /v1/challenges/0x02/echo HTTP/1.1",
                               b"GET /?probe=1 HTTP/1.1"]


@pytest.mark.parametrize(("url", "why"), [
    ("http://node.example:80/a\r\nX-Injected: 1", "not a valid request path"),
    ("http://node.example:80/a b", "not a valid request path"),
    ("http://node.example:80/caf\u00e9", "not a valid request path"),
    ("http://node.example:port/v1", "not an http:// endpoint"),
    ("http://:80/v1", "not an http:// endpoint"),
    ("ftp://node.example/v1", "not an http:// endpoint"),
])
def test_an_endpoint_that_cannot_make_a_request_line_is_unreachable(url: str, why: str) -> None:
    async def go() -> None:
        async with NodeHttpClient(limit=4, timeout_s=2) as http:
            with pytest.raises(NodeUnreachable, match=why):
                await http.request("POST", url)

    asyncio.run(go())
