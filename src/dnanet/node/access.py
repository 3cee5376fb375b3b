"""Who the node's AI endpoints serve: mixers of the current set, or holders of the operator's key.

A request is served with either

- ``X-Dnanet-Credential``: a mixer's signature over the request (``dnanet.protocol.access``),
  from a member of the current mixer set, for this node's endpoint and this path and body, over
  a block within ``window_blocks`` of the head the node last read. Each credential works once:
  its nonce is remembered until its block leaves the window, so a captured request cannot be
  sent again; or
- ``Authorization: Bearer <key>`` with the key the operator set (``DNANET_NODE_API_KEY``, or the
  0600 file ``node-api-key`` in the node's data directory: never a command-line value).

Anything else is a 401 in OpenAI's format that says what is missing or wrong. The header is
checked before the body is read (a request without a credential costs the node nothing more),
the signature after, against the body's digest.
"""

from __future__ import annotations

import hmac
import os
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import Request

from dnanet.ai.openai_format import ApiError
from dnanet.crypto.eip712 import Domain
from dnanet.errors import ConfigError, DnanetError
from dnanet.protocol.access import (
    CREDENTIAL_HEADER,
    NodeCredential,
    recover_node_request_signer,
    verify_credential_block,
)

API_KEY_ENV = "DNANET_NODE_API_KEY"
API_KEY_FILE = "node-api-key"
MAX_REMEMBERED = 100_000
"""Nonces of credentials used within the window, at most (then the oldest are forgotten)."""


def load_node_api_key(environ: Mapping[str, str], data_dir: Path) -> str | None:
    """The operator's key for the AI endpoints: ``$DNANET_NODE_API_KEY``, else the file
    ``node-api-key`` in ``data_dir`` (which must be mode 0600), else None. ConfigError for a
    file others can read, or an empty key."""
    key = environ.get(API_KEY_ENV)
    where = f"${API_KEY_ENV}"
    if key is None:
        path = data_dir / API_KEY_FILE
        if not path.exists():
            return None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path} has mode {mode:04o}: a key file must be readable by its "
                              f"owner only (chmod 600 {path})")
        key, where = path.read_text(), str(path)
    key = key.strip()
    if not key:
        raise ConfigError(f"{where} is empty: set a key, or leave it unset")
    return key


class AiAccess:
    """The check in front of the node's AI endpoints (see the module docstring)."""

    def __init__(self, *, domain: Domain, mixers: Callable[[], Mapping[str, object]],
                 head: Callable[[], int | None], endpoint: Callable[[], str],
                 window_blocks: int, api_key: str | None = None) -> None:
        self.domain = domain
        self.mixers = mixers
        self.head = head
        self.endpoint = endpoint
        self.window_blocks = window_blocks
        self._api_key = api_key.encode() if api_key else None
        self._used: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def check_header(self, request: Request) -> NodeCredential | None:
        """Before the body is read: None if the operator's key is presented, else the mixer
        credential to check with the body; ApiError 401 otherwise."""
        authorization = request.headers.get("authorization", "")
        if self._api_key is not None and authorization.lower().startswith("bearer "):
            presented = authorization[len("bearer "):].strip().encode()
            if hmac.compare_digest(presented, self._api_key):
                return None
        header = request.headers.get(CREDENTIAL_HEADER)
        if header is None:
            raise _unauthorized(f"this node serves mixers of the network ({CREDENTIAL_HEADER}"
                                " header) or its operator's API key (Authorization: Bearer)")
        try:
            credential = NodeCredential.parse(header)
            head = self.head()
            if head is None:
                raise _unauthorized("the node has not read the chain's head yet: retry")
            verify_credential_block(credential.block, head, self.window_blocks)
        except DnanetError as exc:
            raise _unauthorized(str(exc)) from None
        return credential

    def check_body(self, request: Request, credential: NodeCredential, body: bytes) -> None:
        """Verify the credential signs this request, by a current mixer, and is new."""
        url = self.endpoint().rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            signer = recover_node_request_signer(self.domain, request.method, url, body,
                                                 credential)
        except DnanetError as exc:
            raise _unauthorized(str(exc)) from None
        if signer not in self.mixers():
            raise _unauthorized(f"{CREDENTIAL_HEADER}: signed by {signer}, not a current mixer "
                                f"(or not for {url} and this body)")
        with self._lock:
            if credential.nonce in self._used:
                raise _unauthorized(f"{CREDENTIAL_HEADER}: this credential was used before")
            if len(self._used) >= MAX_REMEMBERED:
                self._forget()
            self._used[credential.nonce] = credential.block

    def _forget(self) -> None:
        head = self.head() or 0
        self._used = {n: b for n, b in self._used.items() if b >= head - self.window_blocks}
        while len(self._used) >= MAX_REMEMBERED:  # all recent: drop the oldest
            self._used.pop(next(iter(self._used)))


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, param=None, code="invalid_credential")


def api_key_from_environment(data_dir: Path) -> str | None:
    """``load_node_api_key`` of this process's environment."""
    return load_node_api_key(os.environ, data_dir)


__all__ = ["API_KEY_ENV", "API_KEY_FILE", "AiAccess", "api_key_from_environment",
           "load_node_api_key"]
