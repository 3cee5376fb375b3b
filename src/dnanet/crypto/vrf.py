"""ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite_string 0x03) on libsodium.

    public_key(sk) -> pk              32-byte seed -> 32-byte key (RFC 8032 key generation)
    prove(sk, alpha) -> pi            80 bytes: Gamma (32) || c (16) || s (32)
    verify(pk, pi, alpha) -> beta     64-byte VRF output; raises InvalidProof otherwise
    proof_to_hash(pi) -> beta         beta of a proof already known to be valid

All point arithmetic runs in libsodium (through PyNaCl). libsodium's variable-base
scalar multiplication refuses points outside the prime-order subgroup, while RFC 9381
accepts any curve point as Gamma and any non-small-order point as the public key, so
those rare inputs take a slower path that splits off the torsion component
(`_mul`). Every point this module reads must be a canonical RFC 8032 encoding.

Cost: verify makes one fixed-base and three variable-base multiplications plus six
point doublings; libsodium re-checks subgroup membership inside every variable-base
multiplication, which makes each about 1.7 Ed25519 verifications.
"""

from __future__ import annotations

import hashlib
from typing import Final

from nacl import bindings as _sodium
from nacl.exceptions import RuntimeError as _SodiumRefused

from dnanet.errors import CryptoError, InvalidProof

__all__ = ["InvalidProof", "proof_to_hash", "prove", "public_key", "verify"]

SUITE_STRING: Final = b"\x03"
SEED_LEN: Final = 32
POINT_LEN: Final = 32
C_LEN: Final = 16
SCALAR_LEN: Final = 32
PROOF_LEN: Final = POINT_LEN + C_LEN + SCALAR_LEN
OUTPUT_LEN: Final = 64

_P: Final = 2**255 - 19
_Q: Final = 2**252 + 27742317777372353535851937790883648493
_Y_MASK: Final = (1 << 255) - 1
_INV8: Final = pow(8, -1, _Q).to_bytes(SCALAR_LEN, "little")
_IDENTITY: Final = b"\x01" + bytes(31)

# Domain separators of RFC 9381 sections 5.4.1.1, 5.4.3 and 5.2.
_ENCODE_FRONT: Final = b"\x01"
_CHALLENGE_FRONT: Final = b"\x02"
_PROOF_TO_HASH_FRONT: Final = b"\x03"
_BACK: Final = b"\x00"

# The eight points of order dividing 8, canonically encoded. Non-canonical encodings are
# rejected before this lookup, so membership is exactly "cofactor * Y is the identity".
_SMALL_ORDER_POINTS: Final = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    )
)


# --- libsodium wrappers (typed; every libsodium refusal surfaces as _SodiumRefused) ---


def _add(a: bytes, b: bytes) -> bytes:
    out: bytes = _sodium.crypto_core_ed25519_add(a, b)
    return out


def _sub(a: bytes, b: bytes) -> bytes:
    out: bytes = _sodium.crypto_core_ed25519_sub(a, b)
    return out


def _base_mul(k: int) -> bytes:
    """k*B for 0 <= k < q (libsodium refuses k = 0, whose product is the identity)."""
    if k == 0:
        return _IDENTITY
    out: bytes = _sodium.crypto_scalarmult_ed25519_base_noclamp(k.to_bytes(SCALAR_LEN, "little"))
    return out


# --- encodings ---


def _as_bytes(value: object, field: str, length: int | None, error: type[CryptoError]) -> bytes:
    """value as bytes, of `length` bytes when given; raises `error` naming `field` otherwise."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise error(f"must be bytes, got {type(value).__name__}", field=field)
    data = bytes(value)
    if length is not None and len(data) != length:
        raise error(f"must be {length} bytes, got {len(data)}", field=field)
    return data


def _is_canonical_point(encoding: bytes) -> bool:
    """Whether a 32-byte string passes RFC 8032 section 5.1.3's canonical checks.

    Rejects y >= p and a set sign bit when x = 0 (y = 1 or y = p - 1). Whether the
    point is on the curve is left to libsodium, which refuses points that are not.
    """
    y = int.from_bytes(encoding, "little") & _Y_MASK
    if y >= _P:
        return False
    return not (encoding[31] & 0x80 and (y == 1 or y == _P - 1))


def _times8(point: bytes) -> bytes | None:
    """cofactor * point, or None when the encoding is not a point on the curve."""
    try:
        p2 = _add(point, point)
    except _SodiumRefused:
        return None
    p4 = _add(p2, p2)
    return _add(p4, p4)


def _mul(k: int, point: bytes, name: str, field: str) -> bytes:
    """k*point for 0 <= k < q and any canonically encoded curve point, torsion included.

    Raises InvalidProof ("<name> is not a point ...", `field`) for an encoding off the curve.
    """
    if k == 0:
        return _IDENTITY
    scalar = k.to_bytes(SCALAR_LEN, "little")
    try:
        out: bytes = _sodium.crypto_scalarmult_ed25519_noclamp(scalar, point)
        return out
    except _SodiumRefused:
        pass  # small order, mixed order, or off the curve: handled below
    # Split point = M + T with M in the prime-order subgroup and 8*T = identity:
    # M = (8^-1 mod q) * (8*point), and k*T = (k mod 8)*T.
    point8 = _times8(point)
    if point8 is None:
        raise InvalidProof(f"{name} is not a point on edwards25519", field=field)
    if point8 == _IDENTITY:
        main = _IDENTITY
        result = _IDENTITY
    else:
        main = _sodium.crypto_scalarmult_ed25519_noclamp(_INV8, point8)
        result = _sodium.crypto_scalarmult_ed25519_noclamp(scalar, main)
    torsion = _sub(point, main)
    for _ in range(k % 8):
        result = _add(result, torsion)
    return result


# --- RFC 9381 building blocks ---


def _expand_secret(sk: bytes) -> tuple[int, bytes]:
    """(x mod q, SHA-512(sk)[32:]) for a 32-byte seed, as in RFC 8032 section 5.1.5."""
    sk = _as_bytes(sk, "sk", SEED_LEN, CryptoError)
    digest = hashlib.sha512(sk).digest()
    clamped = bytearray(digest[:32])
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    return int.from_bytes(clamped, "little") % _Q, digest[32:]


def _encode_to_curve(salt: bytes, alpha: bytes) -> bytes:
    """H = ECVRF_encode_to_curve_try_and_increment(salt, alpha) (section 5.4.1.1).

    Guarantees a point of the prime-order subgroup other than the identity.
    """
    prefix = SUITE_STRING + _ENCODE_FRONT + salt + alpha
    for ctr in range(256):
        candidate = hashlib.sha512(prefix + bytes((ctr,)) + _BACK).digest()[:POINT_LEN]
        if not _is_canonical_point(candidate):
            continue
        h = _times8(candidate)
        if h is not None and h != _IDENTITY:
            return h
    # Each try succeeds with probability about 1/2; 256 failures do not happen.
    raise CryptoError("encode_to_curve found no point in 256 tries", field="alpha")


def _nonce(hashed_sk_suffix: bytes, h: bytes) -> int:
    """k of section 5.4.2.2: SHA-512(SHA-512(sk)[32:] || H) mod q."""
    digest = hashlib.sha512(hashed_sk_suffix + h).digest()
    return int.from_bytes(digest, "little") % _Q


def _challenge(y: bytes, h: bytes, gamma: bytes, u: bytes, v: bytes) -> bytes:
    """The 16-byte challenge string c of section 5.4.3 over (Y, H, Gamma, U, V)."""
    data = SUITE_STRING + _CHALLENGE_FRONT + y + h + gamma + u + v + _BACK
    return hashlib.sha512(data).digest()[:C_LEN]


def _decode_proof(pi: bytes) -> tuple[bytes, int, int]:
    """(Gamma encoding, c, s) of section 5.4.4 for an 80-byte pi; Gamma is canonical, s < q."""
    gamma = pi[:POINT_LEN]
    if not _is_canonical_point(gamma):
        raise InvalidProof("Gamma is not a canonical point encoding", field="pi")
    c = int.from_bytes(pi[POINT_LEN : POINT_LEN + C_LEN], "little")
    s = int.from_bytes(pi[POINT_LEN + C_LEN :], "little")
    if s >= _Q:
        raise InvalidProof("s is not reduced modulo the group order", field="pi")
    return gamma, c, s


def _validate_key(pk: bytes) -> None:
    """Section 5.4.5 for a 32-byte encoding: canonical and not of small order.

    Whether pk lies on the curve at all is checked where it is first multiplied.
    """
    if not _is_canonical_point(pk):
        raise InvalidProof("public key is not a canonical point encoding", field="pk")
    if pk in _SMALL_ORDER_POINTS:
        raise InvalidProof("public key is a point of small order", field="pk")


def _gamma_to_hash(gamma: bytes) -> bytes:
    gamma8 = _times8(gamma)
    if gamma8 is None:
        raise InvalidProof("Gamma is not a point on edwards25519", field="pi")
    return hashlib.sha512(SUITE_STRING + _PROOF_TO_HASH_FRONT + gamma8 + _BACK).digest()


# --- public API ---


def public_key(sk: bytes) -> bytes:
    """The 32-byte VRF public key of a 32-byte secret seed (equal to its Ed25519 key)."""
    x, _ = _expand_secret(sk)
    return _base_mul(x)


def prove(sk: bytes, alpha: bytes) -> bytes:
    """The 80-byte proof pi = Gamma || c || s for alpha (section 5.1); deterministic."""
    x, suffix = _expand_secret(sk)
    alpha = _as_bytes(alpha, "alpha", None, CryptoError)
    y = _base_mul(x)
    h = _encode_to_curve(y, alpha)
    # H is in the prime-order subgroup and x != 0 mod q, so libsodium accepts both.
    gamma: bytes = _sodium.crypto_scalarmult_ed25519_noclamp(x.to_bytes(SCALAR_LEN, "little"), h)
    k = _nonce(suffix, h)
    c = _challenge(y, h, gamma, _base_mul(k), _mul(k, h, "H", "alpha"))
    s: bytes = _sodium.crypto_core_ed25519_scalar_add(
        k.to_bytes(SCALAR_LEN, "little"),
        _sodium.crypto_core_ed25519_scalar_mul(
            c + bytes(SCALAR_LEN - C_LEN), x.to_bytes(SCALAR_LEN, "little")
        ),
    )
    return gamma + c + s


def proof_to_hash(pi: bytes) -> bytes:
    """beta (64 bytes) of a proof (section 5.2); meaningful only once `verify` accepted pi."""
    gamma, _, _ = _decode_proof(_as_bytes(pi, "pi", PROOF_LEN, InvalidProof))
    return _gamma_to_hash(gamma)


def verify(pk: bytes, pi: bytes, alpha: bytes) -> bytes:
    """beta (64 bytes) if pi is a valid proof for alpha under pk (section 5.3).

    Raises InvalidProof for any malformed, non-canonical, small-order or wrong input.
    """
    pk = _as_bytes(pk, "pk", POINT_LEN, InvalidProof)
    pi = _as_bytes(pi, "pi", PROOF_LEN, InvalidProof)
    alpha = _as_bytes(alpha, "alpha", None, InvalidProof)
    _validate_key(pk)
    gamma, c, s = _decode_proof(pi)
    h = _encode_to_curve(pk, alpha)
    u = _sub(_base_mul(s), _mul(c, pk, "public key", "pk"))
    v = _sub(_mul(s, h, "H", "alpha"), _mul(c, gamma, "Gamma", "pi"))
    # Verify the recomputed challenge equals c (both are 16-byte little-endian strings).
    if _challenge(pk, h, gamma, u, v) != pi[POINT_LEN : POINT_LEN + C_LEN]:
        raise InvalidProof("proof does not verify for this public key and alpha", field="pi")
    return _gamma_to_hash(gamma)
