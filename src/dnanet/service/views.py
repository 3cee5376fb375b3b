"""Build and cache ``EpochView``s (mixer set, nodes, round seeds) from the chain gateway."""

from __future__ import annotations

import threading
import time

from dnanet.protocol.schedule import RoundId, compute_round_start_block
from dnanet.protocol.validation import EpochView, NodeInfo
from dnanet.service.network import ChainGateway, MixerRecord, NodeRecord

NODE_REFRESH_S = 2.0


class EpochViews:
    """Thread-safe cache of epoch views. Mixer sets never change within an epoch; node records
    and round seeds are refreshed when a lookup misses."""

    def __init__(self, gateway: ChainGateway) -> None:
        self.gateway = gateway
        self._views: dict[int, EpochView] = {}
        self._mixers: dict[int, list[MixerRecord]] = {}
        self._nodes: list[NodeRecord] = []
        self._nodes_at = 0.0
        self._lock = threading.RLock()

    def mixer_records(self, epoch: int) -> list[MixerRecord]:
        with self._lock:
            if epoch not in self._mixers:
                self._mixers[epoch] = self.gateway.mixer_set(epoch)
            return self._mixers[epoch]

    def node_records(self, *, refresh: bool = False) -> list[NodeRecord]:
        with self._lock:
            if refresh or not self._nodes or time.monotonic() - self._nodes_at > NODE_REFRESH_S:
                self._nodes = self.gateway.nodes()
                self._nodes_at = time.monotonic()
                for view in self._views.values():
                    view.nodes = _node_infos(self._nodes)
            return self._nodes

    def view(self, epoch: int, *, need_round: int | None = None,
             need_node: str | None = None) -> EpochView:
        """The view of ``epoch``; refreshed if it lacks the seed of ``need_round`` or the
        record of ``need_node``."""
        with self._lock:
            view = self._views.get(epoch)
            if view is None:
                view = EpochView(
                    domain=self.gateway.domain,
                    preset=self.gateway.preset,
                    epoch=epoch,
                    mixers={m.address: m.vrf_public_key for m in self.mixer_records(epoch)},
                    nodes=_node_infos(self.node_records()),
                    round_seeds={},
                )
                self._views[epoch] = view
                for old in [e for e in self._views if e < epoch - 2]:
                    del self._views[old]
            if need_node is not None and need_node not in view.nodes:
                self.node_records(refresh=True)
            if need_round is not None and need_round not in view.round_seeds:
                self._fill_seeds(view)
            return view

    def _fill_seeds(self, view: EpochView) -> None:
        head = self.gateway.block_number()
        preset, genesis = self.gateway.preset, self.gateway.genesis_block
        seeds = dict(view.round_seeds)
        for r in range(preset.rounds_per_epoch):
            start = compute_round_start_block(RoundId(view.epoch, r), preset, genesis)
            if r not in seeds and start <= head:
                seeds[r] = self.gateway.block_hash(start)
        view.round_seeds = seeds


def _node_infos(records: list[NodeRecord]) -> dict[str, NodeInfo]:
    return {n.address: NodeInfo(hardware_class=n.hardware_class, active=n.active)
            for n in records}


__all__ = ["EpochViews"]
