"""Co-signing: check a peer's batch and sign it, or refuse it with the reasons.

The checks are the protocol's (``verify_batch_proposal``: the originator's signature, the
batch root, every report against the epoch's view, the registry at each report's round's
first block included); the co-signer adds the window (a round that has started, an epoch
still open for reports), its memory (``MixerStore.record_cosigned``: it never co-signs two
different reports for one (epoch, round, mixer, node)), and plausibility
(``verify_plausible_measurements``: a report's figures must agree, within wide ratios, with
what the other mixers measured of the same node lately, so a mixer that inflates a friend's
figures or deflates a rival's finds no quorum). A batch it signed before is signed
again at once, without the per-report work, so replaying a valid batch costs a stranger as
much as it costs the mixer.

After signing, the co-signer watches the batch: ``backup_s`` later it asks the Validator
whether it holds it, and forwards it itself once its turn comes (``dnanet.mixer.outbox``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import DnanetError, ProtocolError, ScheduleError, SignatureError
from dnanet.mixer.store import MixerStore
from dnanet.protocol.messages import BatchProposal, CoSignature, Outcome, ScoreReport
from dnanet.protocol.plausibility import (
    PlausibilityPolicy,
    compute_measurement_reference,
    select_network_reports,
    select_reference_reports,
    verify_plausible_measurements,
)
from dnanet.protocol.quorum import compute_backup_rank
from dnanet.protocol.schedule import (
    RoundId,
    compute_round_start_block,
    compute_settlement_block,
)
from dnanet.protocol.validation import BatchRejected, verify_batch_proposal
from dnanet.service.clock import Clock
from dnanet.service.network import ChainGateway
from dnanet.service.views import ViewCache

REFERENCE_WINDOW = 16
"""Recent OK reports of other mixers per node that a report's figures are compared with."""
KEPT_PER_NODE = 64
NETWORK_WINDOW = 64
"""Recent OK reports of other mixers, over every node of a class: a new node's reference."""


class MeasurementBook:
    """The recent OK reports this mixer made or co-signed, per node, in memory (thread-safe):
    what the other mixers measured of each node lately."""

    def __init__(self, policy: PlausibilityPolicy | None = None) -> None:
        self.policy = policy or PlausibilityPolicy()
        self._lock = threading.Lock()
        self._by_node: dict[str, deque[ScoreReport]] = {}

    def add(self, reports: Iterable[ScoreReport]) -> None:
        with self._lock:
            for report in reports:
                if report.outcome == Outcome.OK:
                    self._by_node.setdefault(
                        report.node, deque(maxlen=KEPT_PER_NODE)).append(report)

    def verify(self, report: ScoreReport) -> None:
        """Raise ScoringError if ``report``'s figures are implausible beside the others'."""
        with self._lock:
            known = list(self._by_node.get(report.node, ()))
        reference = compute_measurement_reference(
            select_reference_reports(known, report.mixer, report.node, REFERENCE_WINDOW),
            policy=self.policy)
        network = None
        if any(span is None for span in reference.ranges.values()):  # a node's first rounds
            with self._lock:
                everyone = [r for reports in self._by_node.values() for r in reports]
            network = compute_measurement_reference(
                select_network_reports(everyone, report.mixer, report.hardware_class,
                                       NETWORK_WINDOW), policy=self.policy)
        verify_plausible_measurements(report, reference, self.policy, network)


class CoSigner:
    def __init__(self, identity: Identity, gateway: ChainGateway, views: ViewCache,
                 store: MixerStore, clock: Clock, backup_s: float,
                 book: MeasurementBook | None = None) -> None:
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.preset = gateway.preset
        self.domain = gateway.domain
        self.views = views
        self.store = store
        self.clock = clock
        self.backup_s = backup_s
        self.book = book or MeasurementBook()

    def epoch_closed(self, epoch: int, head: int) -> bool:
        """Whether co-signers refuse batches of ``epoch`` at block ``head``."""
        return head >= compute_settlement_block(epoch, self.preset, self.gateway.genesis_block)

    def verify_window(self, proposal: BatchProposal) -> None:
        """A batch must be for a round that has started and an epoch not yet closed."""
        head = self.gateway.block_number()
        batch = proposal.batch
        start = compute_round_start_block(RoundId(batch.epoch, batch.round), self.preset,
                                          self.gateway.genesis_block)
        if start > head:
            raise ScheduleError(f"round {batch.round} of epoch {batch.epoch} has not started",
                                field="round")
        if self.epoch_closed(batch.epoch, head):
            raise ScheduleError(f"epoch {batch.epoch} is closed for new reports", field="epoch")

    def cosign(self, proposal: BatchProposal) -> CoSignature:
        """Validate a peer's batch and sign it, or raise (BatchRejected lists bad reports).
        Blocking (chain reads, a database write): run it off the timing loop."""
        batch = proposal.batch
        if batch.mixer == self.address:
            raise ProtocolError("a mixer does not co-sign its own batch", field="mixer")
        self.verify_window(proposal)
        batch_hash = batch.hash_struct()
        if self.store.has_cosigned(batch_hash):
            # This very batch (its root commits to its reports) was verified and signed
            # before: sign again after checking only that its originator signed it.
            signer = recover_typed(self.domain, batch_hash, proposal.signature)
            if signer != batch.mixer:
                raise SignatureError(f"batch signed by {signer}, not by its mixer",
                                     field="signature")
            return self._sign(batch_hash)
        view = self.views.view(batch.epoch, rounds=[batch.round])
        verify_batch_proposal(proposal, view)
        implausible: list[tuple[int, str]] = []
        for i, report in enumerate(proposal.reports):
            try:
                self.book.verify(report)
            except DnanetError as exc:
                implausible.append((i, str(exc)))
        if implausible:
            raise BatchRejected(implausible)
        rank = compute_backup_rank(batch_hash, list(view.mixers), batch.mixer, self.address)
        now = self.clock.now()
        conflicts = self.store.record_cosigned(
            proposal, watch=(now + self.backup_s, now + self.backup_s * (1 + rank)))
        if conflicts:
            raise BatchRejected([(i, "a different report for this (epoch, round, mixer, node) "
                                  "was already co-signed") for i in conflicts])
        self.book.add(proposal.reports)
        return self._sign(batch_hash)

    def _sign(self, batch_hash: bytes) -> CoSignature:
        return CoSignature(signer=self.address,
                           signature=self.identity.sign_typed(self.domain, batch_hash))


__all__ = ["CoSigner", "MeasurementBook"]
