"""The node's HTTP API: the challenge session endpoints, health, metrics and local status.

Challenge endpoints (``/v1/challenges``) follow the session order of
:mod:`dnanet.node.prover`. Signed challenges and the node's signed responses are written to
the node's SQLite store before the node answers.

Body limits: every route takes at most the app-wide ``MAX_MESSAGE_BYTES`` (protocol messages),
except a challenge's download, which carries the bandwidth payload: up to
``MAX_DOWNLOAD_BYTES``, the largest download any preset's hardware class sends plus a margin.
The download path of a challenge is exempted from the app-wide limit (``own_body_limit``)
once a current mixer's signed challenge for it is accepted, and until its download ends; the
route enforces its own limit and answers 413 naming it.

What the node saw of each challenge (the last step it completed, the error it answered, its
own timings) is kept beside it, for ``GET /v1/status`` and ``dnanet node status``: the node
never learns the mixer's verdict, which comes from the Validator.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response

from dnanet.errors import DnanetError
from dnanet.node.api import (
    DigestMessage,
    EchoMessage,
    OpeningMessage,
    OpeningsMessage,
    OpenRequest,
    RootMessage,
)
from dnanet.node.prover import MAX_OPEN_SESSIONS, ChallengeProver
from dnanet.params import PRESETS
from dnanet.protocol.codec import FixedBytes, Message, parse_json
from dnanet.protocol.messages import SignedChallenge
from dnanet.service.http import TooLarge, create_app, message_schema, read_body
from dnanet.service.store import Store

NODE_SCHEMA = """
CREATE TABLE IF NOT EXISTS challenges (
    challenge_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL,
    round INTEGER NOT NULL,
    mixer TEXT NOT NULL,
    received_at REAL NOT NULL,
    challenge_json BLOB NOT NULL,
    response_json BLOB
);
CREATE INDEX IF NOT EXISTS challenges_epoch ON challenges(epoch, round);
CREATE TABLE IF NOT EXISTS challenge_progress (
    challenge_id BLOB PRIMARY KEY,
    stage TEXT NOT NULL,
    error TEXT,
    echoes INTEGER NOT NULL,
    download_bytes INTEGER,
    download_us INTEGER,
    upload_bytes INTEGER,
    compute_us INTEGER
)
"""

_CID = FixedBytes(32)

DOWNLOAD_MARGIN_BYTES = 1024 * 1024
MAX_DOWNLOAD_BYTES = max(
    sizes.download_bytes for preset in PRESETS.values() for sizes in preset.hardware_classes
) + DOWNLOAD_MARGIN_BYTES
"""The most a challenge's download may carry: the largest download of any preset's hardware
class (mainnet's GPU class: 16 MiB), plus a margin."""

MAX_ENDED = 64
"""Ended sessions' rows kept in memory at most before they are written on their own."""

STAGES = ("started", "echo", "download", "upload", "compute", "finish", "open")
"""A session's steps in order; ``stage`` is the last one the node completed."""

T = TypeVar("T")


def download_path(challenge_id: bytes) -> str:
    """The download path of a challenge as mixers spell it (``0x`` + lowercase hex)."""
    return f"/v1/challenges/0x{challenge_id.hex()}/download"


@dataclass
class _Progress:
    """What the node saw of one challenge session (its own measurements, not the mixer's)."""

    stage: str = "started"
    error: str | None = None
    echoes: int = 0
    download_bytes: int | None = None
    download_us: int | None = None
    upload_bytes: int | None = None
    compute_us: int | None = None

    def row(self, challenge_id: bytes) -> tuple[Any, ...]:
        return (challenge_id, self.stage, self.error, self.echoes, self.download_bytes,
                self.download_us, self.upload_bytes, self.compute_us)


_SAVE_PROGRESS = (
    "INSERT OR REPLACE INTO challenge_progress(challenge_id, stage, error, echoes,"
    " download_bytes, download_us, upload_bytes, compute_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _json(message: Message) -> Response:
    return Response(message.to_json(), media_type="application/json")


def build_node_app(prover: ChallengeProver, store: Store, *, status: Any = None) -> FastAPI:
    """The node's FastAPI app. ``status`` (optional) returns the JSON for ``GET /v1/status``."""
    app = create_app("dnanet node")

    def cid(challenge_id: str) -> bytes:
        return _CID.from_wire(challenge_id, "challengeId")

    own_body_limit: set[str] = app.state.own_body_limit
    progress: OrderedDict[bytes, _Progress] = OrderedDict()
    """Sessions in flight (as many as the prover keeps open), by challenge id."""

    ended: list[tuple[Any, ...]] = []
    """Rows of sessions that ended since the last write: they ride along with the next
    transaction the node makes anyway (a challenge accepted or signed), not one of their own."""

    def write_ended(db: Any) -> None:
        if ended:
            db.executemany(_SAVE_PROGRESS, ended)
            ended.clear()

    def flush() -> None:
        """Write the ended sessions still in memory (the daemon calls it when it stops)."""
        if ended:
            with store.transaction() as db:
                write_ended(db)

    app.state.flush_progress = flush

    def save(key: bytes, state: _Progress) -> None:
        with store.transaction() as db:
            db.execute(_SAVE_PROGRESS, state.row(key))
            write_ended(db)

    def forget(key: bytes) -> None:
        """The session is over (or the prover dropped it): what the node saw goes to disk with
        the next transaction (``MAX_ENDED`` at most wait)."""
        state = progress.pop(key, None)
        own_body_limit.discard(download_path(key))
        if state is not None:
            ended.append(state.row(key))
            if len(ended) >= MAX_ENDED:
                flush()

    def failed(key: bytes, name: str, exc: DnanetError) -> None:
        if (state := progress.get(key)) is not None:
            state.error = f"{name}: {exc}"
            save(key, state)

    def step(key: bytes, name: str, call: Callable[[], T]) -> T:
        """Run a session step; remember it was done, or the error the node answered."""
        try:
            out = call()
        except DnanetError as exc:
            failed(key, name, exc)
            raise
        if (state := progress.get(key)) is not None:
            state.stage = name
        return out

    @app.post("/v1/challenges", tags=["challenge"], openapi_extra=message_schema(SignedChallenge))
    async def start(request: Request) -> Response:
        signed = SignedChallenge.from_wire(parse_json(await read_body(request)))
        prover.start(signed)
        c = signed.challenge
        with store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO challenges(challenge_id, epoch, round, mixer, received_at,"
                " challenge_json) VALUES (?, ?, ?, ?, ?, ?)",
                (c.challenge_id, c.epoch, c.round, c.mixer, time.time(), signed.to_json()),
            )
            write_ended(db)
        progress[c.challenge_id] = _Progress()
        own_body_limit.add(download_path(c.challenge_id))
        while len(progress) > MAX_OPEN_SESSIONS:  # the prover dropped the oldest too
            forget(next(iter(progress)))
        return Response(b'{"accepted":true}', media_type="application/json")

    @app.post("/v1/challenges/{challenge_id}/echo", tags=["challenge"],
              openapi_extra=message_schema(EchoMessage))
    async def echo(challenge_id: str, request: Request) -> Response:
        key = cid(challenge_id)
        msg = EchoMessage.from_wire(parse_json(await read_body(request, 1024)))
        nonce = step(key, "echo", lambda: prover.echo(key, msg.nonce))
        if (state := progress.get(key)) is not None:
            state.echoes += 1
        return _json(EchoMessage(nonce=nonce))

    @app.post("/v1/challenges/{challenge_id}/download", tags=["challenge"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {
                      "type": "string", "format": "binary", "maxLength": MAX_DOWNLOAD_BYTES}}}}})
    async def download(challenge_id: str, request: Request) -> Response:
        key = cid(challenge_id)
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_DOWNLOAD_BYTES:
                raise TooLarge(f"body of {declared} bytes exceeds {MAX_DOWNLOAD_BYTES}",
                               field="body")
            t0 = time.perf_counter()
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise TooLarge(f"request body exceeds {MAX_DOWNLOAD_BYTES} bytes",
                                   field="body")
                prover.download_chunk(key, chunk)
            digest = prover.download_done(key)
        except DnanetError as exc:
            failed(key, "download", exc)
            raise
        finally:  # one download per session: the app-wide limit applies again
            own_body_limit.discard(download_path(key))
        if (state := progress.get(key)) is not None:
            state.stage = "download"
            state.download_bytes, state.download_us = size, _us(time.perf_counter() - t0)
        return _json(DigestMessage(digest=digest))

    @app.get("/v1/challenges/{challenge_id}/upload", tags=["challenge"])
    async def upload(challenge_id: str) -> Response:
        key = cid(challenge_id)
        data = step(key, "upload", lambda: prover.upload(key))
        if (state := progress.get(key)) is not None:
            state.upload_bytes = len(data)
        return Response(data, media_type="application/octet-stream")

    @app.post("/v1/challenges/{challenge_id}/compute", tags=["challenge"])
    async def compute(challenge_id: str) -> Response:
        key = cid(challenge_id)

        def timed() -> tuple[bytes, float]:
            t0 = time.perf_counter()
            return prover.compute(key), time.perf_counter() - t0

        try:
            root, seconds = await asyncio.to_thread(timed)
        except DnanetError as exc:
            failed(key, "compute", exc)
            raise
        if (state := progress.get(key)) is not None:
            state.stage, state.compute_us = "compute", _us(seconds)
        return _json(RootMessage(root=root))

    @app.post("/v1/challenges/{challenge_id}/finish", tags=["challenge"])
    async def finish(challenge_id: str) -> Response:
        key = cid(challenge_id)
        signed = step(key, "finish", lambda: prover.finish(key))
        state = progress.get(key)
        with store.transaction() as db:
            db.execute("UPDATE challenges SET response_json=? WHERE challenge_id=?",
                       (signed.to_json(), key))
            if state is not None:
                db.execute(_SAVE_PROGRESS, state.row(key))
            write_ended(db)
        return _json(signed)

    @app.post("/v1/challenges/{challenge_id}/open", tags=["challenge"],
              openapi_extra=message_schema(OpenRequest))
    async def open_rows(challenge_id: str, request: Request) -> Response:
        key = cid(challenge_id)
        msg = OpenRequest.from_wire(parse_json(await read_body(request, 64 * 1024)))
        openings = step(key, "open", lambda: prover.open_rows(key, list(msg.indices)))
        forget(key)  # the session ends here
        return _json(OpeningsMessage(openings=tuple(OpeningMessage.of(o) for o in openings)))

    @app.get("/v1/status", tags=["status"])
    async def node_status() -> Any:
        recent = store.query(
            "SELECT c.challenge_id, c.epoch, c.round, c.mixer, c.received_at,"
            " c.response_json IS NOT NULL, p.stage, p.error, p.echoes, p.download_bytes,"
            " p.download_us, p.upload_bytes, p.compute_us FROM challenges c"
            " LEFT JOIN challenge_progress p ON p.challenge_id = c.challenge_id"
            " ORDER BY c.received_at DESC LIMIT 50")
        unwritten = {bytes(row[0]): _Progress(*row[1:]) for row in ended}
        body: dict[str, Any] = {
            "address": prover.identity.address,
            "recent_challenges": [_recent(row, progress.get(row[0]) or unwritten.get(row[0]))
                                  for row in recent],
        }
        if status is not None:
            body.update(status())
        return body

    return app


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1e6))


def _recent(row: tuple[Any, ...], live: _Progress | None) -> dict[str, Any]:
    """One entry of ``recent_challenges``: the session as the node saw it (in flight: from
    memory; otherwise as stored when it signed, ended or answered an error)."""
    key, epoch, round_, mixer, received_at, answered = row[:6]
    if live is not None:
        state = live
    elif row[6] is not None:
        state = _Progress(*row[6:])
    else:
        state = _Progress(stage="finish" if answered else "started")
    return {
        "challenge_id": "0x" + bytes(key).hex(), "epoch": epoch, "round": round_,
        "mixer": mixer, "received_at": received_at, "answered": bool(answered),
        "stage": state.stage, "completed": state.stage == "open", "error": state.error,
        "node_metrics": {
            "echoes": state.echoes, "download_bytes": state.download_bytes,
            "download_us": state.download_us, "upload_bytes": state.upload_bytes,
            "compute_us": state.compute_us,
        },
    }


__all__ = ["MAX_DOWNLOAD_BYTES", "NODE_SCHEMA", "STAGES", "build_node_app", "download_path"]
