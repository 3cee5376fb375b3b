"""A mixer Byzantine in all five ways at once (``dnanet.adversary.mixers``) against three honest
ones, the quorum without slack: nothing it forges is certified, and what stays open (made-up
failures, a node's first rounds) is shown with its reproducer. Real mixer daemons on loopback
against the fake chain, as in ``test_mixer`` and ``test_byzantine``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from dnanet.adversary.mixers import ByzantineMixer, Withholding, compute_equivocation
from dnanet.adversary.proof import (
    compute_fabricated_strike_probability,
    compute_mixer_certified,
)
from dnanet.adversary.roles import MIXER_BEHAVIOURS
from dnanet.errors import ProtocolError
from dnanet.mixer.byzantine import Behaviour, compute_inflated_report
from dnanet.mixer.sessions import TransportFactory
from dnanet.params import LOCAL, TEST
from dnanet.protocol.epoch import EpochState, process_epoch
from dnanet.protocol.messages import Outcome, SettlementRequest, compute_failed_report
from dnanet.protocol.plausibility import PlausibilityPolicy
from dnanet.protocol.schedule import RoundId
from dnanet.protocol.validation import BatchRejected
from test_byzantine import TEST_INFLATION, arm, best_known, honest_history, timed_like
from test_mixer import (
    MixerNet,
    local_nodes,  # noqa: F401 - a fixture
    mixer_net,
    proposal_of,
)
from validator_helpers import Committee, build_network, run

REQUEST = SettlementRequest.from_wire({
    "settlement": {"epoch": 0, "rewardsRoot": "0x" + "00" * 32, "total": 0,
                   "reportsDigest": "0x" + "00" * 32},
    "punishments": []})


def byzantine(net: MixerNet, root: Path, friends: frozenset[str]) -> ByzantineMixer:
    """The originator's identity and chain, faulty in every way (not serving HTTP)."""
    return ByzantineMixer(net.gw.mixers[net.origin], net.gw, root / "byzantine",
                          validator_url="http://127.0.0.1:9", behaviours=MIXER_BEHAVIOURS,
                          friends=friends, factor=TEST_INFLATION, node_transport=net.transport)


def test_every_behaviour_names_a_byzantine_part() -> None:
    assert set(MIXER_BEHAVIOURS) == {b.value for b in Behaviour}


def test_a_mixer_byzantine_in_every_way_gets_no_forged_report_certified(tmp_path: Path) -> None:
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            liar = byzantine(net, tmp_path, frozenset())
            try:
                await liar.rounds.process_round(RoundId(0, 0))
                made = liar.store.own_reports(0, 0)
                assert {Outcome(r.outcome) for r in made} == {Outcome.OK, Outcome.TIMEOUT}
                (certificate,) = liar.store.unforwarded()  # no Validator here
                counts = compute_mixer_certified([certificate], liar.address, frozenset(),
                                                 net.gw.domain)
                # Its made-up OK reports (no node signature) were refused and the batch
                # re-formed without them; its made-up failures carry no signature to check,
                # and pass (open, bounded: see the strike test below).
                assert counts["ok"] == counts["fabricated_ok"] == 0
                assert counts["fabricated_failures"] == counts["failed"] > 0
                # Its second report for a key of the certificate found no quorum.
                rounds = liar.rounds
                assert rounds.equivocations == 1  # type: ignore[attr-defined]
                assert rounds.equivocations_certified == 0  # type: ignore[attr-defined]
                first = certificate.reports[0]
                assert compute_equivocation(first).key == first.key
                assert compute_equivocation(first) != first
                # It refuses its peers' batches, and never answers the Validator.
                with pytest.raises(ProtocolError, match="refuses to co-sign"):
                    liar.cosigner.cosign(proposal_of(net.gw.mixers[net.origin], net.gw,
                                                     net.own_reports()))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(liar.settlements.sign(REQUEST), 0.2)
            finally:
                await liar.stop()

    run(main())


def test_a_byzantine_mixers_friend_is_challenged_and_its_inflated_reports_refused(
        tmp_path: Path, local_nodes: Callable[[Committee], TransportFactory]) -> None:  # noqa: F811
    """With the other mixers' measurements of the friend in the co-signers' books."""
    async def main() -> None:
        async with mixer_net(tmp_path, route=local_nodes) as net:
            history = await honest_history(net, 4)
            friend = best_known(net, history).node
            liar = byzantine(net, tmp_path, frozenset({friend}))
            arm(net, history, liar.address)
            try:
                for round_ in range(4):
                    await liar.rounds.process_round(RoundId(0, round_))
                made = [r for round_ in range(4) for r in liar.store.own_reports(0, round_)]
                inflated = [r for r in made if r.node == friend and r.outcome == Outcome.OK]
                assert inflated  # it challenged its friend, and reported it faster
                counts = compute_mixer_certified(liar.store.unforwarded(), liar.address,
                                                 frozenset({friend}), net.gw.domain)
                assert counts["ok"] == counts["inflated"] == counts["fabricated_ok"] == 0
            finally:
                await liar.stop()

    run(main())


def test_a_withheld_settlement_request_is_released_when_the_mixer_stops(
        tmp_path: Path) -> None:
    """A request held open would hold the server's shutdown with it."""
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            liar = byzantine(net, tmp_path, frozenset())
            assert isinstance(liar.settlements, Withholding)
            pending = asyncio.create_task(liar.settlements.sign(REQUEST))
            await asyncio.sleep(0)
            assert not pending.done()
            await asyncio.wait_for(liar.stop(), 30)
            with pytest.raises(ProtocolError, match="withheld"):
                await asyncio.wait_for(pending, 30)

    run(main())


def test_an_inflated_report_of_a_nodes_first_round_is_refused(tmp_path: Path) -> None:
    """No report of the node by another mixer yet: the others' recent figures of every node of
    its class bound how fast it may be claimed to be."""
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            history = await honest_history(net, 4)
            origin = net.gw.mixers[net.origin]
            first = next(r for r in net.own_reports() if r.outcome == Outcome.OK)
            others = [r for r in history if r.node != first.node]
            peer = net.others[0]
            peer.book.policy = PlausibilityPolicy(min_samples=2, slack_us=0)
            peer.book.add(r for r in others if r.mixer != origin.address)
            inflated = compute_inflated_report(first, net.gw.preset, 20)
            with pytest.raises(BatchRejected) as refused:
                peer.cosigner.cosign(proposal_of(origin, net.gw, [inflated]))
            assert "any node of its class" in str(refused.value)
            # Timed as the slowest the others measured of any node, it is signed.
            slowest = max((r for r in others if r.mixer != origin.address
                           and r.outcome == Outcome.OK), key=lambda r: r.compute_us)
            peer.cosigner.cosign(proposal_of(origin, net.gw, [timed_like(first, slowest, net)]))

    run(main())


# -- made-up failures: undetectable, and how far they reach ---------------------------------------


def test_the_strike_probability_of_made_up_failures_is_exact_on_a_small_case() -> None:
    """Up to f liars of 3f + 1 strike nobody (their failures are set aside). One round, four
    mixers, two liars (beyond f = 1), one challenge per round: a strike needs both liars
    assigned (one is set aside, the other's failure counts) and at most one honest mixer
    assigned as well: 1/16 * (1 - 1/16)."""
    one_round = dataclasses.replace(TEST, epoch_blocks=TEST.round_blocks,
                                    challenges_per_round=1)
    assert compute_fabricated_strike_probability(one_round, 4, 1) == 0
    assert compute_fabricated_strike_probability(one_round, 4, 2) == pytest.approx(
        15 / 256)
    assert compute_fabricated_strike_probability(LOCAL, 4, 0) == 0
    assert compute_fabricated_strike_probability(LOCAL, 4, 1) == 0
    assert compute_fabricated_strike_probability(LOCAL, 7, 2) == 0
    assert compute_fabricated_strike_probability(LOCAL, 4, 2) > 0.1


def test_one_faulty_mixers_made_up_failures_do_not_strike_an_honest_node() -> None:
    gw, committee = build_network(mixers=4, nodes=5, label="made-up")
    faulty = gw.mixers[0]
    node = gw.nodes_list[0].address
    gw.advance_to(TEST.epoch_blocks)
    epoch_reports = [r for round_ in range(TEST.rounds_per_epoch)
                     for reports in run(committee.round_reports(0, round_)).values()
                     for r in reports if not (r.node == node and r.mixer == faulty.address)]
    honest = [r for r in epoch_reports if r.node == node and r.outcome == Outcome.OK][:2]
    assert len(honest) == 2, "pick another label"
    others = [r for r in epoch_reports if r.node != node]
    made_up = []
    for round_ in range(2):  # the faulty mixer's two assignments of the node, both "failed"
        base: dict[str, object] = dict(
            epoch=0, round=round_, mixer=faulty.address, node=node,
            hardware_class=0, vrf_proof=honest[0].vrf_proof,
            challenge_digest=honest[0].challenge_digest)
        made_up.append(compute_failed_report(base, Outcome.TIMEOUT, "no answer (fabricated)"))
    reports = [*others, *honest, *made_up]
    assert {r.mixer for r in reports} == {m.address for m in gw.mixers}, "pick another label"
    rollup = process_epoch(0, reports, state=EpochState(), preset=TEST)
    assert node not in rollup.strikes
    assert rollup.node_scores[node].set_aside() == (faulty.address,)
    # Counted alike, the two made-up failures of four challenges would have struck it.
    assert rollup.node_scores[node].failures * 3 > rollup.node_scores[node].challenges
    # A second liar's made-up failure is beyond f = 1 of four: it counts.
    second = next(m for m in gw.mixers if m.address not in {faulty.address, honest[0].mixer})
    free = min(set(range(TEST.rounds_per_epoch)) - {r.round for r in epoch_reports
                                                     if r.node == node and r.mixer == second.address})
    lie = compute_failed_report(dict(epoch=0, round=free, mixer=second.address, node=node,
                                     hardware_class=0, vrf_proof=honest[0].vrf_proof,
                                     challenge_digest=honest[0].challenge_digest),
                                Outcome.TIMEOUT, "no answer (fabricated)")
    struck = process_epoch(0, [*others, honest[0], *made_up, lie], state=EpochState(),
                           preset=TEST)
    assert node in struck.strikes
