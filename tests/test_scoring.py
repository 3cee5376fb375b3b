"""Scoring: challenge scores from measurements, epoch aggregation, and the presets behind them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dnanet.crypto.hashing import sha256
from dnanet.errors import ConfigError, ScoringError
from dnanet.params import (
    BPS_ONE,
    LOCAL,
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
    ZERO_SCORE,
    ChallengeScore,
    NodeEpochScore,
    compute_challenge_score,
    compute_epoch_scores,
    compute_latency_subscore,
    compute_node_epoch_scores,
    compute_rate,
    compute_report_score,
    compute_saturating_subscore,
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
def test_worked_example_local_cpu_node() -> None:
    # "local" preset, class 0 (CPU): n = 256, rows = 512, 256 KiB down and up;
    # ref_us = 2000, ref_flops = 5 * 10^9, ref_Bps = 200 * 10^6; weights 5000/2500/2500 bps.
    # Measured: rtt 1000 us, compute 100 ms, download 2 ms, upload 2 ms.
    #
    # latency   = 1_000_000 * 2000 // (2000 + 1000) = 2_000_000_000 // 3000        = 666_666
    # FLOPs     = 2 * 512 * 256^2 = 2 * 512 * 65_536                               = 67_108_864
    # F         = 67_108_864 * 10^6 // 100_000 = 67_108_864 * 10                   = 671_088_640
    # compute   = 10^6 * 671_088_640 // (671_088_640 + 5_000_000_000)
    #           = 671_088_640_000_000 // 5_671_088_640
    #             (5_671_088_640 * 118_335 = 671_088_274_214_400, remainder 365_785_600) = 118_335
    # T         = 262_144 * 10^6 // 2000                                          = 131_072_000
    # sub(T)    = 10^6 * 131_072_000 // (131_072_000 + 200_000_000)
    #           = 131_072_000_000 // 331_072
    #             (331_072 * 395_901 = 131_071_735_872, remainder 264_128)           = 395_901
    # bandwidth = (395_901 + 395_901) // 2                                         = 395_901
    # score     = (5000 * 118_335 + 2500 * 395_901 + 2500 * 666_666) // 10_000
    #           = (591_675_000 + 989_752_500 + 1_666_665_000) // 10_000
    #           = 3_248_092_500 // 10_000                                          = 324_809
    sizes = LOCAL.sizes_for_class(0)
    assert (sizes.compute_n, sizes.compute_rows) == (256, 512)
    assert sizes.download_bytes == sizes.upload_bytes == 256 * 1024
    assert compute_verified_flops(sizes) == 67_108_864
    result = score(
        sizes, LOCAL.scoring, rtt_us=1_000, compute_us=100_000, download_us=2_000, upload_us=2_000
    )
    assert result == ChallengeScore(
        latency=666_666,
        compute=118_335,
        bandwidth=395_901,
        total=324_809,
        flops_per_s=671_088_640,
        download_bps=131_072_000,
        upload_bps=131_072_000,
    )


def test_reference_points_score_one_half() -> None:
    params = LOCAL.scoring
    assert compute_latency_subscore(params.latency_ref_us, params) == SCORE_ONE // 2
    assert compute_saturating_subscore(params.compute_ref_flops, params.compute_ref_flops) == (
        SCORE_ONE // 2
    )
    assert compute_latency_subscore(0, params) == SCORE_ONE
    assert compute_saturating_subscore(0, params.bandwidth_ref_bps) == 0


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
@given(params=all_params, a=micros, b=micros)
def test_sub_scores_are_monotonic(params: ScoringParams, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert compute_latency_subscore(lo, params) >= compute_latency_subscore(hi, params)
    ref = params.bandwidth_ref_bps
    assert compute_saturating_subscore(lo, ref) <= compute_saturating_subscore(hi, ref)


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


@pytest.mark.parametrize("field", ["latency_ref_us", "compute_ref_flops", "bandwidth_ref_bps"])
def test_scoring_references_must_be_positive(field: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="positive"):
            ScoringParams(**{field: bad})


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
