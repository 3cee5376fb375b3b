"""The node's HTTP API: the challenge session endpoints, health, metrics and local status.

Challenge endpoints (``/v1/challenges``) follow the session order of
:mod:`dnanet.node.prover`. Signed challenges and the node's signed responses are written to
the node's SQLite store before the node answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, Request, Response

from dnanet.node.api import (
    DigestMessage,
    EchoMessage,
    OpeningMessage,
    OpeningsMessage,
    OpenRequest,
    RootMessage,
)
from dnanet.node.prover import ChallengeProver
from dnanet.protocol.challenges.bandwidth import MAX_PAYLOAD_BYTES
from dnanet.protocol.codec import FixedBytes, Message, parse_json
from dnanet.protocol.messages import SignedChallenge
from dnanet.service.http import create_app, message_schema, read_body
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
CREATE INDEX IF NOT EXISTS challenges_epoch ON challenges(epoch, round)
"""

_CID = FixedBytes(32)
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


def _json(message: Message) -> Response:
    return Response(message.to_json(), media_type="application/json")


def build_node_app(prover: ChallengeProver, store: Store, *, status: Any = None) -> FastAPI:
    """The node's FastAPI app. ``status`` (optional) returns the JSON for ``GET /v1/status``."""
    app = create_app("dnanet node")

    def cid(challenge_id: str) -> bytes:
        return _CID.from_wire(challenge_id, "challengeId")

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
        return Response(b'{"accepted":true}', media_type="application/json")

    @app.post("/v1/challenges/{challenge_id}/echo", tags=["challenge"],
              openapi_extra=message_schema(EchoMessage))
    async def echo(challenge_id: str, request: Request) -> Response:
        msg = EchoMessage.from_wire(parse_json(await read_body(request, 1024)))
        return _json(EchoMessage(nonce=prover.echo(cid(challenge_id), msg.nonce)))

    @app.post("/v1/challenges/{challenge_id}/download", tags=["challenge"])
    async def download(challenge_id: str, request: Request) -> Response:
        key = cid(challenge_id)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > min(MAX_DOWNLOAD_BYTES, MAX_PAYLOAD_BYTES):
                from dnanet.errors import CodecError

                raise CodecError("download payload too large", field="body")
            prover.download_chunk(key, chunk)
        return _json(DigestMessage(digest=prover.download_done(key)))

    @app.get("/v1/challenges/{challenge_id}/upload", tags=["challenge"])
    async def upload(challenge_id: str) -> Response:
        return Response(prover.upload(cid(challenge_id)), media_type="application/octet-stream")

    @app.post("/v1/challenges/{challenge_id}/compute", tags=["challenge"])
    async def compute(challenge_id: str) -> Response:
        root = await asyncio.to_thread(prover.compute, cid(challenge_id))
        return _json(RootMessage(root=root))

    @app.post("/v1/challenges/{challenge_id}/finish", tags=["challenge"])
    async def finish(challenge_id: str) -> Response:
        key = cid(challenge_id)
        signed = prover.finish(key)
        with store.transaction() as db:
            db.execute("UPDATE challenges SET response_json=? WHERE challenge_id=?",
                       (signed.to_json(), key))
        return _json(signed)

    @app.post("/v1/challenges/{challenge_id}/open", tags=["challenge"],
              openapi_extra=message_schema(OpenRequest))
    async def open_rows(challenge_id: str, request: Request) -> Response:
        msg = OpenRequest.from_wire(parse_json(await read_body(request, 64 * 1024)))
        openings = prover.open_rows(cid(challenge_id), list(msg.indices))
        return _json(OpeningsMessage(openings=tuple(OpeningMessage.of(o) for o in openings)))

    @app.get("/v1/status", tags=["status"])
    async def node_status() -> Any:
        recent = store.query(
            "SELECT epoch, round, mixer, received_at, response_json IS NOT NULL FROM challenges"
            " ORDER BY received_at DESC LIMIT 50")
        body: dict[str, Any] = {
            "address": prover.identity.address,
            "recent_challenges": [
                {"epoch": e, "round": r, "mixer": m, "received_at": t, "answered": bool(a)}
                for e, r, m, t, a in recent
            ],
        }
        if status is not None:
            body.update(status())
        return body

    return app


__all__ = ["NODE_SCHEMA", "build_node_app"]
