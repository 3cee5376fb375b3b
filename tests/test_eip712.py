"""EIP-712 hashing and signatures agree with eth_account; malformed signatures are rejected."""

from __future__ import annotations

from typing import Any

import coincurve
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address as eth_to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto.eip712 import (
    EIP712_DOMAIN,
    SECP256K1_HALF_N,
    SECP256K1_N,
    Domain,
    StructType,
    address_to_bytes,
    normalize_address,
    public_key_to_address,
    recover_signer,
    recover_typed,
    sign_digest,
    to_checksum_address,
    verify_signer,
)
from dnanet.crypto.hashing import keccak256, sha256
from dnanet.crypto.keys import Identity
from dnanet.errors import CryptoError, SignatureError
from dnanet.protocol.codec import (
    Message,
)
from dnanet.protocol.messages import (
    Challenge,
    ChallengeResponse,
    EpochSettlement,
    Punishment,
    ScoreBatch,
    ScoreReport,
)
from strategies import messages

DOMAIN = Domain(31337, "0x" + "11" * 20)
MIXERS = [Identity.from_entropy(sha256(b"mixer-%d" % i)) for i in range(4)]
SIGNED_CLASSES: list[type[Message]] = [
    EpochSettlement,
    Punishment,
    ScoreReport,
    ScoreBatch,
    Challenge,
    ChallengeResponse,
]
# secp256k1 field prime: r must be the x-coordinate of a curve point for recovery to succeed.
_P = 2**256 - 2**32 - 977


# -- strategies ---------------------------------------------------------------------------------
any_signed_message = st.sampled_from(SIGNED_CLASSES).flatmap(messages)
domains = st.builds(
    Domain,
    st.integers(1, 2**64),
    st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
)


# -- eth_account reference ----------------------------------------------------------------------
def _eth_types(struct: StructType) -> dict[str, list[dict[str, str]]]:
    types = {"EIP712Domain": [{"name": n, "type": t} for n, t in EIP712_DOMAIN.fields]}
    pending = [struct]
    while pending:
        s = pending.pop()
        types[s.name] = [{"name": n, "type": t} for n, t in s.fields]
        pending.extend(s.dependencies)
    return types


def _domain_dict(domain: Domain) -> dict[str, Any]:
    return {
        "name": domain.name,
        "version": domain.version,
        "chainId": domain.chain_id,
        "verifyingContract": domain.verifying_contract,
    }


def full_message(message: Message, domain: Domain) -> dict[str, Any]:
    struct = type(message).struct_type()
    return {
        "types": _eth_types(struct),
        "primaryType": struct.name,
        "domain": _domain_dict(domain),
        "message": message.to_wire(),
    }


# -- hashing ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(message=any_signed_message, domain=domains)
def test_hash_struct_and_separator_equal_eth_account(message: Message, domain: Domain) -> None:
    encoded = encode_typed_data(full_message=full_message(message, domain))
    assert message.hash_struct() == encoded.body
    assert domain.separator == encoded.header
    assert domain.digest(message.hash_struct()) == keccak256(
        b"\x19" + encoded.version + encoded.header + encoded.body
    )


@settings(max_examples=30, deadline=None)
@given(message=any_signed_message, domain=domains, signer=st.sampled_from(MIXERS))
def test_signature_equals_eth_account_and_recovers(
    message: Message, domain: Domain, signer: Identity
) -> None:
    ours = signer.sign_typed(domain, message.hash_struct())
    theirs = Account.sign_typed_data(signer.private_key, full_message=full_message(message, domain))
    assert ours == bytes(theirs.signature)
    assert recover_typed(domain, message.hash_struct(), ours) == signer.address
    verify_signer(domain.digest(message.hash_struct()), ours, signer.address)


@pytest.mark.parametrize("cls", SIGNED_CLASSES, ids=lambda c: c.__name__)
def test_encode_type_lists_every_field_with_eip712_type(cls: type[Message]) -> None:
    struct = cls.struct_type()
    assert struct.name == cls.__name__
    assert struct.encode_type.startswith(cls.__name__ + "(")
    assert struct.type_hash == keccak256(struct.encode_type.encode())
    assert set(dict(struct.fields).values()) <= {
        "uint256",
        "address",
        "bool",
        "bytes32",
        "bytes",
        "string",
    }


def test_nested_struct_matches_eth_account() -> None:
    # The EIP-712 specification's own example: Mail(Person from, Person to, string contents).
    person = StructType("Person", (("name", "string"), ("wallet", "address")))
    mail = StructType(
        "Mail", (("from", "Person"), ("to", "Person"), ("contents", "string")), (person,)
    )
    assert mail.encode_type == (
        "Mail(Person from,Person to,string contents)Person(string name,address wallet)"
    )
    alice = {"name": "Cow", "wallet": "0xcd2a3d9f938e13cd947ec05abc7fe734df8dd826"}
    bob = {"name": "Bob", "wallet": "0xbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}
    values = {"from": alice, "to": bob, "contents": "Hello, Bob!"}
    encoded = encode_typed_data(
        full_message={
            "types": _eth_types(mail),
            "primaryType": "Mail",
            "domain": _domain_dict(DOMAIN),
            "message": values,
        }
    )
    assert mail.hash_struct(values) == encoded.body
    # An already computed hashStruct may stand in for a nested struct.
    prehashed = {**values, "from": person.hash_struct(alice)}
    assert mail.hash_struct(prehashed) == encoded.body


def test_struct_type_rejects_unsupported_types() -> None:
    for bad in ("int256", "bytes16", "uint", "Person", "address[]"):
        with pytest.raises(CryptoError) as exc:
            StructType("S", (("x", bad),))
        assert exc.value.field == "x"


@pytest.mark.parametrize(
    ("ftype", "value"),
    [
        ("uint256", -1),
        ("uint256", True),
        ("uint256", "1"),
        ("bytes32", b"\x00" * 31),
        ("bytes32", "0x" + "00" * 32),
        ("address", "0x1234"),
    ],
)
def test_hash_struct_rejects_bad_values(ftype: str, value: Any) -> None:
    with pytest.raises(CryptoError):
        StructType("S", (("x", ftype),)).hash_struct({"x": value})


def test_domain_fields_change_the_separator() -> None:
    variants = [
        DOMAIN,
        Domain(1, DOMAIN.verifying_contract),
        Domain(DOMAIN.chain_id, "0x" + "22" * 20),
        Domain(DOMAIN.chain_id, DOMAIN.verifying_contract, name="other"),
        Domain(DOMAIN.chain_id, DOMAIN.verifying_contract, version="2"),
    ]
    assert len({d.separator for d in variants}) == len(variants)


# -- addresses ----------------------------------------------------------------------------------
@settings(max_examples=50)
@given(raw=st.binary(min_size=20, max_size=20))
def test_address_forms(raw: bytes) -> None:
    lower = "0x" + raw.hex()
    checksum = to_checksum_address(lower)
    assert checksum == eth_to_checksum_address(lower)
    assert normalize_address(checksum) == lower
    assert address_to_bytes(checksum) == raw
    assert address_to_bytes(raw) == raw


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0x",
        "0x" + "11" * 19,
        "0x" + "11" * 21,
        "11" * 21,
        "0x" + "zz" * 20,
        "0x" + "ab" * 19 + "  ",
        "0x" + " ab" * 13 + " a",
        b"\x11" * 19,
        5,
        None,
    ],
)
def test_malformed_addresses_are_rejected(bad: Any) -> None:
    with pytest.raises(CryptoError):
        address_to_bytes(bad)


# -- signature rejections -----------------------------------------------------------------------
def _valid_signature(digest: bytes = b"\x42" * 32) -> tuple[bytes, bytes, Identity]:
    signer = MIXERS[0]
    return digest, sign_digest(signer.private_key, digest), signer


def _with(sig: bytes, *, r: int | None = None, s: int | None = None, v: int | None = None) -> bytes:
    r_b = sig[:32] if r is None else r.to_bytes(32, "big")
    s_b = sig[32:64] if s is None else s.to_bytes(32, "big")
    v_b = sig[64:] if v is None else bytes([v])
    return r_b + s_b + v_b


def test_signature_is_low_s_with_v_27_or_28() -> None:
    for i in range(20):
        digest = sha256(b"digest-%d" % i)
        sig = sign_digest(MIXERS[i % 4].private_key, digest)
        assert len(sig) == 65 and sig[64] in (27, 28)
        assert 0 < int.from_bytes(sig[32:64], "big") <= SECP256K1_HALF_N
        assert recover_signer(digest, sig) == MIXERS[i % 4].address


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda sig: b"", "missing"),
        (lambda sig: sig[:64], "65 bytes"),
        (lambda sig: sig + b"\x00", "65 bytes"),
        (lambda sig: _with(sig, v=0), "v must be"),
        (lambda sig: _with(sig, v=1), "v must be"),
        (lambda sig: _with(sig, v=26), "v must be"),
        (lambda sig: _with(sig, v=29), "v must be"),
        (lambda sig: _with(sig, r=0), "r is out of range"),
        (lambda sig: _with(sig, r=SECP256K1_N), "r is out of range"),
        (lambda sig: _with(sig, r=2**256 - 1), "r is out of range"),
        (lambda sig: _with(sig, s=0), "s is zero or high"),
        (lambda sig: _with(sig, s=SECP256K1_HALF_N + 1), "s is zero or high"),
        (lambda sig: _with(sig, s=SECP256K1_N), "s is zero or high"),
    ],
)
def test_malformed_signatures_are_rejected(mutate: Any, needle: str) -> None:
    digest, sig, signer = _valid_signature()
    bad = mutate(sig)
    with pytest.raises(SignatureError, match=needle):
        recover_signer(digest, bad)
    with pytest.raises(SignatureError):
        verify_signer(digest, bad, signer.address)


def test_high_s_twin_is_rejected_although_mathematically_valid() -> None:
    for i in range(8):
        digest, sig, signer = _valid_signature(sha256(b"high-s-%d" % i))
        s = int.from_bytes(sig[32:64], "big")
        twin = _with(sig, s=SECP256K1_N - s, v=55 - sig[64])  # 27 <-> 28
        # The twin recovers the same key on the bare curve (EIP-2 malleability)...
        key = coincurve.PublicKey.from_signature_and_message(
            twin[:64] + bytes([twin[64] - 27]), digest, hasher=None
        )
        assert public_key_to_address(key) == signer.address
        # ...yet dnanet refuses it, as the contracts do.
        with pytest.raises(SignatureError, match="high"):
            recover_signer(digest, twin)


def _non_x_coordinate() -> int:
    """The smallest r for which x^3 + 7 has no square root mod p: no point, no recovery."""
    r = 1
    while pow((r**3 + 7) % _P, (_P - 1) // 2, _P) == 1:
        r += 1
    return r


def test_garbage_signature_without_a_curve_point_is_rejected() -> None:
    digest, sig, _ = _valid_signature()
    bad = _with(sig, r=_non_x_coordinate())
    with pytest.raises(SignatureError, match="does not recover"):
        recover_signer(digest, bad)


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, SECP256K1_N - 1),
    s=st.integers(1, SECP256K1_HALF_N),
    v=st.sampled_from([27, 28]),
    digest=st.binary(min_size=32, max_size=32),
)
def test_random_signatures_never_verify_as_the_signer(
    r: int, s: int, v: int, digest: bytes
) -> None:
    garbage = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])
    with pytest.raises(SignatureError):
        verify_signer(digest, garbage, MIXERS[0].address)


def test_digest_of_wrong_length_is_rejected() -> None:
    digest, sig, _ = _valid_signature()
    with pytest.raises(SignatureError):
        recover_signer(digest[:31], sig)
    with pytest.raises(CryptoError):
        sign_digest(MIXERS[0].private_key, digest[:31])


def test_verify_signer_rejects_another_signer_and_accepts_any_case() -> None:
    digest, sig, signer = _valid_signature()
    verify_signer(digest, sig, to_checksum_address(signer.address))
    with pytest.raises(SignatureError, match="expected"):
        verify_signer(digest, sig, MIXERS[1].address)


@pytest.mark.parametrize(
    "other",
    [
        Domain(1, DOMAIN.verifying_contract),
        Domain(DOMAIN.chain_id, "0x" + "22" * 20),
        Domain(DOMAIN.chain_id, DOMAIN.verifying_contract, name="dnanet-fork"),
        Domain(DOMAIN.chain_id, DOMAIN.verifying_contract, version="2"),
    ],
    ids=["chainId", "verifyingContract", "name", "version"],
)
def test_signature_under_another_domain_does_not_verify(other: Domain) -> None:
    batch = ScoreBatch(
        epoch=3, round=1, mixer=MIXERS[0].address, reports_root=b"\x01" * 32, report_count=1
    )
    sig = MIXERS[0].sign_typed(DOMAIN, batch.hash_struct())
    assert recover_typed(DOMAIN, batch.hash_struct(), sig) == MIXERS[0].address
    assert recover_typed(other, batch.hash_struct(), sig) != MIXERS[0].address
    with pytest.raises(SignatureError):
        verify_signer(other.digest(batch.hash_struct()), sig, MIXERS[0].address)
