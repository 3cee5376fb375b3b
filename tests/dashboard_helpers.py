"""A Validator in a known state for the dashboard's tests: two settled epochs (a cheater
punished, an offline node struck) and a third still collecting half of its certificates.

``DashboardState`` holds what the pages must show, computed by the protocol itself
(``process_epochs`` over the same reports), so a test compares the pages with the rule, not
with numbers copied into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from dnanet.protocol.epoch import EpochRollup, process_epochs
from dnanet.protocol.messages import ScoreReport
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import (
    Corpus,
    FakeGateway,
    LocalSigner,
    build_network,
    last_round_start,
    make_corpus,
    post_all,
    with_validator,
)

CHEATER, OFFLINE = 4, 5
T = TypeVar("T")


def dashboard_network(label: str) -> tuple[FakeGateway, Any]:
    return build_network(mixers=4, nodes=6, cheaters=[CHEATER], offline=[OFFLINE], label=label)


@dataclass(frozen=True)
class DashboardState:
    gateway: FakeGateway
    replay: list[EpochRollup]
    """The protocol's rollups of epochs 0 and 1 (both settled)."""
    open_reports: list[ScoreReport]
    """Epoch 2's reports stored so far (half of its certificates)."""

    @property
    def cheater(self) -> str:
        return self.gateway.nodes_list[CHEATER].address

    @property
    def offline(self) -> str:
        return self.gateway.nodes_list[OFFLINE].address

    @property
    def normal(self) -> str:
        """An honest node with reports in every epoch, the open one included."""
        open_nodes = {r.node for r in self.open_reports}
        return next(n.address for n in self.gateway.nodes_list[:CHEATER]
                    if n.address in open_nodes)


def make_corpus_for(label: str) -> Corpus:
    return make_corpus(dashboard_network(label)[1], 3)


async def with_known_state(
    corpus: Corpus, label: str, data_dir: Path,
    body: Callable[[DashboardState, ValidatorDaemon, httpx.AsyncClient], Awaitable[T]],
) -> T:
    """Run ``body`` against a Validator that settled epochs 0 and 1 of ``corpus`` and holds
    half of epoch 2's certificates, the chain's head in epoch 2."""
    gw, _ = dashboard_network(label)
    replay = process_epochs([corpus.reports(0), corpus.reports(1)], gw.preset)
    half = corpus.certificates[2][: len(corpus.certificates[2]) // 2]

    async def run(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> T:
        daemon.loop.signer = LocalSigner(gw, daemon.store.certificates)
        # Every certificate arrives before the first settlement jails the cheater: the
        # corpus's committee challenged it in epoch 2 as it was active then (a report is
        # checked against the registry at its round's first block).
        gw.advance_to(last_round_start(gw, 2))
        await post_all(client, corpus.certificates[0])
        await post_all(client, corpus.certificates[1])
        await post_all(client, half)
        await daemon.loop.step()
        await daemon.loop.step()
        assert gw.next_epoch == 2
        state = DashboardState(gw, replay, [r for c in half for r in c.reports])
        return await body(state, daemon, client)

    return await with_validator(gw, data_dir, run)


__all__ = ["CHEATER", "OFFLINE", "DashboardState", "dashboard_network", "make_corpus_for",
           "with_known_state"]
