"""Plausible measurements: a co-signer's check that a report's figures agree with what the
other mixers measured of the same node.

A report's measurements are the challenging mixer's own clock readings: nobody else can
verify them. A mixer that inflates a friend's figures (or deflates a rival's) writes reports
that pass every signature and bound. What exposes it is the other mixers: each challenges the
same node too, and every co-signer sees their reports. So a co-signer keeps, per node, the
recent OK measurements of the *other* mixers (and its own) and refuses a report whose timed
figure lies well outside the range they span: more than ``faster`` times faster than the
fastest of them, or ``slower`` times slower than the slowest. The range, not the median: on a
busy host honest figures of one node scatter over a factor of thirty (measured on the shared
2-core development host), and an honest report must stay inside what honest mixers see, while
an inflated one must leave it. The rule is not part of the deterministic rollup (co-signers may disagree on it and
then the quorum decides); it decides whether an honest co-signer lends its signature.

Latency depends on the path between two hosts, so it is compared with a wider tolerance than
compute (a property of the node alone) and bandwidth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dnanet.errors import ScoringError
from dnanet.protocol.messages import Outcome, ScoreReport

MEASURED = (("rtt_us", "rttUs"), ("compute_us", "computeUs"), ("download_us", "downloadUs"),
            ("upload_us", "uploadUs"))
"""The timed figures of a report: attribute and wire name."""


@dataclass(frozen=True)
class PlausibilityPolicy:
    """How far a report's figures may lie from the others' median (ratios, > 1)."""

    faster: float = 2.0
    """A compute or transfer time more than this many times shorter than the shortest the
    others measured is refused."""
    slower: float = 4.0
    """... or more than this many times longer than the longest."""
    latency_faster: float = 16.0
    """The same for round trips, wider: another mixer's path to the node may be shorter."""
    latency_slower: float = 16.0
    min_samples: int = 3
    """Fewer reference measurements than this: no check (a new node, a new co-signer)."""
    slack_us: int = 2_000
    """A figure within this many microseconds of the range always passes: timings of
    sub-millisecond steps (tiny challenges, loopback round trips) scatter by large ratios."""


@dataclass(frozen=True)
class MeasurementReference:
    """The range (shortest, longest) of each timed figure over recent OK reports of one node
    (None: too few)."""

    ranges: dict[str, tuple[int, int] | None]
    samples: int


def compute_measurement_reference(reports: Iterable[ScoreReport], *,
                                  policy: PlausibilityPolicy) -> MeasurementReference:
    """The reference of a node from reports of it (OK ones count; the caller leaves out the
    reporting mixer's own)."""
    ok = [r for r in reports if r.outcome == Outcome.OK]
    ranges: dict[str, tuple[int, int] | None] = {}
    for attr, _ in MEASURED:
        values = [getattr(r, attr) for r in ok if getattr(r, attr) > 0]
        ranges[attr] = ((min(values), max(values)) if len(values) >= policy.min_samples
                        else None)
    return MeasurementReference(ranges, len(ok))


def verify_plausible_measurements(report: ScoreReport, reference: MeasurementReference,
                                  policy: PlausibilityPolicy,
                                  network: MeasurementReference | None = None) -> None:
    """Raise ScoringError (naming the field) if an OK report's timed figure lies beyond the
    policy's ratios of the range the others measured (and beyond the slack); failed reports
    carry no figures to check. Where the node has too few reference measurements yet (its
    first rounds), ``network`` (the others' recent figures of every node of its class) bounds
    the faster side only: a new node may be slower than any, not faster than the fastest."""
    if report.outcome != Outcome.OK:
        return
    for attr, name in MEASURED:
        span = reference.ranges.get(attr)
        claimed = getattr(report, attr)
        whom = "this node"
        network_span = network.ranges.get(attr) if network is not None else None
        if span is None and network_span is not None:
            span, whom = (network_span[0], 2**63), "any node of its class"
        if span is None or claimed <= 0:
            continue
        shortest, longest = span
        faster, slower = ((policy.latency_faster, policy.latency_slower) if attr == "rtt_us"
                          else (policy.faster, policy.slower))
        if claimed * faster < shortest and shortest - claimed > policy.slack_us:
            raise ScoringError(f"{claimed} us is over {faster:g}x faster than the fastest the "
                               f"other mixers measured of {whom} ({shortest} us)", field=name)
        if claimed > longest * slower and claimed - longest > policy.slack_us:
            raise ScoringError(f"{claimed} us is over {slower:g}x slower than the slowest the "
                               f"other mixers measured of this node ({longest} us)", field=name)


def select_network_reports(reports: Sequence[ScoreReport], mixer: str, hardware_class: int,
                           window: int) -> list[ScoreReport]:
    """The ``window`` newest reports of nodes of ``hardware_class`` by mixers other than
    ``mixer``: the reference of a node that has too few of its own."""
    return _newest([r for r in reports if r.hardware_class == hardware_class
                    and r.mixer != mixer], window)


def select_reference_reports(reports: Sequence[ScoreReport], mixer: str, node: str,
                             window: int) -> list[ScoreReport]:
    """The ``window`` newest reports of ``node`` by mixers other than ``mixer``."""
    return _newest([r for r in reports if r.node == node and r.mixer != mixer], window)


def _newest(reports: list[ScoreReport], window: int) -> list[ScoreReport]:
    """The ``window`` newest of ``reports`` (by epoch and round)."""
    return sorted(reports, key=lambda r: (r.epoch, r.round), reverse=True)[:window]


__all__ = [
    "MEASURED",
    "MeasurementReference",
    "PlausibilityPolicy",
    "compute_measurement_reference",
    "select_network_reports",
    "select_reference_reports",
    "verify_plausible_measurements",
]
