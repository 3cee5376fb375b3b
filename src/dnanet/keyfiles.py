"""Keystore files on disk and how secrets reach them (never from a command-line argument).

The password comes from the ``DNANET_KEYSTORE_PASSWORD`` environment variable, else from the
file named by ``DNANET_KEYSTORE_PASSWORD_FILE`` (a systemd credential, a mounted container
secret: a file only its owner may read), else from an interactive prompt. A new keystore
never gets an empty password unless the caller says it is meant (``--empty-password``).
Keystores are written mode 0600. A mixer's Ed25519 VRF key is derived from its secp256k1 key
(``sha256("dnanet/vrf-key" || private_key)``), so one keystore file holds a whole identity.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from dnanet.crypto import vrf
from dnanet.crypto.hashing import sha256
from dnanet.crypto.keys import Identity, decrypt_keystore, encrypt_keystore
from dnanet.errors import KeystoreError

PASSWORD_ENV = "DNANET_KEYSTORE_PASSWORD"
PASSWORD_FILE_ENV = "DNANET_KEYSTORE_PASSWORD_FILE"
MAX_SECRET_FILE_BYTES = 64 * 1024


def derive_vrf_secret(identity: Identity) -> bytes:
    """The 32-byte ECVRF secret seed of an identity."""
    return sha256(b"dnanet/vrf-key" + identity.private_key)


def derive_vrf_public_key(identity: Identity) -> bytes:
    return vrf.public_key(derive_vrf_secret(identity))


def read_secret_file(path: Path, what: str) -> str:
    """The text of a file holding a secret, refused when other users may read it (as ssh
    refuses a private key): mode 0600 or 0400, owned by whoever runs the command."""
    try:
        info = path.stat()
        if info.st_size > MAX_SECRET_FILE_BYTES:
            raise KeystoreError(f"{what} file {path} is {info.st_size} bytes; a secret file "
                                f"holds at most {MAX_SECRET_FILE_BYTES}")
        text = path.read_text()
    except FileNotFoundError:
        raise KeystoreError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read {what} file {path}: {exc}") from None
    if info.st_mode & 0o077:
        raise KeystoreError(f"{what} file {path} may be read by other users (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
    return text


def _refuse_empty(password: str, source: str) -> str:
    if not password:
        raise KeystoreError(f"the keystore password from {source} is empty, which leaves the "
                            "key unprotected: set one, or pass --empty-password if that is "
                            "meant")
    return password


def read_password(*, confirm: bool = False, prompt: str = "Keystore password: ",
                  allow_empty: bool = True) -> str:
    """The keystore password: from ``$DNANET_KEYSTORE_PASSWORD``, else the file named by
    ``$DNANET_KEYSTORE_PASSWORD_FILE`` (its first line), else the terminal. With
    ``allow_empty=False`` (a keystore being created) an empty password is refused."""
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return env if allow_empty else _refuse_empty(env, f"${PASSWORD_ENV}")
    file_name = os.environ.get(PASSWORD_FILE_ENV)
    if file_name:
        text = read_secret_file(Path(file_name), "password")
        password = text.split("\n", 1)[0].removesuffix("\r")
        return password if allow_empty else _refuse_empty(password, file_name)
    if not sys.stdin.isatty():
        raise KeystoreError(
            f"no password: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}, or run in a terminal "
            "to be prompted"
        )
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise KeystoreError("the two passwords differ")
    return password if allow_empty else _refuse_empty(password, "the prompt")


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


def read_keystore_address(path: Path) -> str:
    """The account of a keystore file (lower-case ``0x`` hex), read without its password."""
    import re

    doc = read_keystore_document(path)
    address = "0x" + str(doc.get("address", "")).lower().removeprefix("0x")
    if not re.fullmatch(r"0x[0-9a-f]{40}", address):
        raise KeystoreError(f"{path} holds no account address ({address[:60]!r}); is it a "
                            "keystore v3 file?")
    return address


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
    "PASSWORD_FILE_ENV",
    "derive_vrf_public_key",
    "derive_vrf_secret",
    "load_identity",
    "read_keystore_address",
    "read_keystore_document",
    "read_password",
    "read_secret_file",
    "save_identity",
]
