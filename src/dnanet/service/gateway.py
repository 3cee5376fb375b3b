"""``ChainGateway`` over :class:`dnanet.chain.client.ChainClient` (web3: embedded EVM or RPC)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from dnanet.chain.client import ChainClient
from dnanet.chain.deployment import Deployment
from dnanet.chain.registry import RegistryHistory
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.params import Preset, get_preset
from dnanet.protocol.messages import EpochSettlement, Punishment
from dnanet.service.network import MixerRecord, NodeRecord, SettledEpoch


class ClientGateway:
    """The daemons' view of the chain, through one ChainClient (one sender key at most)."""

    def __init__(self, client: ChainClient, preset: Preset | None = None) -> None:
        self.client = client
        self._preset = preset or get_preset(client.deployment.preset)
        self._lock = threading.RLock()
        self._mixer_sets: dict[int, list[MixerRecord]] = {}

    @cached_property
    def domain(self) -> Domain:
        return self.client.domain()

    @property
    def preset(self) -> Preset:
        return self._preset

    @property
    def genesis_block(self) -> int:
        return self.client.deployment.genesis_block

    def block_number(self) -> int:
        return self.client.block_number()

    def block_hash(self, number: int) -> bytes:
        return self.client.block_hash(number)

    def mixer_set(self, epoch: int) -> list[MixerRecord]:
        # Past and current epochs' sets never change: cache them.
        with self._lock:
            cached = self._mixer_sets.get(epoch)
        if cached is not None:
            return cached
        view = self.client.mixer_set(epoch)
        records = [MixerRecord(m.address, m.vrf_pk, m.endpoint) for m in view.members]
        if epoch <= self.client.current_epoch():
            with self._lock:
                self._mixer_sets[epoch] = records
        return records

    @cached_property
    def registry_history(self) -> RegistryHistory:
        """The registry at past blocks, from its events (no archive node needed)."""
        return RegistryHistory(self.client.registry_events, self.client.deployment.deploy_block,
                               self.client.block_number)

    @cached_property
    def min_stake(self) -> int:
        return self.client.min_stake()

    def nodes(self, *, block: int | None = None) -> list[NodeRecord]:
        if block is None:
            return [
                NodeRecord(address=n.address, endpoint=n.endpoint, hardware_class=n.hw_class,
                           stake=n.stake, jailed=n.jailed, active=n.active)
                for n in self.client.nodes() if n.registered
            ]
        min_stake = self.min_stake
        return [
            NodeRecord(address=e.address, endpoint=e.endpoint, hardware_class=e.hw_class,
                       stake=e.stake, jailed=e.jailed, active=e.is_active(min_stake))
            for e in self.registry_history.at(block) if e.registered
        ]

    def registry_changed_at(self, *, block: int | None = None) -> int:
        at = self.client.block_number() if block is None else block
        return self.registry_history.changed_at(at)

    def node(self, address: str) -> NodeRecord | None:
        n = self.client.node_info(address)
        if not n.registered:
            return None
        return NodeRecord(address=n.address, endpoint=n.endpoint, hardware_class=n.hw_class,
                          stake=n.stake, jailed=n.jailed, active=n.active)

    def register_node(self, endpoint: str, hardware_class: int, stake: int) -> str:
        return self.client.register_node(endpoint, hardware_class, stake).tx_hash

    def update_node(self, endpoint: str, hardware_class: int) -> str:
        return self.client.update_node(endpoint, hardware_class).tx_hash

    def next_epoch_to_settle(self) -> int:
        return self.client.next_epoch()

    def settled_epoch(self, epoch: int) -> SettledEpoch | None:
        record = self.client.settlement(epoch)
        if record is None:
            return None
        return SettledEpoch(epoch=record.epoch, rewards_root=record.rewards_root,
                            total=record.total, tx_hash=record.tx_hash,
                            reports_digest=record.reports_digest)

    def submit_settlement(self, settlement: EpochSettlement, signatures: Sequence[bytes]) -> str:
        receipt = self.client.submit_epoch(settlement, signatures)
        if receipt is None:
            settled = self.settled_epoch(settlement.epoch)
            return settled.tx_hash or "" if settled else ""
        return receipt.tx_hash

    def submit_punishment(self, punishment: Punishment, signatures: Sequence[bytes]) -> str:
        receipt = self.client.punish(punishment, signatures)
        return "" if receipt is None else receipt.tx_hash

    def claimed(self, account: str) -> int:
        return self.client.claimed(account)

    def claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> str:
        receipt = self.client.claim(account, cumulative, proof)
        return "" if receipt is None else receipt.tx_hash


def open_gateway(rpc: str, deployment: Path, identity: Identity | None) -> ClientGateway:
    """A gateway to a JSON-RPC chain, sending transactions as ``identity`` if given (read-only
    without). Callers load the identity once and hand the same one to their daemon: a keystore
    is decrypted, and its password asked for, once."""
    from dnanet.chain.backends import connect_rpc

    client = ChainClient(connect_rpc(rpc), Deployment.load(deployment), identity)
    return ClientGateway(client)


__all__ = ["ClientGateway", "open_gateway"]
