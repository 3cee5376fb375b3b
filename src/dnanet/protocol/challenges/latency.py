"""Latency challenge: the node echoes nonces it cannot predict; the fastest round trip counts.

Derivation rules (normative; integers unsigned big-endian):

- Nonce ``i`` (``i = 0 .. count-1``): the first 16 bytes of
  ``SHA-256(b"dnanet/echo-nonce" || latency_seed || u32(i))``. The node never sees
  ``latency_seed`` and the nonces are independent, so it cannot answer one before receiving it.
- Echo digest (what the node signs): ``SHA-256(b"dnanet/echo-digest" || u32(count) || nonce_0 ||
  ... || nonce_{count-1})``, the nonces in the order echoed.
- The figure: the minimum of the samples (``dnanet.protocol.challenges.timing.compute_rtt_us``).
  ``median_rtt_us`` (the lower median, a measured value) remains for summaries of many samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from dnanet.errors import ChallengeError, ConfigError

LABEL_ECHO_NONCE: Final = b"dnanet/echo-nonce"
LABEL_ECHO_DIGEST: Final = b"dnanet/echo-digest"

SEED_BYTES: Final = 32
NONCE_BYTES: Final = 16
MAX_ECHOES: Final = 1024

LATENCY_ECHOES: Final[dict[str, int]] = {"test": 16, "cpu": 16, "gpu": 16}
"""Echoes per challenge: the mixer keeps their minimum (``challenges.timing``), so enough of them
that one finds the path idle."""


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_ECHOES:
        raise ConfigError(f"must be in [1, {MAX_ECHOES}], got {count}", field="count")


def echo_nonces(latency_seed: bytes, count: int) -> list[bytes]:
    """The ``count`` 16-byte nonces the mixer sends, one per echo, in order."""
    if not isinstance(latency_seed, bytes) or len(latency_seed) != SEED_BYTES:
        raise ChallengeError(f"must be {SEED_BYTES} bytes", field="latency_seed")
    _check_count(count)
    return [
        hashlib.sha256(LABEL_ECHO_NONCE + latency_seed + i.to_bytes(4, "big")).digest()[
            :NONCE_BYTES
        ]
        for i in range(count)
    ]


def echo_digest(nonces: Sequence[bytes]) -> bytes:
    """The digest over the echoed nonces, in order, that the node signs."""
    if not 1 <= len(nonces) <= MAX_ECHOES:
        raise ChallengeError(
            f"must hold 1 to {MAX_ECHOES} nonces, got {len(nonces)}", field="nonces"
        )
    for i, nonce in enumerate(nonces):
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ChallengeError(f"must be {NONCE_BYTES} bytes", field=f"nonces[{i}]")
    return hashlib.sha256(
        LABEL_ECHO_DIGEST + len(nonces).to_bytes(4, "big") + b"".join(nonces)
    ).digest()


def verify_echoes(latency_seed: bytes, count: int, echoed: Sequence[bytes]) -> None:
    """Check that the node echoed exactly the ``count`` nonces, in order."""
    expected = echo_nonces(latency_seed, count)
    # Verify the count, then each echo
    if len(echoed) != count:
        raise ChallengeError(f"got {len(echoed)} echoes, expected {count}", field="echoed")
    for i, (got, want) in enumerate(zip(echoed, expected, strict=True)):
        if got != want:
            raise ChallengeError("does not match the nonce sent", field=f"echoed[{i}]")


def median_rtt_us(samples: Sequence[int]) -> int:
    """Lower median of the round-trip times in microseconds (a measured sample, not a mean)."""
    if not samples:
        raise ChallengeError("needs at least one sample", field="samples")
    for i, sample in enumerate(samples):
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ChallengeError(f"must be an int >= 0, got {sample!r}", field=f"samples[{i}]")
    ordered = sorted(samples)
    return ordered[(len(ordered) - 1) // 2]


__all__ = [
    "LABEL_ECHO_DIGEST",
    "LABEL_ECHO_NONCE",
    "LATENCY_ECHOES",
    "NONCE_BYTES",
    "echo_digest",
    "echo_nonces",
    "median_rtt_us",
    "verify_echoes",
]
