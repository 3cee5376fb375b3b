"""The mixer's HTTP API (beside the gateway's OpenAI routes, mounted on the same app).

=========================  ======================================================================
``POST /v1/batches``       a peer's BatchProposal: 200 CoSignature, or 422 with the reasons of
                           each refused report (``error.reasons``: ``[[index, why], ...]``)
``POST /v1/settlements``   the Validator's SettlementRequest: 200 SettlementSignatures, or a
                           refusal that says why (logged and counted here too)
``GET /v1/status``         the mixer's recent rounds (a round's VRF output only once its
                           challenges are over), its outbox, the settlements it signed
=========================  ======================================================================

Every refusal is logged once with its reason. Blocking work (chain reads, signature checks,
database writes) runs in worker threads, never on the loop that serves, and never on the one
that times nodes (``dnanet.mixer.sessions``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from dnanet.errors import DnanetError
from dnanet.mixer.cosign import CoSigner
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.settlement import SettlementSigner
from dnanet.mixer.store import MixerStore
from dnanet.protocol.codec import parse_json
from dnanet.protocol.messages import BatchProposal, SettlementRequest
from dnanet.protocol.validation import BatchRejected
from dnanet.service.http import error_body, message_schema, read_body
from dnanet.service.ratelimit import PeerLimiter

log = logging.getLogger("dnanet.mixer")

STATUS_ROUNDS = 32
"""Recent rounds in ``GET /v1/status`` (at most, and by default)."""
STATUS_SETTLEMENTS = 8
SETTLEMENT_RATE = (2.0, 8.0)
"""Settlement requests a peer may make: per second, and at once (the Validator asks each
mixer about once per epoch, and again after a backoff when the mixer was not ready)."""


def install_routes(app: FastAPI, *, address: str, store: MixerStore, cosigner: CoSigner,
                   settlements: SettlementSigner, metrics: MixerMetrics) -> None:
    limiter = PeerLimiter(*SETTLEMENT_RATE)
    short = address[:10]

    def peer(request: Request) -> str:
        return request.client.host if request.client else "?"

    @app.post("/v1/batches", tags=["mixer"], openapi_extra=message_schema(BatchProposal))
    async def batches(request: Request) -> Response:
        try:
            proposal = BatchProposal.from_wire(parse_json(await read_body(request)))
        except DnanetError as exc:
            metrics.cosign.labels("refused").inc()
            log.info("mixer %s: refused a malformed batch from %s: %s", short, peer(request), exc)
            raise
        batch = proposal.batch
        try:
            cosig = await asyncio.to_thread(cosigner.cosign, proposal)
        except DnanetError as exc:
            metrics.cosign.labels("refused").inc()
            reason = (str(exc) if isinstance(exc, BatchRejected)
                      else f"{type(exc).__name__}: {exc}")
            log.info("mixer %s: refused batch %s from %s (epoch %d round %d, %d reports): %s",
                     short, batch.hash_struct().hex()[:10], batch.mixer[:10], batch.epoch,
                     batch.round, len(proposal.reports), reason)
            if not isinstance(exc, BatchRejected):
                raise
            body = error_body(exc)
            body["error"]["reasons"] = [[i, why] for i, why in exc.reasons]
            return JSONResponse(body, status_code=422)
        metrics.cosign.labels("signed").inc()
        return Response(cosig.to_json(), media_type="application/json")

    @app.post("/v1/settlements", tags=["mixer"], openapi_extra=message_schema(SettlementRequest))
    async def settlement(request: Request) -> Response:
        wait = limiter.take(peer(request))
        if wait > 0:
            metrics.settlements.labels("rate_limited").inc()
            return JSONResponse(
                {"error": {"type": "RateLimited", "field": None,
                           "message": f"too many settlement requests; retry in {wait:.1f} s"}},
                status_code=429, headers={"Retry-After": str(max(1, round(wait)))})
        try:
            req = SettlementRequest.from_wire(parse_json(await read_body(request)))
            signed = await settlements.sign(req)
        except DnanetError as exc:
            metrics.settlements.labels("refused").inc()
            log.warning("mixer %s: refused to sign a settlement for %s: %s: %s", short,
                        peer(request), type(exc).__name__, exc)
            raise
        metrics.settlements.labels("signed").inc()
        return Response(signed.to_json(), media_type="application/json")

    @app.get("/v1/status", tags=["mixer"])
    async def status(
            rounds: int = Query(STATUS_ROUNDS, ge=1, le=STATUS_ROUNDS,
                                description="how many of the newest rounds to list"),
            assigned: bool = Query(True, description="list each round's assigned nodes "
                                   "(about nodes / mixers addresses per round)"),
    ) -> Any:
        def read() -> dict[str, Any]:
            listed = []
            for e, r, beta, nodes, count, done in store.recent_rounds(rounds):
                # A round's VRF output tells each challenge's content: shown once it is over.
                entry: dict[str, Any] = {"epoch": e, "round": r,
                                         "beta": "0x" + beta.hex() if beta and done else None}
                if assigned:
                    entry["assigned"] = nodes if done else None
                entry.update(assigned_count=count, done=done)
                listed.append(entry)
            outbox = dict(store.outbox_counts(), watching=store.watching())
            return {"address": address, "outbox": outbox, "rounds": listed,
                    "settlements": store.recent_settlements(STATUS_SETTLEMENTS)}

        return await asyncio.to_thread(read)


__all__ = ["STATUS_ROUNDS", "install_routes"]
