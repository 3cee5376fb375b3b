"""The protocol's messages.

Signed messages are EIP-712 structs (``EIP712 = True``) under the network's domain
(:class:`dnanet.crypto.eip712.Domain`); the others are wire-only envelopes. Field names on the
wire and in EIP-712 are the camelCase forms of the attributes.

==================  ==========  ==========================================================
message             signed by   purpose
==================  ==========  ==========================================================
Challenge           mixer       what a mixer asks of a node in one challenge session
ChallengeResponse   node        the node's commitment to what it answered
ScoreReport         (batch)     one challenge's measurements, outcome and score
ScoreBatch          mixers      Merkle root over reports; co-signed by the committee
QuorumCertificate   -           a batch, its reports and >= threshold signatures
EpochSettlement     mixers      an epoch's reward root, total and reports digest
Punishment          mixers      jail and/or slash a node, with the evidence digest
SettlementRequest   -           the Validator asks a mixer to sign a settlement + punishments
SettlementSignatures -          the mixer's signatures of them
==================  ==========  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from dnanet.params import BPS_ONE, SCORE_ONE
from dnanet.protocol.codec import (
    Address,
    Bool,
    Bytes,
    FixedBytes,
    ListOf,
    Message,
    Nested,
    Text,
    Uint,
    wire,
)

ZERO32 = b"\x00" * 32
MAX_BATCH_REPORTS = 2048
MAX_SIGNATURES = 256
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_REASON_BYTES = 200
MAX_SETTLEMENT_PUNISHMENTS = 1024
VRF_PROOF_BYTES = 80
SIGNATURE_BYTES = 65


class Outcome(IntEnum):
    """How a challenge ended. Anything but OK scores zero."""

    OK = 0
    TIMEOUT = 1
    """The node did not answer within the challenge timeout."""
    UNREACHABLE = 2
    """The node's endpoint refused the connection or answered with an error."""
    WRONG_ANSWER = 3
    """The node signed an answer that fails verification: fraud evidence."""
    BAD_RESPONSE = 4
    """The node answered something malformed or unsigned."""
    CANARY_FAILED = 5
    """The node answered a canary AI request wrongly."""

    @property
    def is_fraud(self) -> bool:
        return self is Outcome.WRONG_ANSWER

    @property
    def has_node_signature(self) -> bool:
        """Outcomes that carry the node's signed ChallengeResponse."""
        return self in (Outcome.OK, Outcome.WRONG_ANSWER)


U64 = Uint(64)
U32 = Uint(32)
U16 = Uint(16)
U8 = Uint(8)
B32 = FixedBytes(32)
SIGNATURE = Bytes(SIGNATURE_BYTES, allowed=(SIGNATURE_BYTES,))


@dataclass(frozen=True)
class Challenge(Message):
    """A challenge session's parameters, derived from the mixer's VRF output (see
    :func:`dnanet.protocol.challenge_params.compute_challenge`) and signed by the mixer.

    It carries no secret: the compute and upload seeds appear only as commitments
    (``SHA-256(b"dnanet/seed-hash" || seed)``; for the compute step, of its first attempt's
    seed), and the mixer reveals each seed at the step that uses it, where the node checks it
    against its commitment. The download payload and
    the latency nonces reach the node only on the wire, at their steps.
    """

    EIP712 = True
    epoch: int = wire(U64)
    round: int = wire(U32)
    mixer: str = wire(Address())
    node: str = wire(Address())
    challenge_id: bytes = wire(B32)
    hardware_class: int = wire(U8)
    compute_seed_hash: bytes = wire(B32)
    compute_n: int = wire(U32)
    compute_rows: int = wire(U32)
    compute_checks: int = wire(U16)
    compute_attempts: int = wire(U8)
    upload_seed_hash: bytes = wire(B32)
    upload_bytes: int = wire(U32)
    download_bytes: int = wire(U32)
    latency_echoes: int = wire(U16)


@dataclass(frozen=True)
class SignedChallenge(Message):
    challenge: Challenge = wire(Nested(Challenge))
    signature: bytes = wire(SIGNATURE)


@dataclass(frozen=True)
class ChallengeResponse(Message):
    """What the node signs at the end of a session: digests of everything it answered."""

    EIP712 = True
    epoch: int = wire(U64)
    round: int = wire(U32)
    mixer: str = wire(Address())
    node: str = wire(Address())
    challenge_digest: bytes = wire(B32)
    echo_digest: bytes = wire(B32)
    compute_root: bytes = wire(B32)
    download_digest: bytes = wire(B32)
    upload_digest: bytes = wire(B32)


@dataclass(frozen=True)
class SignedChallengeResponse(Message):
    response: ChallengeResponse = wire(Nested(ChallengeResponse))
    signature: bytes = wire(SIGNATURE)


@dataclass(frozen=True)
class ScoreReport(Message):
    """One challenge, scored: the scored transaction of the protocol.

    The response fields repeat the node's ChallengeResponse so that anyone can check the
    node's signature; for outcomes without a response they are zero and the signature empty.
    Measurements are integers (microseconds); sizes come from the challenge.
    """

    EIP712 = True
    epoch: int = wire(U64)
    round: int = wire(U32)
    mixer: str = wire(Address())
    node: str = wire(Address())
    hardware_class: int = wire(U8)
    vrf_proof: bytes = wire(Bytes(VRF_PROOF_BYTES, allowed=(VRF_PROOF_BYTES,)))
    challenge_digest: bytes = wire(B32)
    echo_digest: bytes = wire(B32)
    compute_root: bytes = wire(B32)
    download_digest: bytes = wire(B32)
    upload_digest: bytes = wire(B32)
    response_signature: bytes = wire(Bytes(SIGNATURE_BYTES, allowed=(0, SIGNATURE_BYTES)))
    rtt_us: int = wire(U32)
    compute_us: int = wire(U64)
    download_us: int = wire(U64)
    upload_us: int = wire(U64)
    outcome: int = wire(Uint(8, maximum=max(Outcome)))
    reason: str = wire(Text(MAX_REASON_BYTES))
    evidence: bytes = wire(Bytes(MAX_EVIDENCE_BYTES))
    score: int = wire(Uint(32, maximum=SCORE_ONE))

    @property
    def key(self) -> tuple[int, int, str, str]:
        """At most one report may exist per (epoch, round, mixer, node)."""
        return (self.epoch, self.round, self.mixer, self.node)

    def response(self) -> ChallengeResponse:
        """The node's ChallengeResponse as carried in this report."""
        return ChallengeResponse(
            epoch=self.epoch,
            round=self.round,
            mixer=self.mixer,
            node=self.node,
            challenge_digest=self.challenge_digest,
            echo_digest=self.echo_digest,
            compute_root=self.compute_root,
            download_digest=self.download_digest,
            upload_digest=self.upload_digest,
        )


def compute_failure_reason(text: str) -> str:
    """``text`` as a report's reason: printable ASCII (anything else escaped, so a node cannot
    smuggle bytes or control characters into logs and signatures), at most MAX_REASON_BYTES
    bytes (cut with a marker). Every reason a report carries is built here."""
    safe = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    if len(safe) <= MAX_REASON_BYTES:
        return safe
    marker = "..."
    return safe[:MAX_REASON_BYTES - len(marker)] + marker


def compute_failed_report(base: dict[str, object], outcome: Outcome, reason: str) -> ScoreReport:
    """The report of a failed session: ``base`` (epoch, round, mixer, node, hardware_class,
    vrf_proof, challenge_digest) with zero response fields, measurements and score, and the
    reason made safe by ``compute_failure_reason``."""
    return ScoreReport(
        **base,  # type: ignore[arg-type]
        echo_digest=ZERO32, compute_root=ZERO32, download_digest=ZERO32, upload_digest=ZERO32,
        response_signature=b"", rtt_us=0, compute_us=0, download_us=0, upload_us=0,
        outcome=outcome, reason=compute_failure_reason(reason), evidence=b"", score=0,
    )


@dataclass(frozen=True)
class ScoreBatch(Message):
    """A mixer's batch of reports for one round: co-signers sign this struct."""

    EIP712 = True
    epoch: int = wire(U64)
    round: int = wire(U32)
    mixer: str = wire(Address())
    reports_root: bytes = wire(B32)
    report_count: int = wire(Uint(32, maximum=MAX_BATCH_REPORTS))


@dataclass(frozen=True)
class BatchProposal(Message):
    """A batch sent to co-signers: the header, its reports and the originator's signature."""

    batch: ScoreBatch = wire(Nested(ScoreBatch))
    reports: tuple[ScoreReport, ...] = wire(ListOf(Nested(ScoreReport), MAX_BATCH_REPORTS))
    signature: bytes = wire(SIGNATURE)


@dataclass(frozen=True)
class CoSignature(Message):
    """One mixer's signature over a struct hash (a batch root or a settlement)."""

    signer: str = wire(Address())
    signature: bytes = wire(SIGNATURE)


@dataclass(frozen=True)
class QuorumCertificate(Message):
    """A batch with signatures of at least the threshold of distinct epoch members."""

    batch: ScoreBatch = wire(Nested(ScoreBatch))
    reports: tuple[ScoreReport, ...] = wire(ListOf(Nested(ScoreReport), MAX_BATCH_REPORTS))
    signatures: tuple[bytes, ...] = wire(ListOf(SIGNATURE, MAX_SIGNATURES))


@dataclass(frozen=True)
class EpochSettlement(Message):
    """An epoch's rollup: the reward tree root, the total minted, the digest of its reports."""

    EIP712 = True
    epoch: int = wire(U64)
    rewards_root: bytes = wire(B32)
    total: int = wire(Uint(256))
    reports_digest: bytes = wire(B32)


@dataclass(frozen=True)
class Punishment(Message):
    """Jail and/or slash ``slashBps`` of a node's stake, for the evidence behind the digest."""

    EIP712 = True
    node: str = wire(Address())
    epoch: int = wire(U64)
    jail: bool = wire(Bool())
    slash_bps: int = wire(Uint(16, maximum=BPS_ONE))
    evidence_digest: bytes = wire(B32)


@dataclass(frozen=True)
class SettlementRequest(Message):
    """What the Validator asks each mixer of an epoch's set to sign: the settlement and the
    punishments it implies (wire-only: the mixer signs each struct on its own)."""

    settlement: EpochSettlement = wire(Nested(EpochSettlement))
    punishments: tuple[Punishment, ...] = wire(
        ListOf(Nested(Punishment), MAX_SETTLEMENT_PUNISHMENTS))


@dataclass(frozen=True)
class SettlementSignatures(Message):
    """A mixer's answer: its signature of the settlement and of each punishment, in order."""

    settlement: CoSignature = wire(Nested(CoSignature))
    punishments: tuple[CoSignature, ...] = wire(
        ListOf(Nested(CoSignature), MAX_SETTLEMENT_PUNISHMENTS))


__all__ = [
    "MAX_BATCH_REPORTS",
    "MAX_EVIDENCE_BYTES",
    "MAX_REASON_BYTES",
    "MAX_SETTLEMENT_PUNISHMENTS",
    "MAX_SIGNATURES",
    "ZERO32",
    "BatchProposal",
    "Challenge",
    "ChallengeResponse",
    "CoSignature",
    "EpochSettlement",
    "Outcome",
    "Punishment",
    "QuorumCertificate",
    "ScoreBatch",
    "ScoreReport",
    "SettlementRequest",
    "SettlementSignatures",
    "SignedChallenge",
    "SignedChallengeResponse",
    "compute_failed_report",
    "compute_failure_reason",
]
