"""Scoring: from a challenge's measurements to an integer score, and from reports to epoch scores.

All scores are fixed-point integers with ``SCORE_ONE`` (10^6) meaning "perfect". Each sub-score
lies on a logarithmic scale between a floor and a ceiling of the preset (``ScoringParams``): 0 at
or beyond the poor end, ``ONE`` at or beyond the good end, and in between the fraction of the
range's doublings the metric covers, so a tenfold difference anywhere in the range counts the
same. Logarithms are integer fixed point (``compute_log2_fixed``): co-signers recompute every
score and agree bit for bit on every machine.

    log_sub(x, lo, hi) = ONE * (L(x) - L(lo)) // (L(hi) - L(lo)),  clamped to [0, ONE]
    latency   = ONE - log_sub(rtt_us, best_us, worst_us)
    compute   = log_sub(F, floor_flops, ceiling_flops),   F = 2 * rows * n^2 * 10^6 // compute_us
    bandwidth = (log_sub(down_Bps, floor, ceiling) + log_sub(up_Bps, floor, ceiling)) // 2
    score     = (w_c * compute + w_b * bandwidth + w_l * latency) // 10_000

A challenge whose outcome is not OK scores 0. A node's epoch score is the sum of its challenge
scores divided by the number of challenges it was given (failures count as zero). A node that
failed more than ``strike_fail_numerator / strike_fail_denominator`` of them earns nothing and
gets a strike; a node that signed a wrong answer (fraud), or whose canary answers more than
``f`` of the epoch's challengers found wrong, earns nothing and is punished.

Failures are counted for a strike only where they are corroborated: a failure carries no
signature of the node, so up to ``f`` faulty mixers could report every challenge they were
assigned as failed. Of the ``m`` mixers with a certified report in the epoch (its challengers),
``f = (m - 1) // 3`` are tolerated: the ``f`` challengers that reported the most failures of
the node are set aside, and the strike fraction is taken over the rest of its challenges
(``NodeEpochScore.is_striking``). A node down for the whole epoch fails every mixer's
challenges and still strikes; an honest node failed by up to ``f`` liars does not.
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


LOG2_FRAC_BITS = 16
"""Fractional bits of ``compute_log2_fixed``: a result of ``1 << 16`` means log2 = 1."""
_MANTISSA_BITS = 64
"""Precision of the mantissa while squaring (far beyond the 16 bits kept)."""


def compute_log2_fixed(value: int) -> int:
    """``log2(value)`` in fixed point with ``LOG2_FRAC_BITS`` fractional bits, rounded down
    (within one unit of the last place of the exact value), for ``value >= 1``; non-decreasing in
    ``value``, and exact for powers of two. Integers only: the integer part is the bit length,
    each fractional bit comes from squaring the mantissa (in [1, 2)) once: a square of 2 or more
    means the bit is 1, and the square is halved."""
    if value < 1:
        raise ScoringError(f"log2 of {value} is undefined (the value must be >= 1)")
    whole = value.bit_length() - 1
    one = 1 << _MANTISSA_BITS
    # The mantissa value / 2^whole in [1, 2), as a fixed-point integer in [one, 2 * one).
    if whole <= _MANTISSA_BITS:
        mantissa = value << (_MANTISSA_BITS - whole)
    else:
        mantissa = value >> (whole - _MANTISSA_BITS)
    fraction = 0
    for _ in range(LOG2_FRAC_BITS):
        mantissa = mantissa * mantissa >> _MANTISSA_BITS
        fraction <<= 1
        if mantissa >= 2 * one:
            mantissa >>= 1
            fraction |= 1
    return (whole << LOG2_FRAC_BITS) | fraction


def compute_log_subscore(value: int, floor: int, ceiling: int) -> int:
    """Where ``value`` lies between ``floor`` and ``ceiling`` on a log scale, in
    ``[0, SCORE_ONE]``: 0 at or below ``floor``, ``SCORE_ONE`` at or above ``ceiling``, and
    non-decreasing in ``value`` (``0 < floor < ceiling``)."""
    if value <= floor:
        return 0
    if value >= ceiling:
        return SCORE_ONE
    low = compute_log2_fixed(floor)
    span = compute_log2_fixed(ceiling) - low
    return SCORE_ONE * (compute_log2_fixed(value) - low) // span


def compute_latency_subscore(rtt_us: int, params: ScoringParams) -> int:
    """``SCORE_ONE`` at or under ``latency_best_us``, 0 at or over ``latency_worst_us``, and
    non-increasing in ``rtt_us`` (log scale) between."""
    return SCORE_ONE - compute_log_subscore(rtt_us, params.latency_best_us,
                                            params.latency_worst_us)


def compute_compute_subscore(flops_per_s: int, params: ScoringParams) -> int:
    """Verified FLOP/s on the log scale from ``compute_floor_flops`` to
    ``compute_ceiling_flops``."""
    return compute_log_subscore(flops_per_s, params.compute_floor_flops,
                                params.compute_ceiling_flops)


def compute_bandwidth_subscore(down_bps: int, up_bps: int, params: ScoringParams) -> int:
    """The mean of both directions' throughput (bytes/s) on the log scale from
    ``bandwidth_floor_bps`` to ``bandwidth_ceiling_bps``."""
    floor, ceiling = params.bandwidth_floor_bps, params.bandwidth_ceiling_bps
    return (compute_log_subscore(down_bps, floor, ceiling)
            + compute_log_subscore(up_bps, floor, ceiling)) // 2


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
    compute = compute_compute_subscore(flops, params)
    bandwidth = compute_bandwidth_subscore(down, up, params)
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


def compute_tolerated_challengers(challengers: int) -> int:
    """How many of an epoch's ``challengers`` (mixers with a certified report in it) may be
    faulty: ``f`` of ``3f + 1``, at least 0."""
    return max(0, (challengers - 1) // 3)


@dataclass
class NodeEpochScore:
    """One node's epoch: its challenges, failures, fraud, and the resulting score."""

    node: str
    challenges: int = 0
    failures: int = 0
    score_sum: int = 0
    fraud_reports: list[bytes] = field(default_factory=list)
    """hashStruct of each report whose outcome is fraud (the evidence)."""
    by_challenger: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per challenging mixer: (challenges, failures) of this node."""
    tolerated: int = 0
    """Challengers whose failures may be set aside (``compute_tolerated_challengers``)."""
    canary_reports: list[tuple[str, bytes]] = field(default_factory=list)
    """(mixer, hashStruct) of each CANARY_FAILED report: a wrong answer to a known question."""

    @property
    def fraud(self) -> bool:
        return bool(self.fraud_reports)

    def add(self, mixer: str, challenges: int, failures: int, score_sum: int) -> None:
        """Count ``challenges`` more by ``mixer``, ``failures`` of them failed."""
        assigned, failed = self.by_challenger.get(mixer, (0, 0))
        self.by_challenger[mixer] = (assigned + challenges, failed + failures)
        self.challenges += challenges
        self.failures += failures
        self.score_sum += score_sum

    def canary_failers(self) -> tuple[str, ...]:
        """The challengers that found a canary answer of the node wrong."""
        return tuple(sorted({mixer for mixer, _ in self.canary_reports}))

    def is_canary_cheat(self) -> bool:
        """More than ``tolerated`` challengers found its canary answers wrong: at least one of
        them is honest, so the node served another model than the one it advertises."""
        return len(self.canary_failers()) > self.tolerated

    def set_aside(self) -> tuple[str, ...]:
        """The ``tolerated`` challengers whose failures are not counted for a strike: those that
        reported the most failures (then the fewest challenges, then the lowest address)."""
        worst = sorted(self.by_challenger.items(),
                       key=lambda item: (-item[1][1], item[1][0], item[0]))
        return tuple(mixer for mixer, (_, failed) in worst[:self.tolerated] if failed)

    def corroborated(self) -> tuple[int, int]:
        """(challenges, failures) with the challengers of ``set_aside`` left out."""
        aside = self.set_aside()
        challenges = self.challenges - sum(self.by_challenger[m][0] for m in aside)
        failures = self.failures - sum(self.by_challenger[m][1] for m in aside)
        return challenges, failures

    def is_striking(self, preset: Preset) -> bool:
        """More than ``numerator/denominator`` of the corroborated challenges failed."""
        challenges, failures = self.corroborated()
        return (
            failures * preset.strike_fail_denominator
            > challenges * preset.strike_fail_numerator
        )

    def epoch_score(self, preset: Preset) -> int:
        """The score that earns rewards: 0 for fraud, a corroborated canary failure
        (``is_canary_cheat``) or too many failures."""
        if self.challenges == 0 or self.fraud or self.is_canary_cheat() \
                or self.is_striking(preset):
            return 0
        return self.score_sum // self.challenges


def compute_node_epoch_scores(reports: Iterable[ScoreReport], *,
                              challengers: int | None = None) -> dict[str, NodeEpochScore]:
    """Aggregate an epoch's certified reports per node (caller deduplicates reports).

    ``challengers`` is the number of mixers with a certified report in the epoch; by default
    the mixers among ``reports``, which must then be all of the epoch's (a caller holding one
    node's reports passes the epoch's count)."""
    out: dict[str, NodeEpochScore] = {}
    mixers: set[str] = set()
    for report in reports:
        mixers.add(report.mixer)
        entry = out.get(report.node)
        if entry is None:
            entry = out[report.node] = NodeEpochScore(report.node)
        entry.add(report.mixer, 1, int(report.outcome != Outcome.OK), report.score)
        if report.outcome == Outcome.WRONG_ANSWER:  # fraud (see Outcome.is_fraud)
            entry.fraud_reports.append(report.hash_struct())
        elif report.outcome == Outcome.CANARY_FAILED:
            entry.canary_reports.append((report.mixer, report.hash_struct()))
    return set_tolerated(out, len(mixers) if challengers is None else challengers)


def set_tolerated(scores: dict[str, NodeEpochScore],
                  challengers: int) -> dict[str, NodeEpochScore]:
    """Give every node of an epoch with ``challengers`` challengers its tolerance."""
    tolerated = compute_tolerated_challengers(challengers)
    for entry in scores.values():
        entry.tolerated = tolerated
    return scores


def compute_epoch_scores(
    node_scores: dict[str, NodeEpochScore], preset: Preset, sentenced: Iterable[str] = ()
) -> dict[str, int]:
    """Reward-bearing epoch score per node: 0 for a node ``sentenced`` (punished the epoch
    before: it earns nothing until its jail lands)."""
    done = set(sentenced)
    return {node: 0 if node in done else entry.epoch_score(preset)
            for node, entry in node_scores.items()}


__all__ = [
    "LOG2_FRAC_BITS",
    "ZERO_SCORE",
    "ChallengeScore",
    "NodeEpochScore",
    "compute_bandwidth_subscore",
    "compute_challenge_score",
    "compute_compute_subscore",
    "compute_epoch_scores",
    "compute_latency_subscore",
    "compute_log2_fixed",
    "compute_log_subscore",
    "compute_node_epoch_scores",
    "compute_rate",
    "compute_report_score",
    "compute_tolerated_challengers",
    "compute_verified_flops",
    "set_tolerated",
    "verify_measurement_bounds",
    "verify_report_score",
]
