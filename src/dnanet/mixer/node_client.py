"""The mixer's HTTP transport to a node's challenge API (see ``dnanet.node.server``).

A challenge session is about a dozen small requests to one node (start, echoes, download,
upload, compute, finish, openings), and a mixer runs dozens of sessions at once, so the HTTP
client's own cost per request is most of a mixer's CPU per challenge. ``NodeHttpClient`` is
the least an HTTP/1.1 client can be for this API: keep-alive connections pooled per node,
requests with a Content-Length, responses parsed by httptools (Content-Length or chunked),
one deadline per request. Measured in ``bench/network.py``: httpx cost the mixer 12-28 ms
of CPU per challenge at 64 in flight, aiohttp about 5 ms, this client under 3 ms (1.5x the challenges per second).
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httptools

from dnanet.errors import ChallengeError, CodecError, NodeUnreachable
from dnanet.node.api import (
    DigestMessage,
    EchoMessage,
    OpeningsMessage,
    OpenRequest,
    RootMessage,
)
from dnanet.protocol.challenges.compute import RowOpening
from dnanet.protocol.codec import Message, parse_json
from dnanet.protocol.messages import SignedChallenge, SignedChallengeResponse

MAX_RESPONSE_BYTES = 256 * 1024 * 1024
"""A node's answer larger than this ends the request (the largest, an upload, is far less)."""
IDLE_S = 4.0
"""Idle connections are dropped after this, before the node's server closes them (uvicorn:
5 s), so that a request never goes out on a connection the node is closing."""


class _Exchange(asyncio.Protocol):
    """One keep-alive connection to a node: one request at a time, its answer parsed by
    httptools as it arrives."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.lost = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # bytes nobody asked for: the connection is unusable
            self._fail(ConnectionError("the node sent data outside an answer"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError("the node closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_bytes:
            self._fail(ConnectionError(f"answer exceeds {self.max_bytes} bytes"))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        parser, answer = self.parser, self.answer
        if parser is None or answer is None or answer.done():
            return
        self.parser = None
        if not parser.should_keep_alive():
            self.lost = True
            assert self.transport is not None
            self.transport.close()
        answer.set_result((parser.get_status_code(), b"".join(self.chunks)))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        self.parser = None
        if self.transport is not None:
            self.transport.close()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    def send(self, head: bytes, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.chunks, self.size = [], 0
        self.parser = httptools.HttpResponseParser(self)
        self.answer = asyncio.get_running_loop().create_future()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self.answer

    @property
    def reusable(self) -> bool:
        return (not self.lost and self.transport is not None and not self.transport.is_closing()
                and time.monotonic() - self.idle_since < IDLE_S)


class NodeHttpClient:
    """HTTP/1.1 to nodes' challenge APIs: a pool of keep-alive connections per node (at most
    ``limit_per_host`` open at once, ``limit`` in all), each request bounded by
    ``timeout_s`` from its start to the last byte of the answer."""

    def __init__(self, *, limit: int, limit_per_host: int = 4, timeout_s: float,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.timeout_s = timeout_s
        self.limit_per_host = limit_per_host
        self.max_response_bytes = max_response_bytes
        self._all = asyncio.Semaphore(max(1, limit))
        self._hosts: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._idle: dict[tuple[str, int], list[_Exchange]] = {}
        self._origins: dict[str, tuple[str, int]] = {}
        self._closed = False

    def _target(self, url: str) -> tuple[str, int, str]:
        """(host, port, path?query) of an http:// URL. The origin (``http://host:port``) is
        parsed once per node; every challenge step has a path of its own."""
        end = len(url)
        for separator in "/?#":  # the authority ends at the first of them
            found = url.find(separator, len("http://"))
            if 0 <= found < end:
                end = found
        origin, path = url[:end], url[end:].partition("#")[0]
        if not path.startswith("/"):
            path = "/" + path
        address = self._origins.get(origin)
        if address is None:
            try:
                parts = urlsplit(origin)
                port = parts.port or 80
            except ValueError:  # a port that is not a number, an unbalanced [ ...
                parts, port = None, 0
            if parts is None or parts.scheme != "http" or not parts.hostname:
                raise NodeUnreachable(f"not an http:// endpoint: {url[:100]!r}")
            address = (parts.hostname, port)
            if len(self._origins) > 100_000:
                self._origins.clear()
            self._origins[origin] = address
        if not (path.isascii() and path.isprintable()) or " " in path:  # one request line
            raise NodeUnreachable(f"not a valid request path: {path[:100]!r}")
        return (*address, path)

    async def request(self, method: str, url: str, body: bytes = b"",
                      content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body) of one exchange; raises NodeUnreachable when the node cannot be
        reached, times out, closes the connection or answers something that is not HTTP."""
        if self._closed:
            raise NodeUnreachable("the mixer's node client is closed")
        host, port, path = self._target(url)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode("latin-1")
        key = (host, port)
        per_host = self._hosts.get(key)
        if per_host is None:
            per_host = self._hosts[key] = asyncio.Semaphore(self.limit_per_host)
        exchange: _Exchange | None = None
        try:
            async with asyncio.timeout(self.timeout_s), self._all, per_host:
                exchange = self._checkout(key)
                if exchange is None:
                    loop = asyncio.get_running_loop()
                    _, exchange = await loop.create_connection(
                        lambda: _Exchange(self.max_response_bytes), host, port)
                status, data = await exchange.send(head, body)
        except BaseException as exc:  # the connection is in an unknown state: never reuse it
            if exchange is not None:
                exchange._fail(ConnectionError("request abandoned"))
            if isinstance(exc, TimeoutError):
                raise NodeUnreachable("timed out") from None
            if isinstance(exc, OSError):
                raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
            raise
        exchange.idle_since = time.monotonic()
        if exchange.reusable and not self._closed:
            self._idle.setdefault(key, []).append(exchange)
        return status, data

    def _checkout(self, key: tuple[str, int]) -> _Exchange | None:
        idle = self._idle.get(key)
        while idle:
            exchange = idle.pop()
            if exchange.reusable:
                return exchange
            if exchange.transport is not None:
                exchange.transport.close()
        return None

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for exchange in idle:
                if exchange.transport is not None:
                    exchange.transport.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> NodeHttpClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class HttpNodeTransport:
    """Talks to one node's base URL over the mixer's shared ``NodeHttpClient``."""

    def __init__(self, session: NodeHttpClient, base_url: str) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/v1/challenges"

    async def _request(self, method: str, url: str, body: bytes = b"",
                       content_type: str = "application/json") -> bytes:
        status, data = await self.session.request(method, url, body, content_type)
        if status >= 500:
            raise NodeUnreachable(f"node answered HTTP {status}")
        if status >= 400:
            raise ChallengeError(f"node refused with HTTP {status}: {data[:200]!r}")
        return data

    async def _json(self, url: str, message: Message | None = None) -> Any:
        raw = await self._request("POST", url, message.to_json() if message is not None else b"")
        try:
            return parse_json(raw)
        except CodecError as exc:
            raise ChallengeError(f"node answered malformed JSON: {exc}") from None

    def _url(self, challenge_id: bytes, step: str) -> str:
        return f"{self.base}/0x{challenge_id.hex()}/{step}"

    async def start(self, signed: SignedChallenge) -> None:
        await self._json(self.base, signed)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        data = await self._json(self._url(challenge_id, "echo"), EchoMessage(nonce=nonce))
        return EchoMessage.from_wire(data).nonce

    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes:
        raw = await self._request("POST", self._url(challenge_id, "download"), b"".join(chunks),
                                  "application/octet-stream")
        return DigestMessage.from_json(raw).digest

    async def upload(self, challenge_id: bytes) -> bytes:
        return await self._request("GET", self._url(challenge_id, "upload"))

    async def compute(self, challenge_id: bytes) -> bytes:
        return RootMessage.from_wire(await self._json(self._url(challenge_id, "compute"))).root

    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        return SignedChallengeResponse.from_wire(
            await self._json(self._url(challenge_id, "finish")))

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        data = await self._json(self._url(challenge_id, "open"),
                                OpenRequest(indices=tuple(indices)))
        return [o.opening() for o in OpeningsMessage.from_wire(data).openings]


def open_node_session(concurrency: int, timeout_s: float) -> NodeHttpClient:
    """The client a mixer drives its challenge sessions on (call inside the event loop)."""
    return NodeHttpClient(limit=max(concurrency, 1), limit_per_host=4, timeout_s=timeout_s)


__all__ = ["HttpNodeTransport", "NodeHttpClient", "open_node_session"]
