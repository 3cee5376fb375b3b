"""Settlement from the carried state, on both sides: the mixers and the Validator.

The real ``SettlementSigner`` against the fake chain of ``validator_helpers`` and a corpus of
certificates served by a fake ``Peers`` that counts what it was asked for: signing epoch
``e`` fetches and verifies epoch ``e``'s certificates only; a mixer without a carried state
catches up once; it never signs two settlements for one epoch; it refuses a settlement its
own recomputation does not give, an epoch still open, and a history the chain disagrees with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dnanet.crypto.eip712 import recover_typed
from dnanet.errors import ScheduleError
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.peers import PeerAnswer
from dnanet.mixer.settlement import SettlementRefused, SettlementSigner
from dnanet.mixer.store import MixerStore
from dnanet.protocol.epoch import EpochRollup, process_epochs
from dnanet.protocol.messages import (
    BatchProposal,
    QuorumCertificate,
    SettlementRequest,
)
from dnanet.service.clock import ManualClock
from dnanet.service.network import SettledEpoch
from dnanet.validator.history import ValidatorHistory
from dnanet.validator.settle import SettlementLoop
from dnanet.validator.store import ValidatorStore
from validator_helpers import (
    Corpus,
    FakeGateway,
    LocalSigner,
    build_network,
    last_round_start,
    make_corpus,
    run,
    settle_block,
)

EPOCHS = 4
LABEL = "mixer-settlement"


@dataclass
class CountingPeers:
    """The Validator's publication of ``corpus``, counting each epoch asked for."""

    corpus: Corpus
    asked: list[int] = field(default_factory=list)

    async def certificates(self, epoch: int) -> list[QuorumCertificate]:
        self.asked.append(epoch)
        return list(self.corpus.certificates.get(epoch, []))

    async def propose(self, endpoint: str, proposal: BatchProposal) -> PeerAnswer:
        raise AssertionError("not used")

    async def forward(self, certificate: QuorumCertificate) -> PeerAnswer:
        raise AssertionError("not used")

    async def validator_holds(self, batch_hash: bytes) -> bool | None:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def network() -> tuple[FakeGateway, Corpus, list[EpochRollup]]:
    gw, committee = build_network(mixers=4, nodes=5, offline=[4], label=LABEL)
    gw.advance_to(last_round_start(gw, EPOCHS - 1))
    corpus = make_corpus(committee, EPOCHS)
    rollups = process_epochs([corpus.reports(e) for e in range(EPOCHS)], gw.preset)
    gw.advance_to(settle_block(gw, EPOCHS - 1))
    return gw, corpus, rollups


def signer(gw: FakeGateway, corpus: Corpus, path: Path, mixer: int = 0
           ) -> tuple[SettlementSigner, CountingPeers, MixerStore]:
    peers = CountingPeers(corpus)
    store = MixerStore(path / f"mixer-{mixer}.db")
    metrics = MixerMetrics(CollectorRegistry())
    return (SettlementSigner(gw.mixers[mixer], gw, store, peers, metrics, ManualClock()),
            peers, store)


def request(rollup: EpochRollup) -> SettlementRequest:
    return SettlementRequest(settlement=rollup.settlement, punishments=rollup.punishments)


def test_each_epoch_is_signed_from_the_carried_state_verifying_that_epoch_only(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    assert any(r.punishments for r in rollups), "the offline node should be punished"
    sign, peers, store = signer(gw, corpus, tmp_path)

    async def main() -> None:
        for rollup in rollups:
            peers.asked.clear()
            signed = await sign.sign(request(rollup))
            assert peers.asked == [rollup.epoch]  # one epoch's certificates, never history
            assert recover_typed(gw.domain, rollup.settlement.hash_struct(),
                                 signed.settlement.signature) == gw.mixers[0].address
            assert len(signed.punishments) == len(rollup.punishments)
            carried = store.carried_state(rollup.epoch + 1)
            assert carried is not None and carried[0] == rollup.next_state

    run(main())
    assert [s["epoch"] for s in store.recent_settlements(8)] == [3, 2, 1, 0]
    store.close()


def test_a_mixer_never_signs_two_settlements_for_one_epoch(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    sign, peers, store = signer(gw, corpus, tmp_path)
    first = request(rollups[0])
    other = replace(first, settlement=replace(first.settlement, total=first.settlement.total - 1))

    async def main() -> None:
        with pytest.raises(SettlementRefused, match="recomputed root"):
            await sign.sign(other)  # not what the reports imply: refused, nothing recorded
        assert store.signed_settlement(0) is None
        again = await sign.sign(first)
        peers.asked.clear()
        assert await sign.sign(first) == again  # the same one again: signed, nothing fetched
        assert peers.asked == []
        with pytest.raises(SettlementRefused, match="already signed another settlement"):
            await sign.sign(other)
        # A fresh signer on the same store (a restarted mixer) remembers.
        restarted = SettlementSigner(gw.mixers[0], gw, store, peers,
                                     MixerMetrics(CollectorRegistry()), ManualClock())
        with pytest.raises(SettlementRefused, match="already signed another settlement"):
            await restarted.sign(other)

    run(main())
    store.close()


def test_an_epoch_still_taking_reports_is_not_signed(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    early = replace(gw, head=settle_block(gw, 3) - 1)
    sign, peers, store = signer(early, corpus, tmp_path)

    async def main() -> None:
        with pytest.raises(ScheduleError, match="before its grace period ends"):
            await sign.sign(request(rollups[3]))
        assert peers.asked == []

    run(main())
    store.close()


def test_a_mixer_without_the_state_catches_up_once_then_carries_it(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    sign, peers, store = signer(gw, corpus, tmp_path, mixer=2)

    async def main() -> None:
        await sign.sign(request(rollups[2]))  # joined late: has nothing before epoch 2
        assert peers.asked == [0, 1, 2]
        peers.asked.clear()
        await sign.sign(request(rollups[3]))
        assert peers.asked == [3]

    run(main())
    store.close()


def test_catching_up_refuses_a_history_the_chain_settled_otherwise(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    forked = replace(gw, settled={0: SettledEpoch(0, b"\x07" * 32, 1)})
    sign, _peers, store = signer(forked, corpus, tmp_path, mixer=1)

    async def main() -> None:
        with pytest.raises(SettlementRefused, match="the chain settled epoch 0 with root "
                                                    "0x0707070707070707"):
            await sign.sign(request(rollups[1]))
        assert store.signed_settlement(1) is None

    run(main())
    store.close()


def test_a_carried_state_that_followed_a_root_the_chain_did_not_settle_is_recomputed(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    sign, peers, store = signer(gw, corpus, tmp_path, mixer=3)

    async def main() -> None:
        await sign.sign(request(rollups[0]))
        # The chain settled epoch 0 with another root than the one this mixer computed (and
        # signed): the state it carried is not the chain's, so it starts over and refuses.
        forked = replace(gw, settled={0: SettledEpoch(0, b"\x09" * 32, 1)})
        again = SettlementSigner(gw.mixers[3], forked, store, peers,
                                 MixerMetrics(CollectorRegistry()), ManualClock())
        with pytest.raises(SettlementRefused, match="the chain settled epoch 0"):
            await again.sign(request(rollups[1]))

    run(main())
    store.close()


def test_the_validator_carries_strikes_and_totals_as_the_protocol_does(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    """The node offline throughout strikes in every epoch: punished at its third strike, it
    fails again before its jail would land. The Validator used to count every strike in the
    window from its own table and proposed a second punishment at epoch 3 that every mixer
    refused, so settlement stopped. It now starts each epoch from the carried state."""
    gw, corpus, rollups = network
    assert [len(r.punishments) for r in rollups] == [0, 0, 1, 0]
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        store.save_certificates([c for e in range(EPOCHS) for c in corpus.certificates[e]])
        loop = SettlementLoop(store, gw, LocalSigner(gw, store.certificates))
        history = ValidatorHistory(store, gw.preset)
        for rollup in rollups:
            if rollup.epoch == 3:
                # Before epoch 3's rollup, its provisional scores already pay the node
                # punished at epoch 2 nothing, as the rollup will.
                punished = rollups[2].punishments[0].node
                assert store.sentenced(3) == (punished,)
                final, figures, _ = history.epoch_figures(3, 100)
                assert not final
                shown = {f.node: f.score for f in figures}
                assert shown[punished] == 0 == rollup.epoch_scores[punished]
                assert shown == rollup.epoch_scores
            loop._publish_one(rollup.epoch)
            assert store.settlement(rollup.epoch) == rollup.settlement
            assert tuple(p.punishment for p in store.punishments(rollup.epoch)) == \
                rollup.punishments
            assert store.carried_state(rollup.epoch + 1) == rollup.next_state
    finally:
        store.close()


def test_a_validator_database_without_carried_states_rebuilds_them_once(
        network: tuple[FakeGateway, Corpus, list[EpochRollup]], tmp_path: Path) -> None:
    gw, corpus, rollups = network
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        store.save_certificates([c for e in range(EPOCHS) for c in corpus.certificates[e]])
        loop = SettlementLoop(store, gw, LocalSigner(gw, store.certificates))
        for epoch in range(3):
            loop._publish_one(epoch)
        store.execute("DELETE FROM epoch_states")  # as an earlier release left it
        assert store.ensure_carried_states(gw.preset) == 3
        assert store.ensure_carried_states(gw.preset) == 0
        loop._publish_one(3)
        assert store.settlement(3) == rollups[3].settlement
    finally:
        store.close()
