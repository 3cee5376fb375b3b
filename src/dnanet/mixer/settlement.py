"""Signing settlements: recompute an epoch from the certificates the Validator published, from
the state this mixer carried forward itself, and sign only what matches.

To sign epoch ``e`` the mixer needs the ``EpochState`` carried into ``e`` (stored when it
computed epoch ``e - 1``) and the certificates of epoch ``e`` alone: it verifies each of them
against the epoch's own view (its mixer set, and each round's registry at the round's first
block), runs ``process_epoch`` and compares. The cost is that of one epoch's reports, however
long the network has run. A mixer without the state (it joined the set later, or lost its
data) catches up once, epoch by epoch from the newest state it has, checking each epoch's
root against the one the chain settled.

It signs at most one settlement (with its punishments) per epoch, ever: asked again for the
same one it signs the same; asked for another, it refuses and says which it signed. Each
epoch's recomputation is done once and kept, so a repeated request costs a comparison.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from dnanet.crypto.hashing import keccak256
from dnanet.crypto.keys import Identity
from dnanet.errors import ProtocolError, RollupError, ScheduleError
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.peers import Peers
from dnanet.mixer.store import MixerStore
from dnanet.protocol.epoch import EpochState, process_epoch
from dnanet.protocol.messages import (
    CoSignature,
    EpochSettlement,
    Punishment,
    QuorumCertificate,
    ScoreReport,
    SettlementRequest,
    SettlementSignatures,
)
from dnanet.protocol.schedule import compute_settlement_block
from dnanet.protocol.validation import verify_certified_batch
from dnanet.service.clock import Clock
from dnanet.service.network import ChainGateway
from dnanet.service.views import RoundRegistry, build_epoch_view

log = logging.getLogger("dnanet.mixer.settlement")

KEEP_COMPUTED = 4
"""Recomputed epochs kept in memory (requests for older ones recompute)."""


class SettlementRefused(ProtocolError):
    """The mixer will not sign this settlement (the message says why)."""


@dataclass(frozen=True)
class ComputedEpoch:
    """What this mixer recomputed of an epoch from the certificates it verified."""

    settlement: EpochSettlement
    punishments: tuple[Punishment, ...]
    next_state: EpochState
    reports: int
    cpu_ms: int


def compute_punishments_hash(punishments: tuple[Punishment, ...]) -> bytes:
    return keccak256(b"dnanet/punishments" + b"".join(p.hash_struct() for p in punishments))


def verify_epoch(certificates: list[QuorumCertificate], gateway: ChainGateway, epoch: int,
                 registry: RoundRegistry) -> list[ScoreReport]:
    """Every report of ``epoch``'s certificates, each certificate verified against the
    epoch's view (blocking: chain reads and signature recoveries)."""
    rounds = {c.batch.round for c in certificates}
    view = build_epoch_view(gateway, epoch, registry=registry, rounds=rounds)
    reports: list[ScoreReport] = []
    for certificate in certificates:
        verify_certified_batch(certificate, view)
        reports.extend(certificate.reports)
    return reports


class SettlementSigner:
    """The mixer's side of ``POST /v1/settlements``."""

    def __init__(self, identity: Identity, gateway: ChainGateway, store: MixerStore,
                 peers: Peers, metrics: MixerMetrics, clock: Clock) -> None:
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.preset = gateway.preset
        self.domain = gateway.domain
        self.store = store
        self.peers = peers
        self.metrics = metrics
        self.clock = clock
        self.registry = RoundRegistry(gateway, keep_epochs=2)
        self._computed: dict[int, ComputedEpoch] = {}
        self._lock = asyncio.Lock()

    async def sign(self, request: SettlementRequest) -> SettlementSignatures:
        """Sign the request's settlement and punishments, or raise SettlementRefused (or
        another DnanetError) saying why."""
        settlement = request.settlement
        epoch = settlement.epoch
        head = await asyncio.to_thread(self.gateway.block_number)
        # Verify the epoch is closed for reports: its settlement can no longer change.
        if head < compute_settlement_block(epoch, self.preset, self.gateway.genesis_block):
            raise ScheduleError(f"epoch {epoch} cannot settle before its grace period ends",
                                field="epoch")
        wanted = (settlement.hash_struct(), compute_punishments_hash(request.punishments))
        # Verify this mixer signed no other settlement for this epoch.
        signed = await asyncio.to_thread(self.store.signed_settlement, epoch)
        if signed is not None and not _same(signed, wanted):
            raise SettlementRefused(
                f"this mixer already signed another settlement of epoch {epoch} (0x"
                f"{signed[0].hex()[:16]}..) and never signs two", field="settlement")
        if signed is None:
            async with self._lock:
                computed = await self._compute(epoch)
            # Verify the settlement and punishments are exactly what the reports imply.
            if computed.settlement != settlement:
                raise SettlementRefused(
                    f"recomputed root 0x{computed.settlement.rewards_root.hex()[:16]}.. total "
                    f"{computed.settlement.total}, asked to sign 0x"
                    f"{settlement.rewards_root.hex()[:16]}.. total {settlement.total}",
                    field="settlement")
            if computed.punishments != request.punishments:
                raise SettlementRefused(
                    f"punishments differ from the recomputed ones: recomputed "
                    f"{_named(computed.punishments)}, asked {_named(request.punishments)}",
                    field="punishments")
            recorded = await asyncio.to_thread(
                self.store.record_signed_settlement, epoch, *wanted, computed.reports,
                computed.cpu_ms, self.clock.now())
            if not recorded:
                raise SettlementRefused(f"this mixer already signed another settlement of "
                                        f"epoch {epoch}", field="settlement")
            await asyncio.to_thread(self.store.save_carried_state, computed.next_state,
                                    settlement.rewards_root)
            self.metrics.last_signed_epoch.set(epoch)
            log.info("mixer %s: signed epoch %d's settlement: root 0x%s.., total %d, %d "
                     "punishments (%d reports verified in %d ms of CPU)", self.address[:10],
                     epoch, settlement.rewards_root.hex()[:16], settlement.total,
                     len(request.punishments), computed.reports, computed.cpu_ms)
        sign = self.identity.sign_typed
        return SettlementSignatures(
            settlement=CoSignature(signer=self.address,
                                   signature=sign(self.domain, settlement.hash_struct())),
            punishments=tuple(CoSignature(signer=self.address,
                                          signature=sign(self.domain, p.hash_struct()))
                              for p in request.punishments),
        )

    async def _compute(self, epoch: int) -> ComputedEpoch:
        """``epoch`` recomputed from the Validator's certificates and the carried state
        (catching up first if this mixer lacks it)."""
        computed = self._computed.get(epoch)
        if computed is not None:
            return computed
        state = await self._state_for(epoch)
        computed = await self._compute_from(epoch, state)
        self._computed[epoch] = computed
        for old in sorted(self._computed)[:-KEEP_COMPUTED]:
            del self._computed[old]
        return computed

    async def _compute_from(self, epoch: int, state: EpochState) -> ComputedEpoch:
        certificates = await self.peers.certificates(epoch)

        def work() -> ComputedEpoch:
            started = time.thread_time()
            reports = verify_epoch(certificates, self.gateway, epoch, self.registry)
            rollup = process_epoch(epoch, reports, state=state, preset=self.preset)
            cpu = time.thread_time() - started
            self.metrics.settlement_seconds.observe(cpu)
            return ComputedEpoch(rollup.settlement, rollup.punishments, rollup.next_state,
                                 len(rollup.reports), int(cpu * 1000))

        return await asyncio.to_thread(work)

    async def _state_for(self, epoch: int) -> EpochState:
        """The state carried into ``epoch``: this mixer's own, checked against the root the
        chain settled for ``epoch - 1``; rebuilt epoch by epoch from the newest one it has
        when it has none (or the one it has followed a root the chain did not settle)."""
        stored = await asyncio.to_thread(self.store.carried_state, epoch)
        if stored is not None:
            state, previous_root = stored
            if epoch == 0 or await self._chain_agrees(epoch - 1, previous_root):
                return state
            dropped = await asyncio.to_thread(self.store.forget_carried_states, epoch)
            log.warning("mixer %s: the chain settled epoch %d with another root than this mixer "
                        "computed; dropped %d carried states and recomputing", self.address[:10],
                        epoch - 1, dropped)
        start = await asyncio.to_thread(self.store.latest_carried_epoch, epoch)
        found = await asyncio.to_thread(self.store.carried_state, start)
        state = found[0] if found is not None else EpochState()
        if state.epoch != start:  # pragma: no cover - carried_state(start) is keyed by it
            raise RollupError(f"stored state of epoch {start} says {state.epoch}", field="state")
        for past in range(start, epoch):
            log.info("mixer %s: catching up: recomputing epoch %d to carry its state into "
                     "epoch %d", self.address[:10], past, past + 1)
            computed = await self._compute_from(past, state)
            chain = await asyncio.to_thread(self.gateway.settled_epoch, past)
            if chain is not None and chain.rewards_root != computed.settlement.rewards_root:
                raise SettlementRefused(
                    f"the chain settled epoch {past} with root 0x{chain.rewards_root.hex()[:16]}"
                    f".., the Validator's certificates give 0x"
                    f"{computed.settlement.rewards_root.hex()[:16]}..: not signing on top of "
                    "it", field="epoch")
            await asyncio.to_thread(self.store.save_carried_state, computed.next_state,
                                    computed.settlement.rewards_root)
            state = computed.next_state
        return state

    async def _chain_agrees(self, epoch: int, root: bytes | None) -> bool:
        if root is None:
            return True  # carried from genesis or a store of an earlier release
        chain = await asyncio.to_thread(self.gateway.settled_epoch, epoch)
        return chain is None or chain.rewards_root == root


def _same(signed: tuple[bytes, bytes | None], wanted: tuple[bytes, bytes]) -> bool:
    settlement_hash, punishments_hash = signed
    # A row of an earlier release kept no punishments hash: the settlement decides.
    return settlement_hash == wanted[0] and punishments_hash in (None, wanted[1])


def _named(punishments: tuple[Punishment, ...]) -> str:
    if not punishments:
        return "none"
    return ", ".join(f"{p.node[:10]}.. epoch {p.epoch} slash {p.slash_bps} bps"
                     for p in punishments[:4]) + (" ..." if len(punishments) > 4 else "")


__all__ = ["ComputedEpoch", "SettlementRefused", "SettlementSigner", "verify_epoch"]
