"""The Validator's web dashboard: ``GET /``, one server-rendered page, no script.

What the Validator knows, for an operator's browser: the chain position, the intake counters,
the latest epochs (status, reports, certificates, total, root, settlement transaction) and one
epoch's nodes. For an epoch whose rollup is computed the nodes' rows are the rollup's (score,
reward, cumulative total, strike, fraud); for an epoch still collecting they are provisional:
the scores the stored reports give so far, by the protocol's own rule
(``NodeEpochScore.epoch_score``). The page refreshes itself every few seconds; every figure
links to the JSON endpoint it comes from.

``?epoch=N`` picks the epoch (default: the newest one with reports or a rollup), ``?nodes=K``
how many nodes to list (highest score first; at most ``MAX_NODES``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from dnanet.params import WEI_PER_DNA, Preset, format_score
from dnanet.protocol.scoring import NodeEpochScore
from dnanet.validator.store import COLLECTING, EpochRecord, ValidatorStore

EPOCHS_SHOWN = 12
DEFAULT_NODES = 100
MAX_NODES = 1000
REFRESH_S = 5


@dataclass(frozen=True)
class NodeLine:
    """One node's row: final once the epoch's rollup is computed, provisional before."""

    node: str
    challenges: int
    failures: int
    score: int
    strike: bool
    fraud: bool
    reward: int | None
    cumulative: int | None


@dataclass(frozen=True)
class DashboardView:
    title: str
    status: dict[str, Any]
    """The Validator's ``/v1/status`` answer."""
    intake: dict[str, int]
    """Certificates by result since start, and new reports stored."""
    epochs: list[EpochRecord]
    certificates: dict[int, int]
    epoch: int | None
    """The epoch whose nodes are listed (None: nothing stored yet)."""
    final: bool
    """Whether ``nodes`` are the rollup's rows (else provisional, from the reports so far)."""
    nodes: list[NodeLine]
    node_count: int


def gather(store: ValidatorStore, preset: Preset, *, title: str, status: dict[str, Any],
           intake: dict[str, int], epoch: int | None, nodes: int) -> DashboardView:
    """Read what the page shows (blocking: run it off the event loop)."""
    epochs = store.epoch_records(limit=EPOCHS_SHOWN)
    if epoch is None and epochs:
        epoch = epochs[0].epoch
    lines: list[NodeLine] = []
    final = False
    if epoch is not None:
        record = store.epoch_record(epoch)
        final = record is not None and record.settlement is not None
        lines = node_lines(store, preset, epoch, final=final)
    listed = sorted(lines, key=lambda line: (-line.score, line.node))
    return DashboardView(
        title=title, status=status, intake=intake, epochs=epochs,
        certificates={r.epoch: store.certificate_count(r.epoch) for r in epochs},
        epoch=epoch, final=final, nodes=listed[:nodes], node_count=len(lines))


def node_lines(store: ValidatorStore, preset: Preset, epoch: int, *, final: bool
               ) -> list[NodeLine]:
    """The rollup's rows of ``epoch`` when ``final``; else each node's provisional score from
    the reports stored so far."""
    if final:
        return [NodeLine(r.node, r.challenges, r.failures, r.score, r.strike, r.fraud,
                         r.reward, r.cumulative) for r in store.epoch_node_rows(epoch)]
    out = []
    for node, challenges, failures, score_sum, fraud_reports in store.report_totals(epoch):
        entry = NodeEpochScore(node, challenges, failures, score_sum, list(fraud_reports))
        out.append(NodeLine(node, challenges, failures, entry.epoch_score(preset),
                            entry.is_striking(preset), entry.fraud, None, None))
    return out


# -- rendering ------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } th, td { padding: .25em .7em; text-align: right; }
th { border-bottom: 1px solid #999; } td.l, th.l { text-align: left; }
tr:nth-child(even) td { background: #f3f3f5; } code { font-size: .95em; }
.muted { color: #666; } .bad { color: #b00020; font-weight: 600; }
"""


def _dna(wei: int) -> str:
    """DNA with two decimals, rounded down; the exact amount in wei on hover."""
    whole, rest = divmod(int(wei), WEI_PER_DNA)
    return f'<span title="{int(wei)} wei">{whole:,}.{rest * 100 // WEI_PER_DNA:02d}</span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(hex_text: str | None) -> str:
    if not hex_text:
        return '<span class="muted">-</span>'
    return f'<code title="{_e(hex_text)}">{_e(hex_text[:12])}..</code>'


def _row(cells: list[str], left: int = 1) -> str:
    return "<tr>" + "".join(
        f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(cells)
    ) + "</tr>"


def _head(names: list[str], left: int = 1) -> str:
    return "<tr>" + "".join(
        f'<th class="l">{_e(n)}</th>' if i < left else f"<th>{_e(n)}</th>"
        for i, n in enumerate(names)) + "</tr>"


def render(view: DashboardView) -> str:
    """The page's HTML: every value escaped, nothing loaded from elsewhere."""
    s = view.status
    facts = [
        ("validator", _e(s.get("validator") or "-")),
        ("chain head", _e(s.get("head"))),
        ("next epoch to settle on chain", _e(s.get("next_epoch_to_settle"))),
        ("latest settled epoch", _e(s.get("latest_settled"))),
        ("latest published epoch", _e(s.get("latest_published"))),
        ("pending punishments", _e(s.get("pending_punishments", 0))),
    ]
    diverged = s.get("diverged") or []
    if diverged:
        facts.append(("diverged epochs",
                      f'<span class="bad">{_e(", ".join(map(str, diverged)))}</span>'))
    intake = ", ".join(f"{_e(k)} {v:,}" for k, v in view.intake.items())
    facts.append(("intake since start", intake))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        f"<title>{_e(view.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(view.title)}</h1>",
        '<p class="muted">Refreshes every 5 s. JSON: <a href="/v1/status">/v1/status</a>, '
        '<a href="/v1/epochs">/v1/epochs</a>, <a href="/metrics">/metrics</a>, '
        '<a href="/openapi.json">/openapi.json</a>.</p>',
        '<table id="facts">',
        *(_row([_e(k), v]) for k, v in facts),
        "</table>",
        "<h2>Epochs</h2>",
    ]
    if not view.epochs:
        parts.append('<p class="muted">No certificates yet.</p>')
    else:
        parts += ['<table id="epochs">',
                  _head(["epoch", "status", "reports", "certificates", "total DNA", "root",
                         "settlement tx"])]
        for r in view.epochs:
            summary = r.summary()
            total = "-" if summary["total"] is None else _dna(summary["total"])
            parts.append(_row([
                f'<a href="/?epoch={r.epoch}">{r.epoch}</a>', _e(r.status), f"{r.reports:,}",
                f"{view.certificates.get(r.epoch, 0):,}", total, _short(summary["root"]),
                _short(r.settle_tx)], left=2))
        parts.append("</table>")
    if view.epoch is not None:
        parts.append(_nodes_section(view))
    parts.append("</body></html>")
    return "\n".join(parts)


def _nodes_section(view: DashboardView) -> str:
    epoch = view.epoch
    kind = ("the rollup's rows" if view.final
            else f"provisional ({COLLECTING}): scores of the reports stored so far")
    shown = (f"{len(view.nodes)} of {view.node_count}" if len(view.nodes) < view.node_count
             else f"{view.node_count}")
    names = ["node", "challenges", "failed", "score", "strike", "fraud"]
    if view.final:
        names += ["reward DNA", "cumulative DNA"]
    out = [f'<h2>Epoch {epoch}: {shown} nodes, {_e(kind)}</h2>', '<table id="nodes">',
           _head(names)]
    for line in view.nodes:
        cells = [
            f'<a href="/v1/nodes/{_e(line.node)}/epochs/{epoch}"><code>{_e(line.node)}</code></a>',
            f"{line.challenges:,}", f"{line.failures:,}", format_score(line.score),
            '<span class="bad">yes</span>' if line.strike else "no",
            '<span class="bad">yes</span>' if line.fraud else "no",
        ]
        if view.final:
            cells += [_dna(line.reward or 0), _dna(line.cumulative or 0)]
        out.append(_row(cells))
    out.append("</table>")
    return "\n".join(out)


__all__ = [
    "DEFAULT_NODES",
    "MAX_NODES",
    "DashboardView",
    "NodeLine",
    "gather",
    "node_lines",
    "render",
]
