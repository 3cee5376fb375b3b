"""The Validator's web dashboard: server-rendered pages for an operator's browser.

- ``GET /``: the network. The chain's position and the current epoch's progress with an
  estimate of its end at the preset's block time; the settlement under way (signatures
  gathered, the threshold, each mixer's refusal and its reason, and how many blocks past its
  settlement block it is: past ``STALL_ROUNDS`` rounds it is shown as stalled); the intake
  (this epoch's reports per block, the counters since start); the latest epochs; one epoch's
  nodes with what was measured (latency, verified GFLOP/s, bandwidth), the score and reward.
- ``GET /nodes/{address}``: one node. Its registry entry and claims, the score of each epoch
  broken into latency, compute and bandwidth sub-scores with the measured figures, plots over
  epochs (score and sub-scores, reward, latency, bandwidth, GFLOP/s), failures with the
  mixers' reasons, strikes, jail and slash events.
- Every error is a page (``render_error``), never JSON.

This module only renders: the figures come from ``dnanet.validator.history``. Amounts and
scores are printed as the devnet's table prints them (``format_dna_short``, ``format_score``);
plots are drawn by uPlot (``static/``, vendored: nothing is loaded from elsewhere).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from dnanet.params import (
    BPS_ONE,
    SCORE_ONE,
    WEI_PER_DNA,
    Preset,
    format_dna_short,
    format_score,
    hardware_class_name,
)
from dnanet.service.network import NodeRecord
from dnanet.validator.history import (
    EpochLine,
    FailedChallenge,
    NodeEpochFigures,
    NodePunishment,
)

EPOCHS_SHOWN = 12
DEFAULT_NODES = 100
MAX_NODES = 1000
REFRESH_S = 5
STALL_ROUNDS = 2
"""A settlement this many rounds past its settlement block is shown as stalled."""


# -- what the pages show --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainPosition:
    """Where the chain is, in the preset's terms."""

    head: int | None
    genesis_block: int
    current_epoch: int | None
    """None before genesis."""
    epoch_block: int
    """Blocks of the current epoch mined so far (1..epoch_blocks)."""
    next_to_settle: int | None
    settlement_block: int | None
    """The first block at which ``next_to_settle`` may settle."""


@dataclass(frozen=True)
class OverviewView:
    title: str
    preset: Preset
    status: dict[str, Any]
    """The Validator's ``/v1/status`` answer."""
    chain: ChainPosition
    intake: dict[str, int]
    """Certificates by result since start, and new reports stored."""
    current_intake: tuple[int, int]
    """Reports and certificates stored for the current epoch."""
    epochs: list[EpochLine]
    epoch: int | None
    """The epoch whose nodes are listed (None: nothing stored yet)."""
    final: bool
    """Whether ``nodes`` are the rollup's figures (else provisional)."""
    nodes: list[NodeEpochFigures]
    node_count: int
    refresh_s: int = REFRESH_S


@dataclass(frozen=True)
class NodeView:
    title: str
    preset: Preset
    address: str
    registry: NodeRecord | None
    registry_error: str | None
    """Why the registry could not be read (the chain is unreachable), else None."""
    claimed: int | None
    latest_settled: int | None
    cumulative: int
    """The node's cumulative total after the latest settled epoch (what it may claim)."""
    history: list[NodeEpochFigures]
    failures: list[FailedChallenge]
    punishments: list[NodePunishment]
    strike_epochs: list[int] = field(default_factory=list)
    """Epochs of the strike window before the next epoch in which the node was struck."""
    refresh_s: int = REFRESH_S


# -- formats ------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _dna(wei: int | None) -> str:
    """DNA as the devnet's table prints it; the exact amount in wei on hover."""
    if wei is None:
        return '<span class="muted">not yet</span>'
    return f'<span title="{int(wei)} wei">{format_dna_short(wei)}</span>'


def _ms(rtt_us: int | None) -> str:
    return "-" if rtt_us is None else f"{rtt_us / 1000:.2f}ms"


def _gflops(flops: int | None) -> str:
    return "-" if flops is None else f"{flops / 1e9:.2f}"


def _mbs(down: int | None, up: int | None) -> str:
    return "-" if down is None else f"{down / 1e6:.0f}/{(up or 0) / 1e6:.0f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _short(hex_text: str | None, empty: str = "none") -> str:
    if not hex_text:
        return f'<span class="muted">{_e(empty)}</span>'
    return f'<code title="{_e(hex_text)}">{_e(hex_text[:12])}..</code>'


def _node_link(address: str, *, full: bool = False) -> str:
    text = address if full else f"{address[:12]}.."
    return (f'<a class="node" href="/nodes/{_e(address)}" title="{_e(address)}">'
            f"<code>{_e(text)}</code></a>")


def _yes(flag: bool) -> str:
    return '<span class="bad">yes</span>' if flag else "no"


def _row(cells: list[str], left: int = 1, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(
        f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(cells)
    ) + "</tr>"


def _head(names: list[str], left: int = 1) -> str:
    return "<tr>" + "".join(
        f'<th class="l">{_e(n)}</th>' if i < left else f"<th>{_e(n)}</th>"
        for i, n in enumerate(names)) + "</tr>"


# -- page frame -----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
header { background: #14213d; color: #fff; padding: .7em 1.5em; display: flex; gap: 1.5em;
         align-items: baseline; flex-wrap: wrap; }
header a { color: #cfe0ff; } header h1 { font-size: 1.25em; margin: 0; }
main { padding: .5em 1.5em 2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; } th, td { padding: .25em .7em;
  text-align: right; vertical-align: top; } th { border-bottom: 1px solid #999; }
td.l, th.l { text-align: left; } tr:nth-child(even) td { background: #f1f2f5; }
code { font-size: .95em; } .muted { color: #666; } .bad { color: #b00020; font-weight: 600; }
.good { color: #05713a; } progress { width: 16em; vertical-align: middle; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
          gap: 1em; } .chart { background: #fff; padding: .4em; min-height: 250px; }
.refusal { white-space: nowrap; } .error { max-width: 50em; }
"""


def _page(title: str, body: list[str], *, refresh_s: int = 0, charts: bool = False) -> str:
    head = ['<!doctype html>', '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">']
    if refresh_s:
        head.append(f'<meta http-equiv="refresh" content="{refresh_s}">')
    if charts:
        head.append('<link rel="stylesheet" href="/static/uPlot.min.css">')
    head.append(f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>")
    nav = ('<header><h1><a href="/" style="color:#fff;text-decoration:none">dnanet '
           'validator</a></h1><span>' + _e(title) + '</span><span><a href="/v1/status">'
           'status JSON</a> <a href="/v1/epochs">epochs JSON</a> <a href="/metrics">metrics'
           '</a> <a href="/openapi.json">API</a></span></header>')
    tail = []
    if charts:
        tail = ['<script src="/static/uPlot.iife.min.js"></script>',
                '<script src="/static/dashboard.js"></script>']
    return "\n".join([*head, nav, "<main>", *body, "</main>", *tail, "</body></html>"])


def render_error(status: int, title: str, message: str, *, hint: str | None = None) -> str:
    """An error page: what was wrong and where to go from here."""
    body = [f'<div class="error"><h2>{_e(title)} ({status})</h2>',
            f'<p id="error-message">{_e(message)}</p>']
    if hint:
        body.append(f'<p class="muted">{_e(hint)}</p>')
    body.append('<p><a href="/">Back to the overview</a></p></div>')
    return _page(f"{title}", body)


# -- the overview ---------------------------------------------------------------------------------


def _epoch_state(line: EpochLine, view: OverviewView, threshold: int | None) -> str:
    """An epoch's status, saying why a settlement waits."""
    record, chain = line.record, view.chain
    if record.status == "diverged":
        return '<span class="bad">diverged</span>'
    if record.status == "settled":
        return '<span class="good">settled</span>'
    if record.epoch != chain.next_to_settle or chain.head is None \
            or chain.settlement_block is None:
        return _e(record.status)
    past = chain.head - chain.settlement_block
    if past < 0:
        return _e(record.status)
    stalled = past > STALL_ROUNDS * view.preset.round_blocks
    have = f"{line.signatures} of {threshold}" if threshold else f"{line.signatures}"
    text = f"settling: {have} signatures, {past:,} blocks past its settlement block"
    if stalled:
        return f'<span class="bad">stalled: {_e(text)}</span>'
    return _e(text)


def _refusals(refusals: dict[str, str]) -> str:
    if not refusals:
        return '<span class="muted">none</span>'
    return "".join(f'<div class="refusal bad"><code title="{_e(m)}">{_e(m[:12])}..</code>: '
                   f"{_e(reason)}</div>" for m, reason in sorted(refusals.items()))


def _facts(view: OverviewView) -> list[tuple[str, str]]:
    s, chain, preset = view.status, view.chain, view.preset
    block_s = preset.block_interval_ms / 1000
    facts: list[tuple[str, str]] = []
    if s.get("validator"):
        facts.append(("validator account", f"<code>{_e(s['validator'])}</code>"))
    if chain.head is None:
        facts.append(("chain head", '<span class="muted">not read yet</span>'))
    else:
        facts.append(("chain head", f"block {chain.head:,}"))
    if chain.current_epoch is None:
        if chain.head is not None:
            wait = chain.genesis_block - chain.head
            facts.append(("epoch", f"genesis at block {chain.genesis_block:,}, in about "
                                   f"{_duration(wait * block_s)}"))
    else:
        total = preset.epoch_blocks
        left = total - chain.epoch_block
        facts.append((f"epoch {chain.current_epoch}", (
            f'<progress id="epoch-progress" value="{chain.epoch_block}" max="{total}">'
            f"</progress> block {chain.epoch_block:,} of {total:,} "
            f"({chain.epoch_block * 100 // total}%), ends in about "
            f"{_duration(left * block_s)} at {preset.block_interval_ms:,} ms a block")))
    settled, published = s.get("latest_settled"), s.get("latest_published")
    facts.append(("latest settled epoch", _e(settled) if settled is not None
                  else '<span class="muted">none yet</span>'))
    facts.append(("latest published epoch", _e(published) if published is not None
                  else '<span class="muted">none yet</span>'))
    if chain.next_to_settle is not None and chain.settlement_block is not None:
        text = f"epoch {chain.next_to_settle}, from block {chain.settlement_block:,}"
        if chain.head is not None and chain.head < chain.settlement_block:
            text += (f" (in about "
                     f"{_duration((chain.settlement_block - chain.head) * block_s)})")
        facts.append(("next settlement", _e(text)))
    facts.append(("pending punishments", _e(s.get("pending_punishments", 0))))
    diverged = s.get("diverged") or []
    if diverged:
        facts.append(("diverged epochs",
                      f'<span class="bad">{_e(", ".join(map(str, diverged)))}</span>'))
    if chain.current_epoch is not None:
        reports, certificates = view.current_intake
        per_block = reports / max(chain.epoch_block, 1)
        facts.append(("intake this epoch", (
            f"{reports:,} reports in {certificates:,} certificates over "
            f"{chain.epoch_block:,} blocks: {per_block:.2f} reports a block, about "
            f"{per_block / block_s:.1f} a second")))
    intake = ", ".join(f"{_e(k)} {v:,}" for k, v in view.intake.items())
    facts.append(("intake since start", intake or '<span class="muted">nothing yet</span>'))
    return facts


def _settlement_section(view: OverviewView) -> list[str]:
    """The settlement under way: signatures, threshold, refusals (``/v1/status``'s
    ``settlement`` when the Validator reports it, else the stored epoch's)."""
    current = view.status.get("settlement")
    # Without the status's account: the next epoch to settle, once its rollup is published.
    pending = next((line for line in view.epochs
                    if line.record.epoch == view.chain.next_to_settle
                    and line.record.settlement is not None), None)
    if not isinstance(current, dict) and pending is None:
        return []
    if isinstance(current, dict):
        epoch = current.get("epoch")
        signatures, threshold = current.get("signatures"), current.get("threshold")
        refusals = dict(current.get("refusals") or {})
    else:
        assert pending is not None
        epoch, signatures, threshold = pending.record.epoch, pending.signatures, None
        refusals = pending.refusals
    have = f"{signatures} of {threshold}" if threshold else f"{signatures}"
    out = [f'<h2>Settlement of epoch {_e(epoch)}</h2>', '<table id="settlement">',
           _row(["signatures", _e(have)])]
    if refusals:
        for mixer, reason in sorted(refusals.items()):
            out.append(_row([f'refused by <code title="{_e(mixer)}">{_e(mixer[:12])}..</code>',
                             f'<span class="bad">{_e(reason)}</span>'], left=2))
    else:
        out.append(_row(["refusals", '<span class="muted">no refusals recorded</span>'],
                        left=2))
    out.append("</table>")
    return out


def render_overview(view: OverviewView) -> str:
    """The overview page's HTML: every value escaped, nothing loaded from elsewhere."""
    threshold = None
    current = view.status.get("settlement")
    if isinstance(current, dict) and current.get("epoch") == view.chain.next_to_settle:
        threshold = current.get("threshold")
    body = ['<table id="facts">', *(_row([_e(k), v], left=2) for k, v in _facts(view)),
            "</table>",
            *_settlement_section(view), "<h2>Epochs</h2>"]
    if not view.epochs:
        body.append('<p class="muted">No certificates yet: nodes are challenged from genesis '
                    "and the first certificates arrive within a round.</p>")
    else:
        body += ['<table id="epochs">',
                 _head(["epoch", "status", "reports", "certificates", "total DNA",
                        "signatures", "refusals", "root", "settlement tx"], left=2)]
        for line in view.epochs:
            r = line.record
            summary = r.summary()
            total = ('<span class="muted">not yet</span>' if summary["total"] is None
                     else _dna(summary["total"]))
            body.append(_row([
                f'<a href="/?epoch={r.epoch}">{r.epoch}</a>', _epoch_state(line, view, threshold),
                f"{r.reports:,}", f"{line.certificates:,}", total, f"{line.signatures:,}",
                _refusals(line.refusals), _short(summary["root"], "not yet"),
                _short(r.settle_tx, "not yet")], left=2))
        body.append("</table>")
    if view.epoch is not None:
        body += _nodes_section(view)
    return _page(view.title, body, refresh_s=view.refresh_s)


def _nodes_section(view: OverviewView) -> list[str]:
    epoch = view.epoch
    kind = ("the rollup's figures" if view.final
            else "provisional: the scores of the reports stored so far")
    shown = (f"{len(view.nodes)} of {view.node_count}" if len(view.nodes) < view.node_count
             else f"{view.node_count}")
    names = ["node", "challenges", "failed", "latency", "GFLOP/s", "down/up MB/s",
             "latency score", "compute score", "bandwidth score", "score", "strike", "fraud"]
    if view.final:
        names += ["reward DNA", "cumulative DNA"]
    out = [f"<h2>Epoch {epoch}: {shown} nodes, {_e(kind)}</h2>"]
    if not view.nodes:
        out.append(f'<p class="muted" id="no-nodes">No reports are stored for epoch {epoch}.'
                   "</p>")
        return out
    out += ['<table id="nodes">', _head(names)]
    for f in view.nodes:
        cells = [_node_link(f.node), f"{f.challenges:,}", f"{f.failures:,}", _ms(f.rtt_us),
                 _gflops(f.flops_per_s), _mbs(f.download_bps, f.upload_bps),
                 format_score(f.latency), format_score(f.compute), format_score(f.bandwidth),
                 format_score(f.score), _yes(f.strike), _yes(f.fraud)]
        if view.final:
            cells += [_dna(f.reward or 0), _dna(f.cumulative or 0)]
        out.append(_row(cells))
    out.append("</table>")
    return out


# -- a node's page --------------------------------------------------------------------------------


def _charts(history: list[NodeEpochFigures]) -> dict[str, Any]:
    """The plots' data: integers, with the divisor that turns each into its unit."""
    def column(get: Any) -> list[int | None]:
        return [get(f) for f in history]

    return {"epochs": [f.epoch for f in history], "charts": [
        {"id": "chart-score", "title": "score and sub-scores", "unit": "", "divisor": SCORE_ONE,
         "digits": 6, "range": [0, 1], "series": [
             {"label": "score", "values": column(lambda f: f.score)},
             {"label": "latency", "values": column(lambda f: f.latency)},
             {"label": "compute", "values": column(lambda f: f.compute)},
             {"label": "bandwidth", "values": column(lambda f: f.bandwidth)}]},
        {"id": "chart-reward", "title": "reward (DNA)", "unit": " DNA", "divisor": 10**6,
         "digits": 2, "series": [
             {"label": "reward", "values": column(
                 lambda f: None if f.reward is None else f.reward // (WEI_PER_DNA // 10**6))}]},
        {"id": "chart-latency", "title": "latency (ms, median)", "unit": " ms",
         "divisor": 1000, "digits": 2, "series": [
             {"label": "latency", "values": column(lambda f: f.rtt_us)}]},
        {"id": "chart-bandwidth", "title": "bandwidth (MB/s, median)", "unit": " MB/s",
         "divisor": 10**6, "digits": 0, "series": [
             {"label": "download", "values": column(lambda f: f.download_bps)},
             {"label": "upload", "values": column(lambda f: f.upload_bps)}]},
        {"id": "chart-compute", "title": "verified compute (GFLOP/s, median)",
         "unit": " GFLOP/s", "divisor": 10**9, "digits": 2, "series": [
             {"label": "GFLOP/s", "values": column(lambda f: f.flops_per_s)}]},
    ]}


def _registry_facts(view: NodeView) -> list[tuple[str, str]]:
    if view.registry_error is not None:
        return [("registry", f'<span class="bad">the chain could not be read: '
                             f"{_e(view.registry_error)}</span>")]
    node = view.registry
    if node is None:
        return [("registry", '<span class="bad">not registered</span>')]
    state = ('<span class="bad">jailed</span>' if node.jailed
             else '<span class="good">active</span>' if node.active
             else '<span class="bad">inactive</span>')
    return [("registry", state), ("stake DNA", _dna(node.stake)),
            ("hardware class", _e(hardware_class_name(node.hardware_class))),
            ("endpoint", f"<code>{_e(node.endpoint)}</code>")]


def render_node(view: NodeView) -> str:
    """A node's page (see the module docstring)."""
    preset = view.preset
    weights = preset.scoring
    facts = _registry_facts(view)
    if view.latest_settled is None:
        facts.append(("rewards", '<span class="muted">no epoch settled yet</span>'))
    else:
        facts.append((f"earned to epoch {view.latest_settled}", _dna(view.cumulative)))
    if view.claimed is not None:
        facts.append(("claimed", _dna(view.claimed)))
        facts.append(("to claim", _dna(max(0, view.cumulative - view.claimed))))
    window = preset.strike_window_epochs
    strikes = (", ".join(map(str, view.strike_epochs)) if view.strike_epochs
               else "none")
    facts.append((f"strikes in the last {window} epochs",
                  f'<span class="{"bad" if view.strike_epochs else ""}">{_e(strikes)}</span>'))
    latest = view.history[-1] if view.history else None
    body = [f"<h2>Node <code>{_e(view.address)}</code></h2>",
            f'<p class="muted">JSON: <a href="/v1/nodes/{_e(view.address)}">'
            f"/v1/nodes/{_e(view.address)}</a></p>",
            '<table id="node-facts">', *(_row([_e(k), v], left=2) for k, v in facts),
            "</table>"]
    if latest is not None:
        kind = "final" if latest.final else "provisional"
        body += [f"<h2>Epoch {latest.epoch} ({kind}): why it scored what it scored</h2>",
                 '<table id="breakdown">',
                 _head(["part", "weight", "sub-score", "measured (median of OK challenges)"]),
                 _row(["latency", f"{weights.weight_latency_bps * 100 // BPS_ONE}%",
                       format_score(latest.latency), _ms(latest.rtt_us)]),
                 _row(["compute", f"{weights.weight_compute_bps * 100 // BPS_ONE}%",
                       format_score(latest.compute), f"{_gflops(latest.flops_per_s)} GFLOP/s"]),
                 _row(["bandwidth", f"{weights.weight_bandwidth_bps * 100 // BPS_ONE}%",
                       format_score(latest.bandwidth),
                       f"{_mbs(latest.download_bps, latest.upload_bps)} MB/s down/up"]),
                 _row(["score", "", format_score(latest.score),
                       f"{latest.failures} of {latest.challenges} challenges failed"
                       + (", struck: earns nothing" if latest.strike else "")
                       + (", fraud: earns nothing" if latest.fraud else "")]),
                 "</table>",
                 '<p class="muted">Each sub-score is averaged over the epoch\'s challenges as '
                 "the score is (a failed challenge counts zero); the score is the weighted sum "
                 "of the challenges' scores, zero with a strike or fraud.</p>"]
    body += _history_section(view)
    body += _failures_section(view.failures)
    body += _punishments_section(view.punishments)
    return _page(f"node {view.address[:12]}..", body, refresh_s=view.refresh_s,
                 charts=bool(view.history))


def _history_section(view: NodeView) -> list[str]:
    if not view.history:
        return ['<p class="muted" id="no-history">No challenge of this node is stored yet.</p>']
    data = json.dumps(_charts(view.history), separators=(",", ":"))
    out = ["<h2>Over epochs</h2>", '<div class="charts">',
           *(f'<div class="chart" id="{c["id"]}"></div>' for c in _charts([])["charts"]),
           "</div>",
           # JSON in a script element: "<" escaped so no text can close the element.
           '<script type="application/json" id="chart-data">'
           + data.replace("<", "\\u003c") + "</script>",
           '<table id="history">',
           _head(["epoch", "challenges", "failed", "latency", "GFLOP/s", "down/up MB/s",
                  "latency score", "compute score", "bandwidth score", "score", "strike",
                  "fraud", "reward DNA", "cumulative DNA"])]
    for f in reversed(view.history):
        status = "" if f.final else ' <span class="muted">(provisional)</span>'
        out.append(_row([
            f'<a href="/?epoch={f.epoch}">{f.epoch}</a>{status}', f"{f.challenges:,}",
            f"{f.failures:,}", _ms(f.rtt_us), _gflops(f.flops_per_s),
            _mbs(f.download_bps, f.upload_bps), format_score(f.latency),
            format_score(f.compute), format_score(f.bandwidth), format_score(f.score),
            _yes(f.strike), _yes(f.fraud), _dna(f.reward), _dna(f.cumulative)]))
    out.append("</table>")
    return out


def _failures_section(failures: list[FailedChallenge]) -> list[str]:
    out = ["<h2>Failed challenges</h2>"]
    if not failures:
        return [*out, '<p class="muted" id="no-failures">None stored.</p>']
    out += ['<table id="failures">', _head(["epoch", "round", "mixer", "outcome", "reason"],
                                           left=5)]
    for f in failures:
        out.append(_row([str(f.epoch), str(f.round),
                         f'<code title="{_e(f.mixer)}">{_e(f.mixer[:12])}..</code>',
                         _e(f.outcome), _e(f.reason) or '<span class="muted">none given</span>'],
                        left=5))
    out.append("</table>")
    return out


def _punishments_section(punishments: list[NodePunishment]) -> list[str]:
    out = ["<h2>Jail and slash</h2>"]
    if not punishments:
        return [*out, '<p class="muted" id="no-punishments">None.</p>']
    out += ['<table id="punishments">',
            _head(["epoch", "jail", "slashed", "status", "transaction", "error"], left=6)]
    for p in punishments:
        slash = p.punishment.slash_bps
        out.append(_row([
            str(p.punishment.epoch), _yes(p.punishment.jail),
            f"{slash // 100}.{slash % 100:02d}% of the stake" if slash else "nothing",
            _e(p.status), _short(p.tx, "not yet"), _e(p.error or "")], left=6))
    out.append("</table>")
    return out


__all__ = [
    "DEFAULT_NODES",
    "EPOCHS_SHOWN",
    "MAX_NODES",
    "STALL_ROUNDS",
    "ChainPosition",
    "NodeView",
    "OverviewView",
    "render_error",
    "render_node",
    "render_overview",
]
