"""Who may use a node's AI endpoints: a mixer of the current set, by a signed credential.

A mixer's gateway forwards each user request (and each canary) to a node with the header
``X-Dnanet-Credential: <block>.<nonce>.<signature>`` (decimal, then hex): the mixer's
EIP-712 signature, under the network's domain, of

    NodeRequest { string method; string url; bytes32 bodyDigest; uint64 block; bytes16 nonce }

where ``url`` is the node's registered endpoint followed by the request's path (the node is
named by where it is registered, which is where the gateway sends the request),
``bodyDigest = SHA-256(b"dnanet/request-body" || body)`` and ``block`` is a recent block as the
mixer last read it. A node serves the request only if the signer is in the current mixer set,
``url`` is its own endpoint and the path it was asked, the body hashes to ``bodyDigest``, the
block is within ``window_blocks`` of its own view of the head, and the nonce was not used in
that window (``verify_credential_block``; the replay memory is the node's). So a stranger cannot
use a node, a node cannot relay a request it was sent to another node, and a captured request
cannot be sent again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import CodecError, ScheduleError, SignatureError
from dnanet.protocol.codec import FixedBytes, Message, Text, Uint, wire

CREDENTIAL_HEADER: Final = "x-dnanet-credential"
LABEL_REQUEST_BODY: Final = b"dnanet/request-body"
NONCE_BYTES: Final = 16
MAX_URL_BYTES: Final = 2048


@dataclass(frozen=True)
class NodeRequest(Message):
    """One gateway request to a node, as its mixer signs it."""

    EIP712 = True
    method: str = wire(Text(16))
    url: str = wire(Text(MAX_URL_BYTES))
    body_digest: bytes = wire(FixedBytes(32))
    block: int = wire(Uint(64))
    nonce: bytes = wire(FixedBytes(NONCE_BYTES))


@dataclass(frozen=True)
class NodeCredential:
    """The header's content: the block and nonce signed over, and the signature."""

    block: int
    nonce: bytes
    signature: bytes

    def encode(self) -> str:
        return f"{self.block}.{self.nonce.hex()}.{self.signature.hex()}"

    @classmethod
    def parse(cls, text: str) -> NodeCredential:
        """Parse a header value; CodecError naming the header if it is malformed."""
        parts = text.strip().split(".")
        try:
            if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 20:
                raise ValueError
            block, nonce, signature = int(parts[0]), bytes.fromhex(parts[1]), \
                bytes.fromhex(parts[2])
        except ValueError:
            raise CodecError("expected <block>.<nonce hex>.<signature hex>",
                             field=CREDENTIAL_HEADER) from None
        if len(nonce) != NONCE_BYTES or len(signature) != 65 or block >= 1 << 64:
            raise CodecError(f"a {NONCE_BYTES}-byte nonce and a 65-byte signature expected",
                             field=CREDENTIAL_HEADER)
        return cls(block, nonce, signature)


def compute_body_digest(body: bytes) -> bytes:
    return hashlib.sha256(LABEL_REQUEST_BODY + body).digest()


def compute_node_request(method: str, url: str, body: bytes, block: int,
                         nonce: bytes) -> NodeRequest:
    """The struct a mixer signs for one request (raises CodecError if a field cannot be)."""
    return NodeRequest(method=method.upper(), url=url, body_digest=compute_body_digest(body),
                       block=block, nonce=nonce)


def sign_node_request(identity: Identity, domain: Domain, request: NodeRequest) -> NodeCredential:
    return NodeCredential(request.block, request.nonce,
                          identity.sign_typed(domain, request.hash_struct()))


def recover_node_request_signer(domain: Domain, method: str, url: str, body: bytes,
                                credential: NodeCredential) -> str:
    """The address that signed ``credential`` for exactly this request (SignatureError for a
    malformed signature; a signature over another request recovers another address)."""
    try:
        request = compute_node_request(method, url, body, credential.block, credential.nonce)
    except CodecError as exc:
        raise SignatureError(f"cannot be over this request: {exc}",
                             field=CREDENTIAL_HEADER) from None
    return recover_typed(domain, request.hash_struct(), credential.signature)


def verify_credential_block(block: int, head_block: int, window_blocks: int) -> None:
    """Raise ScheduleError unless ``block`` is within ``window_blocks`` of ``head_block``."""
    if abs(block - head_block) > window_blocks:
        raise ScheduleError(f"credential is for block {block}, the node's head is "
                            f"{head_block} (window {window_blocks} blocks)",
                            field=CREDENTIAL_HEADER)


__all__ = [
    "CREDENTIAL_HEADER",
    "LABEL_REQUEST_BODY",
    "NodeCredential",
    "NodeRequest",
    "compute_body_digest",
    "compute_node_request",
    "recover_node_request_signer",
    "sign_node_request",
    "verify_credential_block",
]
