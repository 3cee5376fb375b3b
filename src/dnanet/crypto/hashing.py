"""Hash functions used by the protocol: Keccak-256 (Ethereum) and SHA-256."""

from __future__ import annotations

import hashlib

try:  # the C extension is ~5x faster than the pycryptodome fallback
    from sha3 import keccak_256 as _keccak_256

    def keccak256(data: bytes) -> bytes:
        """Keccak-256 as used by Ethereum (not SHA3-256)."""
        return _keccak_256(data).digest()  # type: ignore[no-any-return]

except ImportError:  # pragma: no cover - depends on the installed extras
    from eth_hash.auto import keccak as _keccak

    def keccak256(data: bytes) -> bytes:
        """Keccak-256 as used by Ethereum (not SHA3-256)."""
        return bytes(_keccak(data))


def sha256(data: bytes) -> bytes:
    """SHA-256."""
    return hashlib.sha256(data).digest()


__all__ = ["keccak256", "sha256"]
