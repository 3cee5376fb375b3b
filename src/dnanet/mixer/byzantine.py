"""Byzantine mixers, for the adversarial devnet: an honest mixer with one part made faulty.

Never used by ``dnanet mixer run``. Each behaviour is what a dishonest operator could run on
its own machine; the devnet runs up to ``f`` of them among ``3f + 1`` mixers to show that the
honest ones stop each:

=======================  ============================================================  =====
behaviour                what it does                                                  stopped by
=======================  ============================================================  =====
``inflate``              reports a friend node's figures ``factor`` times better (the  co-signers' plausibility check
                         node's signature stays valid: it covers digests, not times)
``fabricate``            reports its assigned nodes without challenging them: OK       the node's signature (OK);
                         reports with made-up digests, and failure reports             not detectable (failures)
``refuse-cosign``        refuses every peer's batch                                    the quorum (3 of 4 suffice)
``equivocate``           after its batch of a round is certified, proposes another     co-signers' memory of what
                         report for the same (epoch, round, mixer, node)               they signed
``withhold-settlement``  never answers the Validator's settlement requests             the quorum
=======================  ============================================================  =====

A fabricated *failure* (TIMEOUT, UNREACHABLE) carries no node signature and cannot be told
from a real one; its reach is bounded: a mixer reports only the nodes the VRF assigns it
(about 1/n of each node's challenges), and the strike rule sets aside the failures of the
``f`` challengers that reported the most of a node's, so up to ``f`` faulty mixers strike no
honest node (docs/protocol.md, "Threat model"; docs/scoring.md, "Corroborated failures").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from dnanet.errors import ProtocolError
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.cosign import CoSigner
from dnanet.mixer.daemon import MixerDaemon
from dnanet.mixer.rounds import RoundScheduler
from dnanet.mixer.settlement import SettlementSigner
from dnanet.params import Preset
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.messages import (
    BatchProposal,
    CoSignature,
    Outcome,
    ScoreReport,
    SettlementRequest,
    SettlementSignatures,
    compute_failed_report,
)
from dnanet.protocol.quorum import compute_batch
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.service.network import NodeRecord

log = logging.getLogger("dnanet.mixer.byzantine")


class Behaviour(StrEnum):
    INFLATE = "inflate"
    FABRICATE = "fabricate"
    REFUSE_COSIGN = "refuse-cosign"
    EQUIVOCATE = "equivocate"
    WITHHOLD_SETTLEMENT = "withhold-settlement"


def compute_inflated_report(report: ScoreReport, preset: Preset, factor: int) -> ScoreReport:
    """``report`` with every timed figure ``factor`` times better and the score recomputed
    from them: valid in every check a co-signer can make alone (bounds, score, signature)."""
    if report.outcome != Outcome.OK:
        return report
    times = {attr: max(1, getattr(report, attr) // factor)
             for attr in ("rtt_us", "compute_us", "download_us", "upload_us")}
    score = compute_challenge_score(preset.sizes_for_class(report.hardware_class),
                                    outcome=report.outcome, params=preset.scoring, **times)
    return ScoreReport.from_wire({**report.to_wire(), "rttUs": times["rtt_us"],
                                  "computeUs": times["compute_us"],
                                  "downloadUs": times["download_us"],
                                  "uploadUs": times["upload_us"], "score": score.total})


class InflatingRounds(RoundScheduler):
    """Challenges honestly, then inflates the friends' OK reports before batching them."""

    def __init__(self, *args: Any, friends: frozenset[str], factor: int, **options: Any):
        super().__init__(*args, **options)
        self.friends = friends
        self.factor = factor
        honest = self.report_filter

        def inflate(reports: list[ScoreReport]) -> list[ScoreReport]:
            reports = honest(reports) if honest is not None else reports
            return [compute_inflated_report(r, self.preset, self.factor)
                    if r.node in self.friends else r for r in reports]

        self.report_filter = inflate


def compute_fabricated_reports(preset: Preset, mixer: str, rid: Any, proof: bytes, beta: bytes,
                               assigned: Sequence[NodeRecord]) -> list[ScoreReport]:
    """Reports of ``assigned`` made up without challenging them: OK ones (digests never
    received, no node signature the mixer could produce) and failures, alternately."""
    reports = []
    for i, record in enumerate(assigned):
        challenge = compute_challenge(beta=beta, epoch=rid.epoch, round_=rid.round,
                                      mixer=mixer, node=record.address,
                                      hardware_class=record.hardware_class, preset=preset)
        base: dict[str, object] = dict(
            epoch=rid.epoch, round=rid.round, mixer=mixer,
            node=record.address.lower(), hardware_class=record.hardware_class,
            vrf_proof=proof, challenge_digest=challenge.hash_struct())
        failed = compute_failed_report(base, Outcome.TIMEOUT, "no answer (fabricated)")
        if i % 2:
            reports.append(failed)
            continue
        sizes = preset.sizes_for_class(record.hardware_class)
        score = compute_challenge_score(sizes, outcome=Outcome.OK, rtt_us=500,
                                        compute_us=10_000, download_us=5_000,
                                        upload_us=5_000, params=preset.scoring)
        reports.append(ScoreReport.from_wire({
            **failed.to_wire(), "outcome": int(Outcome.OK), "reason": "",
            "echoDigest": "0x" + "ab" * 32, "computeRoot": "0x" + "cd" * 32,
            "downloadDigest": "0x" + "ef" * 32, "uploadDigest": "0x" + "12" * 32,
            "responseSignature": "0x" + "34" * 65, "rttUs": 500, "computeUs": 10_000,
            "downloadUs": 5_000, "uploadUs": 5_000, "score": score.total}))
    return reports


class FabricatingRounds(RoundScheduler):
    """Never contacts its assigned nodes: makes up an OK report (digests it never got, no
    node signature it could produce) or a failure, alternately."""

    async def _challenge_and_certify(self, rid: Any, proof: bytes, beta: bytes,
                                     assigned: Sequence[NodeRecord]) -> None:
        reports = compute_fabricated_reports(self.preset, self.address, rid, proof, beta,
                                             assigned)
        await asyncio.to_thread(self.store.save_reports, reports)
        unbatched = await asyncio.to_thread(self.store.unbatched_reports, rid.epoch, rid.round)
        await self.certifier.certify(unbatched)


class EquivocatingRounds(RoundScheduler):
    """After each round's batch, proposes a second batch with another report for one of the
    same keys (a failure in place of the first report) to every co-signer."""

    async def _challenge_and_certify(self, rid: Any, proof: bytes, beta: bytes,
                                     assigned: Sequence[NodeRecord]) -> None:
        await super()._challenge_and_certify(rid, proof, beta, assigned)
        reports = await asyncio.to_thread(self.store.own_reports, rid.epoch, rid.round)
        if not reports:
            return
        first = reports[0]
        base: dict[str, object] = dict(
            epoch=first.epoch, round=first.round, mixer=first.mixer, node=first.node,
            hardware_class=first.hardware_class, vrf_proof=first.vrf_proof,
            challenge_digest=first.challenge_digest)
        other = compute_failed_report(base, Outcome.UNREACHABLE, "equivocated")
        if other.hash_struct() == first.hash_struct():
            other = compute_failed_report(base, Outcome.TIMEOUT, "equivocated")
        batch = compute_batch(rid.epoch, rid.round, self.address, [other])
        proposal = BatchProposal(batch=batch, reports=(other,),
                                 signature=self.identity.sign_typed(self.domain,
                                                                    batch.hash_struct()))
        certificate, _ = await self.certifier.gather(proposal)
        if certificate is not None:
            log.error("mixer %s: an equivocated batch was certified (epoch %d round %d)",
                      self.address[:10], rid.epoch, rid.round)
            await self.certifier.forward(certificate)


class RefusingCoSigner(CoSigner):
    def cosign(self, proposal: BatchProposal) -> CoSignature:
        raise ProtocolError("this mixer refuses to co-sign (byzantine: refuse-cosign)")


class WithholdingSettlements(SettlementSigner):
    async def sign(self, request: SettlementRequest) -> SettlementSignatures:
        await asyncio.sleep(3600)  # never answers in time
        raise ProtocolError("withheld (byzantine: withhold-settlement)")


class ByzantineMixerDaemon(MixerDaemon):
    """A ``MixerDaemon`` with the part of ``behaviour`` made faulty (see the module docstring).
    ``friends``: the nodes an ``inflate`` mixer favours; ``factor``: by how much."""

    def __init__(self, *args: Any, behaviour: Behaviour, friends: frozenset[str] = frozenset(),
                 factor: int = 20, **kwargs: Any) -> None:
        self.behaviour = behaviour
        self.friends = frozenset(f.lower() for f in friends)
        self.factor = factor
        super().__init__(*args, **kwargs)

    def _make_cosigner(self) -> CoSigner:
        if self.behaviour == Behaviour.REFUSE_COSIGN:
            return RefusingCoSigner(self.identity, self.gateway, self.views, self.store,
                                    self.clock, self.backup_s, self.book)
        return super()._make_cosigner()

    def _make_settlements(self) -> SettlementSigner:
        if self.behaviour == Behaviour.WITHHOLD_SETTLEMENT:
            return WithholdingSettlements(self.identity, self.gateway, self.store, self.peers,
                                          self.metrics, self.clock)
        return super()._make_settlements()

    def _make_rounds(self, **options: Any) -> RoundScheduler:
        kind: type[RoundScheduler] = {
            Behaviour.FABRICATE: FabricatingRounds,
            Behaviour.EQUIVOCATE: EquivocatingRounds,
        }.get(self.behaviour, RoundScheduler)
        args = (self.identity, derive_vrf_secret(self.identity), self.gateway, self.views.registry,
                self.store, self.sessions, self.certifier, self.metrics, self.clock)
        if self.behaviour == Behaviour.INFLATE:
            return InflatingRounds(*args, friends=self.friends, factor=self.factor, **options)
        return kind(*args, **options)


__all__ = [
    "Behaviour",
    "ByzantineMixerDaemon",
    "RefusingCoSigner",
    "WithholdingSettlements",
    "compute_fabricated_reports",
    "compute_inflated_report",
]
