"""A Byzantine mixer with several faulty parts at once, for the adversarial devnet.

``dnanet.mixer.byzantine`` makes one part of a mixer faulty per daemon. The devnet's scenario
runs one mixer of four (``f = 1`` of ``3f + 1``) with all five behaviours together, so that
one run exercises each of them where the quorum has no slack (the three honest mixers are
exactly the threshold). They live in different parts and do not interfere:

- the rounds (``ByzantineRounds``): ``fabricate`` makes up reports for its assigned nodes
  other than its friends (OK and failure, alternately, as ``FabricatingRounds`` does);
  ``inflate`` challenges its friends honestly and reports their figures ``factor`` times
  better; ``equivocate`` proposes, after each round's batch is certified, another report for
  a key of that certificate;
- the co-signer refuses every peer's batch (``refuse-cosign``);
- the settlement signer never answers (``withhold-settlement``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from dnanet.errors import ProtocolError
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.byzantine import (
    Behaviour,
    RefusingCoSigner,
    WithholdingSettlements,
    compute_fabricated_reports,
    compute_inflated_report,
)
from dnanet.mixer.certify import Certifier
from dnanet.mixer.cosign import CoSigner
from dnanet.mixer.daemon import MixerDaemon
from dnanet.mixer.rounds import RoundScheduler
from dnanet.mixer.settlement import SettlementSigner
from dnanet.protocol.messages import (
    BatchProposal,
    Outcome,
    QuorumCertificate,
    ScoreReport,
    SettlementRequest,
    SettlementSignatures,
    compute_failed_report,
)
from dnanet.protocol.quorum import compute_batch
from dnanet.protocol.schedule import RoundId
from dnanet.service.network import NodeRecord

log = logging.getLogger("dnanet.adversary.mixers")

EQUIVOCATED = "equivocated"
"""The reason a ``ByzantineRounds`` puts in its second report of a key."""


def parse_behaviours(names: Iterable[str]) -> frozenset[Behaviour]:
    """``Behaviour`` values by name; ValueError naming an unknown one."""
    out = set()
    for name in names:
        try:
            out.add(Behaviour(name))
        except ValueError:
            raise ValueError(f"unknown behaviour {name!r}; choose from "
                             f"{', '.join(b.value for b in Behaviour)}") from None
    return frozenset(out)


def compute_equivocation(report: ScoreReport) -> ScoreReport:
    """Another valid report for ``report``'s (epoch, round, mixer, node): a failure."""
    base: dict[str, object] = dict(
        epoch=report.epoch, round=report.round, mixer=report.mixer, node=report.node,
        hardware_class=report.hardware_class, vrf_proof=report.vrf_proof,
        challenge_digest=report.challenge_digest)
    other = compute_failed_report(base, Outcome.UNREACHABLE, EQUIVOCATED)
    if other.hash_struct() == report.hash_struct():
        other = compute_failed_report(base, Outcome.TIMEOUT, EQUIVOCATED)
    return other


class RecordingCertifier(Certifier):
    """A ``Certifier`` that keeps the certificate each round's batch obtained."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.certified: dict[tuple[int, int], QuorumCertificate] = {}

    async def complete(self, proposal: BatchProposal) -> QuorumCertificate | None:
        certificate = await super().complete(proposal)
        if certificate is not None:
            self.certified[(certificate.batch.epoch, certificate.batch.round)] = certificate
        return certificate


class ByzantineRounds(RoundScheduler):
    """Rounds with ``fabricate``, ``inflate`` and ``equivocate`` (see the module docstring)."""

    def __init__(self, *args: Any, behaviours: frozenset[Behaviour], friends: frozenset[str],
                 factor: int, **options: Any) -> None:
        super().__init__(*args, **options)
        self.behaviours = behaviours
        self.friends = friends
        self.factor = factor
        self.equivocations = 0
        """Second reports proposed; ``equivocations_certified`` of them found a quorum."""
        self.equivocations_certified = 0
        if Behaviour.INFLATE in behaviours:
            honest = self.report_filter

            def inflate(reports: list[ScoreReport]) -> list[ScoreReport]:
                reports = honest(reports) if honest is not None else reports
                return [compute_inflated_report(r, self.preset, self.factor)
                        if r.node in self.friends else r for r in reports]

            self.report_filter = inflate

    async def _challenge_and_certify(self, rid: RoundId, proof: bytes, beta: bytes,
                                     assigned: Sequence[NodeRecord]) -> None:
        if Behaviour.FABRICATE in self.behaviours:
            victims = [r for r in assigned if r.address.lower() not in self.friends]
            made_up = compute_fabricated_reports(self.preset, self.address, rid, proof, beta,
                                                 victims)
            await asyncio.to_thread(self.store.save_reports, made_up)
            assigned = [r for r in assigned if r.address.lower() in self.friends]
        await super()._challenge_and_certify(rid, proof, beta, assigned)
        if Behaviour.EQUIVOCATE in self.behaviours:
            await self.equivocate(rid)

    async def equivocate(self, rid: RoundId) -> None:
        """Propose another report for the first key of the round's certificate."""
        certifier = self.certifier
        certificate = (certifier.certified.get((rid.epoch, rid.round))
                       if isinstance(certifier, RecordingCertifier) else None)
        if certificate is None:
            return
        other = compute_equivocation(certificate.reports[0])
        batch = compute_batch(rid.epoch, rid.round, self.address, [other])
        proposal = BatchProposal(batch=batch, reports=(other,),
                                 signature=self.identity.sign_typed(self.domain,
                                                                    batch.hash_struct()))
        self.equivocations += 1
        certified, _ = await certifier.gather(proposal)
        if certified is not None:
            self.equivocations_certified += 1
            log.error("mixer %s: an equivocated batch was certified (epoch %d round %d)",
                      self.address[:10], rid.epoch, rid.round)
            await certifier.forward(certified)


class Withholding(WithholdingSettlements):
    """Never answers a settlement request, until the mixer stops (then it refuses it: a
    request held open would hold the server's shutdown with it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released = asyncio.Event()

    async def sign(self, request: SettlementRequest) -> SettlementSignatures:
        await self.released.wait()
        raise ProtocolError("withheld (byzantine: withhold-settlement)")


class ByzantineMixer(MixerDaemon):
    """A ``MixerDaemon`` with every part of ``behaviours`` made faulty. ``friends``: the
    nodes ``inflate`` favours (and ``fabricate`` spares); ``factor``: by how much."""

    def __init__(self, *args: Any, behaviours: Iterable[Behaviour | str],
                 friends: Iterable[str] = (), factor: int = 20, **kwargs: Any) -> None:
        self.behaviours = parse_behaviours(str(b) for b in behaviours)
        self.friends = frozenset(f.lower() for f in friends)
        self.factor = factor
        super().__init__(*args, **kwargs)

    def _make_cosigner(self) -> CoSigner:
        if Behaviour.REFUSE_COSIGN in self.behaviours:
            return RefusingCoSigner(self.identity, self.gateway, self.views, self.store,
                                    self.clock, self.backup_s, self.book)
        return super()._make_cosigner()

    def _make_settlements(self) -> SettlementSigner:
        if Behaviour.WITHHOLD_SETTLEMENT in self.behaviours:
            return Withholding(self.identity, self.gateway, self.store, self.peers,
                               self.metrics, self.clock)
        return super()._make_settlements()

    async def stop(self) -> None:
        if isinstance(self.settlements, Withholding):
            self.settlements.released.set()
        await super().stop()

    def _make_rounds(self, **options: Any) -> RoundScheduler:
        # The rounds certify through a certifier that remembers each round's certificate
        # (what ``equivocate`` contradicts); the outbox, built after, shares it.
        self.certifier = RecordingCertifier(self.identity, self.gateway, self.store,
                                            self.peers, self.metrics)
        return ByzantineRounds(
            self.identity, derive_vrf_secret(self.identity), self.gateway, self.views.registry,
            self.store, self.sessions, self.certifier, self.metrics, self.clock,
            behaviours=self.behaviours, friends=self.friends, factor=self.factor, **options)


__all__ = ["EQUIVOCATED", "ByzantineMixer", "ByzantineRounds", "RecordingCertifier",
           "compute_equivocation", "parse_behaviours"]
