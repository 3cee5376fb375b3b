"""Keystore files on disk and how passwords reach them (never from a command-line argument).

The password comes from the ``DNANET_KEYSTORE_PASSWORD`` environment variable, or else from an
interactive prompt. A mixer's Ed25519 VRF key is derived from its secp256k1 key
(``sha256("dnanet/vrf-key" || private_key)``), so one keystore file holds a whole identity.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from dnanet.crypto import vrf
from dnanet.crypto.hashing import sha256
from dnanet.crypto.keys import Identity, decrypt_keystore, encrypt_keystore
from dnanet.errors import KeystoreError

PASSWORD_ENV = "DNANET_KEYSTORE_PASSWORD"


def derive_vrf_secret(identity: Identity) -> bytes:
    """The 32-byte ECVRF secret seed of an identity."""
    return sha256(b"dnanet/vrf-key" + identity.private_key)


def derive_vrf_public_key(identity: Identity) -> bytes:
    return vrf.public_key(derive_vrf_secret(identity))


def read_password(*, confirm: bool = False, prompt: str = "Keystore password: ") -> str:
    """The keystore password from the environment, or else from the terminal."""
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise KeystoreError(
            f"no password: set {PASSWORD_ENV} or run in a terminal to be prompted"
        )
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise KeystoreError("the two passwords differ")
    return password


def read_keystore_document(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"keystore file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise KeystoreError(f"cannot read keystore file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeystoreError(f"{path} is not a keystore v3 document")
    return doc


def load_identity(path: Path, password: str | None = None) -> Identity:
    """Decrypt the identity in a keystore file (password from the environment or a prompt)."""
    doc = read_keystore_document(path)
    return decrypt_keystore(doc, password if password is not None else read_password())


def save_identity(identity: Identity, path: Path, password: str, *, light: bool = False) -> None:
    """Write a keystore v3 file (mode 0600), refusing to overwrite an existing file."""
    doc = encrypt_keystore(identity, password, light=light)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path} already exists; choose another --out") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)


__all__ = [
    "PASSWORD_ENV",
    "derive_vrf_public_key",
    "derive_vrf_secret",
    "load_identity",
    "read_keystore_document",
    "read_password",
    "save_identity",
]
