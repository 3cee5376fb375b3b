"""``dnanet node status``: what a node did, how it scored and why, and what it can claim.

Three sources, each for what only it knows:

- the Validator: per epoch, the node's score, reward and every certified challenge report
  (the mixer's measurements, sub-scores, outcome and reason), including the epoch still being
  collected (marked as not published: its figures may change); and the node's cumulative
  total with its Merkle proof, as of the latest settled epoch;
- the chain (optional, ``--rpc`` and ``--deployment``): what the node already claimed, so
  ``claimable = cumulative - claimed``, and the current epoch. Without it, claimable is
  reported as unknown, never guessed;
- the node itself (optional, ``--node``): the challenges it answered lately, how far each
  session went, the error it answered if any, and its own timings. The node never learns the
  mixer's verdict: each of its challenges is matched, by (epoch, round, mixer), with the
  report the Validator holds for it.

``collect_status`` gathers a JSON-able dict (``--json`` prints it); ``render_status`` writes
it for a person.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import httpx

from dnanet.errors import CodecError, DnanetError
from dnanet.params import Preset, format_dna, format_score
from dnanet.protocol.codec import load_json
from dnanet.protocol.rollup import verify_proof
from dnanet.protocol.schedule import compute_epoch
from dnanet.service.network import NodeRecord, SettledEpoch

DEFAULT_EPOCHS = 3
DEFAULT_RECENT = 20


class ChainReader(Protocol):
    """The reads status makes on the chain (a ``ChainGateway`` has them)."""

    @property
    def preset(self) -> Preset: ...
    @property
    def genesis_block(self) -> int: ...
    def block_number(self) -> int: ...
    def claimed(self, account: str) -> int: ...
    def settled_epoch(self, epoch: int) -> SettledEpoch | None: ...
    def node(self, address: str) -> NodeRecord | None: ...


def get_json(client: httpx.Client, url: str, what: str) -> Any:
    """GET ``url`` as JSON; DnanetError naming ``what`` when it cannot be had."""
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise DnanetError(f"cannot reach {what} at {url}: {exc}") from None
    if response.status_code != 200:
        try:
            detail = load_json(response.content, max_bytes=None)["error"]["message"]
        except (CodecError, KeyError, TypeError):
            detail = response.text[:200]
        raise DnanetError(f"{what} answered HTTP {response.status_code} for {url}: {detail}")
    try:
        return load_json(response.content, max_bytes=None)
    except CodecError as exc:
        raise DnanetError(f"{what} answered something that is not JSON for {url}: {exc}"
                          ) from None


def _read_chain(chain: ChainReader, address: str, settled: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": None, "current_epoch": None, "claimed": None,
                           "root": None, "registration": None}
    try:
        registered = chain.node(address)
        out["registration"] = None if registered is None else {
            "endpoint": registered.endpoint, "stake": str(registered.stake),
            "jailed": registered.jailed, "active": registered.active,
            "min_stake": str(chain.preset.min_stake)}
        head = chain.block_number()
        if head >= chain.genesis_block:
            out["current_epoch"] = compute_epoch(head, chain.preset, chain.genesis_block)
        out["claimed"] = chain.claimed(address)
        if settled is not None:
            record = chain.settled_epoch(settled)
            out["root"] = None if record is None else "0x" + record.rewards_root.hex()
    except DnanetError as exc:
        out["error"] = str(exc)
    return out


def _rewards(summary: dict[str, Any], address: str, chain: dict[str, Any] | None
             ) -> dict[str, Any]:
    cumulative = int(summary.get("cumulative") or 0)
    root, proof = summary.get("root"), summary.get("proof") or []
    verifies = None
    if summary.get("in_tree") and root:
        verifies = verify_proof(bytes.fromhex(root[2:]), address, cumulative,
                                [bytes.fromhex(p[2:]) for p in proof])
    out: dict[str, Any] = {
        "settled_epoch": summary.get("epoch"), "root": root, "cumulative": cumulative,
        "in_tree": bool(summary.get("in_tree")), "proof_verifies": verifies,
        "claimed": None, "claimable": None, "chain_root": None, "note": None,
    }
    if chain is None:
        out["note"] = "pass --rpc URL --deployment FILE to read what is already claimed on chain"
    elif chain["claimed"] is None:
        out["note"] = f"cannot read the chain: {chain['error']}"
    else:
        out["claimed"] = chain["claimed"]
        out["claimable"] = max(cumulative - chain["claimed"], 0)
        out["chain_root"] = chain["root"]
        if root and chain["root"] and chain["root"] != root:
            out["note"] = (f"the Validator's root for epoch {summary.get('epoch')} is not the "
                           "chain's: a claim with its proof would fail")
        elif verifies is False:
            out["note"] = "the Validator's proof does not verify against its root"
    return out


def _select_epochs(count: int, *sources: list[int]) -> list[int]:
    """The newest ``count`` epochs named by any source, newest first."""
    return sorted({e for source in sources for e in source}, reverse=True)[:count]


def _verdict(challenge: dict[str, Any], epochs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The Validator's report for one of the node's challenges, or why there is none."""
    epoch = epochs.get(challenge["epoch"])
    if epoch is None:
        return {"report": None, "note": "not looked up (older than the epochs shown; "
                                        "raise --epochs)"}
    if epoch.get("error"):
        return {"report": None, "note": f"the Validator's breakdown failed: {epoch['error']}"}
    mixer = str(challenge["mixer"]).lower()
    for report in epoch.get("reports", []):
        if report["round"] == challenge["round"] and str(report["mixer"]).lower() == mixer:
            return {"report": report, "note": None}
    if epoch.get("final"):
        return {"report": None, "note": "no certified report in the published epoch (the "
                                        "mixer's report did not reach the Validator with a "
                                        "quorum)"}
    return {"report": None, "note": "not certified yet"}


def collect_status(
    client: httpx.Client,
    validator_url: str,
    address: str,
    *,
    node_url: str | None = None,
    chain: ChainReader | None = None,
    epochs: int = DEFAULT_EPOCHS,
    recent: int = DEFAULT_RECENT,
) -> dict[str, Any]:
    """Everything ``dnanet node status`` shows, as a JSON-able dict."""
    base = validator_url.rstrip("/")
    summary = get_json(client, f"{base}/v1/nodes/{address}", "the Validator")
    listed = get_json(client, f"{base}/v1/epochs?limit={max(epochs, 1)}", "the Validator")
    chain_view = _read_chain(chain, address, summary.get("epoch")) if chain else None

    node: dict[str, Any] | None = None
    challenges: list[dict[str, Any]] = []
    if node_url:
        try:
            node = get_json(client, f"{node_url.rstrip('/')}/v1/status", "the node")
        except DnanetError as exc:
            node = {"error": str(exc)}
        else:
            challenges = list(node.pop("recent_challenges", []))[:recent]
            if str(node.get("address", "")).lower() != address:
                node["warning"] = (f"the node at {node_url} is {node.get('address')}, "
                                   f"not {address}")
                challenges = []
        node["url"] = node_url

    current = chain_view["current_epoch"] if chain_view else None
    shown = _select_epochs(
        epochs, [int(e["epoch"]) for e in listed], [int(r["epoch"]) for r in
                                                    summary.get("epochs", [])],
        [int(c["epoch"]) for c in challenges], [] if current is None else [current])
    breakdowns: dict[int, dict[str, Any]] = {}
    for epoch in shown:
        try:
            breakdowns[epoch] = get_json(client, f"{base}/v1/nodes/{address}/epochs/{epoch}",
                                     "the Validator")
        except DnanetError as exc:
            breakdowns[epoch] = {"epoch": epoch, "error": str(exc)}
    for challenge in challenges:
        challenge["verdict"] = _verdict(challenge, breakdowns)

    return {
        "address": address,
        "validator": validator_url,
        "chain": None if chain_view is None else {
            "current_epoch": current, "error": chain_view["error"],
            "registration": chain_view["registration"]},
        "rewards": _rewards(summary, address, chain_view),
        "node": node,
        "recent_challenges": challenges,
        "epochs": [breakdowns[e] for e in shown],
    }


# -- rendering ------------------------------------------------------------------------------------


def _short(address: str) -> str:
    return str(address)[:10]


def _metrics(report: dict[str, Any]) -> str:
    parts = [f"rtt {report['rtt_us'] / 1000:.2f} ms" if report.get("rtt_us") else None,
             f"{report['flops_per_s'] / 1e9:.2f} GFLOP/s" if report.get("flops_per_s") else None,
             f"down {report['download_bps'] / 1e6:.1f} MB/s"
             if report.get("download_bps") else None,
             f"up {report['upload_bps'] / 1e6:.1f} MB/s" if report.get("upload_bps") else None]
    return ", ".join(p for p in parts if p) or "no measurements"


def _report_line(report: dict[str, Any]) -> str:
    if report["outcome"] == "OK":
        line = (f"OK, score {format_score(report['score'])} (latency "
                f"{format_score(report['latency'])}, compute {format_score(report['compute'])}, "
                f"bandwidth {format_score(report['bandwidth'])}); {_metrics(report)}")
    else:  # a failure scores zero: its reason matters, and what was measured before it
        line = f"{report['outcome']}, score 0"
        measured = _metrics(report)
        if measured != "no measurements":
            line += f"; {measured}"
    if report.get("reason"):
        line += f"; reason: {report['reason']}"
    if report.get("fraud"):
        line += " [signed fraud evidence]"
    return line


def _size(nbytes: int) -> str:
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    if nbytes >= 2**10:
        return f"{nbytes / 2**10:.1f} KiB"
    return f"{nbytes} B"


def _node_side(challenge: dict[str, Any]) -> str:
    m = challenge.get("node_metrics") or {}
    parts = []
    if m.get("compute_us"):
        parts.append(f"compute {m['compute_us'] / 1000:.1f} ms")
    if m.get("download_bytes") is not None and m.get("download_us"):
        parts.append(f"download {_size(m['download_bytes'])} in "
                     f"{m['download_us'] / 1000:.1f} ms")
    if m.get("upload_bytes") is not None:
        parts.append(f"upload {_size(m['upload_bytes'])}")
    return ", ".join(parts)


def _session(challenge: dict[str, Any]) -> str:
    stage = challenge.get("stage", "?")
    text = ("completed (rows opened)" if challenge.get("completed")
            else f"stopped after {stage}")
    if challenge.get("error"):
        text += f"; the node answered an error at {challenge['error']}"
    return text


def _epoch_title(epoch: dict[str, Any]) -> str:
    if epoch.get("final"):
        return f"epoch {epoch['epoch']}: {epoch.get('status', 'published')}"
    return (f"epoch {epoch['epoch']}: {epoch.get('status', 'collecting')}, not published yet "
            "(the figures so far; they may change until the epoch is rolled up)")


def _registration(record: dict[str, Any] | None) -> str:
    if record is None:
        return "not registered (dnanet node run registers it)"
    stake = int(record["stake"])
    if record["jailed"]:
        state = "JAILED: the registry's owner must unjail it (dnanet node unjail)"
    elif record["active"]:
        state = "active"
    elif stake < int(record["min_stake"]):
        state = (f"inactive: below the minimum {format_dna(int(record['min_stake']))} "
                 "(dnanet node stake add)")
    else:
        state = "inactive: unbonding (dnanet node withdraw once its delay has passed)"
    return f"stake {format_dna(stake)}, {state}, at {record['endpoint']}"


def render_status(status: dict[str, Any]) -> str:
    """``collect_status``'s dict for a person."""
    out: list[str] = [f"node {status['address']}", f"  validator  {status['validator']}"]
    chain = status.get("chain")
    if chain is None:
        out.append("  chain      not given (--rpc, --deployment)")
    elif chain.get("error"):
        out.append(f"  chain      cannot be read: {chain['error']}")
    else:
        out.append(f"  chain      current epoch {chain.get('current_epoch')}")
        out.append(f"  registry   {_registration(chain.get('registration'))}")

    r = status["rewards"]
    settled = r.get("settled_epoch")
    out.append("rewards" + (f" (as of settled epoch {settled})" if settled is not None
                            else " (no epoch settled yet)"))
    proof = ("in the reward tree, proof verifies" if r.get("proof_verifies")
             else "in the reward tree, PROOF DOES NOT VERIFY" if r.get("in_tree")
             else "not in the reward tree")
    out.append(f"  cumulative  {format_dna(r['cumulative'])} ({proof})")
    if r.get("claimable") is None:
        out.append(f"  claimable   unknown ({r.get('note')})")
    else:
        out.append(f"  claimed     {format_dna(r['claimed'])} (on chain)")
        out.append(f"  claimable   {format_dna(r['claimable'])}"
                   + (" -> dnanet node claim" if r["claimable"] else ""))
        if r.get("note"):
            out.append(f"  warning     {r['note']}")

    node = status.get("node")
    if node is not None:
        out.append(f"node at {node['url']}")
        if node.get("error"):
            out.append(f"  {node['error']}")
        else:
            if node.get("warning"):
                out.append(f"  warning: {node['warning']}")
            hardware = node.get("hardware") or {}
            out.append(f"  computes on {node.get('device', '?')}, declares class "
                       f"{node.get('hardware_class', '?')}; {hardware.get('cpu_cores', '?')} "
                       f"cores, GPU {hardware.get('gpu') or 'none'}; "
                       f"{len(node.get('mixers') or [])} mixers known")
        challenges = status.get("recent_challenges", [])
        if not node.get("error"):
            out.append(f"  recent challenges ({len(challenges)}, newest first)"
                       + ("" if challenges else ": none yet"))
        for c in challenges:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(c["received_at"]))
            out.append(f"    epoch {c['epoch']} round {c['round']} mixer {_short(c['mixer'])} "
                       f"{when}: {_session(c)}")
            side = _node_side(c)
            if side:
                out.append(f"      node measured: {side}")
            verdict = c.get("verdict") or {}
            if verdict.get("report"):
                out.append(f"      mixer's verdict: {_report_line(verdict['report'])}")
            else:
                out.append(f"      mixer's verdict: unknown, {verdict.get('note')}")

    for epoch in status.get("epochs", []):
        if epoch.get("error"):
            out.append(f"epoch {epoch['epoch']}: {epoch['error']}")
            continue
        out.append(_epoch_title(epoch))
        reward = (format_dna(epoch["reward"]) if epoch.get("final")
                  else "not computed yet")
        flags = "".join([", strike (too many failures: no reward for the epoch)"
                         if epoch.get("strike") else "",
                         ", fraud" if epoch.get("fraud") else ""])
        out.append(f"  score {format_score(epoch['epoch_score'])} over {epoch['challenges']} "
                   f"certified challenges, {epoch['failures']} failed{flags}; reward {reward}")
        for report in epoch.get("reports", []):
            out.append(f"  round {report['round']} mixer {_short(report['mixer'])}: "
                       f"{_report_line(report)}")
    return "\n".join(out)


__all__ = ["DEFAULT_EPOCHS", "DEFAULT_RECENT", "ChainReader", "collect_status", "format_dna",
           "format_score", "get_json", "render_status"]
