"""What the adversarial devnet proves: its figures, computed from what anyone can read.

``collect_evidence`` reads a finished adversarial devnet's epochs from the Validator (each
node's breakdown, the certificates, the punishments) and the chain (settlement lags, who is
jailed); ``compute_figures`` turns them into the figures of ``bench/adversary.py``:

- ``cheater_reward_share``: what the detectable cheats earned, over everything paid;
- ``cheaters_punished_on_chain``: detectable cheats jailed on chain by the end (and when the
  punishment was decided);
- ``forged_reports_certified``: a Byzantine mixer's reports in certificates that are forged
  (inflated, fabricated OK, or a second report for a key); ``..._with_reference`` leaves out
  inflated reports of a node's first rounds, before co-signers had the other mixers'
  measurements to compare them with (the plausibility check's documented gap);
- ``fabricated_failures_certified``: its made-up failures (undetectable: they carry no node
  signature), with the probability that they alone strike an honest node in an epoch;
- ``griefed_node_failed_challenges``: failed challenges of the griefed node by honest mixers;
- ``settlement_stalled_epochs``: epochs settled later than twice the usual lag;
- ``stranger_requests_served``: the griefer's attempts that were served.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import comb
from typing import Any

from dnanet.adversary.mixers import EQUIVOCATED
from dnanet.adversary.roles import DETECTION, is_detectable
from dnanet.crypto.eip712 import Domain
from dnanet.errors import DnanetError
from dnanet.params import Preset
from dnanet.protocol.epoch import punishment_cause
from dnanet.protocol.messages import Outcome, QuorumCertificate, ScoreReport
from dnanet.protocol.plausibility import PlausibilityPolicy
from dnanet.protocol.scoring import compute_tolerated_challengers
from dnanet.protocol.validation import verify_report_response

FABRICATED = "(fabricated)"
"""The mark ``dnanet.mixer.byzantine`` leaves in the reason of a made-up failure."""


SEVERITY = {"WRONG_ANSWER": 0, "CANARY_FAILED": 1, "BAD_RESPONSE": 2}


def explain_node_epoch(detail: Mapping[str, Any] | None, preset: Preset) -> str:
    """Why a node earned what it did in an epoch, from the Validator's breakdown."""
    if not detail or not detail.get("challenges"):
        return "no certified challenge (jailed, or not registered)"
    reports = detail.get("reports", [])
    # The gravest first: fraud, a wrong canary answer, then the rest.
    failed = sorted((r for r in reports if r.get("outcome") != "OK"),
                    key=lambda r: SEVERITY.get(r.get("outcome", ""), len(SEVERITY)))
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(Counter(r["outcome"]
                                                               for r in failed).items()))
    first = f' ("{failed[0].get("reason", "")[:90]}")' if failed else ""
    share = f"{len(failed)}/{detail['challenges']} failed"
    if detail.get("fraud"):
        return f"fraud: {share} ({outcomes}){first}: nothing, then jail and slash"
    if detail.get("canaries"):
        return (f"canaries: {share} ({outcomes}){first}: answers found wrong by more than f "
                "mixers: nothing, then jail and slash")
    if detail.get("strike"):
        return (f"strike: {share} ({outcomes}), more than {preset.strike_fail_numerator}/"
                f"{preset.strike_fail_denominator}{first}: nothing this epoch")
    return f"{share}" + (f" ({outcomes}){first}" if failed else "")


def compute_mixer_certified(certificates: Iterable[QuorumCertificate], mixer: str,
                            friends: frozenset[str], domain: Domain | None = None
                            ) -> dict[str, int]:
    """A mixer's certified reports: OK and failed, and the forged ones among them:
    ``inflated`` (OK reports of a friend, whose figures an inflating mixer multiplies),
    ``fabricated_ok`` (OK reports whose node signature does not verify: checked with
    ``domain``, else every OK report of a non-friend by a fabricating mixer counts),
    ``equivocated`` (a second report of a key), ``fabricated_failures`` (made-up failures)."""
    reports = [r for c in certificates for r in c.reports if r.mixer == mixer]
    counts = Counter(ok=0, failed=0, inflated=0, fabricated_ok=0, equivocated=0,
                     fabricated_failures=0)
    by_key: dict[tuple[int, int, str, str], set[bytes]] = {}
    for report in reports:
        by_key.setdefault(report.key, set()).add(report.hash_struct())
        if report.outcome == Outcome.OK:
            counts["ok"] += 1
            if report.node in friends:
                counts["inflated"] += 1
            elif domain is not None and not _node_signed(report, domain):
                counts["fabricated_ok"] += 1
        else:
            counts["failed"] += 1
            if FABRICATED in report.reason:
                counts["fabricated_failures"] += 1
    counts["equivocated"] = sum(len(h) - 1 for h in by_key.values())
    return dict(counts)


def compute_unchecked_inflations(certificates: Iterable[QuorumCertificate], mixer: str,
                                 friends: frozenset[str], min_samples: int) -> int:
    """How many of ``mixer``'s certified OK reports of a friend came before ``min_samples``
    certified OK reports of that node by other mixers: co-signers had no reference to compare
    them with (``PlausibilityPolicy.min_samples``), so no plausibility check could apply."""
    reports = sorted((r for c in certificates for r in c.reports),
                     key=lambda r: (r.epoch, r.round))
    unchecked = 0
    for report in reports:
        if report.mixer != mixer or report.node not in friends or report.outcome != Outcome.OK:
            continue
        earlier = sum(1 for r in reports if r.node == report.node and r.mixer != mixer
                      and r.outcome == Outcome.OK and (r.epoch, r.round)
                      < (report.epoch, report.round))
        unchecked += earlier < min_samples
    return unchecked


def _node_signed(report: ScoreReport, domain: Domain) -> bool:
    try:
        verify_report_response(report, domain)
    except DnanetError:
        return False
    return True


def compute_fabricated_strike_probability(preset: Preset, mixers: int, faulty: int) -> float:
    """The probability that ``faulty`` mixers reporting every challenge they are assigned as
    failed give an honest node a strike in one epoch. Each mixer assigns the node with
    probability c/n per round, independently; the strike rule sets aside the failures of the
    ``compute_tolerated_challengers(mixers)`` challengers that reported the most of them
    (every mixer reporting in the epoch), so up to that many liars strike nobody; beyond it,
    the liars with the fewest assignments are the ones counted."""
    tolerated = compute_tolerated_challengers(mixers)
    if faulty <= tolerated:
        return 0.0
    p = min(1.0, preset.challenges_per_round / mixers)
    rounds = preset.rounds_per_epoch
    good_n = rounds * (mixers - faulty)
    num, den = preset.strike_fail_numerator, preset.strike_fail_denominator

    def pmf(n: int, k: int) -> float:
        return comb(n, k) * p**k * (1 - p)**(n - k)

    total = 0.0
    for liars in itertools.product(range(rounds + 1), repeat=faulty):
        bad = sum(sorted(liars)[:faulty - tolerated])  # the most-assigned ones set aside
        if bad == 0:
            continue
        weight = math.prod(pmf(rounds, k) for k in liars)
        total += weight * sum(pmf(good_n, good) for good in range(good_n + 1)
                              if bad * den > (bad + good) * num)
    return total


@dataclass
class Evidence:
    """A finished adversarial devnet, as the Validator and the chain tell it."""

    preset: Preset
    domain: Domain
    mixers: int
    epochs: list[int]
    roles: dict[str, str]
    """Dishonest (and control) nodes' addresses and roles."""
    honest: list[str]
    """Nodes without a role."""
    byzantine: dict[str, tuple[str, ...]]
    friends: frozenset[str]
    griefed: list[str]
    breakdowns: dict[int, dict[str, Any]]
    certificates: dict[int, list[QuorumCertificate]]
    punishments: dict[int, list[dict[str, Any]]]
    totals: dict[int, int]
    lags: dict[int, int | None]
    jailed: dict[str, bool]
    griefer: dict[str, Any] = field(default_factory=dict)
    stranger_sent: int = 0
    stranger_served: int = 0


def _reward(evidence: Evidence, address: str) -> int:
    return sum(int((evidence.breakdowns[e].get(address) or {}).get("reward", 0))
               for e in evidence.epochs)


def _share(amount: int, total: int) -> float:
    return round(amount / total, 6) if total else 0.0


def compute_figures(evidence: Evidence) -> dict[str, Any]:
    """The benchmark's figures (see the module docstring) and the detail behind them."""
    paid = sum(evidence.totals.get(e, 0) for e in evidence.epochs)
    by_role: dict[str, list[str]] = {}
    for address, role in evidence.roles.items():
        by_role.setdefault(role, []).append(address)
    punished: dict[str, tuple[int, str]] = {}
    for epoch in evidence.epochs:
        for item in evidence.punishments.get(epoch, []):
            p = item["punishment"]
            kind = punishment_cause(p["slashBps"], evidence.preset)
            punished.setdefault(p["node"].lower(), (epoch, kind))
    honest_shares = [_share(_reward(evidence, a), paid) for a in evidence.honest]
    cheats: dict[str, Any] = {}
    detectable_reward = 0
    for role, addresses in sorted(by_role.items()):
        detection = DETECTION.get(role)
        reward = sum(_reward(evidence, a) for a in addresses)
        decided = [punished[a] for a in addresses if a in punished]
        entry: dict[str, Any] = {
            "nodes": len(addresses),
            "reward_share": _share(reward, paid),
            "reward_share_per_node": _share(reward // len(addresses), paid),
            "jailed_on_chain": all(evidence.jailed.get(a, False) for a in addresses),
            "punished_epoch": min(e for e, _ in decided) if decided else None,
            "punishment": decided[0][1] if decided else None,
            "why_each_epoch": [explain_node_epoch(evidence.breakdowns[e].get(addresses[0]),
                                                  evidence.preset) for e in evidence.epochs],
        }
        if detection is not None:
            entry.update(detectable=detection.detectable, how=detection.how)
        if is_detectable(role):
            detectable_reward += reward
        cheats[role] = entry
    detectable = [r for r in by_role if is_detectable(r)]
    jailed = [r for r in detectable if cheats[r]["jailed_on_chain"]]
    soon = [r for r in detectable
            if cheats[r]["punished_epoch"] is not None and cheats[r]["punished_epoch"] <= 1]
    forged = Counter[str]()
    everything = [c for e in evidence.epochs for c in evidence.certificates.get(e, [])]
    for address in evidence.byzantine:
        forged.update(compute_mixer_certified(everything, address, evidence.friends,
                                              evidence.domain))
        forged["inflated_before_reference"] += compute_unchecked_inflations(
            everything, address, evidence.friends, PlausibilityPolicy().min_samples)
    byzantine = set(evidence.byzantine)
    griefed_failures = sum(
        1 for e in evidence.epochs for address in evidence.griefed
        for r in (evidence.breakdowns[e].get(address) or {}).get("reports", [])
        if r["outcome"] != "OK" and r["mixer"].lower() not in byzantine)
    honest_strikes = []
    for epoch in evidence.epochs:
        for address in evidence.honest:
            detail = evidence.breakdowns[epoch].get(address) or {}
            if detail.get("strike"):
                failed = [r for r in detail["reports"] if r["outcome"] != "OK"]
                honest_strikes.append({
                    "epoch": epoch, "node": address[:10], "challenges": detail["challenges"],
                    "failed": len(failed),
                    "failed_by_byzantine": sum(1 for r in failed
                                               if r["mixer"].lower() in byzantine)})
    lags = [lag for lag in evidence.lags.values() if lag is not None]
    usual = statistics.median(lags) if lags else None
    stalled = [e for e, lag in evidence.lags.items() if lag is not None and usual is not None
               and lag > 2 * usual and lag > usual + evidence.preset.round_blocks]
    return {
        "cheater_reward_share": _share(detectable_reward, paid),
        "cheaters_punished_on_chain": len(jailed),
        "detectable_cheats": len(detectable),
        "punished_within_two_epochs": len(soon),
        "forged_reports_certified": forged["inflated"] + forged["fabricated_ok"]
        + forged["equivocated"],
        "forged_reports_certified_with_reference": forged["inflated"]
        - forged["inflated_before_reference"] + forged["fabricated_ok"] + forged["equivocated"],
        "fabricated_failures_certified": forged["fabricated_failures"],
        "fabricated_failure_strike_probability": round(compute_fabricated_strike_probability(
            evidence.preset, evidence.mixers, len(evidence.byzantine)), 4),
        "honest_node_strikes": len(honest_strikes),
        "griefed_node_failed_challenges": griefed_failures,
        "settlement_stalled_epochs": len(stalled),
        "stranger_requests_served": evidence.stranger_served,
        "stranger_requests_sent": evidence.stranger_sent,
        "detail": {
            "paid": paid,
            "honest_node_reward_share_median": (statistics.median(honest_shares)
                                                if honest_shares else None),
            "cheats": cheats,
            "honest_strikes": honest_strikes,
            "undetectable": sorted(r for r in by_role if r in DETECTION
                                   and not DETECTION[r].detectable),
            "forged": dict(forged),
            "settle_lag_blocks": [evidence.lags.get(e) for e in evidence.epochs],
            "usual_settle_lag_blocks": usual,
            "griefer": evidence.griefer,
        },
    }


async def collect_evidence(devnet: Any) -> Evidence:
    """The evidence of a finished ``AdversarialDevnet``/``AdversarialProcessDevnet`` (its
    chain still up): every summarized epoch."""
    epochs = [s.epoch for s in devnet.summaries]
    client = devnet.gateway(None).client
    everyone = [n.address for n in devnet.node_ids]

    def chain() -> tuple[dict[int, int | None], dict[int, int], dict[str, bool]]:
        lags: dict[int, int | None] = {}
        totals: dict[int, int] = {}
        for epoch in epochs:
            settled = client.settlement(epoch)
            lags[epoch] = (None if settled is None
                           else settled.block_number - client.settle_block(epoch))
            totals[epoch] = 0 if settled is None else int(settled.total)
        jailed = {}
        for address in everyone:
            info = client.node_info(address)
            jailed[address] = bool(info is not None and info.jailed)
        return lags, totals, jailed

    lags, totals, jailed = await asyncio.to_thread(chain)
    punishments = {}
    for epoch in epochs:
        info = await devnet._get_json(f"{devnet.validator_url}/v1/epochs/{epoch}") or {}
        punishments[epoch] = info.get("punishments", [])
    griefers = list(devnet.griefers.values())
    return Evidence(
        preset=devnet.preset, domain=devnet.gateway(None).domain, mixers=len(devnet.mixer_ids),
        epochs=epochs, roles=dict(devnet.roles),
        honest=[a for a in everyone if a not in devnet.roles],
        byzantine=dict(devnet.byzantine), friends=devnet.friends,
        griefed=list(devnet.griefers), breakdowns=devnet.breakdowns,
        certificates=devnet.certificates, punishments=punishments, totals=totals, lags=lags,
        jailed=jailed, griefer={a[:10]: g.summary() for a, g in devnet.griefers.items()},
        stranger_sent=sum(g.sent for g in griefers),
        stranger_served=sum(g.served for g in griefers))


__all__ = [
    "EQUIVOCATED",
    "FABRICATED",
    "Evidence",
    "collect_evidence",
    "compute_fabricated_strike_probability",
    "compute_figures",
    "compute_mixer_certified",
    "explain_node_epoch",
]
