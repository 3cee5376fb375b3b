"""Byzantine mixers (``dnanet.mixer.byzantine``) against honest ones: what each tries, and the
check that stops it. Real mixer daemons on loopback against the fake chain, as in
``test_mixer``; nodes answer in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from dnanet.errors import ProtocolError
from dnanet.mixer.byzantine import Behaviour, ByzantineMixerDaemon, compute_inflated_report
from dnanet.mixer.sessions import TransportFactory
from dnanet.protocol.messages import Outcome, ScoreReport, SettlementRequest
from dnanet.protocol.plausibility import PlausibilityPolicy
from dnanet.protocol.schedule import RoundId, compute_round_start_block
from dnanet.protocol.scoring import compute_challenge_score, verify_report_score
from dnanet.protocol.validation import BatchRejected
from test_mixer import (
    MixerNet,
    local_nodes,  # noqa: F401 - a fixture
    mixer_net,
    proposal_of,
    unreachable_report,
)
from validator_helpers import Committee, run


def byzantine(net: MixerNet, root: Path, behaviour: Behaviour, **options: object
              ) -> ByzantineMixerDaemon:
    """The originator's daemon rebuilt with ``behaviour`` (same identity and data)."""
    return ByzantineMixerDaemon(
        net.gw.mixers[net.origin], net.gw, root / f"byzantine-{net.origin}",
        validator_url="http://127.0.0.1:9", behaviour=behaviour,
        node_transport=net.transport, **options)  # type: ignore[arg-type]


async def honest_history(net: MixerNet, rounds: int) -> list[ScoreReport]:
    """Every mixer's honest reports of the first ``rounds`` rounds of epoch 0."""
    out: list[ScoreReport] = []
    net.gw.advance_to(compute_round_start_block(RoundId(0, rounds - 1), net.gw.preset))
    for r in range(rounds):
        for reports in (await net.committee.round_reports(0, r)).values():
            out.extend(reports)
    return out


def best_known(net: MixerNet, history: list[ScoreReport]) -> ScoreReport:
    """The originator's round (0, 0) report of the node the other mixers measured most."""
    origin = net.gw.mixers[net.origin].address
    return max(net.own_reports(), key=lambda t: sum(
        1 for r in history if r.node == t.node and r.mixer != origin
        and r.outcome == Outcome.OK))


def slowest_seen(history: list[ScoreReport], node: str, exclude: str) -> ScoreReport:
    """The OK report of ``node`` by a mixer other than ``exclude`` with the slowest product:
    figures within the range the co-signers' references span."""
    return max((r for r in history if r.node == node and r.mixer != exclude
                and r.outcome == Outcome.OK), key=lambda r: r.compute_us)


def timed_like(report: ScoreReport, like: ScoreReport, net: MixerNet) -> ScoreReport:
    """``report`` with ``like``'s timed figures and the score they give."""
    times = {"rtt_us": like.rtt_us, "compute_us": like.compute_us,
             "download_us": like.download_us, "upload_us": like.upload_us}
    score = compute_challenge_score(net.gw.preset.sizes_for_class(report.hardware_class),
                                    outcome=report.outcome, params=net.gw.preset.scoring,
                                    **times)
    return ScoreReport.from_wire({**report.to_wire(), "rttUs": like.rtt_us,
                                  "computeUs": like.compute_us,
                                  "downloadUs": like.download_us,
                                  "uploadUs": like.upload_us, "score": score.total})


ARMED_FASTER = 10.0
TEST_INFLATION = 100


def arm(net: MixerNet, history: list[ScoreReport], exclude: str) -> None:
    """Give every honest co-signer the others' history (two reports make a reference: four
    rounds of a 5-node test network measure each node only a few times; no slack: the test
    preset's steps take microseconds, all within the default slack; and a report refused
    only when ``ARMED_FASTER`` times faster than the others' fastest: the liar's honest
    figures, timed while it runs alone, came out 2.1x faster than the history its peers timed
    all at once on a loaded host, so the tests inflate by ``TEST_INFLATION``, as far beyond
    the bound as the bound is beyond an honest figure)."""
    for peer in net.others:
        peer.book.policy = PlausibilityPolicy(min_samples=2, slack_us=0, faster=ARMED_FASTER)
        peer.book.add(r for r in history if r.mixer != exclude)


def test_an_inflated_report_passes_every_check_but_plausibility(tmp_path: Path) -> None:
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            history = await honest_history(net, 4)
            origin = net.gw.mixers[net.origin]
            target = best_known(net, history)
            inflated = compute_inflated_report(target, net.gw.preset, TEST_INFLATION)
            assert inflated.compute_us * 10 < target.compute_us
            verify_report_score(inflated, net.gw.preset)  # a consistent, bounded report
            arm(net, history, origin.address)
            peer = net.others[0]
            with pytest.raises(BatchRejected) as refused:
                peer.cosigner.cosign(proposal_of(origin, net.gw, [inflated]))
            ((index, why),) = refused.value.reasons
            assert index == 0 and "faster than the fastest the other mixers measured" in why
            # The same challenge timed as the others timed the node is signed (the test
            # preset's steps take microseconds: on a loaded host the originator's own honest
            # figures may well lie beyond the 2x the check allows, without slack).
            peer.cosigner.cosign(proposal_of(origin, net.gw, [timed_like(
                target, slowest_seen(history, target.node, origin.address), net)]))

    run(main())


def test_an_inflating_mixers_batch_is_certified_without_the_inflated_reports(
        tmp_path: Path, local_nodes: Callable[[Committee], TransportFactory]) -> None:  # noqa: F811
    async def main() -> None:
        async with mixer_net(tmp_path, route=local_nodes) as net:
            history = await honest_history(net, 4)
            friends = frozenset({best_known(net, history).node})
            liar = byzantine(net, tmp_path, Behaviour.INFLATE, friends=friends,
                             factor=TEST_INFLATION)
            arm(net, history, liar.address)
            try:
                await liar.rounds.process_round(RoundId(0, 0))
                proposals = liar.store.uncertified()
                # Co-signers refused the friend's inflated report: the batch was re-formed
                # without it and certified (forwarding failed: no Validator here).
                (certificate,) = liar.store.unforwarded()
                assert not friends & {r.node for r in certificate.reports}
                assert proposals == []
                assert liar.store.outbox_counts()["given_up"] == 1
            finally:
                await liar.stop()

    run(main())


def test_fabricated_ok_reports_are_refused_and_failures_go_through(tmp_path: Path) -> None:
    """A fabricated OK report has no valid node signature: refused. A fabricated failure
    carries none to check: it passes (the documented residual risk, bounded by the VRF)."""
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            liar = byzantine(net, tmp_path, Behaviour.FABRICATE)
            try:
                await liar.rounds.process_round(RoundId(0, 0))
                made = liar.store.own_reports(0, 0)
                assert {Outcome(r.outcome) for r in made} <= {Outcome.OK, Outcome.TIMEOUT}
                certified = [r for c in liar.store.unforwarded() for r in c.reports]
                assert all(r.outcome == Outcome.TIMEOUT for r in certified)
                fabricated_ok = [r for r in made if r.outcome == Outcome.OK]
                assert fabricated_ok and not set(fabricated_ok) & set(certified)
            finally:
                await liar.stop()

    run(main())


def test_an_equivocated_batch_finds_no_quorum(tmp_path: Path) -> None:
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            origin = net.originator
            first, *_ = net.own_reports()
            assert await origin.certifier.certify([first]) is not None
            other = await unreachable_report(net, first)
            equivocation = proposal_of(net.gw.mixers[net.origin], net.gw, [other])
            certificate, refused = await origin.certifier.gather(equivocation)
            assert certificate is None and refused == {0}

    run(main())


def test_a_mixer_that_refuses_to_cosign_does_not_stop_the_quorum(tmp_path: Path) -> None:
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            refuser = net.others[0]
            await refuser.server.stop()
            stubborn = ByzantineMixerDaemon(
                net.gw.mixers[net.daemons.index(refuser)], net.gw, tmp_path / "refuser",
                validator_url="http://127.0.0.1:9", behaviour=Behaviour.REFUSE_COSIGN,
                port=refuser.server.port)
            await stubborn.server.start()
            try:
                with pytest.raises(ProtocolError, match="refuses to co-sign"):
                    stubborn.cosigner.cosign(proposal_of(net.gw.mixers[net.origin], net.gw,
                                                         net.own_reports()))
                certificate = await net.originator.certifier.certify(net.own_reports())
                assert certificate is not None  # the three others are the threshold
            finally:
                await stubborn.stop()

    run(main())


def test_a_withholding_mixer_never_answers_a_settlement_request(tmp_path: Path) -> None:
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            silent = byzantine(net, tmp_path, Behaviour.WITHHOLD_SETTLEMENT)
            try:
                request = SettlementRequest.from_wire({
                    "settlement": {"epoch": 0, "rewardsRoot": "0x" + "00" * 32, "total": 0,
                                   "reportsDigest": "0x" + "00" * 32},
                    "punishments": []})
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(silent.settlements.sign(request), 0.2)
            finally:
                await silent.stop()

    run(main())

