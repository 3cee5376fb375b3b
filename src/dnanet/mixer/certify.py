"""Certification: sign a batch of the mixer's own reports, gather co-signatures, forward the
certificate to the Validator.

A batch is signed and saved before anyone is asked (from then on its reports are that
batch's). Co-signers that refuse some reports say which; the batch is re-formed without them
once (the refused one given up in the same transaction) and asked again. What stays
uncertified or unforwarded is the outbox's (``dnanet.mixer.outbox``), which calls the same
``complete`` and ``forward``.

A co-signer that forwards a peer's batch in its originator's stead (``gather(...,
backup=True)``) starts from the originator's signature and its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import DnanetError, PeerUnreachable
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.peers import Peers
from dnanet.mixer.store import MixerStore
from dnanet.protocol.codec import parse_json
from dnanet.protocol.messages import BatchProposal, CoSignature, QuorumCertificate, ScoreReport
from dnanet.protocol.quorum import compute_batch, compute_quorum_threshold
from dnanet.service.network import ChainGateway

log = logging.getLogger("dnanet.mixer.certify")

RETRY_STATUSES = frozenset({408, 429})
"""4xx answers of the Validator that are worth a retry (the others are final)."""


class Certifier:
    """Proposes the mixer's batches, gathers quorums, forwards certificates."""

    def __init__(self, identity: Identity, gateway: ChainGateway, store: MixerStore,
                 peers: Peers, metrics: MixerMetrics) -> None:
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.domain = gateway.domain
        self.store = store
        self.peers = peers
        self.metrics = metrics
        self.in_flight: set[bytes] = set()
        """Hashes of the batches being certified or forwarded right now (the outbox skips
        them)."""

    async def certify(self, reports: Sequence[ScoreReport]) -> QuorumCertificate | None:
        """Sign a batch of our reports (one round's), gather co-signatures, forward the
        certificate. What stays uncertified or unforwarded is the outbox's."""
        proposal = await asyncio.to_thread(self.propose, reports)
        return None if proposal is None else await self.complete(proposal)

    def propose(self, reports: Sequence[ScoreReport], *, replaces: bytes | None = None,
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
        if not self.store.save_proposal(proposal, replaces=replaces, why=why):
            log.info("mixer %s: reports of epoch %d round %d were batched by another task",
                     self.address[:10], batch.epoch, batch.round)
            return None
        return proposal

    async def complete(self, proposal: BatchProposal) -> QuorumCertificate | None:
        """Gather a quorum for a saved proposal and forward its certificate. If co-signers
        refused some reports, re-form the batch without them and try once more."""
        for _attempt in range(2):
            batch_hash = proposal.batch.hash_struct()
            self.in_flight.add(batch_hash)
            try:
                certificate, refused = await self.gather(proposal)
                if certificate is not None:
                    await self.forward(certificate)
                    return certificate
            finally:
                self.in_flight.discard(batch_hash)
            if not refused:
                return None
            batch = proposal.batch
            why = f"re-formed without reports {sorted(refused)}, which co-signers refused"
            kept = [r for i, r in enumerate(proposal.reports) if i not in refused]
            log.warning("mixer %s: batch %s (epoch %d round %d): %s", self.address[:10],
                        batch_hash.hex()[:10], batch.epoch, batch.round,
                        why if kept else "co-signers refused every report; giving it up")
            reformed = await asyncio.to_thread(self.propose, kept, replaces=batch_hash, why=why)
            if reformed is None:
                await asyncio.to_thread(self.store.give_up, batch_hash,
                                        "co-signers refused every report")
                return None
            proposal = reformed
        return None

    async def gather(self, proposal: BatchProposal, *, backup: bool = False
                     ) -> tuple[QuorumCertificate | None, set[int]]:
        """Ask the epoch's other mixers to co-sign ``proposal``: our own batch, or with
        ``backup`` a peer's batch we co-signed and now forward in its originator's stead."""
        members = await asyncio.to_thread(self.gateway.mixer_set, proposal.batch.epoch)
        threshold = compute_quorum_threshold(len(members))
        batch_hash = proposal.batch.hash_struct()
        signatures = {proposal.batch.mixer: proposal.signature}
        if backup:
            signatures[self.address] = self.identity.sign_typed(self.domain, batch_hash)
        refused: set[int] = set()

        async def ask(endpoint: str, member: str) -> None:
            started = asyncio.get_running_loop().time()
            try:
                answer = await self.peers.propose(endpoint, proposal)
            except PeerUnreachable as exc:
                log.warning("co-signer %s unreachable: %s", member[:10], exc)
                return
            finally:
                self.metrics.cosign_round_trip.observe(
                    asyncio.get_running_loop().time() - started)
            if answer.status == 200:
                try:
                    cosig = CoSignature.from_json(answer.body)
                    signer = recover_typed(self.domain, batch_hash, cosig.signature)
                except DnanetError as exc:
                    log.warning("co-signer %s sent a bad signature: %s", member[:10], exc)
                    return
                if signer == member:
                    signatures[member] = cosig.signature
                return
            log.warning("co-signer %s refused batch %s (round %d): HTTP %d %s", member[:10],
                        batch_hash.hex()[:10], proposal.batch.round, answer.status,
                        answer.text[:300])
            if answer.status == 422:
                with contextlib.suppress(Exception):
                    for index, _why in parse_json(answer.body)["error"].get("reasons", []):
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
            await asyncio.to_thread(self.store.save_certificate, certificate)
            self.metrics.certified.inc()
        return certificate, refused

    async def forward(self, certificate: QuorumCertificate) -> bool:
        """Send a certificate to the Validator; True once it acknowledged it. The outbox
        (our own batches) or the watch (a peer's) learns what became of it."""
        batch = certificate.batch
        batch_hash = batch.hash_struct()
        own = batch.mixer == self.address
        try:
            answer = await self.peers.forward(certificate)
        except PeerUnreachable as exc:
            log.info("mixer %s: validator unreachable for certificate %s (epoch %d round %d): "
                     "%s; %s", self.address[:10], batch_hash.hex()[:10], batch.epoch,
                     batch.round, exc, "the outbox re-sends it" if own else "trying later")
            return False
        if answer.status == 200:
            if own:
                await asyncio.to_thread(self.store.mark_forwarded, batch_hash)
            else:
                await asyncio.to_thread(self.store.end_watch, batch_hash,
                                        "forwarded it for its originator")
            return True
        status, text = answer.status, answer.text[:300]
        if 400 <= status < 500 and status not in RETRY_STATUSES:
            # It won't change its mind (409: the epoch is closed; 422: invalid).
            log.warning("mixer %s: validator refused certificate %s (epoch %d round %d): HTTP %d "
                        "%s; not re-sending it", self.address[:10], batch_hash.hex()[:10],
                        batch.epoch, batch.round, status, text)
            why = f"validator answered HTTP {status}: {text}"
            if own:
                await asyncio.to_thread(self.store.mark_forwarded, batch_hash, why)
            else:
                await asyncio.to_thread(self.store.end_watch, batch_hash, why)
            return False
        log.warning("mixer %s: validator answered HTTP %d %s for certificate %s (epoch %d round "
                    "%d); %s", self.address[:10], status, text, batch_hash.hex()[:10],
                    batch.epoch, batch.round, "the outbox re-sends it" if own else "trying later")
        return False


__all__ = ["RETRY_STATUSES", "Certifier"]
