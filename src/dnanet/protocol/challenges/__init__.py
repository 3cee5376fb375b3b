"""Challenge mathematics: seeds, the compute product, bandwidth payloads and latency echoes.

Every challenge parameter comes from the 32-byte ``challenge_seed`` of (mixer, round, node)
through domain-separated SHA-256 (integers unsigned big-endian)::

    compute_seed  = SHA-256(b"dnanet/compute"    || challenge_seed)   revealed at the compute step
    upload_seed   = SHA-256(b"dnanet/upload"     || challenge_seed)   revealed at the upload step
    download_seed = SHA-256(b"dnanet/download"   || challenge_seed)   kept by the mixer
    latency_seed  = SHA-256(b"dnanet/latency"    || challenge_seed)   kept by the mixer
    check_seed    = SHA-256(b"dnanet/spot-check" || challenge_seed)   kept by the mixer

Secret until used: the signed Challenge carries only the commitments
``SHA-256(b"dnanet/seed-hash" || seed)`` of the compute and upload seeds; the mixer reveals each
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
    "resolve_compute_device",
    "throughput_bps",
    "upload_payload",
    "verified_flops",
    "verify_download_digest",
    "verify_echoes",
    "verify_openings",
    "verify_seed_reveal",
    "verify_upload",
]
