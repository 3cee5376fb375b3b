"""An in-process transport from a mixer to a node's ChallengeProver (tests and the demo)."""

from __future__ import annotations

import asyncio

from dnanet.errors import NodeUnreachable
from dnanet.node.prover import ChallengeProver
from dnanet.protocol.challenges.compute import RowOpening
from dnanet.protocol.messages import SignedChallenge, SignedChallengeResponse


class LocalTransport:
    """Calls a prover directly; compute runs in a worker thread like a real node's would.

    ``delay_s`` adds a delay to every call (a slow link); ``online=False`` refuses every call.
    """

    def __init__(self, prover: ChallengeProver, *, delay_s: float = 0.0, online: bool = True):
        self.prover = prover
        self.delay_s = delay_s
        self.online = online

    async def _enter(self) -> None:
        if not self.online:
            raise NodeUnreachable("connection refused")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    async def start(self, signed: SignedChallenge) -> None:
        await self._enter()
        self.prover.start(signed)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        await self._enter()
        return self.prover.echo(challenge_id, nonce)

    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes:
        await self._enter()
        for chunk in chunks:
            self.prover.download_chunk(challenge_id, chunk)
        return self.prover.download_done(challenge_id)

    async def upload(self, challenge_id: bytes) -> bytes:
        await self._enter()
        return self.prover.upload(challenge_id)

    async def compute(self, challenge_id: bytes) -> bytes:
        await self._enter()
        return await asyncio.to_thread(self.prover.compute, challenge_id)

    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        await self._enter()
        return self.prover.finish(challenge_id)

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        await self._enter()
        return self.prover.open_rows(challenge_id, indices)


__all__ = ["LocalTransport"]
