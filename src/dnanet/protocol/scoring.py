"""Scoring: from a challenge's measurements to an integer score, and from reports to epoch scores.

All scores are fixed-point integers with ``SCORE_ONE`` (10^6) meaning "perfect". Each sub-score
is a saturating curve ``ONE * x / (x + ref)`` (or its mirror for latency): monotonic in its
metric, bounded by ``[0, ONE]``, and equal to ``ONE / 2`` at the preset's reference point.

    latency   = ONE * ref_us / (ref_us + rtt_us)
    compute   = ONE * F / (F + ref_flops),    F = 2 * rows * n^2 * 10^6 // compute_us
    bandwidth = (sub(down_Bps) + sub(up_Bps)) / 2,  sub(T) = ONE * T / (T + ref_Bps)
    score     = (w_c * compute + w_b * bandwidth + w_l * latency) / 10_000

A challenge whose outcome is not OK scores 0. A node's epoch score is the sum of its challenge
scores divided by the number of challenges it was given (failures count as zero). A node that
failed more than ``strike_fail_numerator / strike_fail_denominator`` of them earns nothing and
gets a strike; a node that signed a wrong answer (fraud) earns nothing and is punished.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dnanet.errors import ScoringError
from dnanet.params import BPS_ONE, SCORE_ONE, ChallengeSizes, Preset, ScoringParams
from dnanet.protocol.messages import Outcome, ScoreReport

MICROS = 1_000_000


@dataclass(frozen=True)
class ChallengeScore:
    """A challenge's score and the figures it came from (for breakdowns)."""

    latency: int
    compute: int
    bandwidth: int
    total: int
    flops_per_s: int
    download_bps: int
    upload_bps: int


ZERO_SCORE = ChallengeScore(0, 0, 0, 0, 0, 0, 0)


def compute_verified_flops(sizes: ChallengeSizes) -> int:
    """FLOPs of the compute challenge: ``2 * rows * n^2`` (a multiply and an add per term)."""
    return 2 * sizes.compute_rows * sizes.compute_n * sizes.compute_n


def compute_rate(amount: int, micros: int) -> int:
    """``amount`` per second, as an integer, from a duration in microseconds (>= 1)."""
    return amount * MICROS // max(micros, 1)


def compute_latency_subscore(rtt_us: int, params: ScoringParams) -> int:
    return SCORE_ONE * params.latency_ref_us // (params.latency_ref_us + rtt_us)


def compute_saturating_subscore(value: int, reference: int) -> int:
    return SCORE_ONE * value // (value + reference)


def compute_challenge_score(
    sizes: ChallengeSizes,
    *,
    outcome: int,
    rtt_us: int,
    compute_us: int,
    download_us: int,
    upload_us: int,
    params: ScoringParams,
) -> ChallengeScore:
    """The score of one challenge from its measurements; 0 unless the outcome is OK."""
    if outcome != Outcome.OK:
        return ZERO_SCORE
    flops = compute_rate(compute_verified_flops(sizes), compute_us)
    down = compute_rate(sizes.download_bytes, download_us)
    up = compute_rate(sizes.upload_bytes, upload_us)
    latency = compute_latency_subscore(rtt_us, params)
    compute = compute_saturating_subscore(flops, params.compute_ref_flops)
    bandwidth = (
        compute_saturating_subscore(down, params.bandwidth_ref_bps)
        + compute_saturating_subscore(up, params.bandwidth_ref_bps)
    ) // 2
    total = (
        params.weight_compute_bps * compute
        + params.weight_bandwidth_bps * bandwidth
        + params.weight_latency_bps * latency
    ) // BPS_ONE
    return ChallengeScore(latency, compute, bandwidth, total, flops, down, up)


def verify_measurement_bounds(report: ScoreReport, preset: Preset) -> None:
    """Raise ScoringError if a measurement is impossible for the report's outcome."""
    timeout_us = preset.challenge_timeout_ms * 1000
    named = {
        "rttUs": report.rtt_us,
        "computeUs": report.compute_us,
        "downloadUs": report.download_us,
        "uploadUs": report.upload_us,
    }
    if report.outcome == Outcome.OK:
        # Verify every duration is positive and within the challenge timeout.
        for name, value in named.items():
            low = 0 if name == "rttUs" else 1
            if not low <= value <= timeout_us:
                raise ScoringError(
                    f"{value} us is outside [{low}, {timeout_us}] for an OK outcome", field=name
                )
    else:
        # Verify a failed challenge claims no measurement.
        for name, value in named.items():
            if value != 0:
                raise ScoringError("must be 0 when the outcome is not OK", field=name)


def compute_report_score(report: ScoreReport, preset: Preset) -> ChallengeScore:
    """Recompute a report's score from its measurements, with the preset's sizes."""
    return compute_challenge_score(
        preset.sizes_for_class(report.hardware_class),
        outcome=report.outcome,
        rtt_us=report.rtt_us,
        compute_us=report.compute_us,
        download_us=report.download_us,
        upload_us=report.upload_us,
        params=preset.scoring,
    )


def verify_report_score(report: ScoreReport, preset: Preset) -> ChallengeScore:
    """Raise ScoringError unless the report's bounds hold and its score recomputes exactly."""
    verify_measurement_bounds(report, preset)
    score = compute_report_score(report, preset)
    if score.total != report.score:
        raise ScoringError(f"claimed {report.score}, recomputed {score.total}", field="score")
    return score


@dataclass
class NodeEpochScore:
    """One node's epoch: its challenges, failures, fraud, and the resulting score."""

    node: str
    challenges: int = 0
    failures: int = 0
    score_sum: int = 0
    fraud_reports: list[bytes] = field(default_factory=list)
    """hashStruct of each report whose outcome is fraud (the evidence)."""

    @property
    def fraud(self) -> bool:
        return bool(self.fraud_reports)

    def is_striking(self, preset: Preset) -> bool:
        """More than ``numerator/denominator`` of the challenges failed."""
        return (
            self.failures * preset.strike_fail_denominator
            > self.challenges * preset.strike_fail_numerator
        )

    def epoch_score(self, preset: Preset) -> int:
        """The score that earns rewards: 0 for fraud or too many failures."""
        if self.challenges == 0 or self.fraud or self.is_striking(preset):
            return 0
        return self.score_sum // self.challenges


def compute_node_epoch_scores(reports: Iterable[ScoreReport]) -> dict[str, NodeEpochScore]:
    """Aggregate an epoch's certified reports per node (caller deduplicates reports)."""
    out: dict[str, NodeEpochScore] = {}
    for report in reports:
        entry = out.get(report.node)
        if entry is None:
            entry = out[report.node] = NodeEpochScore(report.node)
        entry.challenges += 1
        entry.score_sum += report.score
        if report.outcome != Outcome.OK:
            entry.failures += 1
            if report.outcome == Outcome.WRONG_ANSWER:  # fraud (see Outcome.is_fraud)
                entry.fraud_reports.append(report.hash_struct())
    return out


def compute_epoch_scores(
    node_scores: dict[str, NodeEpochScore], preset: Preset
) -> dict[str, int]:
    """Reward-bearing epoch score per node."""
    return {node: entry.epoch_score(preset) for node, entry in node_scores.items()}


__all__ = [
    "ZERO_SCORE",
    "ChallengeScore",
    "NodeEpochScore",
    "compute_challenge_score",
    "compute_epoch_scores",
    "compute_latency_subscore",
    "compute_node_epoch_scores",
    "compute_rate",
    "compute_report_score",
    "compute_saturating_subscore",
    "compute_verified_flops",
    "verify_measurement_bounds",
    "verify_report_score",
]
