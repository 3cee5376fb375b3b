"""Wire messages of the node's challenge API that are not protocol messages."""

from __future__ import annotations

from dataclasses import dataclass

from dnanet.protocol.challenges.compute import MAX_N, RowOpening
from dnanet.protocol.codec import Bytes, FixedBytes, ListOf, Message, Nested, Uint, wire

MAX_CHECKS = 1024
MAX_PROOF_HASHES = 40


@dataclass(frozen=True)
class EchoMessage(Message):
    nonce: bytes = wire(FixedBytes(16))


@dataclass(frozen=True)
class DigestMessage(Message):
    digest: bytes = wire(FixedBytes(32))


@dataclass(frozen=True)
class RootMessage(Message):
    root: bytes = wire(FixedBytes(32))


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
    "DigestMessage",
    "EchoMessage",
    "OpenRequest",
    "OpeningMessage",
    "OpeningsMessage",
    "RootMessage",
]
