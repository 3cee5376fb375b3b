"""Challenge mathematics: seeds, the compute product, bandwidth payloads and latency echoes.

Every challenge parameter comes from the 32-byte ``challenge_seed`` of (mixer, round, node)
through domain-separated SHA-256 (integers unsigned big-endian)::

    compute_seed  = SHA-256(b"dnanet/compute"    || challenge_seed)   revealed at the compute step
    upload_seed   = SHA-256(b"dnanet/upload"     || challenge_seed)   revealed at the upload step
    download_seed = SHA-256(b"dnanet/download"   || challenge_seed)   kept by the mixer
    latency_seed  = SHA-256(b"dnanet/latency"    || challenge_seed)   kept by the mixer
    check_seed    = SHA-256(b"dnanet/spot-check" || challenge_seed)   kept by the mixer

The compute step is ``computeAttempts`` (k) timed products, each of a seed of its own: a hash
chain that ends in ``compute_seed`` and is revealed from its other end::

    attempt_seed[k-1] = compute_seed
    attempt_seed[a]   = SHA-256(b"dnanet/attempt-seed" || attempt_seed[a+1])   for a < k-1

Attempt ``a`` reveals ``attempt_seed[a]``: the node checks the first against the commitment and
each later one against the one before (its hash), and cannot compute a seed before it is
revealed (that would invert SHA-256). With k = 1 the only attempt's seed is ``compute_seed``.

Secret until used: the signed Challenge carries only the commitments
``SHA-256(b"dnanet/seed-hash" || seed)`` of the first attempt seed and the upload seed; the mixer reveals each
seed at the step that uses it (the timed compute step, the upload step), and the node checks it
against the commitment before working (so a mixer cannot make a node sign work for a seed other
than the one the VRF output dictates). The download payload and the latency nonces reach the node
over the wire at their steps, and the compute check rows are drawn from ``check_seed`` after its
commitment, so it cannot grind a root that dodges them. Co-signers hold ``beta`` (from the VRF
proof) and re-derive all five. The node must therefore not learn ``beta`` (nor
``challenge_seed``) before the session ends.

The per-kind rules live in the docstrings of ``compute``, ``bandwidth`` and ``latency``. No two
labels used anywhere in this package are prefixes of one another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from dnanet.errors import ChallengeError
from dnanet.protocol.challenges.bandwidth import (
    BANDWIDTH_SIZES,
    BandwidthSize,
    PayloadDigest,
    download_payload,
    iter_download_payload,
    iter_upload_payload,
    payload_digest,
    throughput_bps,
    upload_payload,
    verify_download_digest,
    verify_upload,
)
from dnanet.protocol.challenges.compute import (
    COMPUTE_SIZES,
    ComputeAnswer,
    ComputeSize,
    RowOpening,
    commit_product,
    compute_product,
    derive_check_indices,
    detection_probability,
    open_rows,
    resolve_compute_device,
    verified_flops,
    verify_openings,
)
from dnanet.protocol.challenges.latency import (
    LATENCY_ECHOES,
    echo_digest,
    echo_nonces,
    median_rtt_us,
    verify_echoes,
)

LABEL_COMPUTE_SEED: Final = b"dnanet/compute"
LABEL_UPLOAD_SEED: Final = b"dnanet/upload"
LABEL_DOWNLOAD_SEED: Final = b"dnanet/download"
LABEL_LATENCY_SEED: Final = b"dnanet/latency"
LABEL_CHECK_SEED: Final = b"dnanet/spot-check"
LABEL_SEED_HASH: Final = b"dnanet/seed-hash"
LABEL_ATTEMPT_SEED: Final = b"dnanet/attempt-seed"
CHALLENGE_SEED_BYTES: Final = 32


@dataclass(frozen=True)
class KindSeeds:
    """The per-kind seeds of one challenge; only ``compute_seed`` and ``upload_seed`` go to
    the node."""

    compute_seed: bytes
    upload_seed: bytes
    download_seed: bytes
    latency_seed: bytes
    check_seed: bytes


def derive_kind_seeds(challenge_seed: bytes) -> KindSeeds:
    """The five independent per-kind seeds of ``challenge_seed`` (see the module docstring)."""
    if not isinstance(challenge_seed, bytes) or len(challenge_seed) != CHALLENGE_SEED_BYTES:
        raise ChallengeError(f"must be {CHALLENGE_SEED_BYTES} bytes", field="challenge_seed")

    def derive(label: bytes) -> bytes:
        return hashlib.sha256(label + challenge_seed).digest()

    return KindSeeds(
        compute_seed=derive(LABEL_COMPUTE_SEED),
        upload_seed=derive(LABEL_UPLOAD_SEED),
        download_seed=derive(LABEL_DOWNLOAD_SEED),
        latency_seed=derive(LABEL_LATENCY_SEED),
        check_seed=derive(LABEL_CHECK_SEED),
    )


def compute_seed_hash(seed: bytes) -> bytes:
    """The commitment to a seed that the signed Challenge carries in its place."""
    if not isinstance(seed, bytes) or len(seed) != CHALLENGE_SEED_BYTES:
        raise ChallengeError(f"must be {CHALLENGE_SEED_BYTES} bytes", field="seed")
    return hashlib.sha256(LABEL_SEED_HASH + seed).digest()


def derive_attempt_seeds(compute_seed: bytes, attempts: int) -> list[bytes]:
    """The seeds of the compute step's ``attempts`` timed attempts, in the order they are
    revealed (the hash chain of the module docstring, ending in ``compute_seed``)."""
    if not isinstance(compute_seed, bytes) or len(compute_seed) != CHALLENGE_SEED_BYTES:
        raise ChallengeError(f"must be {CHALLENGE_SEED_BYTES} bytes", field="compute_seed")
    if attempts < 1:
        raise ChallengeError(f"at least one attempt, got {attempts}", field="computeAttempts")
    seeds = [compute_seed]
    while len(seeds) < attempts:
        seeds.append(previous_attempt_seed(seeds[-1]))
    return seeds[::-1]


def previous_attempt_seed(seed: bytes) -> bytes:
    """The seed revealed one attempt before ``seed`` (its link in the chain)."""
    return hashlib.sha256(LABEL_ATTEMPT_SEED + seed).digest()


def verify_attempt_seed(seed: bytes, previous: bytes | None, seed_hash: bytes) -> None:
    """Raise ChallengeError (naming ``computeSeed``) unless ``seed`` is the next attempt's:
    the first (``previous`` None) is the one ``seed_hash`` commits to, a later one hashes to
    the seed revealed before it."""
    if previous is None:
        verify_seed_reveal(seed, seed_hash, "computeSeed")
        return
    if not isinstance(seed, bytes) or len(seed) != CHALLENGE_SEED_BYTES:
        raise ChallengeError(f"must be {CHALLENGE_SEED_BYTES} bytes", field="computeSeed")
    if previous_attempt_seed(seed) != previous:
        raise ChallengeError("is not the next seed of the challenge's attempt chain (its hash "
                             "is not the seed revealed before it)", field="computeSeed")


def verify_seed_reveal(seed: bytes, seed_hash: bytes, field: str) -> None:
    """Raise ChallengeError (naming ``field``) unless ``seed`` is the one ``seed_hash`` commits
    to."""
    if not isinstance(seed, bytes) or len(seed) != CHALLENGE_SEED_BYTES:
        raise ChallengeError(f"must be {CHALLENGE_SEED_BYTES} bytes", field=field)
    if compute_seed_hash(seed) != seed_hash:
        raise ChallengeError("is not the seed the signed challenge commits to", field=field)


__all__ = [
    "BANDWIDTH_SIZES",
    "CHALLENGE_SEED_BYTES",
    "COMPUTE_SIZES",
    "LABEL_ATTEMPT_SEED",
    "LABEL_SEED_HASH",
    "LATENCY_ECHOES",
    "BandwidthSize",
    "ComputeAnswer",
    "ComputeSize",
    "KindSeeds",
    "PayloadDigest",
    "RowOpening",
    "commit_product",
    "compute_product",
    "compute_seed_hash",
    "derive_attempt_seeds",
    "derive_check_indices",
    "derive_kind_seeds",
    "detection_probability",
    "download_payload",
    "echo_digest",
    "echo_nonces",
    "iter_download_payload",
    "iter_upload_payload",
    "median_rtt_us",
    "open_rows",
    "payload_digest",
    "previous_attempt_seed",
    "resolve_compute_device",
    "throughput_bps",
    "upload_payload",
    "verified_flops",
    "verify_attempt_seed",
    "verify_download_digest",
    "verify_echoes",
    "verify_openings",
    "verify_seed_reveal",
    "verify_upload",
]
