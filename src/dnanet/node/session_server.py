"""The node's end of a challenge session: one connection, started by a signed challenge.

``SessionServer.serve`` runs one session over a ``Channel`` (the node's WebSocket route, see
``SessionEndpoint``; the benchmarks' minimal servers): the first frame must be a signed challenge
that the prover takes up (``ChallengeProver.start``), and from then on the frames of this
connection, and only those, drive the session's steps (``dnanet.node.api`` lists them). Nothing
else can reach the session: it has no address of its own. A refusal is an error frame naming
what was wrong, after which the node closes the connection; a session that stalls is closed
after ``timeout_s``.

What the node saw of each session (its last step, the error it answered, its own timings) is
kept in ``live`` while it runs and handed to the journal when it ends; the node never learns
the mixer's verdict. Each session ends in one INFO log line and one count of
``dnanet_node_challenges_total`` by result and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter
from starlette.types import Receive, Scope, Send

from dnanet.errors import ChallengeError, CodecError, DnanetError
from dnanet.node.api import (
    ACCEPTED,
    COMPUTE,
    DOWNLOAD,
    ECHO,
    FINISH,
    FRAME_BYTES,
    MAX_FRAME_BYTES,
    OPEN,
    START,
    STEP_NAMES,
    UPLOAD,
    OpeningMessage,
    OpeningsMessage,
    OpenRequest,
    encode_error_frame,
)
from dnanet.node.prover import ChallengeProver, ProverSession
from dnanet.protocol.codec import Message
from dnanet.protocol.messages import SignedChallenge, SignedChallengeResponse

log = logging.getLogger("dnanet.node.challenges")

_INDEX = re.compile(r"\[\d+\]")
START_TIMEOUT_S = 5.0
"""A connection must present its signed challenge within this."""
MAX_PENDING = 256
"""Connections waiting for their first frame at once; more are closed at once."""


class ChannelClosed(Exception):
    """The peer went away (or the connection broke) mid-session."""


class Channel(Protocol):
    """One connection's frames, in order."""

    async def receive(self) -> bytes:
        """The next frame; ChannelClosed once the peer is gone."""
        ...

    async def send(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


@dataclass
class Progress:
    """What the node saw of one challenge session (its own measurements, not the mixer's)."""

    stage: str = "start"
    error: str | None = None
    echoes: int = 0
    download_bytes: int | None = None
    download_us: int | None = None
    upload_bytes: int | None = None
    compute_us: int | None = None
    """The fastest of the compute step's attempts, as the node timed them."""
    download_t0: float = 0.0
    """When the download's first frame arrived (not kept)."""


class Journal(Protocol):
    """Where the node keeps its sessions (``dnanet.node.server.ChallengeJournal``)."""

    def accepted(self, signed: SignedChallenge) -> None: ...
    def signed(self, challenge_id: bytes, response: SignedChallengeResponse,
               progress: Progress) -> None: ...
    def ended(self, challenge_id: bytes, progress: Progress) -> None: ...


class SessionServer:
    """Serves the challenge sessions of one prover (see the module docstring).

    ``reply_delay`` (seconds) is added before each answer: the devnet's throttled nodes.
    """

    def __init__(self, prover: ChallengeProver, journal: Journal, *,
                 registry: CollectorRegistry | None = None,
                 reply_delay: Callable[[], float] = lambda: 0.0,
                 timeout_s: float = 60.0, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.prover = prover
        self.journal = journal
        self.reply_delay = reply_delay
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.live: dict[bytes, Progress] = {}
        """Sessions in flight, by challenge id."""
        self.pending = 0
        self.m_sessions = Counter(
            "dnanet_node_challenges", "challenge sessions by how they ended as the node saw "
            "them: answered (every step) or failed, with the step and what was wrong",
            ["result", "reason"], registry=registry)

    async def serve(self, channel: Channel) -> None:
        """Run one session on ``channel`` to its end, and close the channel."""
        if self.pending >= MAX_PENDING:
            await channel.close()
            return
        session: ProverSession | None = None
        signed: SignedChallenge | None = None
        progress = Progress()
        step, error = "start", ""
        try:
            self.pending += 1
            try:
                async with asyncio.timeout(self.start_timeout_s):
                    frame = await channel.receive()
            finally:
                self.pending -= 1
            if frame[:1] != START:
                raise ChallengeError("a session starts with a signed challenge (frame S)",
                                     field="step")
            signed = _parse(SignedChallenge, frame[1:])
            session = await asyncio.to_thread(self._start, signed)
            self.live[session.challenge.challenge_id] = progress
            await self._reply(channel, ACCEPTED)
            async with asyncio.timeout(self.timeout_s):
                while not session.closed:
                    frame = await channel.receive()
                    step = STEP_NAMES.get(frame[:1], "unknown")
                    await self._step(channel, session, progress, frame)
        except DnanetError as exc:
            # A bounded label: field paths without their list indices.
            error = f"{step}/{_INDEX.sub('[]', exc.field or type(exc).__name__)}"
            progress.error = f"{step}: {exc}"
            with contextlib.suppress(ChannelClosed):
                await channel.send(encode_error_frame(type(exc).__name__, exc.detail,
                                                      exc.field))
        except TimeoutError:
            error, progress.error = f"{step}/timeout", f"{step}: no frame in time"
        except ChannelClosed:
            error, progress.error = f"{step}/disconnected", f"{step}: the mixer disconnected"
        except Exception:  # a fault of the node's own: logged, the session ends
            log.exception("challenge session failed at %s on the node's side", step)
            error, progress.error = f"{step}/internal", f"{step}: the node failed (see its log)"
        finally:
            with contextlib.suppress(ChannelClosed):
                await channel.close()
            if session is not None:
                session.close()
                progress.stage = session.stage
                self.live.pop(session.challenge.challenge_id, None)
                await asyncio.to_thread(self.journal.ended, session.challenge.challenge_id,
                                        progress)
            self._record(session, signed, progress, error)

    def _start(self, signed: SignedChallenge) -> ProverSession:
        # In a worker thread: the signature check and the durable writes stay off the loop
        # that answers other sessions' echoes.
        session = self.prover.start(signed)
        try:
            self.journal.accepted(signed)
        except BaseException:
            session.close()
            raise
        return session

    async def _reply(self, channel: Channel, frame: bytes) -> None:
        delay = self.reply_delay()
        if delay > 0:
            await asyncio.sleep(delay)
        await channel.send(frame)

    async def _step(self, channel: Channel, session: ProverSession, progress: Progress,
                    frame: bytes) -> None:
        tag, body = frame[:1], frame[1:]
        if len(frame) > MAX_FRAME_BYTES:
            raise ChallengeError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}",
                                 field="frame")
        if tag == ECHO:
            nonce = session.echo(body)
            progress.echoes += 1
            await self._reply(channel, ECHO + nonce)
        elif tag == DOWNLOAD:
            if progress.download_bytes is None:
                progress.download_bytes, progress.download_t0 = 0, time.perf_counter()
            digest = session.download_chunk(body)
            progress.download_bytes += len(body)
            if digest is not None:
                progress.download_us = _us(time.perf_counter() - progress.download_t0)
                await self._reply(channel, DOWNLOAD + digest)
        elif tag == UPLOAD:
            # The whole payload is ready before its first byte leaves: the mixer times the
            # upload from the first frame's arrival to the last's.
            data = await asyncio.to_thread(session.upload, body)
            progress.upload_bytes = len(data)
            await self._reply(channel, UPLOAD + data[:FRAME_BYTES])
            for start in range(FRAME_BYTES, len(data), FRAME_BYTES):
                await channel.send(UPLOAD + data[start:start + FRAME_BYTES])
        elif tag == COMPUTE:
            t0 = time.perf_counter()
            root = await asyncio.to_thread(session.compute, body)
            took = _us(time.perf_counter() - t0)
            progress.compute_us = took if progress.compute_us is None else min(
                progress.compute_us, took)
            await self._reply(channel, COMPUTE + root)
        elif tag == FINISH:
            if len(body) != 1:
                raise ChallengeError("finish names the attempt counted in one byte",
                                     field="attempt")
            signed = session.finish(body[0])
            progress.stage = session.stage
            await asyncio.to_thread(self.journal.signed, session.challenge.challenge_id,
                                    signed, progress)
            await self._reply(channel, FINISH + signed.to_json())
        elif tag == OPEN:
            request = _parse(OpenRequest, body)
            openings = session.open_rows(list(request.indices))
            await self._reply(channel, OPEN + OpeningsMessage(
                openings=tuple(OpeningMessage.of(o) for o in openings)).to_json())
        else:
            raise ChallengeError(f"unknown step {tag!r}", field="step")
        progress.stage = session.stage

    def _record(self, session: ProverSession | None, signed: SignedChallenge | None,
                progress: Progress, error: str) -> None:
        """The session's count and its log line, as the node saw it end."""
        self.m_sessions.labels("failed" if error else "answered", error).inc()
        if signed is None:  # not a challenge at all: a line per stranger's attempt is noise
            log.debug("connection refused before a challenge: %s", progress.error)
            return
        c = signed.challenge
        if session is None:
            log.info("challenge 0x%s from %s (epoch %d round %d) refused: %s",
                     c.challenge_id.hex()[:16], c.mixer[:10], c.epoch, c.round, progress.error)
            return
        what = (f"challenge 0x{c.challenge_id.hex()[:16]} from mixer {c.mixer[:10]} (epoch "
                f"{c.epoch} round {c.round})")
        if error:
            log.info("%s failed: %s", what, progress.error)
        else:
            log.info("%s answered: %d echoes, download %s B in %s us, upload %s B, compute "
                     "%s us", what, progress.echoes, progress.download_bytes,
                     progress.download_us, progress.upload_bytes, progress.compute_us)


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1e6))


M = TypeVar("M", bound=Message)


def _parse(cls: type[M], body: bytes) -> M:
    """A frame's JSON body as ``cls``; a CodecError names at least the message."""
    try:
        return cls.from_json(body)
    except CodecError as exc:
        if exc.field is None:
            raise CodecError(exc.detail, field=cls.__name__) from None
        raise


class _AsgiChannel:
    """A WebSocket of the ASGI server as a ``Channel``."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._closed = False

    async def receive(self) -> bytes:
        message = await self._receive()
        if message["type"] != "websocket.receive":
            self._closed = True
            raise ChannelClosed
        data = message.get("bytes")
        if data is None:  # a text frame: not a step, let the tag check refuse it
            data = str(message.get("text", "")).encode()
        return bytes(data)

    async def send(self, data: bytes) -> None:
        try:
            await self._send({"type": "websocket.send", "bytes": data})
        except Exception as exc:  # the server's own error for a closed socket
            self._closed = True
            raise ChannelClosed from exc

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": 1000})


class ConnectionChannel:
    """A connection of the ``websockets`` library's server as a ``Channel`` (the benchmarks'
    minimal node servers, which serve many provers on one port without an ASGI app)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def receive(self) -> bytes:
        try:
            frame = await self.connection.recv(decode=False)
        except Exception as exc:  # ConnectionClosed, or a broken connection
            raise ChannelClosed from exc
        return bytes(frame)

    async def send(self, data: bytes) -> None:
        try:
            await self.connection.send(data)
        except Exception as exc:
            raise ChannelClosed from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()


class NoJournal:
    """A ``Journal`` that keeps nothing (benchmarks of the mixer's side)."""

    def accepted(self, signed: SignedChallenge) -> None:
        pass

    def signed(self, challenge_id: bytes, response: SignedChallengeResponse,
               progress: Progress) -> None:
        pass

    def ended(self, challenge_id: bytes, progress: Progress) -> None:
        pass


class SessionEndpoint:
    """The ASGI app of the WebSocket route: ``online`` False closes every connection at once
    (the devnet's offline nodes)."""

    def __init__(self, server: SessionServer, online: Callable[[], bool] = lambda: True):
        self.server = server
        self.online = online

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message: dict[str, Any] = dict(await receive())
        if message["type"] != "websocket.connect":
            return
        if not self.online():  # refused as an unreachable node's would be: a 503
            if "websocket.http.response" in scope.get("extensions", {}):
                await send({"type": "websocket.http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "websocket.http.response.body",
                            "body": b'{"error": {"type": "Unavailable", "field": null, '
                                    b'"message": "the node is offline"}}'})
            else:
                await send({"type": "websocket.close", "code": 1013})
            return
        await send({"type": "websocket.accept"})
        await self.server.serve(_AsgiChannel(receive, send))


__all__ = ["Channel", "ChannelClosed", "ConnectionChannel", "Journal", "NoJournal", "Progress",
           "SessionEndpoint", "SessionServer"]
