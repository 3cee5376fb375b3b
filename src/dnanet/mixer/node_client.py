"""The mixer's client to nodes: challenge sessions over WebSockets, and the credential its
gateway adds to the AI requests it forwards.

A challenge session is one WebSocket to the node's ``/v1/challenges`` (``dnanet.node.api``
describes the frames): the connection that presented the signed challenge is the session, so
nobody else can drive it, and each echo is one small binary frame each way, with no JSON or
HTTP routing on its path. ``NodeHttpClient`` bounds the sessions open at once (``limit`` in all,
``limit_per_host`` to one node) and how long any answer may take; ``HttpNodeTransport`` is one
node's ``NodeTransport`` over it.

``NodeCredentials`` signs a gateway request for a node (``dnanet.protocol.access``) with the
mixer's key over a recent block that ``ChainHead`` reads from the chain at most every
``max_age_s``, never on the request's path.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

import websockets.exceptions as ws_errors
from websockets.asyncio.client import ClientConnection, connect

from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.errors import ChallengeError, CodecError, NodeUnreachable
from dnanet.node.api import (
    ACCEPTED,
    COMPUTE,
    DOWNLOAD,
    ECHO,
    ERROR,
    FINISH,
    MAX_ANSWER_FRAME_BYTES,
    OPEN,
    SESSION_PATH,
    START,
    UPLOAD,
    OpeningsMessage,
    OpenRequest,
    parse_error_frame,
)
from dnanet.protocol.access import CREDENTIAL_HEADER, compute_node_request, sign_node_request
from dnanet.protocol.challenges.compute import RowOpening
from dnanet.protocol.messages import Challenge, SignedChallenge, SignedChallengeResponse
from dnanet.service.network import ChainGateway

CLOSE_TIMEOUT_S = 1.0
"""How long closing a session waits for the node's part of the closing handshake: a node that
hung must not hold up the report of the session it failed."""
_UNREACHABLE = (OSError, TimeoutError, ws_errors.ConnectionClosed, ws_errors.InvalidHandshake,
                ws_errors.InvalidURI)


def session_url(base_url: str) -> str:
    """The WebSocket URL of a node's challenge sessions, from its registered endpoint."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + SESSION_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + SESSION_PATH
    raise NodeUnreachable(f"not an http:// endpoint: {base_url[:100]!r}")


@dataclass
class _Session:
    challenge: Challenge
    socket: ClientConnection
    release: Callable[[], None]
    closed: bool = field(default=False)


class NodeHttpClient:
    """The WebSockets of a mixer's challenge sessions (see the module docstring): at most
    ``limit`` open at once, ``limit_per_host`` to one node endpoint; ``timeout_s`` bounds the
    connection and every answer awaited."""

    def __init__(self, *, limit: int, limit_per_host: int = 4, timeout_s: float,
                 max_response_bytes: int = MAX_ANSWER_FRAME_BYTES) -> None:
        self.timeout_s = timeout_s
        self.limit_per_host = limit_per_host
        self.max_response_bytes = max_response_bytes
        self._all = asyncio.Semaphore(max(1, limit))
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._open: set[ClientConnection] = set()
        self._closed = False

    async def connect(self, url: str) -> tuple[ClientConnection, Callable[[], None]]:
        """A WebSocket to ``url`` and the function that gives its slots back once it is
        closed; NodeUnreachable if the node cannot be reached or refuses the upgrade."""
        if self._closed:
            raise NodeUnreachable("the mixer's node client is closed")
        per_host = self._hosts.setdefault(url, asyncio.Semaphore(self.limit_per_host))
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._all.acquire()
                try:
                    await per_host.acquire()
                except BaseException:
                    self._all.release()
                    raise
        except TimeoutError:
            raise NodeUnreachable("timed out waiting for a free connection") from None
        try:
            socket = await connect(url, compression=None, proxy=None, ping_interval=None,
                                   open_timeout=self.timeout_s, close_timeout=CLOSE_TIMEOUT_S,
                                   max_size=self.max_response_bytes, user_agent_header=None)
        except BaseException as exc:
            per_host.release()
            self._all.release()
            if isinstance(exc, ws_errors.InvalidStatus):
                status = exc.response.status_code
                if status < 500:
                    raise ChallengeError(f"node refused the session with HTTP {status}",
                                         field="session") from None
                raise NodeUnreachable(f"node answered HTTP {status}") from None
            if isinstance(exc, _UNREACHABLE):
                raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from None
            raise
        self._open.add(socket)

        def release() -> None:
            if socket in self._open:
                self._open.discard(socket)
                per_host.release()
                self._all.release()

        return socket, release

    async def close(self) -> None:
        self._closed = True
        sockets, self._open = list(self._open), set()
        for socket in sockets:
            await socket.close()

    async def __aenter__(self) -> NodeHttpClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class HttpNodeTransport:
    """One node's challenge sessions, each a WebSocket of the mixer's ``NodeHttpClient``."""

    def __init__(self, session: NodeHttpClient, base_url: str) -> None:
        self.client = session
        self.url = session_url(base_url)
        self._sessions: dict[bytes, _Session] = {}

    def _session(self, challenge_id: bytes) -> _Session:
        session = self._sessions.get(challenge_id)
        if session is None or session.closed:
            raise ChallengeError("no open session", field="challengeId")
        return session

    async def _send(self, session: _Session, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self.client.timeout_s):
                await session.socket.send(frame)
        except _UNREACHABLE as exc:
            raise NodeUnreachable(_gone(exc)) from None

    async def _answer(self, session: _Session, tag: bytes) -> bytes:
        """The body of the node's next frame, which must be ``tag``'s."""
        try:
            async with asyncio.timeout(self.client.timeout_s):
                frame = await session.socket.recv(decode=False)
        except _UNREACHABLE as exc:
            raise NodeUnreachable(_gone(exc)) from None
        assert isinstance(frame, bytes)  # decode=False: a text frame's bytes too
        if frame[:1] == ERROR:
            raise ChallengeError(f"node refused: {parse_error_frame(frame[1:])}", field="node")
        if frame[:1] != tag:
            raise ChallengeError(f"node answered frame {frame[:1]!r}, expected {tag!r}",
                                 field="frame")
        return frame[1:]

    async def start(self, signed: SignedChallenge) -> None:
        socket, release = await self.client.connect(self.url)
        session = _Session(signed.challenge, socket, release)
        self._sessions[signed.challenge.challenge_id] = session
        await self._send(session, START + signed.to_json())
        await self._answer(session, ACCEPTED)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        session = self._session(challenge_id)
        await self._send(session, ECHO + nonce)
        return await self._answer(session, ECHO)

    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes:
        session = self._session(challenge_id)
        for frame in frames:
            await self._send(session, DOWNLOAD + frame)
        return _digest(await self._answer(session, DOWNLOAD))

    async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        session = self._session(challenge_id)
        await self._send(session, UPLOAD + upload_seed)
        received = 0
        while received < session.challenge.upload_bytes:
            frame = await self._answer(session, UPLOAD)
            received += len(frame)
            yield frame

    async def compute(self, challenge_id: bytes, attempt_seed: bytes) -> bytes:
        session = self._session(challenge_id)
        await self._send(session, COMPUTE + attempt_seed)
        return _digest(await self._answer(session, COMPUTE))

    async def finish(self, challenge_id: bytes, attempt: int) -> SignedChallengeResponse:
        session = self._session(challenge_id)
        await self._send(session, FINISH + bytes([attempt]))
        return SignedChallengeResponse.from_json(await self._answer(session, FINISH))

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        session = self._session(challenge_id)
        await self._send(session, OPEN + OpenRequest(indices=tuple(indices)).to_json())
        answer = await self._answer(session, OPEN)
        return [o.opening() for o in OpeningsMessage.from_json(
            answer, max_bytes=self.client.max_response_bytes).openings]

    async def close(self, challenge_id: bytes) -> None:
        session = self._sessions.pop(challenge_id, None)
        if session is None or session.closed:
            return
        session.closed = True
        try:
            await session.socket.close()
        finally:
            session.release()


def _digest(body: bytes) -> bytes:
    if len(body) != 32:
        raise CodecError(f"a digest is 32 bytes, got {len(body)}", field="frame")
    return body


def _gone(exc: BaseException) -> str:
    if isinstance(exc, ws_errors.ConnectionClosed):
        return "the node closed the connection"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def open_node_session(concurrency: int, timeout_s: float) -> NodeHttpClient:
    """The client a mixer drives its challenge sessions on (call inside the event loop)."""
    return NodeHttpClient(limit=max(concurrency, 1), limit_per_host=4, timeout_s=timeout_s)


class ChainHead:
    """The chain's head block as last read by ``read`` (a blocking chain call), read again in
    a background thread once the value is ``max_age_s`` old: calling it never waits on the
    chain, except for the very first value and for one ``2 * max_age_s`` old or more (after
    an idle spell: a credential over it would lie outside a node's window, one round, which
    is twice the half round ``mixer_node_credentials`` gives as ``max_age_s``)."""

    def __init__(self, read: Callable[[], int], max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self._clock = clock
        self._value: int | None = None
        self._at = 0.0
        self._refreshing = False
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            value = self._read()
            with self._lock:
                self._value, self._at = value, self._clock()
        finally:
            self._refreshing = False

    def __call__(self) -> int:
        age = self._clock() - self._at
        if self._value is None or age >= 2 * self.max_age_s:
            self._refreshing = True
            self._refresh()
        elif age >= self.max_age_s and not self._refreshing:
            self._refreshing = True
            threading.Thread(target=self._refresh, name="chain-head", daemon=True).start()
        assert self._value is not None
        return self._value


class NodeCredentials:
    """Signs the mixer's gateway requests to nodes (``GatewayConfig.node_credential``): the
    header a node's AI endpoints require from a mixer of the current set."""

    def __init__(self, identity: Identity, domain: Domain, head: Callable[[], int],
                 nonce: Callable[[int], bytes] = os.urandom) -> None:
        self.identity = identity
        self.domain = domain
        self.head = head
        self.nonce = nonce

    def __call__(self, method: str, url: str, body: bytes) -> dict[str, str]:
        request = compute_node_request(method, url, body, self.head(), self.nonce(16))
        credential = sign_node_request(self.identity, self.domain, request)
        return {CREDENTIAL_HEADER: credential.encode()}


def mixer_node_credentials(identity: Identity, chain: ChainGateway) -> NodeCredentials:
    """The ``GatewayConfig.node_credential`` of the mixer ``identity``: its signature over a
    head block it reads from ``chain`` at most every half round."""
    preset = chain.preset
    half_round_s = preset.round_blocks * preset.block_interval_ms / 2000
    return NodeCredentials(identity, chain.domain, ChainHead(chain.block_number, half_round_s))


__all__ = ["ChainHead", "HttpNodeTransport", "NodeCredentials", "NodeHttpClient",
           "mixer_node_credentials", "open_node_session", "session_url"]
