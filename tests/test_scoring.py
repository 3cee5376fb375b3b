"""Scoring: challenge scores from measurements, epoch aggregation, and the presets behind them."""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dnanet.crypto.hashing import sha256
from dnanet.errors import ConfigError, ScoringError
from dnanet.params import (
    BPS_ONE,
    MAINNET,
    PRESETS,
    SCORE_ONE,
    TEST,
    WEI_PER_DNA,
    ChallengeSizes,
    Preset,
    ScoringParams,
    get_preset,
)
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.scoring import (
    LOG2_FRAC_BITS,
    ZERO_SCORE,
    ChallengeScore,
    NodeEpochScore,
    compute_bandwidth_subscore,
    compute_challenge_score,
    compute_compute_subscore,
    compute_epoch_scores,
    compute_latency_subscore,
    compute_log2_fixed,
    compute_log_subscore,
    compute_node_epoch_scores,
    compute_rate,
    compute_report_score,
    compute_tolerated_challengers,
    compute_verified_flops,
    verify_measurement_bounds,
    verify_report_score,
)
from strategies import REPORT_DEFAULTS

MIXER = "0x" + sha256(b"mixer-0")[:20].hex()
NODE_A = "0x" + sha256(b"node-a")[:20].hex()
NODE_B = "0x" + sha256(b"node-b")[:20].hex()
FAILURES = [o for o in Outcome if o is not Outcome.OK]
MEASUREMENT_FIELDS = ["rttUs", "computeUs", "downloadUs", "uploadUs"]
_ATTR = {"rttUs": "rtt_us", "computeUs": "compute_us", "downloadUs": "download_us",
         "uploadUs": "upload_us"}  # fmt: skip

all_sizes = st.sampled_from([s for p in PRESETS.values() for s in p.hardware_classes])
all_params = st.sampled_from([p.scoring for p in PRESETS.values()])
micros = st.integers(0, 10**12)


def score(sizes: ChallengeSizes, params: ScoringParams, **m: int) -> ChallengeScore:
    return compute_challenge_score(sizes, outcome=Outcome.OK, params=params, **m)


def make_report(preset: Preset = TEST, **overrides: Any) -> ScoreReport:
    """A report whose score is the one its measurements recompute to (unless overridden)."""
    fields: dict[str, Any] = {
        **REPORT_DEFAULTS, "epoch": 1, "mixer": MIXER, "node": NODE_A, "rtt_us": 800,
        "compute_us": 5_000, "download_us": 1_000, "upload_us": 1_200, "score": 0, **overrides,
    }
    if "score" not in overrides:
        probe = ScoreReport(**fields)
        fields["score"] = compute_report_score(probe, preset).total
    return ScoreReport(**fields)


def failed_report(outcome: Outcome = Outcome.TIMEOUT, **overrides: Any) -> ScoreReport:
    zeros = dict(rtt_us=0, compute_us=0, download_us=0, upload_us=0, response_signature=b"")
    return make_report(outcome=outcome, **{**zeros, **overrides})


# -- the worked example (docs/scoring.md) -------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs" / "scoring.md"
EXAMPLE_SIZES = ChallengeSizes(compute_n=2048, compute_rows=8192, compute_checks=32,
                               download_bytes=4 * 1024 * 1024, upload_bytes=4 * 1024 * 1024,
                               latency_echoes=16)


def _worked_example() -> tuple[dict[str, int], dict[int, int]]:
    """From docs/scoring.md's worked example: each named line's last number, and each
    ``L(x) = y`` pair (x evaluated from its ``a * b^c`` notation)."""
    text = DOCS.read_text().split("### Worked example", 1)[1].split("```")[1]
    values: dict[str, int] = {}
    logs: dict[int, int] = {}
    name = None
    for line in text.splitlines():
        for arg, value in re.findall(r"L\(([^)]+)\) = ([\d_]+)", line):
            x = Fraction(1)
            for factor in arg.split("*"):
                base, _, exponent = factor.strip().partition("^")
                x *= Fraction(base.replace("_", "")) ** int(exponent or 1)
            assert x.denominator == 1
            logs[int(x)] = int(value.replace("_", ""))
        if line.startswith("L("):
            continue
        head = re.match(r"(\w+)\s+=", line)
        if head:
            name = head.group(1)
        elif not line.lstrip().startswith("="):
            continue
        assert name is not None
        values[name] = int(re.findall(r"[\d_]+", line)[-1].replace("_", ""))
    return values, logs


def test_worked_example_of_the_docs() -> None:
    values, logs = _worked_example()
    for x, log in logs.items():
        assert compute_log2_fixed(x) == log, x
    assert len(logs) == 10
    result = score(EXAMPLE_SIZES, MAINNET.scoring, rtt_us=40_000, compute_us=500_000,
                   download_us=200_000, upload_us=1_000_000)
    params = MAINNET.scoring
    assert values == {
        "latency": result.latency,
        "F": result.flops_per_s,
        "compute": result.compute,
        "T_down": result.download_bps,
        "T_up": result.upload_bps,
        "sub_down": compute_log_subscore(result.download_bps, params.bandwidth_floor_bps,
                                         params.bandwidth_ceiling_bps),
        "sub_up": compute_log_subscore(result.upload_bps, params.bandwidth_floor_bps,
                                       params.bandwidth_ceiling_bps),
        "bandwidth": result.bandwidth,
        "score": result.total,
    }
    # Pinned as well, so a change of the code and the text together is still seen.
    assert result == ChallengeScore(latency=408_675, compute=356_352, bandwidth=313_908,
                                    total=358_821, flops_per_s=137_438_953_472,
                                    download_bps=20_971_520, upload_bps=4_194_304)


# -- the integer logarithm and the log scales ---------------------------------------------------
def test_log2_is_exact_on_powers_of_two() -> None:
    for k in range(200):
        assert compute_log2_fixed(1 << k) == k << LOG2_FRAC_BITS


@settings(max_examples=500)
@given(st.one_of(st.integers(1, 2**20), st.integers(1, 2**80), st.integers(1, 2**300)))
def test_log2_rounds_down_within_one_unit(x: int) -> None:
    got = compute_log2_fixed(x)
    exact = Fraction(math.log2(x)) * (1 << LOG2_FRAC_BITS)
    # math.log2 is within ~1e-15 relative: allow that much above, one unit plus it below.
    slack = Fraction(1, 10**6)
    assert exact - 1 - slack <= got <= exact + slack


@settings(max_examples=300)
@given(st.integers(1, 2**70), st.integers(1, 2**70))
def test_log2_is_monotonic(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert compute_log2_fixed(lo) <= compute_log2_fixed(hi)
    assert compute_log2_fixed(hi + 1) >= compute_log2_fixed(hi)


@pytest.mark.parametrize("bad", [0, -1, -(2**70)])
def test_log2_of_a_non_positive_value_is_refused(bad: int) -> None:
    with pytest.raises(ScoringError, match="must be >= 1"):
        compute_log2_fixed(bad)


scales = st.integers(1, 10**15).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo + 1, 10**16)))


@settings(max_examples=300)
@given(scale=scales, a=st.integers(0, 10**17), b=st.integers(0, 10**17))
def test_log_subscore_is_monotonic_and_bounded(scale: tuple[int, int], a: int, b: int) -> None:
    lo, hi = scale
    sub_a, sub_b = compute_log_subscore(a, lo, hi), compute_log_subscore(b, lo, hi)
    assert 0 <= sub_a <= SCORE_ONE and 0 <= sub_b <= SCORE_ONE
    if a <= b:
        assert sub_a <= sub_b


@given(scale=scales)
def test_log_subscore_is_exact_at_the_floor_and_the_ceiling(scale: tuple[int, int]) -> None:
    lo, hi = scale
    assert compute_log_subscore(lo, lo, hi) == 0
    assert compute_log_subscore(lo - 1, lo, hi) == 0
    assert compute_log_subscore(hi, lo, hi) == SCORE_ONE
    assert compute_log_subscore(hi + 1, lo, hi) == SCORE_ONE


@pytest.mark.parametrize("params", [p.scoring for p in PRESETS.values()])
def test_each_scale_is_exact_at_its_ends(params: ScoringParams) -> None:
    assert compute_latency_subscore(params.latency_best_us, params) == SCORE_ONE
    assert compute_latency_subscore(0, params) == SCORE_ONE
    assert compute_latency_subscore(params.latency_worst_us, params) == 0
    assert compute_compute_subscore(params.compute_floor_flops, params) == 0
    assert compute_compute_subscore(params.compute_ceiling_flops, params) == SCORE_ONE
    floor, ceiling = params.bandwidth_floor_bps, params.bandwidth_ceiling_bps
    assert compute_bandwidth_subscore(floor, floor, params) == 0
    assert compute_bandwidth_subscore(ceiling, ceiling, params) == SCORE_ONE
    assert compute_bandwidth_subscore(ceiling, floor, params) == SCORE_ONE // 2


def test_a_tenfold_difference_counts_the_same_anywhere_in_the_scale() -> None:
    params = MAINNET.scoring
    steps = [compute_compute_subscore(10 * x, params) - compute_compute_subscore(x, params)
             for x in (2 * 10**9, 2 * 10**10, 2 * 10**12)]
    assert max(steps) - min(steps) <= 2  # rounding only


def test_real_differences_move_the_score_more_than_measurement_noise() -> None:
    """2 vs 20 MB/s, 2 vs 20 GFLOP/s and 20 vs 200 ms RTT each move the whole score by more
    than 0.07; a 15 % measurement error moves it by under 0.015."""
    params = MAINNET.scoring
    sizes = EXAMPLE_SIZES
    flops = compute_verified_flops(sizes)
    mb = sizes.download_bytes

    def total(rtt_s: float, gflops: float, mb_per_s: float) -> int:
        return score(sizes, params, rtt_us=int(rtt_s * 1e6),
                     compute_us=int(flops / (gflops * 1e9) * 1e6),
                     download_us=int(mb / (mb_per_s * 1e6) * 1e6),
                     upload_us=int(mb / (mb_per_s * 1e6) * 1e6)).total

    base = (0.05, 20.0, 20.0)
    for which in range(3):
        slow, fast, noisy = list(base), list(base), list(base)
        slow[which] = base[which] * 10 if which == 0 else base[which] / 10
        noisy[which] = base[which] * 1.15 if which == 0 else base[which] / 1.15
        gain = total(*fast) - total(*slow)
        noise = total(*fast) - total(*noisy)
        assert gain > 70_000, which
        assert 0 <= noise < 15_000, which


def test_rate_from_microseconds() -> None:
    assert compute_rate(1_000, 1_000_000) == 1_000
    assert compute_rate(3, 2) == 1_500_000
    assert compute_rate(5, 0) == 5_000_000  # a zero duration counts as one microsecond


# -- properties of one challenge's score --------------------------------------------------------
@settings(max_examples=300)
@given(
    sizes=all_sizes,
    params=all_params,
    rtt=micros,
    compute=micros,
    down=micros,
    up=micros,
)
def test_scores_are_bounded(
    sizes: ChallengeSizes, params: ScoringParams, rtt: int, compute: int, down: int, up: int
) -> None:
    s = score(sizes, params, rtt_us=rtt, compute_us=compute, download_us=down, upload_us=up)
    for part in (s.latency, s.compute, s.bandwidth, s.total):
        assert isinstance(part, int) and 0 <= part <= SCORE_ONE
    assert (
        min(s.latency, s.compute, s.bandwidth) <= s.total <= max(s.latency, s.compute, s.bandwidth)
    )


@settings(max_examples=300)
@given(
    sizes=all_sizes,
    params=all_params,
    base=st.tuples(micros, micros, micros, micros),
    which=st.integers(0, 3),
    faster=micros,
)
def test_a_faster_measurement_never_lowers_the_score(
    sizes: ChallengeSizes,
    params: ScoringParams,
    base: tuple[int, int, int, int],
    which: int,
    faster: int,
) -> None:
    names = ("rtt_us", "compute_us", "download_us", "upload_us")
    slow = dict(zip(names, base, strict=True))
    assume(faster <= slow[names[which]])
    fast = {**slow, names[which]: faster}
    s_slow, s_fast = score(sizes, params, **slow), score(sizes, params, **fast)
    assert s_fast.total >= s_slow.total
    assert s_fast.latency >= s_slow.latency
    assert s_fast.compute >= s_slow.compute
    assert s_fast.bandwidth >= s_slow.bandwidth


@settings(max_examples=200)
@given(params=all_params, a=st.integers(0, 10**16), b=st.integers(0, 10**16))
def test_sub_scores_are_monotonic(params: ScoringParams, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert compute_latency_subscore(lo, params) >= compute_latency_subscore(hi, params)
    assert compute_compute_subscore(lo, params) <= compute_compute_subscore(hi, params)
    assert compute_bandwidth_subscore(lo, lo, params) <= compute_bandwidth_subscore(hi, lo, params)
    assert compute_bandwidth_subscore(lo, lo, params) <= compute_bandwidth_subscore(lo, hi, params)


@settings(max_examples=50)
@given(
    sizes=all_sizes, outcome=st.sampled_from(FAILURES), m=st.tuples(micros, micros, micros, micros)
)
def test_failed_outcomes_score_zero(
    sizes: ChallengeSizes, outcome: Outcome, m: tuple[int, int, int, int]
) -> None:
    result = compute_challenge_score(
        sizes,
        outcome=outcome,
        rtt_us=m[0],
        compute_us=m[1],
        download_us=m[2],
        upload_us=m[3],
        params=TEST.scoring,
    )
    assert result == ZERO_SCORE and result.total == 0


# -- verifying a report -------------------------------------------------------------------------
TIMEOUT_US = TEST.challenge_timeout_ms * 1000


def test_measurement_bounds_accept_the_extremes() -> None:
    verify_measurement_bounds(make_report(rtt_us=0), TEST)
    verify_measurement_bounds(
        make_report(rtt_us=TIMEOUT_US, compute_us=1, download_us=1, upload_us=TIMEOUT_US), TEST
    )
    for outcome in FAILURES:
        verify_measurement_bounds(failed_report(outcome), TEST)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, TIMEOUT_US + 1) for name in MEASUREMENT_FIELDS]
    # A zero duration is impossible for a transfer or a product (an RTT of 0 us may round so).
    + [(name, 0) for name in MEASUREMENT_FIELDS if name != "rttUs"],
)
def test_ok_measurement_out_of_bounds(name: str, value: int) -> None:
    overrides: dict[str, Any] = {_ATTR[name]: value}
    report = make_report(score=0, **overrides)
    with pytest.raises(ScoringError, match="outside") as exc:
        verify_measurement_bounds(report, TEST)
    assert exc.value.field == name


@pytest.mark.parametrize("name", MEASUREMENT_FIELDS)
@pytest.mark.parametrize("outcome", FAILURES, ids=lambda o: o.name)
def test_failed_outcome_must_claim_no_measurement(name: str, outcome: Outcome) -> None:
    overrides: dict[str, Any] = {_ATTR[name]: 1}
    report = failed_report(outcome, **overrides)
    with pytest.raises(ScoringError, match="must be 0") as exc:
        verify_measurement_bounds(report, TEST)
    assert exc.value.field == name


def test_verify_report_score_accepts_the_recomputed_score() -> None:
    report = make_report()
    assert report.score > 0
    result = verify_report_score(report, TEST)
    assert result.total == report.score == compute_report_score(report, TEST).total


@pytest.mark.parametrize("delta", [-1, 1])
def test_verify_report_score_rejects_a_mismatch(delta: int) -> None:
    good = make_report()
    bad = dataclasses.replace(good, score=good.score + delta)
    with pytest.raises(ScoringError, match="recomputed") as exc:
        verify_report_score(bad, TEST)
    assert exc.value.field == "score"


def test_verify_report_score_rejects_a_scored_failure() -> None:
    with pytest.raises(ScoringError) as exc:
        verify_report_score(failed_report(score=1), TEST)
    assert exc.value.field == "score"
    assert verify_report_score(failed_report(), TEST) == ZERO_SCORE


def test_verify_report_score_checks_bounds_first() -> None:
    report = make_report(score=0, upload_us=TIMEOUT_US + 1)
    with pytest.raises(ScoringError) as exc:
        verify_report_score(report, TEST)
    assert exc.value.field == "uploadUs"


def test_unknown_hardware_class_is_rejected() -> None:
    report = make_report(score=0, hardware_class=len(TEST.hardware_classes))
    with pytest.raises(ConfigError) as exc:
        verify_report_score(report, TEST)
    assert exc.value.field == "hardwareClass"


# -- epoch aggregation --------------------------------------------------------------------------
def test_missed_challenges_count_as_zero() -> None:
    good = [make_report(round=r, rtt_us=500 + r) for r in range(2)]
    missed = failed_report(round=2)
    entries = compute_node_epoch_scores([*good, missed])
    entry = entries[NODE_A]
    assert (entry.challenges, entry.failures) == (3, 1)  # 1 of 3 failed: not a strike
    assert entry.score_sum == good[0].score + good[1].score
    assert entry.epoch_score(TEST) == (good[0].score + good[1].score) // 3
    assert entry.epoch_score(TEST) < (good[0].score + good[1].score) // 2


@pytest.mark.parametrize(
    ("failures", "challenges", "striking"),
    [(0, 1, False), (1, 3, False), (2, 6, False), (1, 2, True), (2, 5, True), (1, 1, True),
     (3, 9, False), (4, 11, True), (0, 0, False)],
)  # fmt: skip
def test_strike_rule_more_than_one_third(failures: int, challenges: int, striking: bool) -> None:
    entry = NodeEpochScore(NODE_A, challenges=challenges, failures=failures,
                           score_sum=(challenges - failures) * 700_000)  # fmt: skip
    assert entry.is_striking(TEST) is striking
    if striking or challenges == 0:
        assert entry.epoch_score(TEST) == 0
    else:
        assert entry.epoch_score(TEST) == (challenges - failures) * 700_000 // challenges


@settings(max_examples=200)
@given(challenges=st.integers(1, 60), data=st.data())
def test_strike_rule_matches_the_fraction(challenges: int, data: st.DataObject) -> None:
    failures = data.draw(st.integers(0, challenges))
    entry = NodeEpochScore(NODE_A, challenges=challenges, failures=failures)
    assert entry.is_striking(TEST) == (3 * failures > challenges)
    halves = dataclasses.replace(TEST, strike_fail_numerator=1, strike_fail_denominator=2)
    assert entry.is_striking(halves) == (2 * failures > challenges)


def test_strike_from_real_reports() -> None:
    # Two of five failed: 2/5 > 1/3, so the node earns nothing despite three good challenges.
    reports = [make_report(round=r) for r in range(3)]
    reports += [failed_report(round=3), failed_report(Outcome.UNREACHABLE, round=0, mixer=NODE_B)]
    entry = compute_node_epoch_scores(reports)[NODE_A]
    assert (entry.challenges, entry.failures) == (5, 2)
    assert entry.is_striking(TEST) and not entry.fraud
    assert entry.epoch_score(TEST) == 0


MIXERS = [f"0x{i:040x}" for i in range(1, 11)]


def challenged_by(tallies: list[tuple[int, int]], challengers: int | None = None
                  ) -> NodeEpochScore:
    """NODE_A's epoch with ``(challenges, failures)`` by each of the first mixers."""
    reports = [failed_report(mixer=MIXERS[m], round=r) if r < failed
               else make_report(mixer=MIXERS[m], round=r)
               for m, (assigned, failed) in enumerate(tallies) for r in range(assigned)]
    return compute_node_epoch_scores(reports, challengers=challengers)[NODE_A]


@pytest.mark.parametrize(("challengers", "tolerated"),
                         [(0, 0), (1, 0), (3, 0), (4, 1), (6, 1), (7, 2), (10, 3)])
def test_f_of_3f_plus_1_challengers_are_tolerated(challengers: int, tolerated: int) -> None:
    assert compute_tolerated_challengers(challengers) == tolerated


@settings(max_examples=200)
@given(data=st.data(), mixers=st.integers(1, 10))
def test_up_to_f_challengers_failing_everything_never_strike_a_node(
        data: st.DataObject, mixers: int) -> None:
    liars = data.draw(st.integers(0, compute_tolerated_challengers(mixers)))
    assigned = data.draw(st.lists(st.integers(1, 12), min_size=mixers, max_size=mixers))
    entry = challenged_by([(a, a if m < liars else 0) for m, a in enumerate(assigned)])
    assert not entry.is_striking(TEST)
    assert set(entry.set_aside()) == set(MIXERS[:liars])
    assert entry.corroborated() == (sum(assigned[liars:]), 0)


@settings(max_examples=200)
@given(data=st.data(), mixers=st.integers(1, 10))
def test_a_node_every_challenger_fails_more_than_a_third_strikes(
        data: st.DataObject, mixers: int) -> None:
    tallies = []
    for _ in range(mixers):
        assigned = data.draw(st.integers(1, 12))
        tallies.append((assigned, data.draw(st.integers(assigned // 3 + 1, assigned))))
    entry = challenged_by(tallies)
    assert entry.is_striking(TEST)
    assert entry.epoch_score(TEST) == 0


def test_the_challengers_with_most_failures_are_set_aside_and_the_rest_counted() -> None:
    # Seven challengers (f = 2): the two with most failures set aside, ties by fewer
    # challenges; the rest, 4 failed of 11, strike.
    entry = challenged_by([(2, 2), (3, 2), (2, 2), (1, 1), (2, 1), (2, 0), (3, 0)])
    assert entry.set_aside() == (MIXERS[0], MIXERS[2])
    assert entry.corroborated() == (11, 4)
    assert entry.is_striking(TEST)
    # Counted with four challengers (the epoch's, passed by a caller holding one node's
    # reports), only one is set aside.
    assert challenged_by([(2, 2), (3, 2), (2, 0), (2, 0)], challengers=4).corroborated() == (7, 2)
    assert challenged_by([(2, 2), (3, 2), (2, 0), (2, 0)], challengers=3).corroborated() == (9, 4)


def test_fraud_earns_nothing_and_keeps_the_evidence() -> None:
    fraud = failed_report(Outcome.WRONG_ANSWER, round=3, evidence=b"row 7")
    reports = [make_report(round=r) for r in range(3)] + [fraud]
    entries = compute_node_epoch_scores(reports)
    entry = entries[NODE_A]
    assert (entry.challenges, entry.failures) == (4, 1)  # 1 of 4 is below the strike line
    assert not entry.is_striking(TEST)
    assert entry.fraud and entry.fraud_reports == [fraud.hash_struct()]
    assert entry.epoch_score(TEST) == 0


def test_epoch_scores_per_node() -> None:
    a = [make_report(round=r) for r in range(3)]
    b = [make_report(node=NODE_B, round=r, compute_us=50_000) for r in range(2)]
    b.append(failed_report(node=NODE_B, round=2))
    scores = compute_epoch_scores(compute_node_epoch_scores([*a, *b]), TEST)
    assert scores == {
        NODE_A: sum(r.score for r in a) // 3,
        NODE_B: sum(r.score for r in b) // 3,
    }
    assert compute_epoch_scores({}, TEST) == {}
    assert NodeEpochScore(NODE_A).epoch_score(TEST) == 0  # no challenges, no score


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, SCORE_ONE), min_size=1, max_size=12), missed=st.integers(0, 3)
)
def test_epoch_score_is_the_mean_with_misses_as_zero(scores: list[int], missed: int) -> None:
    reports = [make_report(round=i, score=s) for i, s in enumerate(scores)]
    reports += [failed_report(round=100 + i) for i in range(missed)]
    entry = compute_node_epoch_scores(reports)[NODE_A]
    n = len(scores) + missed
    expected = 0 if 3 * missed > n else sum(scores) // n
    assert entry.epoch_score(TEST) == expected
    assert 0 <= entry.epoch_score(TEST) <= max(scores)


# -- presets ------------------------------------------------------------------------------------
def test_presets_are_consistent() -> None:
    assert set(PRESETS) == {"mainnet", "local", "test"}
    for preset in PRESETS.values():
        assert get_preset(preset.name) is preset
        assert preset.epoch_blocks % preset.round_blocks == 0
        w = preset.scoring
        assert w.weight_compute_bps + w.weight_bandwidth_bps + w.weight_latency_bps == BPS_ONE
        assert 0 < preset.strike_fail_numerator < preset.strike_fail_denominator
        assert 0 <= preset.strike_slash_bps <= BPS_ONE and 0 <= preset.fraud_slash_bps <= BPS_ONE


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'devnet'") as exc:
        get_preset("devnet")
    assert "mainnet" in str(exc.value)


@pytest.mark.parametrize(
    "weights", [(5_000, 2_500, 2_499), (5_000, 2_500, 2_501), (10_000, 1, 0), (0, 0, 0)]
)
def test_scoring_weights_must_sum_to_ten_thousand(weights: tuple[int, int, int]) -> None:
    with pytest.raises(ConfigError, match="add up to 10000"):
        ScoringParams(
            weight_compute_bps=weights[0],
            weight_bandwidth_bps=weights[1],
            weight_latency_bps=weights[2],
        )


@pytest.mark.parametrize(("low", "high"), [("latency_best_us", "latency_worst_us"),
                                           ("compute_floor_flops", "compute_ceiling_flops"),
                                           ("bandwidth_floor_bps", "bandwidth_ceiling_bps")])
def test_scoring_scales_must_be_positive_and_ordered(low: str, high: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="must be positive") as exc:
            ScoringParams(**{low: bad})
        assert exc.value.field == low
    default = getattr(ScoringParams(), low)
    for bad in (default, default - 1):
        with pytest.raises(ConfigError, match=f"must lie above {low}") as exc:
            ScoringParams(**{high: bad})
        assert exc.value.field == high


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"epoch_blocks": 30, "round_blocks": 8}, "multiple"),
        ({"epoch_blocks": 32, "round_blocks": 64}, "multiple"),
        ({"epoch_blocks": 0}, "positive"),
        ({"round_blocks": 0}, "positive"),
        ({"round_blocks": -8}, "positive"),
        ({"hardware_classes": ()}, "hardware class"),
    ],
)
def test_preset_validation(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        dataclasses.replace(TEST, **changes)


def test_sizes_for_class() -> None:
    assert TEST.sizes_for_class(0) is TEST.hardware_classes[0]
    for bad in (-1, len(TEST.hardware_classes)):
        with pytest.raises(ConfigError) as exc:
            TEST.sizes_for_class(bad)
        assert exc.value.field == "hardwareClass"


def test_epoch_emission_halves() -> None:
    h = TEST.halving_epochs
    first = TEST.initial_emission
    assert first == 1_000 * WEI_PER_DNA
    assert TEST.epoch_emission(0) == TEST.epoch_emission(h - 1) == first
    assert TEST.epoch_emission(h) == first // 2
    assert TEST.epoch_emission(2 * h + 5) == first // 4
    assert TEST.epoch_emission(300 * h) == 0  # the emission ends, in integers
    assert MAINNET.epoch_emission(MAINNET.halving_epochs) == MAINNET.initial_emission // 2


@settings(max_examples=100)
@given(preset=st.sampled_from(list(PRESETS.values())), epoch=st.integers(0, 10**7))
def test_epoch_emission_is_monotonic_and_halves_each_period(preset: Preset, epoch: int) -> None:
    now = preset.epoch_emission(epoch)
    assert isinstance(now, int) and 0 <= now <= preset.initial_emission
    assert preset.epoch_emission(epoch + 1) <= now
    assert preset.epoch_emission(epoch + preset.halving_epochs) == now // 2
