"""The node's HTTP API: the challenge session's WebSocket, health, metrics and local status.

A challenge session is one WebSocket connection to ``/v1/challenges`` (see
:mod:`dnanet.node.session_server` and the frames in :mod:`dnanet.node.api`); a plain HTTP
request to that path is answered 426 naming the upgrade it needs. Signed challenges and the
node's signed responses are written to the node's SQLite store before the node answers; the ids
of challenges taken up are kept there too (``StoreSeen``), so a restarted node still refuses a
replay, and ids of epochs no longer open for reports are dropped.

What the node saw of each challenge (the last step it completed, the error it answered, its
own timings) is kept beside it, for ``GET /v1/status`` and ``dnanet node status``: the node
never learns the mixer's verdict, which comes from the Validator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import WebSocketRoute

from dnanet.node.api import SESSION_PATH
from dnanet.node.prover import STAGES, ChallengeProver
from dnanet.node.session_server import Progress, SessionEndpoint, SessionServer
from dnanet.protocol.messages import SignedChallenge, SignedChallengeResponse
from dnanet.service.http import create_app
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
);
CREATE TABLE IF NOT EXISTS seen_challenges (
    challenge_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_challenges_epoch ON seen_challenges(epoch)
"""

MAX_ENDED = 64
"""Ended sessions' rows kept in memory at most before they are written on their own."""

_SAVE_PROGRESS = (
    "INSERT OR REPLACE INTO challenge_progress(challenge_id, stage, error, echoes,"
    " download_bytes, download_us, upload_bytes, compute_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _row(challenge_id: bytes, p: Progress) -> tuple[Any, ...]:
    return (challenge_id, p.stage, p.error, p.echoes, p.download_bytes, p.download_us,
            p.upload_bytes, p.compute_us)


class StoreSeen:
    """The ids of challenges taken up (``SeenChallenges``) in the node's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pruned_below = 0

    def claim(self, challenge_id: bytes, epoch: int, oldest_epoch: int) -> bool:
        with self.store.transaction() as db:
            if oldest_epoch > self._pruned_below:  # epochs closed since: their ids can go
                db.execute("DELETE FROM seen_challenges WHERE epoch < ?", (oldest_epoch,))
                self._pruned_below = oldest_epoch
            taken = db.execute("INSERT OR IGNORE INTO seen_challenges(challenge_id, epoch)"
                               " VALUES (?, ?)", (challenge_id, epoch)).rowcount
        return bool(taken)


class ChallengeJournal:
    """The node's record of its sessions (``dnanet.node.session_server.Journal``).

    Rows of sessions that ended ride along with the next transaction the node makes anyway (a
    challenge accepted or signed), not one of their own: ``MAX_ENDED`` at most wait, and
    ``flush`` (the daemon calls it when it stops) writes them.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ended: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _write_ended(self, db: Any) -> None:
        with self._lock:
            rows, self._ended = self._ended, []
        if rows:
            db.executemany(_SAVE_PROGRESS, rows)

    def accepted(self, signed: SignedChallenge) -> None:
        c = signed.challenge
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO challenges(challenge_id, epoch, round, mixer, received_at,"
                " challenge_json) VALUES (?, ?, ?, ?, ?, ?)",
                (c.challenge_id, c.epoch, c.round, c.mixer, time.time(), signed.to_json()))
            self._write_ended(db)

    def signed(self, challenge_id: bytes, response: SignedChallengeResponse,
               progress: Progress) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE challenges SET response_json=? WHERE challenge_id=?",
                       (response.to_json(), challenge_id))
            db.execute(_SAVE_PROGRESS, _row(challenge_id, progress))
            self._write_ended(db)

    def ended(self, challenge_id: bytes, progress: Progress) -> None:
        with self._lock:
            self._ended.append(_row(challenge_id, progress))
            full = len(self._ended) >= MAX_ENDED
        if full:
            self.flush()

    def flush(self) -> None:
        if self._ended:
            with self.store.transaction() as db:
                self._write_ended(db)

    def unwritten(self) -> dict[bytes, Progress]:
        with self._lock:
            return {bytes(row[0]): Progress(*row[1:]) for row in self._ended}


def _upgrade_required() -> JSONResponse:
    return JSONResponse({"error": {
        "type": "UpgradeRequired", "field": "path",
        "message": f"a challenge session is a WebSocket: GET {SESSION_PATH} with "
                   "'Upgrade: websocket', then a signed challenge as its first frame"}},
        status_code=426, headers={"Upgrade": "websocket"})


def build_node_app(prover: ChallengeProver, store: Store, *, status: Any = None,
                   reply_delay: Callable[[], float] = lambda: 0.0,
                   online: Callable[[], bool] = lambda: True,
                   timeout_s: float = 60.0) -> FastAPI:
    """The node's FastAPI app. ``status`` (optional) returns more JSON for ``GET /v1/status``;
    ``reply_delay`` and ``online`` shape the challenge sessions (see ``SessionEndpoint``);
    a session that has not ended after ``timeout_s`` is closed."""
    app = create_app("dnanet node")
    journal = ChallengeJournal(store)
    sessions = SessionServer(prover, journal, registry=app.state.registry,
                             reply_delay=reply_delay, timeout_s=timeout_s)
    app.state.sessions = sessions
    app.state.flush_progress = journal.flush
    app.router.routes.append(WebSocketRoute(SESSION_PATH, SessionEndpoint(sessions, online)))

    @app.post(SESSION_PATH, tags=["challenge"], status_code=426, responses={426: {
        "description": "a challenge session is a WebSocket on this path"}})
    async def start_over_http() -> JSONResponse:
        return _upgrade_required()

    @app.get("/v1/status", tags=["status"])
    async def node_status() -> Any:
        recent = store.query(
            "SELECT c.challenge_id, c.epoch, c.round, c.mixer, c.received_at,"
            " c.response_json IS NOT NULL, p.stage, p.error, p.echoes, p.download_bytes,"
            " p.download_us, p.upload_bytes, p.compute_us FROM challenges c"
            " LEFT JOIN challenge_progress p ON p.challenge_id = c.challenge_id"
            " ORDER BY c.received_at DESC LIMIT 50")
        unwritten = journal.unwritten()
        body: dict[str, Any] = {
            "address": prover.identity.address,
            "recent_challenges": [
                _recent(row, sessions.live.get(bytes(row[0])) or unwritten.get(bytes(row[0])))
                for row in recent],
        }
        if status is not None:
            body.update(status())
        return body

    return app


def _recent(row: tuple[Any, ...], live: Progress | None) -> dict[str, Any]:
    """One entry of ``recent_challenges``: the session as the node saw it (in flight: from
    memory; otherwise as stored when it signed, ended or answered an error)."""
    key, epoch, round_, mixer, received_at, answered = row[:6]
    if live is not None:
        state = live
    elif row[6] is not None:
        state = Progress(*row[6:])
    else:
        state = Progress(stage="finish" if answered else "start")
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


__all__ = ["NODE_SCHEMA", "STAGES", "ChallengeJournal", "StoreSeen", "build_node_app"]
