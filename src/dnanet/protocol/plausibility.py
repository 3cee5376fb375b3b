"""Plausible measurements: a co-signer's check that a report's figures agree with what the
other mixers measured of the same node.

A report's measurements are the challenging mixer's own clock readings: nobody else can
verify them. A mixer that inflates a friend's figures (or deflates a rival's) writes reports
that pass every signature and bound. What exposes it is the other mixers: each challenges the
same node too, and every co-signer sees their reports. So a co-signer keeps, per node, the
recent OK measurements of the *other* mixers (and its own) and refuses a report whose timed
figure is more than ``tolerance`` times faster, or ``tolerance_slow`` times slower, than their
median. The rule is not part of the deterministic rollup (co-signers may disagree on it and
then the quorum decides); it decides whether an honest co-signer lends its signature.

Latency depends on the path between two hosts, so it is compared with a wider tolerance than
compute (a property of the node alone) and bandwidth.
"""

from __future__ import annotations

import statistics
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

    faster: float = 4.0
    """A compute or transfer time more than this many times shorter is refused."""
    slower: float = 8.0
    """... or more than this many times longer."""
    latency_faster: float = 8.0
    """A round-trip time more than this many times shorter is refused (paths differ)."""
    latency_slower: float = 16.0
    min_samples: int = 3
    """Fewer reference measurements than this: no check (a new node, a new co-signer)."""
    slack_us: int = 2_000
    """A figure within this many microseconds of the median always passes: timings of
    sub-millisecond steps (tiny challenges, loopback round trips) scatter by large ratios."""


@dataclass(frozen=True)
class MeasurementReference:
    """The median of each timed figure over recent OK reports of one node (None: too few)."""

    medians: dict[str, float | None]
    samples: int


def compute_measurement_reference(reports: Iterable[ScoreReport], *,
                                  policy: PlausibilityPolicy) -> MeasurementReference:
    """The reference of a node from reports of it (OK ones count; the caller leaves out the
    reporting mixer's own)."""
    ok = [r for r in reports if r.outcome == Outcome.OK]
    medians: dict[str, float | None] = {}
    for attr, _ in MEASURED:
        values = [getattr(r, attr) for r in ok if getattr(r, attr) > 0]
        medians[attr] = (float(statistics.median(values))
                         if len(values) >= policy.min_samples else None)
    return MeasurementReference(medians, len(ok))


def verify_plausible_measurements(report: ScoreReport, reference: MeasurementReference,
                                  policy: PlausibilityPolicy) -> None:
    """Raise ScoringError (naming the field) if an OK report's timed figure lies outside the
    policy's ratios of the reference median; failed reports carry no figures to check."""
    if report.outcome != Outcome.OK:
        return
    for attr, name in MEASURED:
        median = reference.medians.get(attr)
        claimed = getattr(report, attr)
        if median is None or claimed <= 0:
            continue
        if abs(claimed - median) <= policy.slack_us:
            continue
        faster, slower = ((policy.latency_faster, policy.latency_slower) if attr == "rtt_us"
                          else (policy.faster, policy.slower))
        if claimed * faster < median:
            raise ScoringError(f"{claimed} us is over {faster:g}x faster than the other mixers' "
                               f"median {median:.0f} us for this node", field=name)
        if claimed > median * slower:
            raise ScoringError(f"{claimed} us is over {slower:g}x slower than the other mixers' "
                               f"median {median:.0f} us for this node", field=name)


def select_reference_reports(reports: Sequence[ScoreReport], mixer: str, node: str,
                             window: int) -> list[ScoreReport]:
    """The ``window`` newest reports of ``node`` by mixers other than ``mixer``."""
    chosen = [r for r in reports if r.node == node and r.mixer != mixer]
    chosen.sort(key=lambda r: (r.epoch, r.round), reverse=True)
    return chosen[:window]


__all__ = [
    "MEASURED",
    "MeasurementReference",
    "PlausibilityPolicy",
    "compute_measurement_reference",
    "select_reference_reports",
    "verify_plausible_measurements",
]
