"""Epoch views for every verifier (mixers, the Validator, the auditor), read from the chain.

An ``EpochView`` needs the epoch's mixer set (address -> VRF key) and, for each round that
has started, the round's seed (the hash of its first block) and the registry as of that block
(``ChainGateway.nodes(block=...)``, reused from an earlier round while the registry's
``last_change`` says nothing changed since). Both are facts of a past block: they never
change once read, so a ``ViewCache`` keeps them without ever refreshing them, and a node that registers,
unbonds or is jailed while the network runs is seen exactly from the first round that starts
after it. (The mixer set is versioned by epoch on chain and fixed once an epoch started.)

``ViewCache`` keeps the views of the last ``keep_epochs`` epochs it was asked about, so its
``beta_cache`` memoises every mixer's VRF proof across certificates.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from dnanet.errors import ScheduleError
from dnanet.protocol.schedule import RoundId, compute_round_start_block
from dnanet.protocol.validation import EpochView, NodeInfo
from dnanet.service.network import ChainGateway, NodeRecord

KEEP_EPOCHS = 4


def compute_node_infos(records: Iterable[NodeRecord]) -> dict[str, NodeInfo]:
    """address -> NodeInfo of the registry ``records`` (a snapshot at one block)."""
    return {r.address.lower(): NodeInfo(hardware_class=r.hardware_class, active=r.active)
            for r in records}


class RoundRegistry:
    """Per (epoch, round) that has started: its seed and the registry at its first block.

    Thread-safe; each is read from the chain once and kept (``keep_epochs`` newest epochs)."""

    def __init__(self, gateway: ChainGateway, *, keep_epochs: int = KEEP_EPOCHS) -> None:
        self.gateway = gateway
        self.keep_epochs = keep_epochs
        self._lock = threading.RLock()
        self._seeds: dict[RoundId, bytes] = {}
        self._records: dict[RoundId, tuple[NodeRecord, ...]] = {}
        self._by_block: dict[int, tuple[NodeRecord, ...]] = {}
        """The same reads by block, for reuse while the registry does not change."""

    def start_block(self, rid: RoundId) -> int:
        return compute_round_start_block(rid, self.gateway.preset, self.gateway.genesis_block)

    def has_started(self, rid: RoundId, head: int | None = None) -> bool:
        head = self.gateway.block_number() if head is None else head
        return self.start_block(rid) <= head

    def seed(self, rid: RoundId) -> bytes:
        """The round's seed; raises ScheduleError for a round that has not started."""
        with self._lock:
            seed = self._seeds.get(rid)
        if seed is None:
            self._require_started(rid)
            seed = self.gateway.block_hash(self.start_block(rid))
            with self._lock:
                self._seeds[rid] = seed
                self._prune()
        return seed

    def records(self, rid: RoundId) -> tuple[NodeRecord, ...]:
        """The registered nodes at the round's first block (active or not). When the registry
        has not changed since an earlier round read here, that read is reused: one call to
        the chain instead of a listing."""
        with self._lock:
            records = self._records.get(rid)
        if records is None:
            self._require_started(rid)
            block = self.start_block(rid)
            changed = self.gateway.registry_changed_at(block=block)
            with self._lock:
                same = next((r for b, r in self._by_block.items() if changed <= b <= block),
                            None)
            records = same if same is not None else tuple(self.gateway.nodes(block=block))
            with self._lock:
                self._records[rid] = records
                self._by_block[block] = records
                self._prune()
        return records

    def _require_started(self, rid: RoundId) -> None:
        head = self.gateway.block_number()
        if not self.has_started(rid, head):
            raise ScheduleError(f"round {rid.round} of epoch {rid.epoch} has not started (head "
                                f"block {head})", field="round")

    def _prune(self) -> None:
        epochs = sorted({rid.epoch for rid in (*self._seeds, *self._records)})
        for old in epochs[:-self.keep_epochs]:
            for table in (self._seeds, self._records):
                for rid in [r for r in table if r.epoch == old]:
                    del table[rid]
        for block in sorted(self._by_block)[:-2 * self.gateway.preset.rounds_per_epoch]:
            del self._by_block[block]


def build_epoch_view(gateway: ChainGateway, epoch: int, *,
                     registry: RoundRegistry | None = None,
                     rounds: Iterable[int] | None = None) -> EpochView:
    """A fresh view of ``epoch`` with every round of ``rounds`` (default: all) that has
    started (the auditor's path)."""
    registry = registry or RoundRegistry(gateway)
    view = EpochView(domain=gateway.domain, preset=gateway.preset, epoch=epoch,
                     mixers={m.address.lower(): m.vrf_public_key
                             for m in gateway.mixer_set(epoch)},
                     round_nodes={}, round_seeds={})
    fill_rounds(view, registry, range(gateway.preset.rounds_per_epoch) if rounds is None
                else rounds)
    return view


def fill_rounds(view: EpochView, registry: RoundRegistry, rounds: Iterable[int]) -> None:
    """Add to ``view`` the seed and the registry of each of ``rounds`` that has started and it
    lacks (new dicts, so readers in other threads see the old or the new one, whole)."""
    head = registry.gateway.block_number()
    wanted = [r for r in sorted(set(rounds)) if r not in view.round_seeds
              and registry.has_started(RoundId(view.epoch, r), head)]
    if not wanted:
        return
    seeds = dict(view.round_seeds)
    nodes: dict[int, Mapping[str, NodeInfo]] = dict(view.round_nodes)
    for r in wanted:
        rid = RoundId(view.epoch, r)
        nodes[r] = compute_node_infos(registry.records(rid))
        seeds[r] = registry.seed(rid)
    view.round_nodes = nodes
    view.round_seeds = seeds


class ViewCache:
    """Thread-safe views of recent epochs (see the module docstring)."""

    def __init__(self, gateway: ChainGateway, *, keep_epochs: int = KEEP_EPOCHS) -> None:
        self.gateway = gateway
        self.keep_epochs = keep_epochs
        self.registry = RoundRegistry(gateway, keep_epochs=keep_epochs)
        self._lock = threading.RLock()
        self._views: dict[int, EpochView] = {}

    def view(self, epoch: int, *, rounds: Iterable[int] = ()) -> EpochView:
        """The view of ``epoch`` with the seed and registry of each of ``rounds`` that has
        started. Raises ScheduleError for an epoch that has not started: its mixer set may
        still change."""
        with self._lock:
            view = self._views.get(epoch)
            if view is None:
                if not self.registry.has_started(RoundId(epoch, 0)):
                    raise ScheduleError(f"epoch {epoch} has not started (head block "
                                        f"{self.gateway.block_number()})", field="epoch")
                view = EpochView(
                    domain=self.gateway.domain, preset=self.gateway.preset, epoch=epoch,
                    mixers={m.address.lower(): m.vrf_public_key
                            for m in self.gateway.mixer_set(epoch)},
                    round_nodes={}, round_seeds={},
                )
                self._views[epoch] = view
                for old in sorted(self._views)[:-self.keep_epochs]:
                    del self._views[old]
            fill_rounds(view, self.registry, rounds)
            return view

    def forget(self, epoch: int) -> None:
        with self._lock:
            self._views.pop(epoch, None)

    def forget_before(self, epoch: int) -> None:
        """Drop the views of every epoch before ``epoch`` (settled ones)."""
        with self._lock:
            for old in [e for e in self._views if e < epoch]:
                del self._views[old]


__all__ = ["RoundRegistry", "ViewCache", "build_epoch_view", "compute_node_infos", "fill_rounds"]
