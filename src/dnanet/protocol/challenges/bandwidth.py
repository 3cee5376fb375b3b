"""Bandwidth challenge: incompressible payloads down and up, proven by digest.

Derivation rules (normative; integers unsigned big-endian):

- Payload. A payload of ``nbytes`` is the concatenation of chunks
  ``SHAKE-128(label || seed || u32(j))`` squeezed to ``PAYLOAD_CHUNK_BYTES`` (64 KiB) each,
  ``j = 0, 1, ...``, cut to ``nbytes``. Label ``b"dnanet/down-payload"`` with ``download_seed``
  (mixer -> node), ``b"dnanet/up-payload"`` with ``upload_seed`` (node -> mixer). Chunks let
  either side generate and send the payload without holding it whole.
- Digest. ``SHA-256(b"dnanet/payload-digest" || payload)``; SHA-256 already binds the length.

Download: the mixer sends the payload, the node returns (and signs) its digest. The node is never
given ``download_seed``, so only receiving the bytes lets it produce the digest. Upload: the mixer
reveals ``upload_seed`` at the upload step (the signed challenge holds only its commitment), the
node sends the payload, the mixer compares it with its own. How each is timed:
``dnanet.protocol.challenges.timing``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from dnanet.errors import ChallengeError, ConfigError

LABEL_DOWNLOAD_PAYLOAD: Final = b"dnanet/down-payload"
LABEL_UPLOAD_PAYLOAD: Final = b"dnanet/up-payload"
LABEL_PAYLOAD_DIGEST: Final = b"dnanet/payload-digest"

SEED_BYTES: Final = 32
DIGEST_BYTES: Final = 32
PAYLOAD_CHUNK_BYTES: Final = 1 << 16
MAX_PAYLOAD_BYTES: Final = PAYLOAD_CHUNK_BYTES << 32  # chunk indices are u32


@dataclass(frozen=True)
class BandwidthSize:
    """Bytes sent in each direction for one bandwidth challenge."""

    download_bytes: int
    upload_bytes: int

    def __post_init__(self) -> None:
        for field, value in (
            ("download_bytes", self.download_bytes),
            ("upload_bytes", self.upload_bytes),
        ):
            if not 1 <= value <= MAX_PAYLOAD_BYTES:
                raise ConfigError(f"must be in [1, {MAX_PAYLOAD_BYTES}], got {value}", field=field)


BANDWIDTH_SIZES: Final[dict[str, BandwidthSize]] = {
    "test": BandwidthSize(download_bytes=64 << 10, upload_bytes=64 << 10),
    "local": BandwidthSize(download_bytes=2 << 20, upload_bytes=2 << 20),
    "cpu": BandwidthSize(download_bytes=8 << 20, upload_bytes=8 << 20),
    "gpu": BandwidthSize(download_bytes=32 << 20, upload_bytes=32 << 20),
}


def _check_args(seed: bytes, field: str, nbytes: int) -> None:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ChallengeError(f"must be {SEED_BYTES} bytes", field=field)
    if not 0 <= nbytes <= MAX_PAYLOAD_BYTES:
        raise ChallengeError(f"must be in [0, {MAX_PAYLOAD_BYTES}], got {nbytes}", field="nbytes")


def _iter_payload(label: bytes, seed: bytes, nbytes: int) -> Iterator[bytes]:
    for j, start in enumerate(range(0, nbytes, PAYLOAD_CHUNK_BYTES)):
        length = min(PAYLOAD_CHUNK_BYTES, nbytes - start)
        yield hashlib.shake_128(label + seed + j.to_bytes(4, "big")).digest(length)


def iter_download_payload(download_seed: bytes, nbytes: int) -> Iterator[bytes]:
    """The download payload in chunks of ``PAYLOAD_CHUNK_BYTES`` (the last may be shorter)."""
    _check_args(download_seed, "download_seed", nbytes)
    return _iter_payload(LABEL_DOWNLOAD_PAYLOAD, download_seed, nbytes)


def iter_upload_payload(upload_seed: bytes, nbytes: int) -> Iterator[bytes]:
    """The upload payload in chunks of ``PAYLOAD_CHUNK_BYTES`` (the last may be shorter)."""
    _check_args(upload_seed, "upload_seed", nbytes)
    return _iter_payload(LABEL_UPLOAD_PAYLOAD, upload_seed, nbytes)


def download_payload(download_seed: bytes, nbytes: int) -> bytes:
    """The ``nbytes`` the mixer sends to the node."""
    return b"".join(iter_download_payload(download_seed, nbytes))


def upload_payload(upload_seed: bytes, nbytes: int) -> bytes:
    """The ``nbytes`` the node sends to the mixer."""
    return b"".join(iter_upload_payload(upload_seed, nbytes))


class PayloadDigest:
    """Streaming payload digest: feed chunks as they arrive, read the digest at any time."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(LABEL_PAYLOAD_DIGEST)
        self.nbytes = 0

    def update(self, data: bytes) -> None:
        """Append ``data`` to the payload hashed so far."""
        self._hash.update(data)
        self.nbytes += len(data)

    def digest(self) -> bytes:
        """The digest of everything fed so far (feeding may continue)."""
        return self._hash.copy().digest()


def payload_digest(data: bytes) -> bytes:
    """``SHA-256(b"dnanet/payload-digest" || data)``: what the node signs for a download."""
    digest = PayloadDigest()
    digest.update(data)
    return digest.digest()


def _expected_digest(payload: Iterator[bytes]) -> bytes:
    digest = PayloadDigest()
    for chunk in payload:
        digest.update(chunk)
    return digest.digest()


def verify_download_digest(download_seed: bytes, nbytes: int, digest: bytes) -> None:
    """Check that ``digest`` is the digest of the ``nbytes`` download payload."""
    payload = iter_download_payload(download_seed, nbytes)
    # Verify the digest's shape, then its value
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise ChallengeError(f"must be {DIGEST_BYTES} bytes", field="digest")
    if digest != _expected_digest(payload):
        raise ChallengeError("does not match the download payload", field="digest")


def verify_upload(upload_seed: bytes, nbytes: int, received: bytes | PayloadDigest) -> None:
    """Check what the node uploaded: the raw bytes, or a ``PayloadDigest`` fed while receiving."""
    payload = iter_upload_payload(upload_seed, nbytes)
    got = len(received) if isinstance(received, bytes) else received.nbytes
    # Verify the length, then the content
    if got != nbytes:
        raise ChallengeError(f"got {got} bytes, expected {nbytes}", field="upload")
    if isinstance(received, bytes):
        if received != b"".join(payload):
            raise ChallengeError("bytes differ from the upload payload", field="upload")
    elif received.digest() != _expected_digest(payload):
        raise ChallengeError("digest does not match the upload payload", field="upload")


def throughput_bps(nbytes: int, micros: int) -> int:
    """Integer bytes per second for ``nbytes`` moved in ``micros`` microseconds (rounded down)."""
    if nbytes < 0:
        raise ChallengeError(f"must be >= 0, got {nbytes}", field="nbytes")
    if micros <= 0:
        raise ChallengeError(f"must be > 0, got {micros}", field="micros")
    return nbytes * 1_000_000 // micros


__all__ = [
    "BANDWIDTH_SIZES",
    "LABEL_DOWNLOAD_PAYLOAD",
    "LABEL_PAYLOAD_DIGEST",
    "LABEL_UPLOAD_PAYLOAD",
    "PAYLOAD_CHUNK_BYTES",
    "BandwidthSize",
    "PayloadDigest",
    "download_payload",
    "iter_download_payload",
    "iter_upload_payload",
    "payload_digest",
    "throughput_bps",
    "upload_payload",
    "verify_download_digest",
    "verify_upload",
]
