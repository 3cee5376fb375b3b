"""A co-signer's checks of a score report, in one place for mixers, the Validator and the auditor.

``verify_score_report`` checks everything that follows from signed inputs and the chain's view
of the epoch; the stateful checks (the report is for the current window, no report was seen
before for the same (epoch, round, mixer, node)) belong to the caller, helped by
``ScoreReport.key`` and ``verify_report_timeliness``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.errors import (
    ChallengeError,
    DnanetError,
    InvalidProof,
    ProtocolError,
    ScheduleError,
    SignatureError,
)
from dnanet.params import Preset
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.evidence import verify_fraud_evidence
from dnanet.protocol.messages import (
    ZERO32,
    BatchProposal,
    Outcome,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import verify_batch_contents, verify_certificate
from dnanet.protocol.schedule import (
    RoundId,
    compute_assignment_target,
    verify_assignment,
    verify_round_vrf,
)
from dnanet.protocol.scoring import ChallengeScore, verify_report_score


@dataclass(frozen=True)
class NodeInfo:
    """What the registry said about a node at the first block of the report's round."""

    hardware_class: int
    active: bool = True


@dataclass
class EpochView:
    """A verifier's view of one epoch: its mixer set, and per round its seed and its nodes.

    A round's nodes are the registry as of the round's first block (the block whose hash is
    the round's seed): a report of that round is valid only for a node registered and active
    then, with the hardware class it had then. Every verifier reads the same block, so the
    mixer that challenged, its co-signers, the Validator and an auditor years later agree on
    who could be challenged, whatever joined, left or was jailed since.

    ``beta_cache`` memoises VRF verifications: one proof covers every report of a
    (mixer, round), so a co-signer verifies it once.
    """

    domain: Domain
    preset: Preset
    epoch: int
    mixers: Mapping[str, bytes]
    """Members of the epoch's mixer set: address -> Ed25519 VRF public key."""
    round_nodes: Mapping[int, Mapping[str, NodeInfo]]
    """round -> the registry at the round's first block (address -> NodeInfo)."""
    round_seeds: Mapping[int, bytes]
    """round -> hash of the round's first block."""
    beta_cache: MutableMapping[tuple[str, int, bytes], bytes] = field(default_factory=dict)

    @property
    def assignment_target(self) -> int:
        return compute_assignment_target(len(self.mixers), self.preset.challenges_per_round)

    def verify_vrf(self, mixer: str, round_: int, proof: bytes) -> bytes:
        key = (mixer, round_, proof)
        beta = self.beta_cache.get(key)
        if beta is None:
            seed = self.round_seeds.get(round_)
            if seed is None:
                raise ScheduleError(f"no seed known for round {round_}", field="round")
            try:
                beta = verify_round_vrf(
                    self.mixers[mixer], proof, self.domain.chain_id, self.epoch, round_, seed
                )
            except InvalidProof as exc:
                # Name the report's field, not the VRF module's parameter ("pi").
                raise InvalidProof(exc.detail, field="vrfProof") from None
            self.beta_cache[key] = beta
        return beta


def verify_report_timeliness(report: ScoreReport, current: RoundId, max_age_rounds: int) -> None:
    """Raise ScheduleError unless the report's round is current or at most a few rounds old."""
    if report.epoch != current.epoch:
        raise ScheduleError(f"report is for epoch {report.epoch}, now {current.epoch}", field="epoch")
    if not current.round - max_age_rounds <= report.round <= current.round:
        raise ScheduleError(
            f"report is for round {report.round}, now {current.round} (window {max_age_rounds})",
            field="round",
        )


def verify_score_report(report: ScoreReport, view: EpochView) -> ChallengeScore:
    """All stateless checks of a report; returns its recomputed score. Raises ProtocolError.

    Raises for: a wrong epoch, a mixer outside the epoch's set, a node unknown or inactive at
    the start of the report's round or of another hardware class then, an invalid VRF proof, a node not assigned to the mixer, a challenge
    digest that does not rebuild, a missing or wrong node signature, response fields on a
    failed outcome, fraud without valid evidence, measurements out of bounds, a wrong score.
    """
    if report.epoch != view.epoch:
        raise ScheduleError(f"report is for epoch {report.epoch}, view is {view.epoch}", field="epoch")
    if not 0 <= report.round < view.preset.rounds_per_epoch:
        raise ScheduleError(f"round {report.round} out of range", field="round")
    # Verify the mixer is a member of the epoch's set and the node is registered and active.
    if report.mixer not in view.mixers:
        raise ProtocolError(f"mixer {report.mixer} is not in epoch {view.epoch}'s set", field="mixer")
    registry = view.round_nodes.get(report.round)
    if registry is None:
        raise ScheduleError(f"no registry known for round {report.round}", field="round")
    node = registry.get(report.node)
    if node is None:
        raise ProtocolError(f"node {report.node} was not registered at the start of round "
                            f"{report.round}", field="node")
    if not node.active:
        raise ProtocolError(f"node {report.node} was jailed, unbonding or under-staked at the "
                            f"start of round {report.round}", field="node")
    if node.hardware_class != report.hardware_class:
        raise ProtocolError(
            f"node declared class {node.hardware_class}, report says {report.hardware_class}",
            field="hardwareClass",
        )
    # Verify the VRF proof and that it assigns this node to this mixer.
    beta = view.verify_vrf(report.mixer, report.round, report.vrf_proof)
    verify_assignment(beta, report.node, view.assignment_target)
    # Verify the challenge the mixer claims to have sent is the one the VRF output dictates.
    challenge = compute_challenge(
        beta=beta,
        epoch=report.epoch,
        round_=report.round,
        mixer=report.mixer,
        node=report.node,
        hardware_class=report.hardware_class,
        preset=view.preset,
    )
    if challenge.hash_struct() != report.challenge_digest:
        raise ChallengeError("does not match the challenge derived from the VRF output",
                             field="challengeDigest")
    verify_report_response(report, view.domain)
    if report.outcome == Outcome.WRONG_ANSWER:
        seeds = compute_kind_seeds(beta, report.node)
        verify_fraud_evidence(report, challenge, seeds.compute_seed)
    elif report.evidence:
        raise ChallengeError("only a WRONG_ANSWER report carries evidence", field="evidence")
    return verify_report_score(report, view.preset)


def verify_report_response(report: ScoreReport, domain: Domain) -> None:
    """Verify the node's signature where the outcome needs one, and its absence elsewhere."""
    outcome = Outcome(report.outcome)
    if outcome.has_node_signature:
        # Verify the node signed the response the report carries (a missing signature rejects).
        try:
            signer = recover_typed(domain, report.response().hash_struct(), report.response_signature)
        except SignatureError as exc:
            raise SignatureError(str(exc), field="responseSignature") from None
        if signer != report.node:
            raise SignatureError(f"signed by {signer}, not by the node", field="responseSignature")
        return
    # Verify a failed session carries no response, so nothing unsigned looks signed.
    if report.response_signature:
        raise ChallengeError(f"{outcome.name} carries no node signature", field="responseSignature")
    for attr, name in _RESPONSE_FIELDS:
        if getattr(report, attr) != ZERO32:
            raise ChallengeError(f"must be zero when the outcome is {outcome.name}", field=name)


_RESPONSE_FIELDS = (
    ("echo_digest", "echoDigest"),
    ("compute_root", "computeRoot"),
    ("download_digest", "downloadDigest"),
    ("upload_digest", "uploadDigest"),
)




class BatchRejected(ProtocolError):
    """A batch was refused whole; ``reasons`` lists each invalid report and why."""

    def __init__(self, reasons: list[tuple[int, str]]) -> None:
        self.reasons = reasons
        summary = "; ".join(f"reports[{i}]: {why}" for i, why in reasons[:5])
        more = f" (+{len(reasons) - 5} more)" if len(reasons) > 5 else ""
        super().__init__(f"{len(reasons)} invalid report(s): {summary}{more}", field="reports")


def verify_batch_proposal(proposal: BatchProposal, view: EpochView) -> list[ChallengeScore]:
    """A co-signer's checks of a whole batch: the originator's signature, the batch root, and
    every report. Raises BatchRejected listing every invalid report (an honest originator drops
    them and re-forms the batch), or ProtocolError for a bad envelope."""
    batch = proposal.batch
    if batch.epoch != view.epoch:
        raise ScheduleError(f"batch is for epoch {batch.epoch}, view is {view.epoch}", field="epoch")
    if batch.mixer not in view.mixers:
        raise ProtocolError(f"mixer {batch.mixer} is not in epoch {view.epoch}'s set", field="mixer")
    # Verify the originator signed its batch, then that the reports are what it commits to.
    signer = recover_typed(view.domain, batch.hash_struct(), proposal.signature)
    if signer != batch.mixer:
        raise SignatureError(f"batch signed by {signer}, not by its mixer", field="signature")
    verify_batch_contents(batch, proposal.reports)
    reasons: list[tuple[int, str]] = []
    scores: list[ChallengeScore] = []
    seen: set[tuple[int, int, str, str]] = set()
    for i, report in enumerate(proposal.reports):
        if report.key in seen:
            reasons.append((i, "duplicate report for this node in the batch"))
            continue
        seen.add(report.key)
        try:
            scores.append(verify_score_report(report, view))
        except DnanetError as exc:  # a bad VRF proof or signature is a CryptoError
            reasons.append((i, str(exc)))
    if reasons:
        raise BatchRejected(reasons)
    return scores


def verify_certified_batch(certificate: QuorumCertificate, view: EpochView) -> tuple[str, ...]:
    """The Validator's checks: the quorum over the batch, then every report. Returns signers."""
    if certificate.batch.epoch != view.epoch:
        raise ScheduleError(
            f"certificate is for epoch {certificate.batch.epoch}, view is {view.epoch}",
            field="epoch",
        )
    signers = verify_certificate(view.domain, certificate, list(view.mixers))
    seen: set[tuple[int, int, str, str]] = set()
    for i, report in enumerate(certificate.reports):
        if report.key in seen:
            raise ProtocolError("duplicate report in the batch", field=f"reports[{i}]")
        seen.add(report.key)
        try:
            verify_score_report(report, view)
        except DnanetError as exc:  # a bad VRF proof or signature is a CryptoError
            raise type(exc)(str(exc), field=f"reports[{i}]") from None
    return signers


__all__ = [
    "BatchRejected",
    "EpochView",
    "NodeInfo",
    "verify_batch_proposal",
    "verify_certified_batch",
    "verify_report_response",
    "verify_report_timeliness",
    "verify_score_report",
]
