"""An in-process transport from a mixer to a node's ChallengeProver (tests and the demo)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dnanet.errors import ChallengeError, NodeUnreachable
from dnanet.node.api import FRAME_BYTES
from dnanet.node.prover import ChallengeProver, ProverSession
from dnanet.protocol.challenges.compute import RowOpening
from dnanet.protocol.messages import SignedChallenge, SignedChallengeResponse


class LocalTransport:
    """Calls a prover directly; compute runs in a worker thread like a real node's would.
    Each session started here is driven only through this object, by its challenge id.

    ``delay_s`` adds a delay to every call (a slow link); ``online=False`` refuses every call.
    """

    def __init__(self, prover: ChallengeProver, *, delay_s: float = 0.0, online: bool = True):
        self.prover = prover
        self.delay_s = delay_s
        self.online = online
        self._sessions: dict[bytes, ProverSession] = {}

    async def _enter(self) -> None:
        if not self.online:
            raise NodeUnreachable("connection refused")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    def _session(self, challenge_id: bytes) -> ProverSession:
        session = self._sessions.get(challenge_id)
        if session is None:
            raise ChallengeError("no such session", field="challengeId")
        return session

    async def start(self, signed: SignedChallenge) -> None:
        await self._enter()
        self._sessions[signed.challenge.challenge_id] = self.prover.start(signed)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        await self._enter()
        return self._session(challenge_id).echo(nonce)

    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes:
        await self._enter()
        session = self._session(challenge_id)
        digest = None
        for frame in frames:
            digest = session.download_chunk(frame)
        if digest is None:
            raise ChallengeError("the download ended short", field="download")
        return digest

    async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        await self._enter()
        data = self._session(challenge_id).upload(upload_seed)
        for start in range(0, len(data), FRAME_BYTES):
            yield data[start:start + FRAME_BYTES]

    async def compute(self, challenge_id: bytes, attempt_seed: bytes) -> bytes:
        await self._enter()
        return await asyncio.to_thread(self._session(challenge_id).compute, attempt_seed)

    async def finish(self, challenge_id: bytes, attempt: int) -> SignedChallengeResponse:
        await self._enter()
        return self._session(challenge_id).finish(attempt)

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        await self._enter()
        return self._session(challenge_id).open_rows(indices)

    async def close(self, challenge_id: bytes) -> None:
        session = self._sessions.pop(challenge_id, None)
        if session is not None:
            session.close()


__all__ = ["LocalTransport"]
