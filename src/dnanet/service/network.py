"""What the daemons need from the chain, as one small interface (``ChainGateway``).

The real implementation wraps :mod:`dnanet.chain` (web3.py, embedded EVM or JSON-RPC); tests
may pass a fake. Calls are synchronous and may block on I/O: daemons run them in a worker
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dnanet.crypto.eip712 import Domain
from dnanet.params import Preset
from dnanet.protocol.messages import EpochSettlement, Punishment


@dataclass(frozen=True)
class MixerRecord:
    """A member of an epoch's mixer set, as the MixerSet contract stores it."""

    address: str
    vrf_public_key: bytes
    endpoint: str


@dataclass(frozen=True)
class NodeRecord:
    """A registered node, as the NodeRegistry contract stores it."""

    address: str
    endpoint: str
    hardware_class: int
    stake: int
    jailed: bool
    active: bool


@dataclass(frozen=True)
class SettledEpoch:
    epoch: int
    rewards_root: bytes
    total: int
    tx_hash: str | None = None
    reports_digest: bytes | None = None
    """The settled EpochSettlement's digest of the epoch's reports (None if not known)."""


class ChainGateway(Protocol):
    """The chain as the daemons see it."""

    @property
    def domain(self) -> Domain: ...
    @property
    def preset(self) -> Preset: ...
    @property
    def genesis_block(self) -> int: ...

    def block_number(self) -> int: ...
    def block_hash(self, number: int) -> bytes: ...
    def mixer_set(self, epoch: int) -> list[MixerRecord]: ...
    def nodes(self, *, block: int | None = None) -> list[NodeRecord]:
        """The registered nodes now, or (``block``) as of that block's state."""

    def registry_changed_at(self, *, block: int | None = None) -> int:
        """The block of the registry's latest change, as of ``block`` (now): a read at any
        block from it up to ``block`` lists the same nodes."""
    def next_epoch_to_settle(self) -> int: ...
    def settled_epoch(self, epoch: int) -> SettledEpoch | None: ...
    def submit_settlement(self, settlement: EpochSettlement, signatures: Sequence[bytes]) -> str: ...
    def submit_punishment(self, punishment: Punishment, signatures: Sequence[bytes]) -> str: ...
    def claimed(self, account: str) -> int: ...
    def claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> str: ...
    def node(self, address: str) -> NodeRecord | None: ...
    def register_node(self, endpoint: str, hardware_class: int, stake: int) -> str: ...
    def update_node(self, endpoint: str, hardware_class: int) -> str: ...


__all__ = ["ChainGateway", "MixerRecord", "NodeRecord", "SettledEpoch"]
