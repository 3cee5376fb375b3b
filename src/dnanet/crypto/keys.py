"""secp256k1 identities (Ethereum accounts) and encrypted keystore v3 documents.

Keystore documents are the Web3 Secret Storage format (version 3) that geth and MetaMask
import; encryption uses scrypt by default. These functions work on bytes and JSON objects;
reading and writing files is the caller's job (see ``dnanet.cli``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import coincurve

from dnanet.crypto.eip712 import Domain, public_key_to_address, sign_digest, sign_typed
from dnanet.errors import CryptoError, KeystoreError


@dataclass(frozen=True, repr=False)
class Identity:
    """A secp256k1 key pair: the identity of a node, a mixer or the validator."""

    private_key: bytes

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise CryptoError("a secp256k1 private key is 32 bytes")
        try:
            coincurve.PrivateKey(self.private_key)
        except Exception:
            raise CryptoError("not a valid secp256k1 private key (zero or >= n)") from None

    @classmethod
    def from_entropy(cls, entropy: bytes) -> Identity:
        """An identity from 32 bytes of caller-supplied randomness (e.g. ``os.urandom(32)``)."""
        if len(entropy) != 32:
            raise CryptoError("entropy for a new key must be 32 bytes")
        return cls(bytes(entropy))  # __post_init__ rejects zero or >= n with CryptoError

    @classmethod
    def from_hex(cls, text: str) -> Identity:
        text = text.strip()
        text = text[2:] if text[:2] in ("0x", "0X") else text
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise CryptoError("a private key is 64 hex characters") from None
        return cls(raw)

    @cached_property
    def address(self) -> str:
        """Lower-case ``0x`` address."""
        return public_key_to_address(coincurve.PrivateKey(self.private_key).public_key)

    def sign_digest(self, digest: bytes) -> bytes:
        return sign_digest(self.private_key, digest)

    def sign_typed(self, domain: Domain, struct_hash: bytes) -> bytes:
        return sign_typed(self.private_key, domain, struct_hash)

    def __repr__(self) -> str:  # never print the secret
        return f"Identity({self.address})"


def encrypt_keystore(
    identity: Identity, password: str, *, light: bool = False
) -> dict[str, Any]:
    """A keystore v3 document (scrypt). ``light`` uses cheaper KDF parameters for tests."""
    from eth_account import Account  # heavy import, only when used

    kwargs: dict[str, Any] = {"kdf": "scrypt"}
    if light:
        kwargs["iterations"] = 2**10
    doc: dict[str, Any] = Account.encrypt(identity.private_key, password, **kwargs)
    return doc


def decrypt_keystore(document: dict[str, Any] | str, password: str) -> Identity:
    """The identity inside a keystore v3 document; raises KeystoreError on a wrong password."""
    from eth_account import Account

    try:
        doc = json.loads(document) if isinstance(document, str) else document
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"keystore is not valid JSON: {exc}") from None
    # Older geth versions write "Crypto"; eth-keyfile reads either spelling.
    has_crypto = isinstance(doc, dict) and ("crypto" in doc or "Crypto" in doc)
    if not has_crypto or doc.get("version") != 3:
        raise KeystoreError("not a keystore v3 document (expected version 3 and a crypto section)")
    try:
        key = Account.decrypt(doc, password)
    except ValueError as exc:
        raise KeystoreError(f"cannot decrypt keystore: {exc} (wrong password?)") from None
    except (KeyError, TypeError) as exc:
        raise KeystoreError(f"malformed keystore: missing or bad {exc}") from None
    identity = Identity(bytes(key))
    stored = doc.get("address")
    if stored and (
        not isinstance(stored, str) or stored.lower().removeprefix("0x") != identity.address[2:]
    ):
        raise KeystoreError(f"keystore address {stored} does not match its key {identity.address}")
    return identity


__all__ = ["Identity", "decrypt_keystore", "encrypt_keystore"]
