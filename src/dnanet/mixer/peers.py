"""How a mixer talks to the other mixers and to the Validator, behind one small interface.

``Peers`` is what the rest of the mixer uses (tests may pass another implementation);
``HttpPeers`` is the real one, over one pooled httpx client. Every answer comes back as data
(``PeerAnswer``); transport failures as ``PeerUnreachable``, so callers decide what an outage
means for them (retry later, try another peer) without knowing about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import httpx

from dnanet.errors import ChainError, CodecError, PeerUnreachable, ProtocolError
from dnanet.protocol.codec import parse_json
from dnanet.protocol.messages import BatchProposal, QuorumCertificate

MAX_CERTIFICATES_BYTES = 1 << 30


@dataclass(frozen=True)
class PeerAnswer:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Peers(Protocol):
    async def propose(self, endpoint: str, proposal: BatchProposal) -> PeerAnswer:
        """``POST {endpoint}/v1/batches``: ask a mixer to co-sign a batch."""
        ...

    async def forward(self, certificate: QuorumCertificate) -> PeerAnswer:
        """``POST /v1/certificates`` to the Validator."""
        ...

    async def validator_holds(self, batch_hash: bytes) -> bool | None:
        """Whether the Validator stores the batch; None when it cannot tell now."""
        ...

    async def certificates(self, epoch: int) -> list[QuorumCertificate]:
        """Every certificate the Validator published for ``epoch`` (parsed, not verified)."""
        ...

    async def close(self) -> None: ...


class HttpPeers:
    """``Peers`` over HTTP (keep-alive, one client)."""

    def __init__(self, validator_url: str, timeout_s: float) -> None:
        self.validator_url = validator_url.rstrip("/")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    async def _post(self, url: str, body: bytes) -> PeerAnswer:
        try:
            response = await self.http.post(url, content=body,
                                             headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"{url}: {type(exc).__name__} {exc}".strip()) from None
        return PeerAnswer(response.status_code, response.content)

    async def propose(self, endpoint: str, proposal: BatchProposal) -> PeerAnswer:
        return await self._post(f"{endpoint.rstrip('/')}/v1/batches", proposal.to_json())

    async def forward(self, certificate: QuorumCertificate) -> PeerAnswer:
        return await self._post(f"{self.validator_url}/v1/certificates", certificate.to_json())

    async def validator_holds(self, batch_hash: bytes) -> bool | None:
        try:
            response = await self.http.get(
                f"{self.validator_url}/v1/batches/0x{batch_hash.hex()}")
        except httpx.HTTPError:
            return None
        if response.status_code in (200, 404):
            return response.status_code == 200
        return None

    async def certificates(self, epoch: int) -> list[QuorumCertificate]:
        url = f"{self.validator_url}/v1/epochs/{epoch}/certificates"
        try:
            response = await self.http.get(url)
        except httpx.HTTPError as exc:
            raise ChainError(f"cannot reach the validator at {self.validator_url} for epoch "
                             f"{epoch}'s certificates: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ProtocolError(f"validator answered {response.status_code} for epoch {epoch}'s "
                                "certificates", field="epoch")
        data = parse_json(response.content, max_bytes=MAX_CERTIFICATES_BYTES)
        items = data.get("certificates", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise CodecError("expected a list of certificates", field="certificates")
        return [QuorumCertificate.from_wire(c, f"certificates[{i}]")
                for i, c in enumerate(items)]

    async def close(self) -> None:
        await self.http.aclose()


__all__ = ["HttpPeers", "PeerAnswer", "Peers"]
