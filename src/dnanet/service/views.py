"""The Validator's and the auditor's view of an epoch, built from the chain gateway.

An ``EpochView`` needs the epoch's mixer set (address -> VRF key), the registered nodes
(address -> hardware class, active) and the seeds of the rounds that have started (the hash
of each round's first block). ``ViewCache`` keeps one view per recent epoch so that its
``beta_cache`` memoises every mixer's VRF proof across certificates, and refreshes the node
list at most once per ``node_refresh_s`` when a certificate names a node it does not know.

Jail status: by default a registered node counts as active. The registry only says whether a
node is jailed *now*; a certificate that a quorum signed while the node was active must stay
valid after a later jail, or the Validator would refuse a whole in-flight batch (every other
node's reports with it), and the mixers' and auditors' re-verification of published epochs
would depend on when they run. Honest mixers neither challenge nor co-sign a jailed node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from dnanet.errors import ScheduleError
from dnanet.protocol.schedule import RoundId, compute_round_start_block
from dnanet.protocol.validation import EpochView, NodeInfo
from dnanet.service.network import ChainGateway, NodeRecord

NODE_REFRESH_S = 3.0
KEEP_EPOCHS = 4


def compute_node_infos(records: Iterable[NodeRecord], *, assume_active: bool = False
                       ) -> dict[str, NodeInfo]:
    """address -> NodeInfo; ``assume_active`` ignores today's jail status (for audits of
    past epochs, whose activity the current registry no longer shows)."""
    return {r.address.lower(): NodeInfo(hardware_class=r.hardware_class,
                                        active=True if assume_active else r.active)
            for r in records}


def read_round_seeds(gateway: ChainGateway, epoch: int, head: int,
                     known: dict[int, bytes] | None = None) -> dict[int, bytes]:
    """Seeds of every round of ``epoch`` whose first block is at or below ``head``."""
    preset, genesis = gateway.preset, gateway.genesis_block
    seeds = dict(known or {})
    for r in range(preset.rounds_per_epoch):
        start = compute_round_start_block(RoundId(epoch, r), preset, genesis)
        if start > head:
            break
        if r not in seeds:
            seeds[r] = gateway.block_hash(start)
    return seeds


def build_epoch_view(gateway: ChainGateway, epoch: int, *, assume_active: bool = False,
                     nodes: list[NodeRecord] | None = None) -> EpochView:
    """A fresh view of ``epoch`` straight from the gateway (the auditor's path)."""
    head = gateway.block_number()
    return EpochView(
        domain=gateway.domain,
        preset=gateway.preset,
        epoch=epoch,
        mixers={m.address.lower(): m.vrf_public_key for m in gateway.mixer_set(epoch)},
        nodes=compute_node_infos(gateway.nodes() if nodes is None else nodes,
                                 assume_active=assume_active),
        round_seeds=read_round_seeds(gateway, epoch, head),
    )


class ViewCache:
    """Thread-safe views of recent epochs for certificate intake (see the module docstring)."""

    def __init__(self, gateway: ChainGateway, *, node_refresh_s: float = NODE_REFRESH_S,
                 keep_epochs: int = KEEP_EPOCHS, assume_active: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self.assume_active = assume_active
        self.node_refresh_s = node_refresh_s
        self.keep_epochs = keep_epochs
        self._clock = clock
        self._lock = threading.RLock()
        self._views: dict[int, EpochView] = {}
        self._nodes: dict[str, NodeInfo] | None = None
        self._nodes_at = float("-inf")

    def _node_infos(self, *, refresh: bool) -> dict[str, NodeInfo]:
        now = self._clock()
        if self._nodes is None or (refresh and now - self._nodes_at >= self.node_refresh_s):
            self._nodes = compute_node_infos(self.gateway.nodes(),
                                             assume_active=self.assume_active)
            self._nodes_at = now
            for view in self._views.values():
                view.nodes = self._nodes  # a new dict: readers in other threads see one or the other
        return self._nodes

    def view(self, epoch: int, *, rounds: Iterable[int] = (), nodes: Iterable[str] = ()
             ) -> EpochView:
        """The view of ``epoch``, refreshed if it lacks a seed of ``rounds`` (and the round has
        started) or a record of ``nodes`` (at most once per ``node_refresh_s``).

        Raises ScheduleError for an epoch that has not started: its mixer set may still change.
        """
        preset, genesis = self.gateway.preset, self.gateway.genesis_block
        with self._lock:
            view = self._views.get(epoch)
            if view is None:
                head = self.gateway.block_number()
                if compute_round_start_block(RoundId(epoch, 0), preset, genesis) > head:
                    raise ScheduleError(f"epoch {epoch} has not started (head block {head})",
                                        field="epoch")
                view = EpochView(
                    domain=self.gateway.domain, preset=preset, epoch=epoch,
                    mixers={m.address.lower(): m.vrf_public_key
                            for m in self.gateway.mixer_set(epoch)},
                    nodes=self._node_infos(refresh=False),
                    round_seeds=read_round_seeds(self.gateway, epoch, head),
                )
                self._views[epoch] = view
                for old in sorted(self._views)[:-self.keep_epochs]:
                    del self._views[old]
            if any(r not in view.round_seeds for r in rounds):
                view.round_seeds = read_round_seeds(self.gateway, epoch,
                                                    self.gateway.block_number(),
                                                    dict(view.round_seeds))
            if any(n not in view.nodes for n in nodes):
                self._node_infos(refresh=True)
            return view

    def forget(self, epoch: int) -> None:
        with self._lock:
            self._views.pop(epoch, None)

    def forget_before(self, epoch: int) -> None:
        """Drop the views of every epoch before ``epoch`` (settled ones)."""
        with self._lock:
            for old in [e for e in self._views if e < epoch]:
                del self._views[old]


__all__ = ["ViewCache", "build_epoch_view", "compute_node_infos", "read_round_seeds"]
