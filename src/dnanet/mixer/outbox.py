"""The outbox: what the mixer signed or co-signed that has not reached the Validator yet.

A task of its own works through it while the mixer runs (at start, after each round, and on
a timer that backs off while nothing gets through), never holding up a round:

- own reports of a past round that no batch holds (the mixer stopped between saving them and
  signing their batch) are batched and certified;
- a batch without a quorum is proposed again, until its epoch closes for new reports (then
  co-signers refuse it: the mixer gives it up and logs why);
- a certificate the Validator has not acknowledged is sent again, until it answers: 200
  (stored, or already stored), or another 4xx than 408/429 (it will not change its mind, e.g.
  409 for a closed epoch); or until the chain settled its epoch.

It also watches each peer's batch the mixer co-signed: ``backup_s`` after co-signing it asks
the Validator whether it holds the batch (then it forgets the batch). If not, once its turn
has come (``backup_s`` times one more than its ``compute_backup_rank`` among the co-signers)
it forwards the batch itself: it proposes the originator's signed batch to the other
co-signers again, and sends the Validator a certificate of the originator's signature, its
own and theirs. So a batch the originator co-signed into a quorum still reaches the Validator
if the originator never forwards it (it crashed for good, or withholds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from dnanet.errors import DnanetError
from dnanet.mixer.certify import Certifier
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.peers import Peers
from dnanet.mixer.store import MixerStore
from dnanet.protocol.messages import BatchProposal, QuorumCertificate
from dnanet.protocol.schedule import (
    RoundId,
    compute_epoch,
    compute_round,
    compute_settlement_block,
)
from dnanet.service.clock import Clock
from dnanet.service.network import ChainGateway

log = logging.getLogger("dnanet.mixer.outbox")

OUTBOX_CONCURRENCY = 4
"""Batches and certificates the outbox retries at once."""
WATCH_BATCH = 256
"""Watched batches looked at in one outbox pass (the rest wait for the next)."""


class Outbox:
    def __init__(self, certifier: Certifier, gateway: ChainGateway, store: MixerStore,
                 peers: Peers, metrics: MixerMetrics, clock: Clock, *,
                 retry_s: tuple[float, float], backup_s: float,
                 round_running: Callable[[RoundId], bool]) -> None:
        self.certifier = certifier
        self.address = certifier.address
        self.gateway = gateway
        self.preset = gateway.preset
        self.store = store
        self.peers = peers
        self.metrics = metrics
        self.clock = clock
        self.retry_s = retry_s
        self.backup_s = backup_s
        self.round_running = round_running
        self.wake = asyncio.Event()

    def epoch_closed(self, epoch: int, head: int) -> bool:
        """Whether co-signers refuse batches of ``epoch`` at block ``head``."""
        return head >= compute_settlement_block(epoch, self.preset, self.gateway.genesis_block)

    async def run(self, stopping: asyncio.Event) -> None:
        """Outbox passes: at once, after each round (``wake``), and while something is
        pending after a wait that doubles from ``retry_s[0]`` up to ``retry_s[1]`` (back to
        the first once a pass gets something through)."""
        first, longest = self.retry_s
        delay = first
        previous = -1
        while not stopping.is_set():
            self.wake.clear()
            try:
                pending = await self.run_pass()
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
                await asyncio.wait_for(self.wake.wait(), wait)

    async def run_pass(self) -> int:
        """Certify own reports of past rounds that no batch holds, propose uncertified batches
        again, re-send unacknowledged certificates (at most ``OUTBOX_CONCURRENCY`` at once),
        and give up what can no longer be certified or settled. Returns how many batches and
        certificates still wait."""
        head = await asyncio.to_thread(self.gateway.block_number)
        genesis = self.gateway.genesis_block
        if head < genesis:
            return 0
        await asyncio.to_thread(self._batch_stray_reports, head,
                                compute_round(head, self.preset, genesis))
        uncertified = await asyncio.to_thread(self.store.uncertified)
        unforwarded = await asyncio.to_thread(self.store.unforwarded)
        in_flight = self.certifier.in_flight
        proposals = []
        for proposal in uncertified:
            batch = proposal.batch
            if batch.hash_struct() in in_flight:
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
            await asyncio.to_thread(self.store.give_up, batch.hash_struct(), why)
        certificates = await self._drop_settled(unforwarded) if unforwarded else []
        limit = asyncio.Semaphore(OUTBOX_CONCURRENCY)

        def pending(batch_hash: bytes, state: str) -> bool:
            return batch_hash not in in_flight and self.store.batch_state(batch_hash) == state

        async def propose(proposal: BatchProposal) -> None:
            async with limit:
                if pending(proposal.batch.hash_struct(), "uncertified"):
                    await self.certifier.complete(proposal)

        async def send(certificate: QuorumCertificate) -> None:
            batch_hash = certificate.batch.hash_struct()
            async with limit:
                if not pending(batch_hash, "unforwarded"):
                    return
                in_flight.add(batch_hash)
                try:
                    await self.certifier.forward(certificate)
                finally:
                    in_flight.discard(batch_hash)

        await asyncio.gather(*(propose(p) for p in proposals),
                             *(send(c) for c in certificates))
        due = await self.watch_pass(head)
        counts = await asyncio.to_thread(self.store.outbox_counts)
        return counts["uncertified"] + counts["unforwarded"] + due

    def _batch_stray_reports(self, head: int, now: RoundId) -> None:
        """Batch own reports of past rounds that no batch holds (the mixer stopped between
        saving them and signing their batch); drop those whose epoch closed meanwhile. The
        new batches are proposed with the other uncertified ones. (A worker thread; the
        store's claim makes a race with the round's own batch harmless.)"""
        for epoch, round_, count in self.store.unbatched_rounds():
            rid = RoundId(epoch, round_)
            if rid >= now or self.round_running(rid):
                continue  # the round's own task batches them
            if self.epoch_closed(epoch, head):
                dropped = self.store.drop_unbatched(epoch, round_)
                log.warning("mixer %s: %d reports of epoch %d round %d are in no batch and the "
                            "epoch is closed for new reports (head %d): dropping them",
                            self.address[:10], dropped, epoch, round_, head)
                continue
            log.info("mixer %s: batching %d reports of epoch %d round %d that no batch holds",
                     self.address[:10], count, epoch, round_)
            self.certifier.propose(self.store.unbatched_reports(epoch, round_))

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
            if batch.hash_struct() in self.certifier.in_flight:
                continue
            if batch.epoch >= chain_next:
                out.append(certificate)
                continue
            why = f"epoch {batch.epoch} is settled on chain"
            log.warning("mixer %s: giving up certificate %s (epoch %d round %d) the Validator "
                        "never acknowledged: %s", self.address[:10],
                        batch.hash_struct().hex()[:10], batch.epoch, batch.round, why)
            await asyncio.to_thread(self.store.mark_forwarded, batch.hash_struct(), why)
        return out

    async def watch_pass(self, head: int) -> int:
        """Look at the peers' batches whose time to look has come: done if the Validator holds
        one; else, once our turn has come, forward it ourselves; given up once its epoch is
        closed. Returns how many were due but are still not at the Validator."""
        due = await asyncio.to_thread(self.store.due_watches, self.clock.now(), WATCH_BATCH)
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
                await asyncio.to_thread(self.store.end_watch, batch_hash, why)
                return
            async with limit:
                held = await self.peers.validator_holds(batch_hash)
                if held:
                    await asyncio.to_thread(self.store.end_watch, batch_hash,
                                            "the validator holds it")
                    return
                if held is not None and self.clock.now() < turn:  # an earlier backup's turn
                    left += 1
                    await asyncio.to_thread(self.store.postpone_watch, batch_hash, turn)
                    return
                if held is not None:  # our turn: forward it in the originator's stead
                    log.warning("mixer %s: the validator lacks batch %s of mixer %s (epoch %d "
                                "round %d, %d reports) that this mixer co-signed: forwarding "
                                "it for its originator", self.address[:10],
                                batch_hash.hex()[:10], batch.mixer[:10], batch.epoch,
                                batch.round, len(proposal.reports))
                    certificate, _ = await self.certifier.gather(proposal, backup=True)
                    if certificate is not None and await self.certifier.forward(certificate):
                        self.metrics.backup.inc()
                        return
            if await asyncio.to_thread(self.store.watch_outcome, batch_hash) is None:
                left += 1
                await asyncio.to_thread(self.store.postpone_watch, batch_hash,
                                        self.clock.now() + self.backup_s)

        await asyncio.gather(*(look(p, turn) for p, turn in due))
        current = compute_epoch(head, self.preset, self.gateway.genesis_block)
        closed = next((e for e in (current - 1, current - 2)
                       if e >= 0 and self.epoch_closed(e, head)), None)
        if closed is not None:
            await asyncio.to_thread(self.store.prune_watches, closed)
        return left


__all__ = ["OUTBOX_CONCURRENCY", "WATCH_BATCH", "Outbox"]
