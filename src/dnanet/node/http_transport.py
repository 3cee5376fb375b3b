"""The mixer's HTTP transport to a node's challenge API (see ``dnanet.node.server``).

It runs on an aiohttp session shared by all of a mixer's sessions: measured in
``bench/network.py``, httpx cost the mixer 12-28 ms of CPU per challenge at 64 in flight,
aiohttp about 4 ms.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from dnanet.errors import ChallengeError, CodecError
from dnanet.mixer.session import NodeUnreachable
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


class HttpNodeTransport:
    """Talks to one node's base URL over a shared, connection-reusing aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/v1/challenges"

    async def _request(self, method: str, url: str, body: bytes = b"",
                       content_type: str = "application/json") -> bytes:
        try:
            async with self.session.request(method, url, data=body,
                                            headers={"content-type": content_type}) as response:
                data = await response.read()
                status = response.status
        except TimeoutError:
            raise NodeUnreachable("timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
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


def open_node_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """The session a mixer drives its challenge sessions on (call inside the event loop)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(concurrency, 1), limit_per_host=4),
        timeout=aiohttp.ClientTimeout(total=timeout_s))


__all__ = ["HttpNodeTransport", "open_node_session"]
