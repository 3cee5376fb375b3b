"""Quorum: the signature threshold of a mixer set, and verification of quorum certificates.

A certificate over a struct hash is valid iff it carries valid signatures of at least
``floor(2n/3) + 1`` *distinct* members of the epoch's mixer set (n members). Duplicate signers,
non-members, malformed, high-s or missing signatures are rejected, never skipped: a certificate
is either wholly valid or rejected.

The originator forwards its certificate to the Validator. If the Validator still lacks it after
a timeout, its co-signers forward it instead, one at a time: ``compute_backup_rank`` orders the
co-signers of each batch by ``keccak256(batchHash || address)``, so the order differs per batch
and no mixer is every batch's first backup; the co-signer of rank ``r`` acts after ``r + 1``
timeouts.

A ``ScoreBatch`` commits to its reports with ``reports_root``: a binary Keccak Merkle tree over
the reports' EIP-712 struct hashes in batch order, an odd node promoted unchanged to the next
level, and ``keccak256(left || right)`` for internal nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

from dnanet.crypto.eip712 import Domain, address_to_bytes, recover_signer
from dnanet.crypto.hashing import keccak256
from dnanet.errors import QuorumError, SignatureError
from dnanet.protocol.messages import (
    MAX_BATCH_REPORTS,
    ZERO32,
    QuorumCertificate,
    ScoreBatch,
    ScoreReport,
)


def compute_quorum_threshold(n_members: int) -> int:
    """``floor(2n/3) + 1``: more than two thirds of ``n_members``."""
    if n_members <= 0:
        raise QuorumError("the mixer set is empty: no quorum is possible")
    return 2 * n_members // 3 + 1


def verify_quorum(
    domain: Domain, struct_hash: bytes, signatures: Sequence[bytes], members: Sequence[str]
) -> tuple[str, ...]:
    """Recover and check every signature; return the signers in order. Raises QuorumError."""
    member_set = {m.lower() for m in members}
    threshold = compute_quorum_threshold(len(member_set))
    digest = domain.digest(struct_hash)
    signers: list[str] = []
    seen: set[str] = set()
    for i, signature in enumerate(signatures):
        # Verify each signature recovers, then that its signer is a distinct member.
        try:
            signer = recover_signer(digest, signature)
        except SignatureError as exc:
            raise QuorumError(str(exc), field=f"signatures[{i}]") from None
        if signer not in member_set:
            raise QuorumError(f"{signer} is not a member of the mixer set", field=f"signatures[{i}]")
        if signer in seen:
            raise QuorumError(f"{signer} signed twice", field=f"signatures[{i}]")
        seen.add(signer)
        signers.append(signer)
    if len(signers) < threshold:
        raise QuorumError(
            f"{len(signers)} distinct member signatures, need {threshold} of {len(member_set)}",
            field="signatures",
        )
    return tuple(signers)


def compute_reports_root(report_hashes: Sequence[bytes]) -> bytes:
    """Merkle root over report struct hashes (see the module docstring); ZERO32 if empty."""
    if not report_hashes:
        return ZERO32
    level = list(report_hashes)
    while len(level) > 1:
        nxt = [keccak256(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def compute_batch(epoch: int, round_: int, mixer: str, reports: Sequence[ScoreReport]) -> ScoreBatch:
    """The batch header over ``reports`` (all of that mixer, epoch and round)."""
    return ScoreBatch(
        epoch=epoch,
        round=round_,
        mixer=mixer,
        reports_root=compute_reports_root([r.hash_struct() for r in reports]),
        report_count=len(reports),
    )


def verify_batch_contents(batch: ScoreBatch, reports: Sequence[ScoreReport]) -> None:
    """Raise QuorumError unless ``reports`` are exactly what ``batch`` commits to."""
    if not reports:
        raise QuorumError("a batch needs at least one report", field="reports")
    if len(reports) > MAX_BATCH_REPORTS or batch.report_count != len(reports):
        raise QuorumError(
            f"batch says {batch.report_count} reports, carries {len(reports)}", field="reportCount"
        )
    for i, report in enumerate(reports):
        if (report.epoch, report.round, report.mixer) != (batch.epoch, batch.round, batch.mixer):
            raise QuorumError(
                "report's epoch, round or mixer differs from its batch", field=f"reports[{i}]"
            )
    root = compute_reports_root([r.hash_struct() for r in reports])
    if root != batch.reports_root:
        raise QuorumError("reports do not hash to the batch's reportsRoot", field="reportsRoot")


def compute_backup_rank(batch_hash: bytes, members: Sequence[str], originator: str,
                        mixer: str) -> int:
    """``mixer``'s place (0 first) among the batch's possible backup forwarders: the epoch's
    members but the originator, ordered by ``keccak256(batch_hash || address)``. Raises
    QuorumError if ``mixer`` is the originator or not a member."""
    others = {m.lower() for m in members} - {originator.lower()}
    if mixer.lower() not in others:
        raise QuorumError(f"{mixer} is not a member of the mixer set besides the originator",
                          field="mixer")
    order = sorted(others, key=lambda m: keccak256(batch_hash + address_to_bytes(m)))
    return order.index(mixer.lower())


def verify_certificate(
    domain: Domain, certificate: QuorumCertificate, members: Sequence[str]
) -> tuple[str, ...]:
    """Verify a quorum certificate against the epoch's mixer set; returns the signers.

    Checks: the reports match the batch root; the batch's mixer is a member and signed it;
    at least the threshold of distinct members signed the batch.
    """
    verify_batch_contents(certificate.batch, certificate.reports)
    signers = verify_quorum(domain, certificate.batch.hash_struct(), certificate.signatures, members)
    # Verify the originating mixer vouches for its own batch.
    if certificate.batch.mixer not in signers:
        raise QuorumError("the batch's own mixer did not sign it", field="signatures")
    return signers


__all__ = [
    "compute_backup_rank",
    "compute_batch",
    "compute_quorum_threshold",
    "compute_reports_root",
    "verify_batch_contents",
    "verify_certificate",
    "verify_quorum",
]
