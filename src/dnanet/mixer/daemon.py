"""The QueryMixer daemon: challenge, score, batch, gossip, co-sign, certify, sign settlements.

Each round (a new round's first block is on chain) the mixer proves its VRF output for the
round, challenges the nodes that output assigns it, concurrently and with timeouts, batches
the scored reports, signs the batch and sends it to every other mixer of the epoch. Co-signers
check every report (``verify_batch_proposal``) and return their signature; with a quorum the
mixer forwards the certificate to the Validator. It signs an epoch's settlement only after
recomputing it from the certificates the Validator publishes.

Everything the mixer signs or accepts is in its SQLite store first; restarted, it skips rounds
it finished, re-sends certificates it had not forwarded, and never co-signs two different
reports for one (epoch, round, mixer, node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, CodecError, DnanetError, ProtocolError, ScheduleError
from dnanet.gateway.app import CallbackDirectory, Gateway, GatewayConfig, mixer_stats
from dnanet.gateway.canary import CanaryBook, ReferenceModels
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.session import run_challenge_session
from dnanet.mixer.store import MixerStore
from dnanet.node.http_transport import HttpNodeTransport, NodeHttpClient, open_node_session
from dnanet.protocol.codec import ListOf, Message, Nested, parse_json, wire
from dnanet.protocol.epoch import process_epochs
from dnanet.protocol.messages import (
    BatchProposal,
    CoSignature,
    EpochSettlement,
    Outcome,
    Punishment,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import compute_batch, compute_quorum_threshold
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_round,
    compute_round_start_block,
    compute_settlement_block,
    compute_vrf_alpha,
)
from dnanet.protocol.validation import BatchRejected, verify_batch_proposal, verify_certified_batch
from dnanet.service.http import Server, create_app, error_body, message_schema, read_body
from dnanet.service.network import ChainGateway
from dnanet.service.views import ViewCache

log = logging.getLogger("dnanet.mixer")

MAX_SETTLEMENT_PUNISHMENTS = 1024


@dataclass(frozen=True)
class SettlementRequest(Message):
    """What the Validator asks a mixer to sign for an epoch."""

    settlement: EpochSettlement = wire(Nested(EpochSettlement))
    punishments: tuple[Punishment, ...] = wire(
        ListOf(Nested(Punishment), MAX_SETTLEMENT_PUNISHMENTS))


@dataclass(frozen=True)
class SettlementSignatures(Message):
    settlement: CoSignature = wire(Nested(CoSignature))
    punishments: tuple[CoSignature, ...] = wire(
        ListOf(Nested(CoSignature), MAX_SETTLEMENT_PUNISHMENTS))


class MixerDaemon:
    """One QueryMixer. ``run()`` serves HTTP and drives rounds until ``stop()``."""

    def __init__(
        self,
        identity: Identity,
        gateway: ChainGateway,
        data_dir: Path,
        *,
        validator_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        concurrency: int = 64,
        poll_s: float | None = None,
        gateway_config: GatewayConfig | None = None,
        references: ReferenceModels | None = None,
    ) -> None:
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.preset = gateway.preset
        self.domain = gateway.domain
        self.validator_url = validator_url.rstrip("/")
        self.store = MixerStore(data_dir / "mixer.db")
        # Co-signing checks today's registry (a jailed node is not co-signed); re-checking
        # published past epochs must not depend on later jails.
        self.views = ViewCache(gateway, assume_active=False)
        self.past_views = ViewCache(gateway, assume_active=True)
        self.vrf_secret = derive_vrf_secret(identity)
        self.concurrency = concurrency
        self.poll_s = poll_s if poll_s is not None else max(0.02, self.preset.block_interval_ms / 2000)
        self.app = self._build_app()
        # The OpenAI-compatible gateway shares the mixer's app, store and measured reports.
        self.ai_gateway: Gateway | None = None
        if gateway_config is not None:
            self.ai_gateway = Gateway(
                gateway_config,
                CallbackDirectory(gateway.nodes, lambda: mixer_stats(self.store, self.preset)),
                canaries=CanaryBook(self.store), references=references)
            self.ai_gateway.mount(self.app)
        self.server = Server(self.app, host, port)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.preset.challenge_timeout_ms / 1000 + 5),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._nodes_http: NodeHttpClient | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        registry = self.app.state.registry
        self.m_challenges = Counter("dnanet_mixer_challenges", "challenges run", ["outcome"],
                                    registry=registry)
        self.m_cosign = Counter("dnanet_mixer_cosign", "co-sign decisions", ["decision"],
                                registry=registry)
        self.m_certified = Counter("dnanet_mixer_certified_batches", "batches certified",
                                   registry=registry)
        self.last_round: RoundId | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.server.start()
        if self.ai_gateway is not None:
            await self.ai_gateway.start()
        self._task = asyncio.create_task(self._round_loop(), name=f"mixer-{self.address[:8]}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.ai_gateway is not None:
            await self.ai_gateway.stop()
        await self.server.stop()
        await self.http.aclose()
        if self._nodes_http is not None:
            await self._nodes_http.close()
        self.store.close()

    @property
    def url(self) -> str:
        return self.server.url

    def _node_session(self) -> NodeHttpClient:
        if self._nodes_http is None:
            self._nodes_http = open_node_session(
                self.concurrency, self.preset.challenge_timeout_ms / 1000 + 5)
        return self._nodes_http

    # -- rounds -----------------------------------------------------------------------------------
    async def _round_loop(self) -> None:
        await self._resend_pending()
        while not self._stopping.is_set():
            try:
                head = await asyncio.to_thread(self.gateway.block_number)
                rid = compute_round(head, self.preset, self.gateway.genesis_block) \
                    if head >= self.gateway.genesis_block else None
                if rid is not None and not self.store.round_done(rid.epoch, rid.round):
                    await self.process_round(rid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault in one round must not stop the mixer
                log.warning("mixer %s: round failed: %s", self.address[:10], exc, exc_info=True)
            await asyncio.sleep(self.poll_s)

    async def process_round(self, rid: RoundId) -> None:
        """Challenge this round's assigned nodes, then certify the batch."""
        view = await asyncio.to_thread(self.views.view, rid.epoch, rounds=[rid.round])
        if self.address not in view.mixers:
            self.store.begin_round(rid.epoch, rid.round, b"", 0)
            self.store.finish_round(rid.epoch, rid.round)
            return
        seed = view.round_seeds[rid.round]
        proof = vrf.prove(self.vrf_secret, compute_vrf_alpha(
            self.domain.chain_id, rid.epoch, rid.round, seed))
        beta = vrf.proof_to_hash(proof)
        records = {n.address: n for n in await asyncio.to_thread(self.gateway.nodes)}
        active = sorted(a for a, n in records.items() if n.active)
        assigned = compute_assigned_nodes(beta, active, view.assignment_target)
        self.store.begin_round(rid.epoch, rid.round, proof, len(assigned))
        self.last_round = rid
        done = {r.node for r in self.store.own_reports(rid.epoch, rid.round)}
        limit = asyncio.Semaphore(self.concurrency)

        async def challenge(node: str) -> ScoreReport:
            async with limit:
                record = records[node]
                return await run_challenge_session(
                    HttpNodeTransport(self._node_session(), record.endpoint),
                    identity=self.identity,
                    domain=self.domain, preset=self.preset, beta=beta, vrf_proof=proof,
                    epoch=rid.epoch, round_=rid.round, node=node,
                    hardware_class=record.hardware_class)

        reports = list(await asyncio.gather(*(challenge(n) for n in assigned if n not in done)))
        if self.ai_gateway is not None:
            # A node that answered a canary wrongly fails this round's challenge, with why.
            reports = self.ai_gateway.canaries.apply(reports)
        for report in reports:
            self.m_challenges.labels(Outcome(report.outcome).name.lower()).inc()
        self.store.save_reports(reports)
        mine = self.store.own_reports(rid.epoch, rid.round)
        if mine:
            await self.certify(mine)
        self.store.finish_round(rid.epoch, rid.round)

    async def certify(self, reports: Sequence[ScoreReport]) -> QuorumCertificate | None:
        """Sign a batch of our reports, gather co-signatures, forward the certificate."""
        reports = sorted(reports, key=lambda r: r.key)
        for _attempt in range(2):
            if not reports:
                return None
            first = reports[0]
            batch = compute_batch(first.epoch, first.round, self.address, reports)
            proposal = BatchProposal(
                batch=batch, reports=tuple(reports),
                signature=self.identity.sign_typed(self.domain, batch.hash_struct()))
            self.store.save_proposal(proposal)
            certificate, refused = await self._gather(proposal)
            if certificate is not None:
                await self._forward(certificate)
                return certificate
            if not refused:
                return None
            log.warning("mixer %s: peers refused reports %s; re-forming the batch",
                        self.address[:10], sorted(refused))
            reports = [r for i, r in enumerate(reports) if i not in refused]
        return None

    async def _gather(self, proposal: BatchProposal) -> tuple[QuorumCertificate | None, set[int]]:
        members = await asyncio.to_thread(self.gateway.mixer_set, proposal.batch.epoch)
        threshold = compute_quorum_threshold(len(members))
        batch_hash = proposal.batch.hash_struct()
        signatures = {self.address: proposal.signature}
        refused: set[int] = set()
        body = proposal.to_json()

        async def ask(endpoint: str, member: str) -> None:
            try:
                response = await self.http.post(f"{endpoint.rstrip('/')}/v1/batches", content=body,
                                                headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                log.warning("co-signer %s unreachable: %r", member[:10], exc)
                return
            if response.status_code == 200:
                try:
                    cosig = CoSignature.from_json(response.content)
                    signer = recover_typed(self.domain, batch_hash, cosig.signature)
                except DnanetError as exc:
                    log.warning("co-signer %s sent a bad signature: %s", member[:10], exc)
                    return
                if signer == member:
                    signatures[member] = cosig.signature
            else:
                log.warning("co-signer %s refused batch %s (round %d): HTTP %d %s", member[:10],
                            batch_hash.hex()[:10], proposal.batch.round, response.status_code,
                            response.text[:300])
                if response.status_code == 422:
                    with contextlib.suppress(Exception):
                        for index, _why in parse_json(response.content)["error"].get(
                                "reasons", []):
                            refused.add(int(index))

        await asyncio.gather(*(ask(m.endpoint, m.address) for m in members
                               if m.address != self.address))
        if len(signatures) < threshold:
            log.warning("mixer %s: %d of %d signatures for batch %s (round %d): no quorum",
                        self.address[:10], len(signatures), threshold, batch_hash.hex()[:10],
                        proposal.batch.round)
            return None, refused
        # Exactly the threshold: ours first, then the co-signers' in the order they answered.
        # Each extra signature would only cost every verifier (the Validator, each mixer
        # before it signs a settlement, each audit) one more recovery.
        certificate = QuorumCertificate(batch=proposal.batch, reports=proposal.reports,
                                        signatures=tuple(signatures.values())[:threshold])
        self.store.save_certificate(certificate)
        self.m_certified.inc()
        return certificate, refused

    async def _forward(self, certificate: QuorumCertificate) -> bool:
        try:
            response = await self.http.post(
                f"{self.validator_url}/v1/certificates", content=certificate.to_json(),
                headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            log.info("validator unreachable (%s): will re-send", exc)
            return False
        if response.status_code == 200:
            self.store.mark_forwarded(certificate.batch.hash_struct())
            return True
        log.warning("validator refused certificate: %s %s", response.status_code,
                    response.text[:300])
        if 400 <= response.status_code < 500:
            self.store.mark_forwarded(certificate.batch.hash_struct())  # it won't change its mind
        return False

    async def _resend_pending(self) -> None:
        for proposal in self.store.uncertified():
            certificate, _ = await self._gather(proposal)
            if certificate is not None:
                await self._forward(certificate)
        for certificate in self.store.unforwarded():
            await self._forward(certificate)

    # -- co-signing -------------------------------------------------------------------------------
    def verify_proposal_window(self, proposal: BatchProposal) -> None:
        """A batch must be for a round that has started and an epoch not yet settled."""
        head = self.gateway.block_number()
        batch = proposal.batch
        start = compute_round_start_block(RoundId(batch.epoch, batch.round), self.preset,
                                          self.gateway.genesis_block)
        if start > head:
            raise ScheduleError(f"round {batch.round} of epoch {batch.epoch} has not started",
                                field="round")
        if head >= compute_settlement_block(batch.epoch, self.preset, self.gateway.genesis_block):
            raise ScheduleError(f"epoch {batch.epoch} is closed for new reports", field="epoch")

    def cosign(self, proposal: BatchProposal) -> CoSignature:
        """Validate a peer's batch and sign it, or raise (BatchRejected lists bad reports)."""
        batch = proposal.batch
        if batch.mixer == self.address:
            raise ProtocolError("a mixer does not co-sign its own batch", field="mixer")
        self.verify_proposal_window(proposal)
        view = self.views.view(batch.epoch, rounds=[batch.round],
                               nodes=[r.node for r in proposal.reports])
        verify_batch_proposal(proposal, view)
        conflicts = self.store.record_cosigned(proposal)
        if conflicts:
            raise BatchRejected([(i, "a different report for this (epoch, round, mixer, node) "
                                  "was already co-signed") for i in conflicts])
        return CoSignature(signer=self.address,
                           signature=self.identity.sign_typed(self.domain, batch.hash_struct()))

    # -- settlements ------------------------------------------------------------------------------
    async def fetch_certificates(self, epoch: int) -> list[QuorumCertificate]:
        try:
            response = await self.http.get(
                f"{self.validator_url}/v1/epochs/{epoch}/certificates")
        except httpx.HTTPError as exc:
            raise ChainError(f"cannot reach the validator at {self.validator_url} for epoch "
                             f"{epoch}'s certificates: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ProtocolError(f"validator answered {response.status_code} for epoch {epoch}'s "
                                "certificates", field="epoch")
        data = parse_json(response.content, max_bytes=1 << 30)
        items = data.get("certificates", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise CodecError("expected a list of certificates", field="certificates")
        return [QuorumCertificate.from_wire(c, f"certificates[{i}]") for i, c in enumerate(items)]

    async def verified_reports(self, epoch: int, *, cache: bool) -> list[ScoreReport]:
        """Reports of every certificate the validator published for ``epoch``, each verified."""
        row = self.store.one("SELECT reports_json FROM verified_epochs WHERE epoch=?", (epoch,))
        if row is not None:
            return [ScoreReport.from_wire(r) for r in parse_json(row[0], max_bytes=1 << 30)]
        certificates = await self.fetch_certificates(epoch)
        view = await asyncio.to_thread(self.past_views.view, epoch,
                                       rounds=range(self.preset.rounds_per_epoch))

        def verify() -> list[ScoreReport]:
            out: list[ScoreReport] = []
            for certificate in certificates:
                verify_certified_batch(certificate, view)
                out.extend(certificate.reports)
            return out

        reports = await asyncio.to_thread(verify)
        if cache:
            from dnanet.protocol.codec import canonical_json

            with self.store.transaction() as db:
                db.execute("INSERT OR REPLACE INTO verified_epochs(epoch, reports_json)"
                           " VALUES (?, ?)", (epoch, canonical_json([r.to_wire() for r in reports])))
        return reports

    async def sign_settlement(self, request: SettlementRequest) -> SettlementSignatures:
        """Recompute the epoch from published certificates; sign only what matches."""
        epoch = request.settlement.epoch
        head = await asyncio.to_thread(self.gateway.block_number)
        if head < compute_settlement_block(epoch, self.preset, self.gateway.genesis_block):
            raise ScheduleError(f"epoch {epoch} cannot settle before its grace period ends",
                                field="epoch")
        per_epoch = [await self.verified_reports(e, cache=e < epoch) for e in range(epoch + 1)]
        rollup = (await asyncio.to_thread(process_epochs, per_epoch, self.preset))[-1]
        # Verify the settlement and punishments are exactly what the reports imply.
        if rollup.settlement != request.settlement:
            raise ProtocolError(
                f"recomputed root 0x{rollup.settlement.rewards_root.hex()[:16]}.. total "
                f"{rollup.settlement.total}, asked to sign 0x"
                f"{request.settlement.rewards_root.hex()[:16]}.. total {request.settlement.total}",
                field="settlement")
        if tuple(rollup.punishments) != request.punishments:
            raise ProtocolError("punishments differ from the recomputed ones", field="punishments")
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO settlements_signed(epoch, settlement_hash)"
                       " VALUES (?, ?)", (epoch, request.settlement.hash_struct()))
        sign = self.identity.sign_typed
        return SettlementSignatures(
            settlement=CoSignature(signer=self.address, signature=sign(
                self.domain, request.settlement.hash_struct())),
            punishments=tuple(CoSignature(signer=self.address, signature=sign(
                self.domain, p.hash_struct())) for p in request.punishments),
        )

    # -- HTTP ---------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = create_app("dnanet mixer")

        @app.post("/v1/batches", tags=["mixer"], openapi_extra=message_schema(BatchProposal))
        async def batches(request: Request) -> Response:
            proposal = BatchProposal.from_wire(parse_json(await read_body(request)))
            try:
                cosig = await asyncio.to_thread(self.cosign, proposal)
            except BatchRejected as exc:
                self.m_cosign.labels("refused").inc()
                log.info("refused batch from %s: %s", proposal.batch.mixer[:10], exc)
                body = error_body(exc)
                body["error"]["reasons"] = [[i, why] for i, why in exc.reasons]
                return JSONResponse(body, status_code=422)
            except DnanetError:
                self.m_cosign.labels("refused").inc()
                raise
            self.m_cosign.labels("signed").inc()
            return Response(cosig.to_json(), media_type="application/json")

        @app.post("/v1/settlements", tags=["mixer"],
                  openapi_extra=message_schema(SettlementRequest))
        async def settlements(request: Request) -> Response:
            req = SettlementRequest.from_wire(parse_json(await read_body(request)))
            signed = await self.sign_settlement(req)
            return Response(signed.to_json(), media_type="application/json")

        @app.get("/v1/status", tags=["mixer"])
        async def status() -> Any:
            rows = self.store.query(
                "SELECT epoch, round, assigned, done FROM rounds ORDER BY epoch DESC, round DESC"
                " LIMIT 32")
            return {"address": self.address,
                    "rounds": [{"epoch": e, "round": r, "assigned": a, "done": bool(d)}
                               for e, r, a, d in rows]}

        return app


__all__ = ["MixerDaemon", "SettlementRequest", "SettlementSignatures"]
