"""The mixer's HTTP transport to a node's challenge API (see ``dnanet.node.server``)."""

from __future__ import annotations

from typing import Any

import httpx

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

JSON = {"content-type": "application/json"}


class HttpNodeTransport:
    """Talks to one node's base URL over a shared, connection-reusing httpx client."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base = base_url.rstrip("/") + "/v1/challenges"

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise NodeUnreachable(f"timed out: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise NodeUnreachable(f"node answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ChallengeError(f"node refused with HTTP {response.status_code}: "
                                 f"{response.text[:200]}")
        return response

    async def _json(self, method: str, url: str, body: Message | None = None) -> Any:
        content = body.to_json() if body is not None else b""
        response = await self._request(method, url, content=content, headers=JSON)
        try:
            return parse_json(response.content)
        except CodecError as exc:
            raise ChallengeError(f"node answered malformed JSON: {exc}") from None

    async def start(self, signed: SignedChallenge) -> None:
        await self._json("POST", self.base, signed)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        data = await self._json("POST", f"{self.base}/0x{challenge_id.hex()}/echo",
                                EchoMessage(nonce=nonce))
        return EchoMessage.from_wire(data).nonce

    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes:
        response = await self._request(
            "POST", f"{self.base}/0x{challenge_id.hex()}/download", content=b"".join(chunks),
            headers={"content-type": "application/octet-stream"},
        )
        return DigestMessage.from_json(response.content).digest

    async def upload(self, challenge_id: bytes) -> bytes:
        response = await self._request("GET", f"{self.base}/0x{challenge_id.hex()}/upload")
        return response.content

    async def compute(self, challenge_id: bytes) -> bytes:
        data = await self._json("POST", f"{self.base}/0x{challenge_id.hex()}/compute")
        return RootMessage.from_wire(data).root

    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        data = await self._json("POST", f"{self.base}/0x{challenge_id.hex()}/finish")
        return SignedChallengeResponse.from_wire(data)

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        data = await self._json("POST", f"{self.base}/0x{challenge_id.hex()}/open",
                                OpenRequest(indices=tuple(indices)))
        return [o.opening() for o in OpeningsMessage.from_wire(data).openings]


__all__ = ["HttpNodeTransport"]
