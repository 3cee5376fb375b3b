"""The Validator's web dashboard (``GET /``): what it shows equals what the protocol computes.

A settled epoch lists the rollup's rows (scores, rewards and cumulative totals of
``process_epochs``); an epoch still collecting lists each node's provisional score from the
reports stored so far, by ``NodeEpochScore``'s rule. Bad query parameters are 400s naming them.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from dnanet.params import format_score
from dnanet.protocol.epoch import process_epochs
from dnanet.protocol.scoring import compute_node_epoch_scores
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import (
    Corpus,
    FakeGateway,
    LocalSigner,
    build_network,
    last_round_start,
    make_corpus,
    post_all,
    run,
    settle_block,
    with_validator,
)

LABEL = "dashboard"
CHEATER, OFFLINE = 4, 5


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(_network()[1], 2)


def _network() -> tuple[FakeGateway, object]:
    return build_network(mixers=4, nodes=6, cheaters=[CHEATER], offline=[OFFLINE], label=LABEL)


class Tables(HTMLParser):
    """Each table's rows (by id) as lists of cell texts, the title of each cell's first
    element that has one (amounts carry their exact wei there), and every link's href."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.titles: dict[str, list[list[str | None]]] = {}
        self.links: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or "?"
            self.tables[self._table] = []
            self.titles[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.titles[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
            self.titles[self._table][-1].append(None)
        elif self._cell is not None and self._table is not None:
            row = self.titles[self._table][-1]
            row[-1] = row[-1] or dict(attrs).get("title")
        if tag == "a":
            self.links.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def page(client: httpx.AsyncClient, query: str = "") -> Tables:
    response = await client.get("/" + query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Tables(response.text)


def test_dashboard_shows_the_rollup_of_a_settled_epoch_and_the_provisional_scores_of_an_open_one(
        corpus: Corpus, tmp_path: Path) -> None:
    gw, _ = _network()
    gw.advance_to(last_round_start(gw, 0))
    replay = process_epochs([corpus.reports(0)], gw.preset)[0]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        empty = await page(client)
        assert "epochs" not in empty.tables and "nodes" not in empty.tables
        await post_all(client, corpus.certificates[0])
        gw.advance_to(last_round_start(gw, 1))
        # Epoch 1: part of its certificates so far, so its scores are provisional.
        half = corpus.certificates[1][: len(corpus.certificates[1]) // 2]
        await post_all(client, half)
        daemon.loop.signer = LocalSigner(gw, daemon.store.certificates)
        gw.advance_to(settle_block(gw, 0))
        await daemon.loop.step()
        assert gw.next_epoch == 1

        settled = await page(client, "?epoch=0")
        header, *rows = settled.tables["nodes"]
        assert header == ["node", "challenges", "failed", "score", "strike", "fraud",
                          "reward DNA", "cumulative DNA"]
        scores = compute_node_epoch_scores(replay.reports)
        expected = sorted(scores, key=lambda n: (-replay.epoch_scores[n], n))
        assert [r[0] for r in rows] == expected
        for row, titles in zip(rows, settled.titles["nodes"][1:], strict=True):
            node = row[0]
            assert row[1:6] == [
                str(scores[node].challenges), str(scores[node].failures),
                format_score(replay.epoch_scores[node]),
                "yes" if scores[node].is_striking(gw.preset) else "no",
                "yes" if scores[node].fraud else "no"]
            reward, cumulative = replay.rewards.get(node, 0), replay.cumulative.get(node, 0)
            assert titles[6:] == [f"{reward} wei", f"{cumulative} wei"]
            # Shown in DNA with two decimals, rounded down.
            assert row[6] == f"{reward // 10**18:,}.{reward % 10**18 // 10**16:02d}"
        cheater, offline = gw.nodes_list[CHEATER].address, gw.nodes_list[OFFLINE].address
        by_node = {r[0]: r for r in rows}
        assert by_node[cheater][5] == "yes" and by_node[offline][4] == "yes"
        assert f"/v1/nodes/{cheater}/epochs/0" in settled.links

        # The newest epoch by default: epoch 1, still collecting.
        current = await page(client)
        header, *rows = current.tables["nodes"]
        assert header == ["node", "challenges", "failed", "score", "strike", "fraud"]
        so_far = compute_node_epoch_scores(r for c in half for r in c.reports)
        assert {r[0]: r[1:] for r in rows} == {
            node: [str(s.challenges), str(s.failures), format_score(s.epoch_score(gw.preset)),
                   "yes" if s.is_striking(gw.preset) else "no", "yes" if s.fraud else "no"]
            for node, s in so_far.items()}
        epochs = {r[0]: r for r in current.tables["epochs"][1:]}
        assert epochs["1"][1:4] == ["collecting", str(sum(len(c.reports) for c in half)),
                                    str(len(half))]
        assert epochs["0"][1] == "settled"
        total = {r[0]: t for r, t in zip(current.tables["epochs"][1:],
                                           current.titles["epochs"][1:], strict=True)}["0"][4]
        assert total == f"{gw.settled[0].total} wei"
        facts = {r[0]: r[1] for r in current.tables["facts"]}
        assert facts["latest settled epoch"] == "0"
        intake = len(corpus.certificates[0]) + len(half)
        assert f"accepted {intake:,}" in facts["intake since start"]

        # At most ``nodes`` rows, the highest scores first.
        top = await page(client, "?epoch=0&nodes=2")
        assert [r[0] for r in top.tables["nodes"][1:]] == expected[:2]

        for query, field in [("?epoch=x", "epoch"), ("?epoch=-1", "epoch"),
                             ("?nodes=1001", "nodes"), ("?nodes=", "nodes")]:
            response = await client.get("/" + query)
            assert response.status_code == 400, query
            assert response.json()["error"]["field"] == field, query
        # An epoch nothing is stored for: no node rows, not an error.
        assert (await page(client, "?epoch=7")).tables["nodes"] == [
            ["node", "challenges", "failed", "score", "strike", "fraud"]]

    run(with_validator(gw, tmp_path, body))
