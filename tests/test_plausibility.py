"""Plausible measurements: a report's figures against the range the other mixers measured."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.errors import ScoringError
from dnanet.protocol.messages import ZERO32, Outcome, ScoreReport
from dnanet.protocol.plausibility import (
    PlausibilityPolicy,
    compute_measurement_reference,
    select_network_reports,
    select_reference_reports,
    verify_plausible_measurements,
)

POLICY = PlausibilityPolicy()
NODE = "0x" + "11" * 20
MIXERS = ["0x" + f"{i:02x}" * 20 for i in range(1, 5)]


def report(mixer: str = MIXERS[0], *, round_: int = 0, rtt: int = 20_000, compute: int = 50_000,
           down: int = 20_000, up: int = 20_000, outcome: Outcome = Outcome.OK) -> ScoreReport:
    ok = outcome == Outcome.OK
    return ScoreReport(
        epoch=0, round=round_, mixer=mixer, node=NODE, hardware_class=0,
        vrf_proof=b"\x01" * 80, challenge_digest=b"\x02" * 32, echo_digest=ZERO32,
        compute_root=ZERO32, download_digest=ZERO32, upload_digest=ZERO32,
        response_signature=b"", rtt_us=rtt if ok else 0, compute_us=compute if ok else 0,
        download_us=down if ok else 0, upload_us=up if ok else 0, outcome=outcome, reason="",
        evidence=b"", score=0)


def reference_of(*reports: ScoreReport) -> object:
    return compute_measurement_reference(reports, policy=POLICY)


HONEST = [report(MIXERS[i % 3 + 1], round_=i, rtt=20_000, compute=48_000 + 1_000 * i)
          for i in range(6)]


def test_a_figure_near_the_others_range_passes() -> None:
    reference = compute_measurement_reference(HONEST, policy=POLICY)
    verify_plausible_measurements(report(compute=30_000, down=70_000), reference, POLICY)


@pytest.mark.parametrize(("change", "field"), [
    ({"compute": 10_000}, "computeUs"),  # a friend's compute inflated 5x
    ({"down": 4_000}, "downloadUs"),
    ({"up": 200_000}, "uploadUs"),  # a rival's upload deflated 10x
    ({"rtt": 1_000}, "rttUs"),  # 20x faster than any path the others see
    ({"compute": 250_000}, "computeUs"),
])
def test_an_inflated_or_deflated_figure_is_refused_naming_its_field(
        change: dict[str, int], field: str) -> None:
    reference = compute_measurement_reference(HONEST, policy=POLICY)
    with pytest.raises(ScoringError) as exc:
        verify_plausible_measurements(report(**change), reference, POLICY)
    assert exc.value.field == field


def test_latency_has_room_for_paths_that_differ() -> None:
    reference = compute_measurement_reference(HONEST, policy=POLICY)
    verify_plausible_measurements(report(rtt=2_000), reference, POLICY)  # 10x: another path
    verify_plausible_measurements(report(rtt=300_000), reference, POLICY)


def test_a_figure_within_the_slack_of_the_median_always_passes() -> None:
    tiny = [report(MIXERS[1], round_=i, compute=300) for i in range(5)]
    reference = compute_measurement_reference(tiny, policy=POLICY)
    verify_plausible_measurements(report(compute=1), reference, POLICY)  # 300x, but 0.3 ms
    verify_plausible_measurements(report(compute=300 + POLICY.slack_us), reference, POLICY)
    with pytest.raises(ScoringError):
        verify_plausible_measurements(report(compute=300 + POLICY.slack_us + 1), reference,
                                      POLICY)


def test_too_few_reference_reports_check_nothing() -> None:
    reference = compute_measurement_reference(HONEST[:2], policy=POLICY)
    verify_plausible_measurements(report(compute=1), reference, POLICY)


def test_a_new_node_is_bounded_by_the_fastest_of_its_class_on_the_faster_side_only() -> None:
    own = compute_measurement_reference(HONEST[:2], policy=POLICY)  # too few of its own
    network = compute_measurement_reference(HONEST, policy=POLICY)  # other nodes of its class
    with pytest.raises(ScoringError, match="any node of its class") as refused:
        verify_plausible_measurements(report(compute=20_000), own, POLICY, network)
    assert refused.value.field == "computeUs"
    verify_plausible_measurements(report(compute=30_000), own, POLICY, network)
    # Slower than every node is a new node's right: no upper bound without its own reference.
    verify_plausible_measurements(report(compute=10**9, down=10**9), own, POLICY, network)
    # Without a network reference (a new co-signer) nothing is checked, as before.
    verify_plausible_measurements(report(compute=1), own, POLICY, None)


def test_the_network_reference_takes_other_mixers_reports_of_the_class() -> None:
    mine = report(MIXERS[0], round_=9)
    other_class = replace(report(MIXERS[1], round_=8), hardware_class=1)
    chosen = select_network_reports([*HONEST, mine, other_class], MIXERS[0], 0, 4)
    assert mine not in chosen and other_class not in chosen
    assert [r.round for r in chosen] == [5, 4, 3, 2]


def test_failed_reports_neither_count_nor_are_checked() -> None:
    failed = [report(MIXERS[1], round_=i, outcome=Outcome.TIMEOUT) for i in range(5)]
    assert compute_measurement_reference(failed, policy=POLICY).samples == 0
    reference = compute_measurement_reference(HONEST, policy=POLICY)
    verify_plausible_measurements(report(outcome=Outcome.TIMEOUT), reference, POLICY)


def test_the_reference_leaves_out_the_reporting_mixer_and_keeps_the_newest() -> None:
    own = [report(MIXERS[0], round_=i, compute=1) for i in range(10)]
    chosen = select_reference_reports([*own, *HONEST], MIXERS[0], NODE, window=4)
    assert all(r.mixer != MIXERS[0] for r in chosen)
    assert [r.round for r in chosen] == [5, 4, 3, 2]


@settings(max_examples=200, derandomize=True)
@given(st.lists(st.integers(1_000, 1_000_000), min_size=3, max_size=16),
       st.integers(1, 10_000_000))
def test_a_figure_is_refused_exactly_when_it_leaves_the_range_by_the_ratios_and_the_slack(
        others: list[int], claimed: int) -> None:
    reference = compute_measurement_reference(
        [replace(report(MIXERS[1], round_=i), compute_us=v) for i, v in enumerate(others)],
        policy=POLICY)
    low, high = min(others), max(others)
    outside = ((claimed * POLICY.faster < low and low - claimed > POLICY.slack_us)
               or (claimed > high * POLICY.slower and claimed - high > POLICY.slack_us))
    try:
        verify_plausible_measurements(replace(report(), compute_us=claimed), reference, POLICY)
        assert not outside
    except ScoringError:
        assert outside
