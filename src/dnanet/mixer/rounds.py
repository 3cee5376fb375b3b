"""Rounds: each round, prove the VRF output, challenge the nodes it assigns, certify the batch.

Each round (a new round's first block is on chain) the mixer proves its VRF output for the
round, logs it with the nodes that output assigns it (among those registered and active at
the round's first block, the registry every verifier reads), challenges them and batches
the scored reports. Each assigned node's challenge starts at its own moment in the first half
of the round (``compute_challenge_offset``: from the round's VRF output, so no node can tell
when, or whether, it will be challenged, and the mixers' sessions do not all start at once).

Each round runs in a task of its own, so a round held up by a node that never answers does
not delay the next one. A round the mixer did not see begin (it was stopped, or too busy for
a whole round) is challenged late, one such round at a time, while its epoch still takes
reports; once the epoch is closed the round is given up, with a warning. Restarted, the mixer
skips rounds it finished, finishes the ones it was in and challenges late the ones it missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from dnanet.crypto import vrf
from dnanet.crypto.keys import Identity
from dnanet.mixer.certify import Certifier
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.sessions import SessionRunner
from dnanet.mixer.store import MixerStore
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_target,
    compute_challenge_offset,
    compute_oldest_open_round,
    compute_round,
    compute_rounds_after,
    compute_settlement_block,
    compute_vrf_alpha,
)
from dnanet.service.clock import Clock
from dnanet.service.network import ChainGateway, NodeRecord
from dnanet.service.views import RoundRegistry

log = logging.getLogger("dnanet.mixer.rounds")

LOGGED_NODES = 8
"""Assigned nodes named in a round's log line (the count is always there)."""

ReportFilter = Callable[[list[ScoreReport]], list[ScoreReport]]
"""Applied to a round's reports before they are saved (the gateway's canary verdicts)."""


class RoundScheduler:
    def __init__(self, identity: Identity, vrf_secret: bytes, gateway: ChainGateway,
                 registry: RoundRegistry, store: MixerStore, sessions: SessionRunner,
                 certifier: Certifier, metrics: MixerMetrics, clock: Clock, *,
                 poll_s: float, spread_s: float,
                 on_round_done: Callable[[], None] = lambda: None,
                 report_filter: ReportFilter | None = None,
                 on_reports: Callable[[list[ScoreReport]], None] = lambda reports: None,
                 ) -> None:
        self.identity = identity
        self.address = identity.address
        self.vrf_secret = vrf_secret
        self.gateway = gateway
        self.preset = gateway.preset
        self.domain = gateway.domain
        self.registry = registry
        self.store = store
        self.sessions = sessions
        self.certifier = certifier
        self.metrics = metrics
        self.clock = clock
        self.poll_s = poll_s
        self.spread_s = spread_s
        self.on_round_done = on_round_done
        self.report_filter = report_filter
        self.on_reports = on_reports
        """Called with each round's reports once saved (the co-signer's measurement book)."""
        self.running: set[RoundId] = set()
        """The rounds ``process_round`` is in (the outbox leaves their reports to them)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._newest: RoundId | None = None
        """The newest round the loop has started (None until its first pass)."""
        self._late: list[RoundId] = []
        """Rounds the mixer did not see begin, to challenge late, oldest first."""
        self._late_task: asyncio.Task[None] | None = None

    def is_running(self, rid: RoundId) -> bool:
        return rid in self.running

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                head = await asyncio.to_thread(self.gateway.block_number)
                if head >= self.gateway.genesis_block:
                    await self.start_rounds(head)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault in one pass must not stop the mixer
                log.warning("mixer %s: round loop failed: %s", self.address[:10], exc,
                            exc_info=True)
            await self.clock.sleep(self.poll_s)

    async def cancel(self) -> None:
        tasks = [t for t in (self._late_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def start_rounds(self, head: int) -> None:
        """Start the round ``head`` is in if it is new, in a task of its own; queue the rounds
        not seen begin since the previous pass (at the first pass: the rounds begun and not
        finished before a restart, and those after the newest begun) to challenge late."""
        now = compute_round(head, self.preset, self.gateway.genesis_block)
        if self._newest is not None and now <= self._newest:
            return
        if self._newest is None:
            newest = await asyncio.to_thread(self.store.newest_round)
            missed = [RoundId(*rid) for rid in await asyncio.to_thread(
                self.store.unfinished_rounds)]
            if newest is not None:
                missed += compute_rounds_after(RoundId(*newest), now, self.preset)
        else:
            missed = compute_rounds_after(self._newest, now, self.preset)
        self._newest = now
        oldest = compute_oldest_open_round(head, self.preset, self.gateway.genesis_block)
        closed = sorted(rid for rid in missed if rid < oldest)
        if closed:
            self.metrics.rounds_missed.inc(len(closed))
            log.warning("mixer %s: %d round(s) from epoch %d round %d to epoch %d round %d were "
                        "never challenged and their epochs are closed for new reports",
                        self.address[:10], len(closed), closed[0].epoch, closed[0].round,
                        closed[-1].epoch, closed[-1].round)
        queued = set(self._late)
        self._late += sorted({rid for rid in missed if oldest <= rid < now and rid not in queued})
        if not await asyncio.to_thread(self.store.round_done, now.epoch, now.round):
            self._spawn(now)
        if self._late and (self._late_task is None or self._late_task.done()):
            self._late_task = asyncio.create_task(self._challenge_late(),
                                                  name=f"mixer-late-{self.address[:8]}")

    def _spawn(self, rid: RoundId) -> None:
        task = asyncio.create_task(self._run_round(rid),
                                   name=f"mixer-{self.address[:8]}-{rid.epoch}-{rid.round}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            if rid in self.running or await asyncio.to_thread(self.store.round_done, rid.epoch,
                                                              rid.round):
                continue
            head = await asyncio.to_thread(self.gateway.block_number)
            if head >= compute_settlement_block(rid.epoch, self.preset,
                                                self.gateway.genesis_block):
                self.metrics.rounds_missed.inc()
                log.warning("mixer %s: epoch %d round %d was never challenged: its epoch is "
                            "closed for new reports (head %d)", self.address[:10], rid.epoch,
                            rid.round, head)
                continue
            self.metrics.rounds_late.inc()
            log.warning("mixer %s: challenging epoch %d round %d late (head %d)",
                        self.address[:10], rid.epoch, rid.round, head)
            await self._run_round(rid)

    async def process_round(self, rid: RoundId) -> None:
        """Challenge this round's assigned nodes, then certify the batch."""
        members = await asyncio.to_thread(self.gateway.mixer_set, rid.epoch)
        if self.address not in {m.address.lower() for m in members}:
            await asyncio.to_thread(self.store.begin_round, rid.epoch, rid.round, b"", b"", [])
            await asyncio.to_thread(self.store.finish_round, rid.epoch, rid.round)
            log.info("mixer %s: epoch %d round %d: not in the epoch's mixer set",
                     self.address[:10], rid.epoch, rid.round)
            return
        seed = await asyncio.to_thread(self.registry.seed, rid)
        records = {r.address.lower(): r for r in
                   await asyncio.to_thread(self.registry.records, rid)}
        proof = vrf.prove(self.vrf_secret, compute_vrf_alpha(
            self.domain.chain_id, rid.epoch, rid.round, seed))
        beta = vrf.proof_to_hash(proof)
        active = sorted(a for a, r in records.items() if r.active)
        target = compute_assignment_target(len(members), self.preset.challenges_per_round)
        assigned = compute_assigned_nodes(beta, active, target)
        await asyncio.to_thread(self.store.begin_round, rid.epoch, rid.round, proof, beta,
                                assigned)
        log.info("mixer %s: epoch %d round %d: %d of %d active nodes assigned%s",
                 self.address[:10], rid.epoch, rid.round, len(assigned), len(active),
                 _named(assigned))
        self.running.add(rid)
        try:
            await self._challenge_and_certify(rid, proof, beta,
                                              [records[a] for a in assigned])
        finally:
            self.running.discard(rid)
            self.on_round_done()
        await asyncio.to_thread(self.store.finish_round, rid.epoch, rid.round)

    async def _challenge_and_certify(self, rid: RoundId, proof: bytes, beta: bytes,
                                     assigned: Sequence[NodeRecord]) -> None:
        done = {r.node for r in await asyncio.to_thread(self.store.own_reports, rid.epoch,
                                                        rid.round)}

        async def challenge(record: NodeRecord) -> ScoreReport | None:
            await self.clock.sleep(self.spread_s * compute_challenge_offset(beta, record.address))
            report = await self.sessions.challenge(record, epoch=rid.epoch, round_=rid.round,
                                                   beta=beta, proof=proof)
            if report is None:
                self.metrics.session_faults.inc()
            return report

        results = await asyncio.gather(*(challenge(r) for r in assigned
                                         if r.address.lower() not in done))
        reports = [r for r in results if r is not None]
        if self.report_filter is not None:
            # A node that answered a canary wrongly fails this round's challenge, with why.
            reports = self.report_filter(reports)
        for report in reports:
            self.metrics.challenges.labels(Outcome(report.outcome).name.lower()).inc()
        await asyncio.to_thread(self.store.save_reports, reports)
        self.on_reports(reports)
        unbatched = await asyncio.to_thread(self.store.unbatched_reports, rid.epoch, rid.round)
        await self.certifier.certify(unbatched)
        # The VRF output is logged (and shown in /v1/status) only now that the round's
        # challenges are over: before, it would tell anyone each challenge's content.
        log.info("mixer %s: epoch %d round %d done: VRF output %s.., %d reports (%s)",
                 self.address[:10], rid.epoch, rid.round, beta.hex()[:16], len(reports),
                 _outcomes(reports))


def _named(nodes: Sequence[str]) -> str:
    """``: 0xab12cd34.., ..`` naming the first ``LOGGED_NODES`` nodes, and how many more."""
    if not nodes:
        return ""
    shown = ", ".join(f"{n[:10]}.." for n in nodes[:LOGGED_NODES])
    more = len(nodes) - LOGGED_NODES
    return f": {shown}" + (f" and {more} more" if more > 0 else "")


def _outcomes(reports: Sequence[ScoreReport]) -> str:
    counts: dict[str, int] = {}
    for report in reports:
        name = Outcome(report.outcome).name.lower()
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


__all__ = ["RoundScheduler"]
