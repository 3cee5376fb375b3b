"""Fraud evidence: a row of the compute product that the node committed to, and got wrong.

A report with outcome WRONG_ANSWER carries, in ``evidence``, one opening of the node's signed
``computeRoot``: ``u32 index || row (n int32 little-endian) || proof hashes (32 bytes each)``.
Anyone can check it: the proof leads to the root the node signed, and the row differs from
``A[index]·B`` of every attempt seed of the challenge's compute step (the node signs the root
of the attempt the mixer counts; a row that is right for any attempt's seed shows no fraud, so
a mixer cannot pass one attempt's honest row off as another's wrong one). A node cannot deny a
row it committed to, so this is proof of fraud.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dnanet.errors import ChallengeError
from dnanet.protocol.challenges import derive_attempt_seeds
from dnanet.protocol.challenges.compute import (
    INT32_LE,
    ComputeSize,
    RowOpening,
    compute_a_rows,
    compute_b,
    compute_root_from_proof,
    compute_row_leaf,
)
from dnanet.protocol.messages import MAX_EVIDENCE_BYTES, Challenge, ScoreReport


def compute_size_of(challenge: Challenge) -> ComputeSize:
    return ComputeSize(
        n=challenge.compute_n, rows=challenge.compute_rows, checks=challenge.compute_checks
    )


def encode_fraud_evidence(opening: RowOpening) -> bytes:
    """The evidence bytes for one wrong opened row."""
    data = opening.index.to_bytes(4, "big") + opening.row + b"".join(opening.proof)
    if len(data) > MAX_EVIDENCE_BYTES:
        raise ChallengeError(f"evidence of {len(data)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    return data


def decode_fraud_evidence(evidence: bytes, size: ComputeSize) -> RowOpening:
    row_bytes = 4 * size.n
    if len(evidence) < 4 + row_bytes or (len(evidence) - 4 - row_bytes) % 32:
        raise ChallengeError(
            f"must be 4 + {row_bytes} + 32*k bytes, got {len(evidence)}", field="evidence"
        )
    index = int.from_bytes(evidence[:4], "big")
    if index >= size.rows:
        raise ChallengeError(f"row {index} out of range [0, {size.rows})", field="evidence")
    rest = evidence[4 + row_bytes :]
    proof = tuple(rest[i : i + 32] for i in range(0, len(rest), 32))
    return RowOpening(index=index, row=evidence[4 : 4 + row_bytes], proof=proof)


def is_row_correct(compute_seed: bytes, size: ComputeSize, opening: RowOpening) -> bool:
    """Whether an opened row equals ``A[index]·B`` (exact integer arithmetic)."""
    return _is_row_product(compute_seed, size, opening, _b_int64(compute_seed, size))


def _b_int64(compute_seed: bytes, size: ComputeSize) -> npt.NDArray[np.int64]:
    return compute_b(compute_seed, size.n).astype(np.int64)


def _is_row_product(compute_seed: bytes, size: ComputeSize, opening: RowOpening,
                    b: npt.NDArray[np.int64]) -> bool:
    a = compute_a_rows(compute_seed, size.n, [opening.index]).astype(np.int64)
    got = np.frombuffer(opening.row, dtype=INT32_LE).astype(np.int64)
    return bool(np.array_equal((a @ b)[0], got))


def find_row_of_no_attempt(compute_seed: bytes, challenge: Challenge,
                           openings: Sequence[RowOpening]) -> RowOpening | None:
    """The first of ``openings`` that is right for the seed of no attempt of the challenge's
    compute step (the module docstring: only such a row is fraud), None if each is right for
    one. Each attempt's ``B`` is made once, and only when a row needs it: a node that answers
    one attempt with another's product has every row checked against every attempt."""
    size = compute_size_of(challenge)
    seeds = derive_attempt_seeds(compute_seed, challenge.compute_attempts)
    bs: dict[bytes, npt.NDArray[np.int64]] = {}

    def right_for(seed: bytes, opening: RowOpening) -> bool:
        if seed not in bs:
            bs[seed] = _b_int64(seed, size)
        return _is_row_product(seed, size, opening, bs[seed])

    return next((opening for opening in openings
                 if not any(right_for(seed, opening) for seed in seeds)), None)


def verify_fraud_evidence(report: ScoreReport, challenge: Challenge, compute_seed: bytes) -> None:
    """Raise ChallengeError unless ``report.evidence`` proves the node signed a wrong row
    (``compute_seed`` is the challenge's, whose chain gives every attempt's seed)."""
    size = compute_size_of(challenge)
    opening = decode_fraud_evidence(report.evidence, size)
    # Verify the row is one the node committed to under the root it signed.
    leaf = compute_row_leaf(opening.index, opening.row)
    root = compute_root_from_proof(leaf, opening.index, size.rows, opening.proof, "evidence")
    if root != report.compute_root:
        raise ChallengeError("the opened row is not under the signed computeRoot", field="evidence")
    # Verify the row is actually wrong: a row right for any attempt is no evidence of fraud.
    if find_row_of_no_attempt(compute_seed, challenge, [opening]) is None:
        raise ChallengeError("the opened row is correct for an attempt's seed: no fraud shown",
                             field="evidence")


__all__ = [
    "compute_size_of",
    "decode_fraud_evidence",
    "encode_fraud_evidence",
    "find_row_of_no_attempt",
    "is_row_correct",
    "verify_fraud_evidence",
]
