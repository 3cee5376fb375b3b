"""ECVRF-EDWARDS25519-SHA512-TAI: RFC 9381 vectors, every rejection, RFC torsion rules."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto import vrf
from dnanet.errors import CryptoError, InvalidProof

P = 2**255 - 19
Q = 2**252 + 27742317777372353535851937790883648493
IDENTITY = b"\x01" + bytes(31)

VECTORS: list[dict[str, str]] = json.loads(
    (Path(__file__).parent / "vectors" / "vrf_rfc9381.json").read_text()
)["vectors"]

# Canonical encodings of the eight points of order dividing 8 (the torsion group is
# cyclic of order 8), written out independently of the module's copy.
SMALL_ORDER = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
]
ORDER_2 = SMALL_ORDER[1]
ORDER_8 = SMALL_ORDER[4]

PROPERTY = settings(derandomize=True, deadline=None, max_examples=40)


def le32(n: int) -> bytes:
    return n.to_bytes(32, "little")


def add(a: bytes, b: bytes) -> bytes:
    out: bytes = sodium.crypto_core_ed25519_add(a, b)
    return out


def on_curve(encoding: bytes) -> bool:
    """libsodium's own view; it accepts non-canonical encodings."""
    try:
        add(encoding, encoding)
    except nacl.exceptions.RuntimeError:
        return False
    return True


def mul_reference(k: int, point: bytes) -> bytes:
    """k*point by plain double-and-add over libsodium's complete addition."""
    result, addend = IDENTITY, point
    while k:
        if k & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        k >>= 1
    return result


def order_of_small(point: bytes) -> int:
    order, acc = 1, point
    while acc != IDENTITY:
        acc, order = add(acc, point), order + 1
    return order


def vector_bytes(v: dict[str, str], key: str) -> bytes:
    return bytes.fromhex(v[key])


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def with_s(pi: bytes, s: int) -> bytes:
    return pi[:48] + le32(s)


SK = bytes.fromhex(VECTORS[0]["sk"])
PK = bytes.fromhex(VECTORS[0]["pk"])
PI = bytes.fromhex(VECTORS[0]["pi"])
ALPHA = bytes.fromhex(VECTORS[0]["alpha"])


# --- RFC 9381 Appendix B.3 ---


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_rfc9381_vector_end_to_end(v: dict[str, str]) -> None:
    sk, pk, alpha = vector_bytes(v, "sk"), vector_bytes(v, "pk"), vector_bytes(v, "alpha")
    assert vrf.public_key(sk) == pk
    pi = vrf.prove(sk, alpha)
    assert pi.hex() == v["pi"]
    assert vrf.verify(pk, pi, alpha).hex() == v["beta"]
    assert vrf.proof_to_hash(pi).hex() == v["beta"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_rfc9381_vector_intermediate_values(v: dict[str, str]) -> None:
    sk, pk, alpha = vector_bytes(v, "sk"), vector_bytes(v, "pk"), vector_bytes(v, "alpha")
    digest = hashlib.sha512(sk).digest()
    clamped = bytearray(digest[:32])
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    assert clamped.hex() == v["x"]
    x, suffix = vrf._expand_secret(sk)
    assert (x, suffix) == (int.from_bytes(clamped, "little") % Q, digest[32:])
    h = vrf._encode_to_curve(pk, alpha)
    assert h.hex() == v["h"]
    assert hashlib.sha512(suffix + h).hexdigest() == v["k_string"]
    k = vrf._nonce(suffix, h)
    assert le32(k).hex() == v["k"]
    u = sodium.crypto_scalarmult_ed25519_base_noclamp(le32(k))
    hk = sodium.crypto_scalarmult_ed25519_noclamp(le32(k), h)
    assert (u.hex(), hk.hex()) == (v["u"], v["v"])
    pi = vector_bytes(v, "pi")
    gamma, c = pi[:32], pi[32:48]
    assert gamma == sodium.crypto_scalarmult_ed25519_noclamp(le32(x), h)
    assert vrf._challenge(pk, h, gamma, u, hk) == c
    assert int.from_bytes(pi[48:], "little") == (k + int.from_bytes(c, "little") * x) % Q


def test_rfc9381_proof_rejected_for_other_alpha_and_other_key() -> None:
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(PK, PI, ALPHA + b"\x00")
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(bytes.fromhex(VECTORS[1]["pk"]), PI, ALPHA)


# --- secret key ---


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_length_secret_key_is_crypto_error(length: int) -> None:
    with pytest.raises(CryptoError, match="sk: must be 32 bytes"):
        vrf.public_key(bytes(length))
    with pytest.raises(CryptoError, match="sk: must be 32 bytes"):
        vrf.prove(bytes(length), b"alpha")


def test_non_bytes_inputs_are_rejected() -> None:
    with pytest.raises(CryptoError, match="sk: must be bytes"):
        vrf.public_key("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="alpha: must be bytes"):
        vrf.prove(SK, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidProof, match="alpha: must be bytes"):
        vrf.verify(PK, PI, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidProof, match="pk: must be bytes"):
        vrf.verify(PK.hex(), PI, ALPHA)  # type: ignore[arg-type]
    with pytest.raises(InvalidProof, match="pi: must be bytes"):
        vrf.proof_to_hash(None)  # type: ignore[arg-type]


def test_bytes_like_inputs_are_accepted() -> None:
    beta = vrf.verify(bytearray(PK), memoryview(PI), bytearray(ALPHA))  # type: ignore[arg-type]
    assert beta == vrf.proof_to_hash(bytearray(PI))  # type: ignore[arg-type]
    assert vrf.prove(bytearray(SK), memoryview(ALPHA)) == PI  # type: ignore[arg-type]


# --- public key ---


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_length_public_key(length: int) -> None:
    with pytest.raises(InvalidProof, match="pk: must be 32 bytes"):
        vrf.verify((PK * 2)[:length], PI, ALPHA)


def test_small_order_table_is_the_whole_torsion_group() -> None:
    assert len(set(SMALL_ORDER)) == 8
    assert set(SMALL_ORDER) == vrf._SMALL_ORDER_POINTS
    orders = sorted(order_of_small(p) for p in SMALL_ORDER)
    assert orders == [1, 2, 4, 4, 8, 8, 8, 8]
    for point in SMALL_ORDER:
        assert vrf._is_canonical_point(point)


@pytest.mark.parametrize("point", SMALL_ORDER, ids=[p.hex()[:8] for p in SMALL_ORDER])
def test_small_order_public_key_is_rejected(point: bytes) -> None:
    with pytest.raises(InvalidProof, match="small order"):
        vrf.verify(point, PI, ALPHA)


@pytest.mark.parametrize(
    "encoding",
    [
        le32(P + 1),  # identity, y = p + 1
        le32(P),  # the order-4 point with y = 0, as y = p
        IDENTITY[:31] + b"\x80",  # identity with x "negative zero"
        le32(P - 1)[:31] + b"\xff",  # order-2 point with x "negative zero"
        le32(2**255 - 1),  # y = 2^255 - 1
    ],
)
def test_non_canonical_small_order_public_key_is_rejected(encoding: bytes) -> None:
    assert on_curve(encoding)  # libsodium would decode it: the check must be ours
    with pytest.raises(InvalidProof, match="pk: public key is not a canonical"):
        vrf.verify(encoding, PI, ALPHA)


def test_non_canonical_encoding_of_an_ordinary_point_is_rejected() -> None:
    y = next(y for y in range(2, 19) if on_curve(le32(y)))
    assert le32(y) not in vrf._SMALL_ORDER_POINTS
    for sign in (0, 1 << 255):
        encoding = le32(y + P + sign)
        assert on_curve(encoding)
        with pytest.raises(InvalidProof, match="pk: public key is not a canonical"):
            vrf.verify(encoding, PI, ALPHA)


def test_public_key_off_the_curve_is_rejected() -> None:
    y = next(y for y in range(2, 50) if not on_curve(le32(y)))
    with pytest.raises(InvalidProof, match="pk: public key is not a point on edwards25519"):
        vrf.verify(le32(y), PI, ALPHA)


# --- proof decoding ---


@pytest.mark.parametrize("length", [0, 79, 81, 160])
def test_wrong_length_proof(length: int) -> None:
    pi = (PI * 2)[:length]
    with pytest.raises(InvalidProof, match="pi: must be 80 bytes"):
        vrf.verify(PK, pi, ALPHA)
    with pytest.raises(InvalidProof, match="pi: must be 80 bytes"):
        vrf.proof_to_hash(pi)


@pytest.mark.parametrize(
    "gamma",
    [le32(P + 1), IDENTITY[:31] + b"\x80", le32(2**256 - 1)],
    ids=["y=p+1", "negative-zero", "all-ones"],
)
def test_non_canonical_gamma_is_rejected(gamma: bytes) -> None:
    with pytest.raises(InvalidProof, match="Gamma is not a canonical"):
        vrf.verify(PK, gamma + PI[32:], ALPHA)
    with pytest.raises(InvalidProof, match="Gamma is not a canonical"):
        vrf.proof_to_hash(gamma + PI[32:])


def test_non_canonical_gamma_of_an_ordinary_point_is_rejected() -> None:
    y = next(y for y in range(2, 19) if on_curve(le32(y)))
    pi = le32(y + P) + PI[32:]
    with pytest.raises(InvalidProof, match="Gamma is not a canonical"):
        vrf.verify(PK, pi, ALPHA)


def test_gamma_off_the_curve_is_rejected() -> None:
    y = next(y for y in range(2, 50) if not on_curve(le32(y)))
    pi = le32(y) + PI[32:]
    with pytest.raises(InvalidProof, match="pi: Gamma is not a point on edwards25519"):
        vrf.verify(PK, pi, ALPHA)
    with pytest.raises(InvalidProof, match="Gamma is not a point on edwards25519"):
        vrf.proof_to_hash(pi)


def test_small_order_gamma_decodes_but_does_not_verify() -> None:
    pi = IDENTITY + PI[32:]
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(PK, pi, ALPHA)


def test_s_not_reduced_is_rejected() -> None:
    s = int.from_bytes(PI[48:], "little")
    # Without the s < q check, s + q multiplies exactly like s and the proof would pass.
    assert sodium.crypto_scalarmult_ed25519_base_noclamp(le32(s + Q)) == (
        sodium.crypto_scalarmult_ed25519_base_noclamp(le32(s))
    )
    for bad in (s + Q, Q, 2**256 - 1):
        with pytest.raises(InvalidProof, match="s is not reduced"):
            vrf.verify(PK, with_s(PI, bad), ALPHA)
        with pytest.raises(InvalidProof, match="s is not reduced"):
            vrf.proof_to_hash(with_s(PI, bad))


def test_zero_c_and_zero_s_do_not_verify() -> None:
    for pi in (PI[:32] + bytes(16) + PI[48:], with_s(PI, 0), PI[:32] + bytes(48)):
        with pytest.raises(InvalidProof, match="does not verify"):
            vrf.verify(PK, pi, ALPHA)


@pytest.mark.parametrize(
    ("part", "bits"), [("Gamma", range(0, 256)), ("c", range(256, 384)), ("s", range(384, 640))]
)
def test_every_flipped_bit_is_rejected(part: str, bits: range) -> None:
    for bit in bits:
        with pytest.raises(InvalidProof):
            vrf.verify(PK, flip(PI, bit), ALPHA)


# --- RFC 9381 torsion rules: libsodium refuses these points, the RFC does not ---


def forge_with_torsion(
    y_torsion: bytes, gamma_torsion: bytes, accept: Callable[[int], bool]
) -> tuple[bytes, bytes, bytes]:
    """A proof by SK's owner for pk + y_torsion with Gamma + gamma_torsion, whose c passes
    `accept`: (pk, pi, alpha). The verifier's U and V then differ from the prover's by
    c*y_torsion and c*gamma_torsion, so the RFC accepts exactly when both vanish."""
    x, suffix = vrf._expand_secret(SK)
    pk = add(PK, y_torsion)
    for counter in range(200):
        alpha = b"torsion-" + bytes((counter,))
        h = vrf._encode_to_curve(pk, alpha)
        gamma = add(sodium.crypto_scalarmult_ed25519_noclamp(le32(x), h), gamma_torsion)
        k = vrf._nonce(suffix, h)
        u = sodium.crypto_scalarmult_ed25519_base_noclamp(le32(k))
        v = sodium.crypto_scalarmult_ed25519_noclamp(le32(k), h)
        c = vrf._challenge(pk, h, gamma, u, v)
        if accept(int.from_bytes(c, "little")):
            s = (k + int.from_bytes(c, "little") * x) % Q
            return pk, gamma + c + le32(s), alpha
    raise AssertionError("no suitable challenge in 200 tries")


@pytest.mark.parametrize("torsion", [ORDER_2, ORDER_8], ids=["order2", "order8"])
def test_mixed_order_public_key_follows_the_rfc(torsion: bytes) -> None:
    order = order_of_small(torsion)
    pk, pi, alpha = forge_with_torsion(torsion, IDENTITY, lambda c: c % order == 0)
    assert not sodium.crypto_core_ed25519_is_valid_point(pk)  # libsodium refuses it
    assert vrf.verify(pk, pi, alpha) == vrf.proof_to_hash(pi)
    pk, pi, alpha = forge_with_torsion(torsion, IDENTITY, lambda c: c % order != 0)
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(pk, pi, alpha)


@pytest.mark.parametrize("torsion", [ORDER_2, ORDER_8], ids=["order2", "order8"])
def test_mixed_order_gamma_follows_the_rfc_and_keeps_beta(torsion: bytes) -> None:
    order = order_of_small(torsion)
    pk, pi, alpha = forge_with_torsion(IDENTITY, torsion, lambda c: c % order == 0)
    assert pk == PK
    # The cofactor in proof_to_hash erases the torsion: beta is the honest one.
    assert vrf.verify(pk, pi, alpha) == vrf.verify(PK, vrf.prove(SK, alpha), alpha)
    pk, pi, alpha = forge_with_torsion(IDENTITY, torsion, lambda c: c % order != 0)
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(pk, pi, alpha)


@settings(derandomize=True, deadline=None, max_examples=12)
@given(
    k=st.integers(min_value=0, max_value=Q - 1),
    seed=st.binary(min_size=32, max_size=32),
    torsion=st.sampled_from(SMALL_ORDER),
)
def test_scalar_mult_of_any_point_matches_double_and_add(
    k: int, seed: bytes, torsion: bytes
) -> None:
    point = add(vrf.public_key(seed), torsion)
    assert vrf._mul(k, point, "point", "pk") == mul_reference(k, point)
    assert vrf._mul(k, torsion, "point", "pk") == mul_reference(k, torsion)


# --- properties ---


@PROPERTY
@given(sk=st.binary(min_size=32, max_size=32), alpha=st.binary(max_size=64))
def test_prove_verify_round_trip(sk: bytes, alpha: bytes) -> None:
    pk = vrf.public_key(sk)
    pi = vrf.prove(sk, alpha)
    assert len(pi) == 80
    beta = vrf.verify(pk, pi, alpha)
    assert len(beta) == 64
    assert beta == vrf.proof_to_hash(pi)


@PROPERTY
@given(sk=st.binary(min_size=32, max_size=32), alpha=st.binary(max_size=64))
def test_prove_is_deterministic(sk: bytes, alpha: bytes) -> None:
    assert vrf.prove(sk, alpha) == vrf.prove(bytes(sk), bytes(alpha))


@PROPERTY
@given(sk=st.binary(min_size=32, max_size=32))
def test_public_key_is_the_ed25519_key(sk: bytes) -> None:
    assert vrf.public_key(sk) == bytes(nacl.signing.SigningKey(sk).verify_key)


@PROPERTY
@given(
    sk=st.binary(min_size=32, max_size=32),
    alpha=st.binary(max_size=32),
    other=st.binary(max_size=32),
)
def test_proof_is_bound_to_alpha(sk: bytes, alpha: bytes, other: bytes) -> None:
    if alpha == other:
        return
    with pytest.raises(InvalidProof, match="does not verify"):
        vrf.verify(vrf.public_key(sk), vrf.prove(sk, alpha), other)


def test_vector_file_fields_are_well_formed() -> None:
    lengths = {"sk": 32, "pk": 32, "x": 32, "h": 32, "k_string": 64}
    lengths |= {"k": 32, "u": 32, "v": 32, "pi": 80, "beta": 64}
    assert len(VECTORS) == 3
    for v in VECTORS:
        for key, length in lengths.items():
            assert len(bytes.fromhex(v[key])) == length, (v["name"], key)
