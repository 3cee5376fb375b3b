"""The wire of a challenge session: one WebSocket connection (``SESSION_PATH`` on the node's
port) carrying binary frames, each a one-byte step tag and its body.

    mixer -> node                                node -> mixer
    S  SignedChallenge (JSON)                    A  (accepted)
    E  nonce (16 bytes)          x k             E  the same nonce
    D  download payload, in frames               D  digest of the payload (32), after its last byte
    U  upload seed (32)                          U  upload payload, in frames
    C  attempt seed (32)         x attempts      C  root of the attempt's product (32)
    F  attempt counted (1)                       F  SignedChallengeResponse (JSON)
    O  OpenRequest (JSON)                        O  OpeningsMessage (JSON); the session ends
                                                 X  error (JSON, as the HTTP APIs' errors); the
                                                    node closes the connection

The connection is the session: only the connection that presented the signed challenge drives it,
each step once and in order. Echoes are bare frames: no JSON, no routing, nothing else on their
path. The messages below are the JSON bodies that are not protocol messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from dnanet.protocol.challenges.compute import MAX_N, RowOpening
from dnanet.protocol.codec import Bytes, FixedBytes, ListOf, Message, Nested, Uint, wire

MAX_CHECKS = 1024
MAX_PROOF_HASHES = 40

SESSION_PATH: Final = "/v1/challenges"
"""A challenge session is a WebSocket to this path of the node's endpoint."""
FRAME_BYTES: Final = 256 * 1024
"""Transfer payloads travel in frames of this many bytes (the last may be shorter)."""
MAX_FRAME_BYTES: Final = FRAME_BYTES + 1
"""The largest frame a node accepts (a full payload frame and its tag)."""
MAX_ANSWER_FRAME_BYTES: Final = 16 * 1024 * 1024
"""The largest frame a mixer accepts (the openings of a large product are the largest)."""

START: Final = b"S"
ACCEPTED: Final = b"A"
ECHO: Final = b"E"
DOWNLOAD: Final = b"D"
UPLOAD: Final = b"U"
COMPUTE: Final = b"C"
FINISH: Final = b"F"
OPEN: Final = b"O"
ERROR: Final = b"X"
STEP_NAMES: Final = {START: "start", ECHO: "echo", DOWNLOAD: "download", UPLOAD: "upload",
                     COMPUTE: "compute", FINISH: "finish", OPEN: "open"}


def encode_error_frame(kind: str, message: str, field: str | None) -> bytes:
    """The node's refusal, with the fields of the HTTP APIs' error bodies."""
    return ERROR + json.dumps({"error": {"type": kind, "message": message,
                                         "field": field}}).encode()


def parse_error_frame(body: bytes) -> str:
    """A readable line from an error frame's body (whatever the node put there)."""
    try:
        error = json.loads(body)["error"]
        text = str(error.get("message", ""))
        field = error.get("field")
        return f"{field}: {text}" if field else text
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return repr(body[:200])


@dataclass(frozen=True)
class OpenRequest(Message):
    indices: tuple[int, ...] = wire(ListOf(Uint(32), MAX_CHECKS))


@dataclass(frozen=True)
class OpeningMessage(Message):
    index: int = wire(Uint(32))
    row: bytes = wire(Bytes(4 * MAX_N))
    proof: tuple[bytes, ...] = wire(ListOf(FixedBytes(32), MAX_PROOF_HASHES))

    @classmethod
    def of(cls, opening: RowOpening) -> OpeningMessage:
        return cls(index=opening.index, row=opening.row, proof=tuple(opening.proof))

    def opening(self) -> RowOpening:
        return RowOpening(index=self.index, row=self.row, proof=self.proof)


@dataclass(frozen=True)
class OpeningsMessage(Message):
    openings: tuple[OpeningMessage, ...] = wire(ListOf(Nested(OpeningMessage), MAX_CHECKS))


__all__ = [
    "ACCEPTED",
    "COMPUTE",
    "DOWNLOAD",
    "ECHO",
    "ERROR",
    "FINISH",
    "FRAME_BYTES",
    "MAX_ANSWER_FRAME_BYTES",
    "MAX_FRAME_BYTES",
    "OPEN",
    "SESSION_PATH",
    "START",
    "STEP_NAMES",
    "UPLOAD",
    "OpenRequest",
    "OpeningMessage",
    "OpeningsMessage",
    "encode_error_frame",
    "parse_error_frame",
]
