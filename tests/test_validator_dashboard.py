"""The Validator's dashboard pages (``GET /``, ``GET /nodes/{address}``), read as HTML: what
they show equals what the protocol computes, and every error is a page.

A settled epoch lists the rollup's figures (``process_epochs``); an epoch still collecting the
provisional scores of the reports stored so far (``NodeEpochScore``); amounts and scores are
printed as the devnet's table prints them (``format_dna_short``, ``format_score``). The same
pages in a real browser: tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import html
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from dashboard_helpers import DashboardState, make_corpus_for, with_known_state
from dnanet.params import TEST, format_dna_short, format_score
from dnanet.protocol.messages import Outcome
from dnanet.protocol.scoring import (
    compute_epoch_scores,
    compute_node_epoch_scores,
    compute_report_score,
)
from dnanet.validator import dashboard
from dnanet.validator.daemon import ValidatorDaemon
from dnanet.validator.history import (
    EpochLine,
    compute_median,
    compute_node_epoch_figures,
)
from dnanet.validator.store import EpochRecord
from validator_helpers import Corpus, run

LABEL = "dashboard"


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus_for(LABEL)


class Tables(HTMLParser):
    """Each table's rows (by id) as lists of cell texts, the title of each cell's first
    element that has one (amounts carry their exact wei there), every link's href, and the
    text of every element with an id."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.titles: dict[str, list[list[str | None]]] = {}
        self.links: list[str] = []
        self.scripts: list[str] = []
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
        if tag in ("script", "link") and (dict(attrs).get("src") or dict(attrs).get("href")):
            self.scripts.append(dict(attrs).get("src") or dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


async def page(client: httpx.AsyncClient, path: str, status: int = 200) -> tuple[Tables, str]:
    response = await client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Tables(response.text), response.text


def test_the_pages_show_the_rollup_of_settled_epochs_and_the_provisional_scores_of_the_open_one(
        corpus: Corpus, tmp_path: Path) -> None:
    async def body(state: DashboardState, daemon: ValidatorDaemon,
                   client: httpx.AsyncClient) -> None:
        preset = state.gateway.preset
        rollup = state.replay[1]
        settled, text = await page(client, "/?epoch=1")
        header, *rows = settled.tables["nodes"]
        assert header == ["node", "challenges", "failed", "latency", "GFLOP/s", "down/up MB/s",
                          "latency score", "compute score", "bandwidth score", "score",
                          "strike", "fraud", "reward DNA", "cumulative DNA"]
        expected = sorted(rollup.epoch_scores, key=lambda n: (-rollup.epoch_scores[n], n))
        assert [r[0] for r in rows] == [f"{n[:12]}.." for n in expected]
        assert [f"/nodes/{n}" for n in expected] == [
            link for link in settled.links if link.startswith("/nodes/")]
        scores = compute_node_epoch_scores(rollup.reports)
        for node, row, titles in zip(expected, rows, settled.titles["nodes"][1:], strict=True):
            assert row[1:3] == [str(scores[node].challenges), str(scores[node].failures)]
            assert row[9:12] == [format_score(rollup.epoch_scores[node]),
                                 "yes" if node in rollup.strikes else "no",
                                 "yes" if scores[node].fraud else "no"]
            reward, cumulative = rollup.rewards.get(node, 0), rollup.cumulative.get(node, 0)
            assert row[12:] == [format_dna_short(reward), format_dna_short(cumulative)]
            assert titles[12:] == [f"{reward} wei", f"{cumulative} wei"]
            # The sub-scores and medians of the node's own reports, by the history's rule.
            mine = [r for r in rollup.reports if r.node == node]
            figures = compute_node_epoch_figures(node, 1, mine, None, preset,
                                                 challengers=len({r.mixer for r in rollup.reports}))
            assert row[6:9] == [format_score(figures.latency), format_score(figures.compute),
                                format_score(figures.bandwidth)]
        assert "None" not in text and "validator -" not in text

        # The newest epoch by default: epoch 2, still collecting.
        current, text = await page(client, "/")
        header, *rows = current.tables["nodes"]
        assert "reward DNA" not in header
        so_far = compute_node_epoch_scores(state.open_reports)
        assert {r[0]: [r[1], r[2], r[9], r[10], r[11]] for r in rows} == {
            f"{node[:12]}..": [str(s.challenges), str(s.failures),
                               format_score(s.epoch_score(preset)),
                               "yes" if s.is_striking(preset) else "no",
                               "yes" if s.fraud else "no"]
            for node, s in so_far.items()}
        epochs = {r[0]: r for r in current.tables["epochs"][1:]}
        assert epochs["2"][1:3] == ["collecting", str(len(state.open_reports))]
        assert [epochs[e][1] for e in ("1", "0")] == ["settled", "settled"]
        assert epochs["1"][4] == format_dna_short(rollup.settlement.total)
        facts = {r[0]: r[1] for r in current.tables["facts"]}
        assert facts["latest settled epoch"] == "1"
        assert facts["next settlement"] == "epoch 2, from block 98 (in about 0 s)"
        assert facts["intake this epoch"].startswith(
            f"{len(state.open_reports)} reports in ")
        assert "None" not in text and "validator -" not in text

        # At most ``nodes`` rows, the highest scores first.
        top, _ = await page(client, "/?epoch=1&nodes=2")
        assert [r[0] for r in top.tables["nodes"][1:]] == [f"{n[:12]}.." for n in expected[:2]]

        # A node's page: each epoch's figures, the latest one broken down.
        node, _ = await page(client, f"/nodes/{state.normal}")
        history = {r[0].split()[0]: r for r in node.tables["history"][1:]}
        for epoch, rollup_e in enumerate(state.replay):
            assert history[str(epoch)][9] == format_score(rollup_e.epoch_scores[state.normal])
            assert history[str(epoch)][12:] == [
                format_dna_short(rollup_e.rewards[state.normal]),
                format_dna_short(rollup_e.cumulative[state.normal])]
        assert history["2"][12:] == ["not yet", "not yet"]
        facts = {r[0]: r[1] for r in node.tables["node-facts"]}
        assert facts["earned to epoch 1"] == format_dna_short(
            state.replay[1].cumulative[state.normal])
        assert facts["registry"] == "active"
        assert "/static/uPlot.iife.min.js" in node.scripts

    run(with_known_state(corpus, LABEL, tmp_path, body))


def test_every_error_is_a_page_naming_what_was_wrong(corpus: Corpus, tmp_path: Path) -> None:
    async def body(state: DashboardState, daemon: ValidatorDaemon,
                   client: httpx.AsyncClient) -> None:
        for path, status, said in [
                ("/?epoch=abc", 400, "?epoch= must be a non-negative integer, got 'abc'"),
                ("/?epoch=-1", 400, "?epoch= must be a non-negative integer, got '-1'"),
                ("/?epoch=99", 404, "epoch 99 has not started: the chain is in epoch 2"),
                ("/?nodes=1001", 400, "?nodes= is at most 1,000, got 1,001"),
                ("/?nodes=", 400, "?nodes= must be a non-negative integer, got ''"),
                ("/nodes/xyz", 400, "'xyz' is not a node address"),
                ("/nodes/0x" + "ab" * 20, 404, "is not registered and no challenge of it"),
                (f"/nodes/{state.normal}?epochs=100000", 400, "?epochs= is at most 512"),
                ("/static/secret.py", 404, "no file 'secret.py' is served here")]:
            response = await client.get(path)
            assert response.status_code == status, path
            assert response.headers["content-type"].startswith("text/html"), path
            assert said in html.unescape(response.text), (path, response.text)
        # An epoch nothing is stored for: a page that says so, not an error.
        empty, _ = await page(client, "/?epoch=0&nodes=0")
        assert "nodes" not in empty.tables
        # The plotting library comes from the Validator itself.
        script = await client.get("/static/uPlot.iife.min.js")
        assert script.status_code == 200 and b"uPlot" in script.content
        assert script.headers["content-type"].startswith("text/javascript")

    run(with_known_state(corpus, LABEL, tmp_path, body))


def _line(epoch: int, status: str, signatures: int = 0,
          refusals: dict[str, str] | None = None) -> EpochLine:
    return EpochLine(EpochRecord(epoch, status, 10, None, None, None, None), 2, signatures,
                     refusals or {})


def _overview(head: int, lines: list[EpochLine], settlement: object = None
              ) -> dashboard.OverviewView:
    status = {"head": head, "next_epoch_to_settle": 3, "latest_settled": 2,
              "latest_published": 3, "diverged": [], "pending_punishments": 0}
    if settlement is not None:
        status["settlement"] = settlement
    settle_at = 4 * TEST.epoch_blocks + TEST.settlement_grace_blocks
    chain = dashboard.ChainPosition(head, 0, head // TEST.epoch_blocks,
                                    head % TEST.epoch_blocks + 1, 3, settle_at)
    return dashboard.OverviewView(title="t", preset=TEST, status=status, chain=chain,
                                  intake={}, current_intake=(0, 0), epochs=lines, epoch=None,
                                  final=False, nodes=[], node_count=0)


def test_a_stuck_settlement_shows_as_stalled_with_each_mixers_refusal() -> None:
    mixer = "0x" + "12" * 20
    reason = "punishments differ from the recomputed ones"
    settle_at = 4 * TEST.epoch_blocks + TEST.settlement_grace_blocks
    # Just due: settling, not stalled.
    page_ = Tables(dashboard.render_overview(_overview(
        settle_at + 1, [_line(3, "settling", 1)],
        {"epoch": 3, "signatures": 1, "threshold": 3, "refusals": {}})))
    state = {r[0]: r for r in page_.tables["epochs"][1:]}["3"][1]
    assert state == "settling: 1 of 3 signatures, 1 blocks past its settlement block"
    assert {r[0]: r[1] for r in page_.tables["settlement"]}["refusals"] == "no refusals recorded"
    # Not published yet, and no account of it in the status: no settlement section.
    assert "settlement" not in Tables(dashboard.render_overview(_overview(
        settle_at - 1, [_line(3, "collecting")]))).tables
    # Rounds later, refused: stalled, and each refusal with its reason.
    late = settle_at + dashboard.STALL_ROUNDS * TEST.round_blocks + 1
    refused = _line(3, "settling", 1, {mixer: reason})
    text = dashboard.render_overview(_overview(
        late, [refused], {"epoch": 3, "signatures": 1, "threshold": 3,
                          "refusals": {mixer: reason}}))
    page_ = Tables(text)
    row = {r[0]: r for r in page_.tables["epochs"][1:]}["3"]
    assert row[1] == (f"stalled: settling: 1 of 3 signatures, {late - settle_at} blocks past "
                      "its settlement block")
    assert row[6] == f"{mixer[:12]}..: {reason}"
    settlement = page_.tables["settlement"]
    assert settlement[0] == ["signatures", "1 of 3"]
    assert settlement[1] == [f"refused by {mixer[:12]}..", reason]
    # Text from a mixer is escaped, never markup.
    hostile = dashboard.render_overview(_overview(late, [_line(3, "settling", 0, {
        mixer: "<script>alert(1)</script>"})]))
    assert "<script>alert" not in hostile and "&lt;script&gt;" in hostile


def test_a_nodes_figures_follow_the_scoring_rule(corpus: Corpus) -> None:
    reports = corpus.reports(0)
    for node in sorted({r.node for r in reports}):
        mine = [r for r in reports if r.node == node]
        challengers = len({r.mixer for r in reports})
        figures = compute_node_epoch_figures(node, 0, mine, None, TEST, challengers=challengers)
        scores = [compute_report_score(r, TEST) for r in mine]
        ok = [(r, s) for r, s in zip(mine, scores, strict=True) if r.outcome == Outcome.OK]
        entry = compute_node_epoch_scores(reports)[node]
        assert (figures.challenges, figures.failures, figures.score) == (
            entry.challenges, entry.failures, entry.epoch_score(TEST))
        assert figures.compute == sum(s.compute for s in scores) // len(mine)
        assert figures.rtt_us == compute_median([r.rtt_us for r, _ in ok])
        assert figures.flops_per_s == compute_median([s.flops_per_s for _, s in ok])
        assert (figures.reward, figures.cumulative, figures.final) == (None, None, False)
        # Sentenced for the epoch (punished the one before), it shows the 0 it will be paid,
        # as the rollup pays it; its measurements stay what they were.
        sentenced = compute_node_epoch_figures(node, 0, mine, None, TEST,
                                               challengers=challengers, sentenced=True)
        assert sentenced.score == 0 == compute_epoch_scores({node: entry}, TEST, [node])[node]
        assert (sentenced.compute, sentenced.rtt_us) == (figures.compute, figures.rtt_us)
        # A failed challenge scores zero on every part, so it pulls every average down.
        if entry.failures == entry.challenges:
            assert (figures.latency, figures.compute, figures.bandwidth) == (0, 0, 0)
            assert figures.rtt_us is None
    assert compute_median([]) is None and compute_median([5, 1, 3, 2]) == 2


def test_amounts_and_scores_print_alike_on_the_page_and_in_the_terminal() -> None:
    from dnanet.devnet import NodeRow, format_table

    row = NodeRow(address="0x" + "ab" * 20, profile="normal", hardware="cpu",
                  score=358_897, reward=1_624_089_999_999_999_999_999)
    terminal = format_table([row], final=False)[1].split()
    assert terminal[-2:] == ["0.358897", "1,624.08"]
    assert format_score(358_897) == "0.358897"
    assert format_dna_short(1_624_089_999_999_999_999_999) == "1,624.08"
    assert format_dna_short(replace(row, reward=5).reward) == "0.00"


def test_the_refusals_the_store_records_show_beside_their_epoch(corpus: Corpus,
                                                                tmp_path: Path) -> None:
    mixer = "0x" + "34" * 20

    async def body(state: DashboardState, daemon: ValidatorDaemon,
                   client: httpx.AsyncClient) -> None:
        # The store's record of refusals (ValidatorStore.settlement_refusals: mixer -> reason).
        refusals = {1: {mixer: "the settlement differs from the recomputed one"}}
        daemon.store.settlement_refusals = (  # type: ignore[attr-defined]
            lambda epoch: refusals.get(epoch, {}))
        overview, _ = await page(client, "/")
        epochs = {r[0]: r for r in overview.tables["epochs"][1:]}
        assert epochs["1"][6] == f"{mixer[:12]}..: the settlement differs from the recomputed one"
        assert epochs["0"][6] == epochs["2"][6] == "none"

    run(with_known_state(corpus, LABEL, tmp_path, body))
