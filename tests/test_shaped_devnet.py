"""A devnet with shaped links (``dnanet devnet --shape``), end to end: two nodes behind
shaping proxies of different added delays come out in the order of their links, in what the
mixers measured, in their scores and in their rewards; the epoch's table and summary show the
true figures (a plain socket through the same shaping) beside the measured ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dnanet.devnet import format_table
from dnanet.shaping import LinkShape
from e2e_helpers import E2EDevnet, run_epochs

pytestmark = pytest.mark.slow

NEAR = LinkShape("near", delay_ms=2)
FAR = LinkShape("far", delay_ms=40)


def test_two_shaped_nodes_come_out_in_the_order_of_their_links(tmp_path: Path) -> None:
    devnet = E2EDevnet(nodes=2, data_dir=tmp_path, label="shaped")
    devnet.use_shapes([NEAR, FAR])

    async def main() -> None:
        try:
            await run_epochs(devnet, 1)
        finally:
            await devnet.stop()

    asyncio.run(main())
    (summary,) = devnet.summaries
    near, far = summary.nodes
    # Each node registered its proxy's URL: the mixers reached it through the shaping.
    assert devnet.links is not None
    for row, link in zip(summary.nodes, devnet.links.nodes, strict=True):
        assert link.public_url is not None
        assert next(d for d in devnet.node_daemons if d.address == row.address).url == \
            link.public_url
    # The truth: a plain socket through each shaping sees at least the added round trip.
    assert near.true_latency_ms is not None and far.true_latency_ms is not None
    assert 2 * NEAR.delay_ms <= near.true_latency_ms < 2 * FAR.delay_ms <= far.true_latency_ms
    # What the mixers measured: never below the added round trip, in the links' order.
    assert near.latency_ms is not None and far.latency_ms is not None
    assert near.latency_ms >= 2 * NEAR.delay_ms and far.latency_ms >= 2 * FAR.delay_ms
    assert near.latency_ms < far.latency_ms
    assert near.challenges > 0 and far.challenges > 0
    assert near.score > far.score and near.reward > far.reward
    # The table and the summary show both, side by side.
    header, *lines = format_table(summary.nodes, final=True)
    assert "true lat" in header and "+40ms" in lines[1]
    shaped = summary.to_json()["nodes"][1]
    assert shaped["shape"] == "+40ms"
    assert shaped["measured"]["latency_ms"] == far.latency_ms
    assert shaped["true"]["latency_ms"] == far.true_latency_ms
