"""Identities and keystore v3 documents: eth_account compatible, errors that say what is wrong."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto.eip712 import SECP256K1_N, Domain, recover_signer, recover_typed
from dnanet.crypto.hashing import sha256
from dnanet.crypto.keys import Identity, decrypt_keystore, encrypt_keystore
from dnanet.errors import CryptoError, KeystoreError

ALICE = Identity.from_entropy(sha256(b"mixer-0"))
BOB = Identity.from_entropy(sha256(b"mixer-1"))
PASSWORD = "correct horse battery staple"

# A keystore v3 document from the Web3 Secret Storage definition (PBKDF2 test vector), written by
# neither dnanet nor eth_account: the format geth and MetaMask exchange.
SPEC_PBKDF2_VECTOR: dict[str, Any] = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2",
        "kdfparams": {
            "c": 262144,
            "dklen": 32,
            "prf": "hmac-sha256",
            "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd",
        },
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}
SPEC_PBKDF2_PASSWORD = "testpassword"
SPEC_PBKDF2_KEY = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"


@pytest.fixture(scope="module")
def alice_keystore() -> dict[str, Any]:
    return encrypt_keystore(ALICE, PASSWORD, light=True)


# -- identities ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    entropy=st.binary(min_size=32, max_size=32).filter(
        lambda b: 0 < int.from_bytes(b) < SECP256K1_N
    )
)
def test_identity_address_equals_eth_account(entropy: bytes) -> None:
    identity = Identity.from_entropy(entropy)
    assert identity.private_key == entropy
    assert identity.address == Account.from_key(entropy).address.lower()
    assert identity.address == identity.address.lower() and len(identity.address) == 42


@pytest.mark.parametrize(
    "text",
    [
        ALICE.private_key.hex(),
        "0x" + ALICE.private_key.hex(),
        "0X" + ALICE.private_key.hex().upper(),
        "  0x" + ALICE.private_key.hex() + "\n",
    ],
)
def test_identity_from_hex(text: str) -> None:
    identity = Identity.from_hex(text)
    assert identity == ALICE
    assert identity.address == ALICE.address


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "zz" * 32,
        "0x" + "11" * 31,
        "0x" + "11" * 33,
        "0x" + "00" * 32,
        "0x" + SECP256K1_N.to_bytes(32, "big").hex(),
        "0x" + "ff" * 32,
    ],
)
def test_identity_from_bad_hex_is_rejected(text: str) -> None:
    with pytest.raises(CryptoError):
        Identity.from_hex(text)


@pytest.mark.parametrize(
    "entropy", [b"", b"\x01" * 31, b"\x01" * 33, b"\x00" * 32, SECP256K1_N.to_bytes(32, "big")]
)
def test_identity_from_bad_entropy_is_rejected(entropy: bytes) -> None:
    with pytest.raises(CryptoError):
        Identity.from_entropy(entropy)


def test_identity_signatures_equal_eth_account() -> None:
    for i in range(5):
        digest = sha256(b"digest-%d" % i)
        ours = ALICE.sign_digest(digest)
        assert ours == bytes(Account.unsafe_sign_hash(digest, ALICE.private_key).signature)
        assert recover_signer(digest, ours) == ALICE.address
    domain = Domain(31337, "0x" + "11" * 20)
    struct_hash = sha256(b"a struct")
    assert recover_typed(domain, struct_hash, BOB.sign_typed(domain, struct_hash)) == BOB.address


def test_repr_never_shows_the_private_key() -> None:
    secret = ALICE.private_key.hex()
    for text in (
        repr(ALICE),
        str(ALICE),
        f"{ALICE}",
        f"{ALICE!r}",
        repr([ALICE]),
        repr({1: ALICE}),
    ):
        assert secret not in text.lower()
        assert ALICE.address in text


# -- keystores ----------------------------------------------------------------------------------
def test_keystore_round_trip(alice_keystore: dict[str, Any]) -> None:
    doc = alice_keystore
    assert doc["version"] == 3
    assert doc["crypto"]["kdf"] == "scrypt"
    assert doc["address"].lower().removeprefix("0x") == ALICE.address[2:]
    assert ALICE.private_key.hex() not in json.dumps(doc)
    assert decrypt_keystore(doc, PASSWORD) == ALICE
    assert decrypt_keystore(json.dumps(doc), PASSWORD) == ALICE  # a file's text works too
    # eth_account (and so geth and MetaMask) reads what dnanet writes.
    assert bytes(Account.decrypt(doc, PASSWORD)) == ALICE.private_key


def test_keystore_full_strength_is_default() -> None:
    # Only check the parameters: deriving the key at full strength would take a second.
    from unittest import mock

    with mock.patch.object(Account, "encrypt", return_value={}) as encrypt:
        encrypt_keystore(ALICE, PASSWORD)
    assert encrypt.call_args.kwargs == {"kdf": "scrypt"}


def test_keystore_wrong_password(alice_keystore: dict[str, Any]) -> None:
    with pytest.raises(KeystoreError, match="wrong password"):
        decrypt_keystore(alice_keystore, PASSWORD + "!")


def test_keystore_from_eth_account_with_pbkdf2_decrypts() -> None:
    doc = Account.encrypt(BOB.private_key, PASSWORD, kdf="pbkdf2", iterations=1000)
    assert doc["crypto"]["kdf"] == "pbkdf2"
    assert decrypt_keystore(doc, PASSWORD) == BOB
    with pytest.raises(KeystoreError, match="wrong password"):
        decrypt_keystore(doc, "nope")


def test_keystore_spec_vector_decrypts() -> None:
    identity = decrypt_keystore(copy.deepcopy(SPEC_PBKDF2_VECTOR), SPEC_PBKDF2_PASSWORD)
    assert identity.private_key.hex() == SPEC_PBKDF2_KEY


def test_keystore_with_capitalised_crypto_section_decrypts(alice_keystore: dict[str, Any]) -> None:
    # Older geth versions wrote "Crypto"; eth-keyfile reads both spellings.
    doc = copy.deepcopy(alice_keystore)
    doc["Crypto"] = doc.pop("crypto")
    assert decrypt_keystore(doc, PASSWORD) == ALICE


def _edited(doc: dict[str, Any], edit: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    edit(out)
    return out


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda doc: "this is not json", "not valid JSON"),
        (lambda doc: json.dumps(doc)[:-1], "not valid JSON"),
        (lambda doc: "[1, 2]", "not a keystore v3 document"),
        (lambda doc: _edited(doc, lambda d: d.update(version=2)), "expected version 3"),
        (lambda doc: _edited(doc, lambda d: d.update(version="3")), "expected version 3"),
        (lambda doc: _edited(doc, lambda d: d.pop("version")), "expected version 3"),
        (lambda doc: _edited(doc, lambda d: d.pop("crypto")), "crypto section"),
        (
            lambda doc: _edited(doc, lambda d: d.update(address=BOB.address[2:])),
            "does not match its key",
        ),
        (lambda doc: _edited(doc, lambda d: d.update(address=5)), "does not match its key"),
        (lambda doc: _edited(doc, lambda d: d["crypto"].pop("cipherparams")), "malformed"),
        (lambda doc: _edited(doc, lambda d: d["crypto"]["kdfparams"].pop("n")), "malformed"),
        (lambda doc: _edited(doc, lambda d: d["crypto"].update(kdf="argon2")), "kdf|derivation"),
        (lambda doc: _edited(doc, lambda d: d.update(crypto="oops")), "malformed"),
        (
            lambda doc: _edited(doc, lambda d: d["crypto"].update(mac="00" * 32)),
            "cannot decrypt",
        ),
    ],
    ids=[
        "not-json",
        "truncated-json",
        "json-list",
        "version-2",
        "version-string",
        "no-version",
        "no-crypto",
        "address-mismatch",
        "address-not-a-string",
        "no-cipherparams",
        "no-scrypt-n",
        "unknown-kdf",
        "crypto-not-an-object",
        "tampered-mac",
    ],
)
def test_malformed_keystores_are_rejected(
    alice_keystore: dict[str, Any], make: Any, needle: str
) -> None:
    with pytest.raises(KeystoreError, match=needle):
        decrypt_keystore(make(alice_keystore), PASSWORD)
