"""The griefer (``dnanet.adversary.griefer``): issue 14's attacks by a stranger, against a real
node daemon while a mixer challenges it, and against real mixers' routes. Before the defences
of issue 14, a stranger's junk echo failed the node's challenges, a replayed challenge made the
node work again, its AI endpoints answered anyone, and a mixer verified anyone's settlement
request; now every attempt is refused and the node's own challenges pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from dnanet.adversary.griefer import KINDS, Griefer, read_captured_challenges
from dnanet.protocol.messages import Outcome
from dnanet.protocol.schedule import RoundId
from test_adversary_nodes import challenge, node, serving
from test_mixer import mixer_net
from validator_helpers import run


def test_a_griefer_is_served_nothing_and_the_nodes_challenges_pass(tmp_path: Path) -> None:
    honest = node(tmp_path, "griefed")
    chain = honest.gateway
    griefer = Griefer(node_url="http://127.0.0.1:9", node_address=honest.address,
                      node_db=tmp_path / "griefed" / "node.db", domain=chain.domain,
                      preset=chain.preset, closed_epoch=lambda: None,
                      # Real mixers' names for its forged challenges; nobody at their URLs.
                      mixers=lambda: [(m.address, "http://127.0.0.1:9") for m in chain.mixers],
                      head=chain.block_number, seed=1)

    async def main() -> list[Outcome]:
        async with serving(honest), httpx.AsyncClient(timeout=10) as http:
            griefer.node_url = honest.url
            outcomes = [(await challenge(honest)).outcome]  # a challenge to capture
            for round_ in range(1, 4):  # the stranger attacks while the mixer challenges
                report, *_ = await asyncio.gather(challenge(honest, RoundId(0, round_)),
                                                  griefer.wave(http), griefer.wave(http))
                outcomes.append(report.outcome)
            return outcomes

    assert run(main()) == [Outcome.OK] * 4
    assert read_captured_challenges(tmp_path / "griefed" / "node.db", 10)
    for kind in ("node_steps", "replays", "forged_challenges", "ai_endpoints"):
        tally = griefer.tallies[kind]
        assert tally.sent > 0 and tally.served == 0, (kind, tally)
    assert griefer.served == 0 and griefer.summary()["waves"] == 6


def test_a_griefer_is_served_nothing_by_the_mixers(tmp_path: Path) -> None:
    async def main() -> Griefer:
        async with mixer_net(tmp_path) as net:
            griefer = Griefer(
                node_url="http://127.0.0.1:9", node_address=net.gw.nodes_list[0].address,
                node_db=tmp_path / "none.db", domain=net.gw.domain, preset=net.gw.preset,
                mixers=lambda: [(d.address, d.url) for d in net.daemons],
                closed_epoch=lambda: 0, head=net.gw.block_number, seed=2)
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(3):
                    await griefer.settlement_routes(http)
                    await griefer.batch_routes(http)
                    await griefer.watch_status(http)
            return griefer

    griefer = run(main())
    for kind in ("settlement_routes", "batch_routes"):
        assert griefer.tallies[kind].sent == 12 and griefer.tallies[kind].served == 0
    assert griefer.leaked_rounds == 0
    assert set(griefer.tallies) == set(KINDS)
