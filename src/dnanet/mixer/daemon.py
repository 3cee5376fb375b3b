"""The QueryMixer daemon: challenge, score, batch, gossip, co-sign, certify, sign settlements.

Each round (a new round's first block is on chain) the mixer proves its VRF output for the
round, logs it with the nodes that output assigns it, challenges them concurrently and with
timeouts, batches the scored reports, signs the batch and sends it to every other mixer of the
epoch. Each assigned node's challenge starts at its own moment in the first half of the round
(``compute_challenge_offset``: from the round's VRF output, so no node can tell when, or
whether, it will be challenged, and the mixers' sessions do not all start at once).

Each round runs in a task of its own, so a round held up by a node that never answers does not
delay the next one. A round the mixer did not see begin (it was stopped, or too busy for a whole
round) is challenged late, one such round at a time, while its epoch still takes reports; once
the epoch is closed the round is given up, with a warning.

Co-signers check every report (``verify_batch_proposal``) and return their signature; with a
quorum the mixer forwards the certificate to the Validator. It signs an epoch's
settlement only after recomputing it from the certificates the Validator publishes.

Everything the mixer signs or accepts is in its SQLite store first. The store is also its
outbox, which a task of its own works through while the mixer runs (at start, after each
round, and on a timer that backs off while nothing gets through), never holding up a round:

- own reports of a past round that no batch holds (the mixer stopped between saving them and
  signing their batch) are batched and certified;
- a batch without a quorum is proposed again, until its epoch closes for new reports (then
  co-signers refuse it: the mixer gives it up and logs why);
- a certificate the Validator has not acknowledged is sent again, until it answers: 200
  (stored, or already stored), or another 4xx than 408/429 (it will not change its mind, e.g.
  409 for a closed epoch); or until the chain settled its epoch.

A co-signer watches each batch it signed: ``backup_s`` after co-signing it asks the Validator
whether it holds the batch (then it forgets the batch). If not, once its turn has come
(``backup_s`` times one more than its ``compute_backup_rank`` among the co-signers) it forwards
the batch itself: it proposes the originator's signed batch to the other co-signers again, and
sends the Validator a certificate of the originator's signature, its own and theirs. So a batch
the originator co-signed into a quorum still reaches the Validator if the originator never
forwards it (it crashed for good, or withholds it); duplicates are harmless.

Restarted, it skips rounds it finished, finishes the ones it was in, challenges late the ones
it missed while their epoch still takes reports, and resumes the outbox. It never co-signs two
different reports for one (epoch, round, mixer, node); the same report in a re-formed batch it
signs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, CodecError, DnanetError, ProtocolError, ScheduleError
from dnanet.gateway.app import CallbackDirectory, Gateway, GatewayConfig, mixer_stats
from dnanet.gateway.canary import CanaryBook, ReferenceModels
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.node_client import HttpNodeTransport, NodeHttpClient, open_node_session
from dnanet.mixer.session import run_challenge_session
from dnanet.mixer.store import MixerStore
from dnanet.protocol.codec import parse_json
from dnanet.protocol.epoch import process_epochs
from dnanet.protocol.messages import (
    BatchProposal,
    CoSignature,
    Outcome,
    QuorumCertificate,
    ScoreReport,
    SettlementRequest,
    SettlementSignatures,
)
from dnanet.protocol.quorum import (
    compute_backup_rank,
    compute_batch,
    compute_quorum_threshold,
)
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_challenge_offset,
    compute_epoch,
    compute_oldest_open_round,
    compute_round,
    compute_round_start_block,
    compute_rounds_after,
    compute_settlement_block,
    compute_vrf_alpha,
)
from dnanet.protocol.validation import BatchRejected, verify_batch_proposal, verify_certified_batch
from dnanet.service.http import Server, create_app, error_body, message_schema, read_body
from dnanet.service.network import ChainGateway, NodeRecord
from dnanet.service.views import ViewCache

log = logging.getLogger("dnanet.mixer")

OUTBOX_CONCURRENCY = 4
"""Batches and certificates the outbox retries at once."""
WATCH_BATCH = 256
"""Watched batches looked at in one outbox pass (the rest wait for the next)."""
RETRY_STATUSES = frozenset({408, 429})
"""4xx answers of the Validator that are worth a retry (the others are final)."""
CHALLENGE_SPREAD = 0.5
"""The part of a round over which a mixer spreads the starts of its challenges."""
ROUND_POLLS = 32
"""How many times a round the round loop reads the chain's head (at most every 20 ms)."""
LOGGED_NODES = 8
"""Assigned nodes named in a round's log line (the count is always there)."""
STATUS_ROUNDS = 32
"""Recent rounds in ``GET /v1/status`` (at most, and by default)."""


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
        retry_s: tuple[float, float] | None = None,
        backup_s: float | None = None,
        spread_s: float | None = None,
    ) -> None:
        """``retry_s``: the outbox's first and longest wait between passes while something is
        pending (default 2 s, and one round's time up to 60 s). ``backup_s``: how long after
        co-signing a peer's batch the mixer looks whether the Validator holds it (default two
        rounds' time, at least 10 s); if not, it forwards the batch itself from ``backup_s``
        times one more than its backup rank on. ``spread_s``: the challenges of a round start
        within this many seconds of the round's start (default ``CHALLENGE_SPREAD`` of the
        round's time on the preset's block clock)."""
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
        round_s = self.preset.round_blocks * self.preset.block_interval_ms / 1000
        # The round loop looks for a new round this often: a round starts at most this late.
        self.poll_s = poll_s if poll_s is not None else max(0.02, round_s / ROUND_POLLS)
        if retry_s is None:
            retry_s = (2.0, min(60.0, max(2.0, round_s)))
        if not 0 < retry_s[0] <= retry_s[1]:
            raise ValueError(f"retry_s must be 0 < first <= longest, not {retry_s}")
        self.retry_s = retry_s
        if backup_s is None:
            backup_s = max(10.0, 2 * round_s)
        if not backup_s > 0:
            raise ValueError(f"backup_s must be positive, not {backup_s}")
        self.backup_s = backup_s
        if spread_s is None:
            spread_s = CHALLENGE_SPREAD * round_s
        if not spread_s >= 0:
            raise ValueError(f"spread_s must be 0 or more, not {spread_s}")
        self.spread_s = spread_s
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
        self._outbox_task: asyncio.Task[None] | None = None
        self._outbox_wake = asyncio.Event()
        self._in_flight: set[bytes] = set()
        """Hashes of the batches being certified or forwarded right now (the outbox skips
        them)."""
        self._running: set[RoundId] = set()
        """The rounds ``process_round`` is in (the outbox leaves their reports to them)."""
        self._round_tasks: set[asyncio.Task[None]] = set()
        self._newest: RoundId | None = None
        """The newest round the round loop has started (None until its first pass)."""
        self._late: list[RoundId] = []
        """Rounds the mixer did not see begin, to challenge late, oldest first."""
        self._late_task: asyncio.Task[None] | None = None
        registry = self.app.state.registry
        self.m_challenges = Counter("dnanet_mixer_challenges", "challenges run", ["outcome"],
                                    registry=registry)
        self.m_cosign = Counter("dnanet_mixer_cosign", "co-sign decisions", ["decision"],
                                registry=registry)
        self.m_certified = Counter("dnanet_mixer_certified_batches", "batches certified",
                                   registry=registry)
        self.m_backup = Counter("dnanet_mixer_backup_forwards", "peers' batches this mixer "
                                "forwarded to the Validator in their originator's stead",
                                registry=registry)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.server.start()
        if self.ai_gateway is not None:
            await self.ai_gateway.start()
        self._task = asyncio.create_task(self._round_loop(), name=f"mixer-{self.address[:8]}")
        self._outbox_task = asyncio.create_task(self._outbox_loop(),
                                                name=f"mixer-outbox-{self.address[:8]}")

    async def stop(self) -> None:
        self._stopping.set()
        for task in (self._task, self._outbox_task, self._late_task, *self._round_tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.ai_gateway is not None:
            await self.ai_gateway.stop()
        await self.server.stop()
        await self.http.aclose()
        if self._nodes_http is not None:
            await self._nodes_http.close()
        self.store.close()

    @property
    def url(self) -> str:
        """The base URL it serves on (the bound port when it was started with port 0)."""
        return self.server.url

    def _node_session(self) -> NodeHttpClient:
        if self._nodes_http is None:
            self._nodes_http = open_node_session(
                self.concurrency, self.preset.challenge_timeout_ms / 1000 + 5)
        return self._nodes_http

    # -- rounds -----------------------------------------------------------------------------------
    async def _round_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                head = await asyncio.to_thread(self.gateway.block_number)
                if head >= self.gateway.genesis_block:
                    self._start_rounds(head)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault in one pass must not stop the mixer
                log.warning("mixer %s: round loop failed: %s", self.address[:10], exc,
                            exc_info=True)
            await asyncio.sleep(self.poll_s)

    def _start_rounds(self, head: int) -> None:
        """Start the round ``head`` is in if it is new, in a task of its own; queue the rounds
        not seen begin since the previous pass (at the first pass: the rounds begun and not
        finished before a restart, and those after the newest begun) to challenge late."""
        now = compute_round(head, self.preset, self.gateway.genesis_block)
        if self._newest is not None and now <= self._newest:
            return
        if self._newest is None:
            newest = self.store.newest_round()
            missed = [RoundId(*rid) for rid in self.store.unfinished_rounds()]
            if newest is not None:
                missed += compute_rounds_after(RoundId(*newest), now, self.preset)
        else:
            missed = compute_rounds_after(self._newest, now, self.preset)
        self._newest = now
        oldest = compute_oldest_open_round(head, self.preset, self.gateway.genesis_block)
        closed = sorted(rid for rid in missed if rid < oldest)
        if closed:
            log.warning("mixer %s: %d round(s) from epoch %d round %d to epoch %d round %d were "
                        "never challenged and their epochs are closed for new reports",
                        self.address[:10], len(closed), closed[0].epoch, closed[0].round,
                        closed[-1].epoch, closed[-1].round)
        queued = set(self._late)
        self._late += sorted({rid for rid in missed if oldest <= rid < now and rid not in queued})
        if not self.store.round_done(now.epoch, now.round):
            self._spawn_round(now)
        if self._late and (self._late_task is None or self._late_task.done()):
            self._late_task = asyncio.create_task(self._challenge_late(),
                                                  name=f"mixer-late-{self.address[:8]}")

    def _spawn_round(self, rid: RoundId) -> None:
        task = asyncio.create_task(self._run_round(rid),
                                   name=f"mixer-{self.address[:8]}-{rid.epoch}-{rid.round}")
        self._round_tasks.add(task)
        task.add_done_callback(self._round_tasks.discard)

    async def _run_round(self, rid: RoundId) -> None:
        try:
            await self.process_round(rid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault in one round must not stop the mixer
            log.warning("mixer %s: epoch %d round %d failed: %s", self.address[:10], rid.epoch,
                        rid.round, exc, exc_info=True)

    async def _challenge_late(self) -> None:
        """Challenge the queued rounds one at a time, oldest first; give up those whose epoch
        no longer takes reports."""
        while self._late:
            rid = self._late.pop(0)
            if rid in self._running or self.store.round_done(rid.epoch, rid.round):
                continue
            head = await asyncio.to_thread(self.gateway.block_number)
            if self.epoch_closed(rid.epoch, head):
                log.warning("mixer %s: epoch %d round %d was never challenged: its epoch is "
                            "closed for new reports (head %d)", self.address[:10], rid.epoch,
                            rid.round, head)
                continue
            log.warning("mixer %s: challenging epoch %d round %d late (head %d)",
                        self.address[:10], rid.epoch, rid.round, head)
            await self._run_round(rid)

    async def process_round(self, rid: RoundId) -> None:
        """Challenge this round's assigned nodes, then certify the batch."""
        view = await asyncio.to_thread(self.views.view, rid.epoch, rounds=[rid.round])
        if self.address not in view.mixers:
            self.store.begin_round(rid.epoch, rid.round, b"", b"", [])
            self.store.finish_round(rid.epoch, rid.round)
            log.info("mixer %s: epoch %d round %d: not in the epoch's mixer set",
                     self.address[:10], rid.epoch, rid.round)
            return
        seed = view.round_seeds[rid.round]
        proof = vrf.prove(self.vrf_secret, compute_vrf_alpha(
            self.domain.chain_id, rid.epoch, rid.round, seed))
        beta = vrf.proof_to_hash(proof)
        records = {n.address: n for n in await asyncio.to_thread(self.gateway.nodes)}
        active = sorted(a for a, n in records.items() if n.active)
        assigned = compute_assigned_nodes(beta, active, view.assignment_target)
        self.store.begin_round(rid.epoch, rid.round, proof, beta, assigned)
        log.info("mixer %s: epoch %d round %d: VRF output %s.., %d of %d active nodes "
                 "assigned%s", self.address[:10], rid.epoch, rid.round, beta.hex()[:16],
                 len(assigned), len(active), _named(assigned))
        self._running.add(rid)
        try:
            await self._challenge_and_certify(rid, proof, beta, assigned, records)
        finally:
            self._running.discard(rid)
            self._outbox_wake.set()
        self.store.finish_round(rid.epoch, rid.round)

    async def _challenge_and_certify(self, rid: RoundId, proof: bytes, beta: bytes,
                                     assigned: Sequence[str], records: dict[str, NodeRecord]
                                     ) -> None:
        done = {r.node for r in self.store.own_reports(rid.epoch, rid.round)}
        limit = asyncio.Semaphore(self.concurrency)

        async def challenge(node: str) -> ScoreReport:
            await asyncio.sleep(self.spread_s * compute_challenge_offset(beta, node))
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
        # Every report of the round that no batch holds yet (after a restart within the round,
        # a batch saved before it is the outbox's); no await between the read and the save.
        await self.certify(self.store.unbatched_reports(rid.epoch, rid.round))

    async def certify(self, reports: Sequence[ScoreReport]) -> QuorumCertificate | None:
        """Sign a batch of our reports (one round's), gather co-signatures, forward the
        certificate. What stays uncertified or unforwarded is the outbox's."""
        proposal = self._propose(reports)
        return None if proposal is None else await self._complete(proposal)

    def _propose(self, reports: Sequence[ScoreReport], *, replaces: bytes | None = None,
                 why: str = "") -> BatchProposal | None:
        """Sign a batch of ``reports`` and save it: from then on they are that batch's (with
        ``replaces``, the batch it re-forms is given up in the same transaction)."""
        if not reports:
            return None
        ordered = sorted(reports, key=lambda r: r.key)
        first = ordered[0]
        batch = compute_batch(first.epoch, first.round, self.address, ordered)
        proposal = BatchProposal(
            batch=batch, reports=tuple(ordered),
            signature=self.identity.sign_typed(self.domain, batch.hash_struct()))
        self.store.save_proposal(proposal, replaces=replaces, why=why)
        return proposal

    async def _complete(self, proposal: BatchProposal) -> QuorumCertificate | None:
        """Gather a quorum for a saved proposal and forward its certificate. If co-signers
        refused some reports, re-form the batch without them (giving the refused one up) and
        try it once; what is left uncertified, the outbox proposes again later."""
        for _attempt in range(2):
            batch_hash = proposal.batch.hash_struct()
            self._in_flight.add(batch_hash)
            try:
                certificate, refused = await self._gather(proposal)
                if certificate is not None:
                    await self._forward(certificate)
                    return certificate
            finally:
                self._in_flight.discard(batch_hash)
            if not refused:
                return None
            batch = proposal.batch
            why = f"re-formed without reports {sorted(refused)}, which co-signers refused"
            kept = [r for i, r in enumerate(proposal.reports) if i not in refused]
            log.warning("mixer %s: batch %s (epoch %d round %d): %s", self.address[:10],
                        batch_hash.hex()[:10], batch.epoch, batch.round,
                        why if kept else "co-signers refused every report; giving it up")
            reformed = self._propose(kept, replaces=batch_hash, why=why)
            if reformed is None:
                self.store.give_up(batch_hash, "co-signers refused every report")
                return None
            proposal = reformed
        return None

    async def _gather(self, proposal: BatchProposal, *, backup: bool = False
                      ) -> tuple[QuorumCertificate | None, set[int]]:
        """Ask the epoch's other mixers to co-sign ``proposal``: our own batch, or with
        ``backup`` a peer's batch we co-signed and now forward in its originator's stead (the
        originator's signature and ours to start with; the originator is not asked)."""
        members = await asyncio.to_thread(self.gateway.mixer_set, proposal.batch.epoch)
        threshold = compute_quorum_threshold(len(members))
        batch_hash = proposal.batch.hash_struct()
        signatures = {proposal.batch.mixer: proposal.signature}
        if backup:
            signatures[self.address] = self.identity.sign_typed(self.domain, batch_hash)
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
                            if 0 <= int(index) < len(proposal.reports):
                                refused.add(int(index))

        await asyncio.gather(*(ask(m.endpoint, m.address) for m in members
                               if m.address not in signatures))
        if len(signatures) < threshold:
            log.warning("mixer %s: %d of %d signatures for batch %s (round %d): no quorum",
                        self.address[:10], len(signatures), threshold, batch_hash.hex()[:10],
                        proposal.batch.round)
            return None, refused
        # Exactly the threshold: the originator's first, then the co-signers' in the order
        # they answered. Each extra signature would only cost every verifier (the Validator,
        # each mixer before it signs a settlement, each audit) one more recovery.
        certificate = QuorumCertificate(batch=proposal.batch, reports=proposal.reports,
                                        signatures=tuple(signatures.values())[:threshold])
        if not backup:
            self.store.save_certificate(certificate)
            self.m_certified.inc()
        return certificate, refused

    async def _forward(self, certificate: QuorumCertificate) -> bool:
        """Send a certificate to the Validator; True once it acknowledged it. The outbox
        (our own batches) or the watch (a peer's) learns what became of it."""
        batch = certificate.batch
        batch_hash = batch.hash_struct()
        own = batch.mixer == self.address
        try:
            response = await self.http.post(
                f"{self.validator_url}/v1/certificates", content=certificate.to_json(),
                headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            log.info("mixer %s: validator unreachable for certificate %s (epoch %d round %d): "
                     "%r; %s", self.address[:10], batch_hash.hex()[:10], batch.epoch,
                     batch.round, exc, "the outbox re-sends it" if own else "trying later")
            return False
        if response.status_code == 200:
            if own:
                self.store.mark_forwarded(batch_hash)
            else:
                self.store.end_watch(batch_hash, "forwarded it for its originator")
            return True
        status, text = response.status_code, response.text[:300]
        if 400 <= status < 500 and status not in RETRY_STATUSES:
            # It won't change its mind (409: the epoch is closed; 422: invalid).
            log.warning("mixer %s: validator refused certificate %s (epoch %d round %d): HTTP %d "
                        "%s; not re-sending it", self.address[:10], batch_hash.hex()[:10],
                        batch.epoch, batch.round, status, text)
            why = f"validator answered HTTP {status}: {text}"
            if own:
                self.store.mark_forwarded(batch_hash, why)
            else:
                self.store.end_watch(batch_hash, why)
            return False
        log.warning("mixer %s: validator answered HTTP %d %s for certificate %s (epoch %d round "
                    "%d); %s", self.address[:10], status, text, batch_hash.hex()[:10],
                    batch.epoch, batch.round, "the outbox re-sends it" if own else "trying later")
        return False

    # -- the outbox -------------------------------------------------------------------------------
    def epoch_closed(self, epoch: int, head: int) -> bool:
        """Whether co-signers refuse batches of ``epoch`` at block ``head``."""
        return head >= compute_settlement_block(epoch, self.preset, self.gateway.genesis_block)

    async def _outbox_loop(self) -> None:
        """Outbox passes: at once, after each round, and while something is pending after a
        wait that doubles from ``retry_s[0]`` up to ``retry_s[1]`` (back to the first once a
        pass gets something through)."""
        first, longest = self.retry_s
        delay = first
        previous = -1
        while not self._stopping.is_set():
            self._outbox_wake.clear()
            try:
                pending = await self.outbox_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault in one pass must not stop the outbox
                log.warning("mixer %s: outbox pass failed: %s", self.address[:10], exc,
                            exc_info=True)
                pending = previous if previous > 0 else 1
            if pending == 0:
                delay, wait = first, longest
            else:
                if 0 <= pending < previous:
                    delay = first
                wait, delay = delay, min(longest, delay * 2)
            previous = pending
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_wake.wait(), wait)

    async def outbox_pass(self) -> int:
        """Certify own reports of past rounds that no batch holds, propose uncertified batches
        again, re-send unacknowledged certificates (at most ``OUTBOX_CONCURRENCY`` at once),
        and give up what can no longer be certified or settled. Returns how many batches and
        certificates still wait."""
        head = await asyncio.to_thread(self.gateway.block_number)
        if head < self.gateway.genesis_block:
            return 0
        genesis = self.gateway.genesis_block
        self._batch_stray_reports(head, compute_round(head, self.preset, genesis))
        # Parsed off the event loop (a batch may hold thousands of reports); a batch that
        # changed state meanwhile is skipped below (``pending``).
        uncertified = await asyncio.to_thread(self.store.uncertified)
        unforwarded = await asyncio.to_thread(self.store.unforwarded)
        proposals = []
        for proposal in uncertified:
            batch = proposal.batch
            if batch.hash_struct() in self._in_flight:
                continue
            if not self.epoch_closed(batch.epoch, head):
                proposals.append(proposal)
                continue
            why = (f"epoch {batch.epoch} closed for new reports at block "
                   f"{compute_settlement_block(batch.epoch, self.preset, genesis)} (head "
                   f"{head}): co-signers refuse its batches")
            log.warning("mixer %s: giving up batch %s (epoch %d round %d, %d reports) without "
                        "a quorum: %s", self.address[:10], batch.hash_struct().hex()[:10],
                        batch.epoch, batch.round, len(proposal.reports), why)
            self.store.give_up(batch.hash_struct(), why)
        certificates = await self._drop_settled(unforwarded) if unforwarded else []
        limit = asyncio.Semaphore(OUTBOX_CONCURRENCY)

        def pending(batch_hash: bytes, state: str) -> bool:
            return batch_hash not in self._in_flight and \
                self.store.batch_state(batch_hash) == state

        async def propose(proposal: BatchProposal) -> None:
            async with limit:
                if pending(proposal.batch.hash_struct(), "uncertified"):
                    await self._complete(proposal)

        async def send(certificate: QuorumCertificate) -> None:
            batch_hash = certificate.batch.hash_struct()
            async with limit:
                if not pending(batch_hash, "unforwarded"):
                    return
                self._in_flight.add(batch_hash)
                try:
                    await self._forward(certificate)
                finally:
                    self._in_flight.discard(batch_hash)

        await asyncio.gather(*(propose(p) for p in proposals),
                             *(send(c) for c in certificates))
        due = await self.watch_pass(head)
        counts = self.store.outbox_counts()
        return counts["uncertified"] + counts["unforwarded"] + due

    async def watch_pass(self, head: int) -> int:
        """Look at the peers' batches whose time to look has come: done if the Validator holds
        one; else, once our turn has come, forward it ourselves (see the module docstring);
        given up once its epoch is closed. Returns how many were due but are still not at the
        Validator (looked at again at our turn, or after another ``backup_s``)."""
        due = await asyncio.to_thread(self.store.due_watches, time.time(), WATCH_BATCH)
        limit = asyncio.Semaphore(OUTBOX_CONCURRENCY)
        left = 0

        async def look(proposal: BatchProposal, turn: float) -> None:
            nonlocal left
            batch = proposal.batch
            batch_hash = batch.hash_struct()
            if self.epoch_closed(batch.epoch, head):
                why = f"epoch {batch.epoch} closed before the validator was seen to hold it"
                log.info("mixer %s: stopped watching batch %s of mixer %s (epoch %d round %d): "
                         "%s", self.address[:10], batch_hash.hex()[:10], batch.mixer[:10],
                         batch.epoch, batch.round, why)
                self.store.end_watch(batch_hash, why)
                return
            async with limit:
                held = await self.validator_holds(batch_hash)
                if held:
                    self.store.end_watch(batch_hash, "the validator holds it")
                    return
                if held is not None and time.time() < turn:  # not yet: an earlier backup's
                    left += 1
                    self.store.postpone_watch(batch_hash, turn)
                    return
                if held is not None:  # our turn: forward it in the originator's stead
                    log.warning("mixer %s: the validator lacks batch %s of mixer %s (epoch %d "
                                "round %d, %d reports) that this mixer co-signed: forwarding "
                                "it for its originator", self.address[:10],
                                batch_hash.hex()[:10], batch.mixer[:10], batch.epoch,
                                batch.round, len(proposal.reports))
                    certificate, _ = await self._gather(proposal, backup=True)
                    if certificate is not None and await self._forward(certificate):
                        self.m_backup.inc()
                        return
            if self.store.watch_outcome(batch_hash) is None:
                left += 1
                self.store.postpone_watch(batch_hash, time.time() + self.backup_s)

        await asyncio.gather(*(look(p, turn) for p, turn in due))
        current = compute_epoch(head, self.preset, self.gateway.genesis_block)
        closed = next((e for e in (current - 1, current - 2)
                       if e >= 0 and self.epoch_closed(e, head)), None)
        if closed is not None:
            await asyncio.to_thread(self.store.prune_watches, closed)
        return left

    async def validator_holds(self, batch_hash: bytes) -> bool | None:
        """Whether the Validator stores the batch; None when it cannot tell now."""
        try:
            response = await self.http.get(
                f"{self.validator_url}/v1/batches/0x{batch_hash.hex()}")
        except httpx.HTTPError as exc:
            log.info("mixer %s: validator unreachable to look for batch %s: %r",
                     self.address[:10], batch_hash.hex()[:10], exc)
            return None
        if response.status_code in (200, 404):
            return response.status_code == 200
        log.info("mixer %s: validator answered HTTP %d looking for batch %s",
                 self.address[:10], response.status_code, batch_hash.hex()[:10])
        return None

    def _batch_stray_reports(self, head: int, now: RoundId) -> None:
        """Batch own reports of past rounds that no batch holds (the mixer stopped between
        saving them and signing their batch); drop those whose epoch closed meanwhile. The
        new batches are proposed with the other uncertified ones."""
        for epoch, round_, count in self.store.unbatched_rounds():
            rid = RoundId(epoch, round_)
            if rid >= now or rid in self._running:
                continue  # the round loop's
            if self.epoch_closed(epoch, head):
                dropped = self.store.drop_unbatched(epoch, round_)
                log.warning("mixer %s: %d reports of epoch %d round %d are in no batch and the "
                            "epoch is closed for new reports (head %d): dropping them",
                            self.address[:10], dropped, epoch, round_, head)
                continue
            log.info("mixer %s: batching %d reports of epoch %d round %d that no batch holds",
                     self.address[:10], count, epoch, round_)
            # No await between the read and the save: the round loop cannot take them too.
            self._propose(self.store.unbatched_reports(epoch, round_))

    async def _drop_settled(self, certificates: list[QuorumCertificate]
                            ) -> list[QuorumCertificate]:
        """``certificates`` less those of epochs the chain has settled (given up: no Validator
        takes them any more)."""
        try:
            chain_next = await asyncio.to_thread(self.gateway.next_epoch_to_settle)
        except DnanetError as exc:
            log.info("mixer %s: cannot read the next epoch to settle (%s); re-sending anyway",
                     self.address[:10], exc)
            return certificates
        out = []
        for certificate in certificates:
            batch = certificate.batch
            if batch.hash_struct() in self._in_flight:
                continue
            if batch.epoch >= chain_next:
                out.append(certificate)
                continue
            why = f"epoch {batch.epoch} is settled on chain"
            log.warning("mixer %s: giving up certificate %s (epoch %d round %d) the Validator "
                        "never acknowledged: %s", self.address[:10],
                        batch.hash_struct().hex()[:10], batch.epoch, batch.round, why)
            self.store.mark_forwarded(batch.hash_struct(), why)
        return out

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
        if self.epoch_closed(batch.epoch, head):
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
        batch_hash = batch.hash_struct()
        rank = compute_backup_rank(batch_hash, list(view.mixers), batch.mixer, self.address)
        now = time.time()
        conflicts = self.store.record_cosigned(
            proposal, watch=(now + self.backup_s, now + self.backup_s * (1 + rank)))
        if conflicts:
            raise BatchRejected([(i, "a different report for this (epoch, round, mixer, node) "
                                  "was already co-signed") for i in conflicts])
        return CoSignature(signer=self.address,
                           signature=self.identity.sign_typed(self.domain, batch_hash))

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
            # Every refusal is logged once with its reason (one line per refused batch).
            try:
                proposal = BatchProposal.from_wire(parse_json(await read_body(request)))
            except DnanetError as exc:
                self.m_cosign.labels("refused").inc()
                log.info("mixer %s: refused a malformed batch from %s: %s", self.address[:10],
                         request.client.host if request.client else "?", exc)
                raise
            batch = proposal.batch
            try:
                cosig = await asyncio.to_thread(self.cosign, proposal)
            except DnanetError as exc:
                self.m_cosign.labels("refused").inc()
                reason = (str(exc) if isinstance(exc, BatchRejected)
                          else f"{type(exc).__name__}: {exc}")
                log.info("mixer %s: refused batch %s from %s (epoch %d round %d, %d reports): "
                         "%s", self.address[:10], batch.hash_struct().hex()[:10],
                         batch.mixer[:10], batch.epoch, batch.round, len(proposal.reports),
                         reason)
                if not isinstance(exc, BatchRejected):
                    raise
                body = error_body(exc)
                body["error"]["reasons"] = [[i, why] for i, why in exc.reasons]
                return JSONResponse(body, status_code=422)
            self.m_cosign.labels("signed").inc()
            return Response(cosig.to_json(), media_type="application/json")

        @app.post("/v1/settlements", tags=["mixer"],
                  openapi_extra=message_schema(SettlementRequest))
        async def settlements(request: Request) -> Response:
            req = SettlementRequest.from_wire(parse_json(await read_body(request)))
            signed = await self.sign_settlement(req)
            return Response(signed.to_json(), media_type="application/json")

        @app.get("/v1/status", tags=["mixer"])
        async def status(
                rounds: int = Query(STATUS_ROUNDS, ge=1, le=STATUS_ROUNDS,
                                    description="how many of the newest rounds to list"),
                assigned: bool = Query(True, description="list each round's assigned nodes "
                                       "(about nodes / mixers addresses per round)"),
        ) -> Any:
            listed = []
            for e, r, beta, nodes, count, done in self.store.recent_rounds(rounds):
                entry: dict[str, Any] = {"epoch": e, "round": r,
                                         "beta": None if beta is None else "0x" + beta.hex()}
                if assigned:
                    entry["assigned"] = nodes
                entry.update(assigned_count=count, done=done)
                listed.append(entry)
            outbox = dict(self.store.outbox_counts(), watching=self.store.watching())
            return {"address": self.address, "outbox": outbox, "rounds": listed}

        return app


def _named(nodes: Sequence[str]) -> str:
    """``: 0xab12cd34.., ..`` naming the first ``LOGGED_NODES`` nodes, and how many more."""
    if not nodes:
        return ""
    shown = ", ".join(f"{n[:10]}.." for n in nodes[:LOGGED_NODES])
    more = len(nodes) - LOGGED_NODES
    return f": {shown}" + (f" and {more} more" if more > 0 else "")


__all__ = ["MixerDaemon"]
