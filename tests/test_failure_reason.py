"""compute_failure_reason: every reason a report carries fits its field, whatever a node sends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.protocol.messages import (
    MAX_REASON_BYTES,
    Outcome,
    ScoreReport,
    compute_failed_report,
    compute_failure_reason,
)


def test_short_printable_text_is_kept_as_it_is() -> None:
    assert compute_failure_reason("echo: node answered HTTP 500") == "echo: node answered HTTP 500"


def test_control_and_non_ascii_characters_are_escaped() -> None:
    assert compute_failure_reason("a\nb\x00c\u00e9") == "a\\nb\\x00c\\xe9"


def test_long_text_is_cut_to_the_field_with_a_marker() -> None:
    reason = compute_failure_reason("\u4e2d" * 500)
    assert len(reason) == MAX_REASON_BYTES and reason.endswith("...")


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=2000))
def test_any_text_makes_a_reason_that_fits_and_a_report_that_round_trips(text: str) -> None:
    reason = compute_failure_reason(text)
    assert reason.isascii() and reason.isprintable()
    assert len(reason.encode()) <= MAX_REASON_BYTES
    base: dict[str, object] = dict(
        epoch=1, round=2, mixer="0x" + "11" * 20, node="0x" + "22" * 20, hardware_class=0,
        vrf_proof=b"\x01" * 80, challenge_digest=b"\x02" * 32)
    report = compute_failed_report(base, Outcome.BAD_RESPONSE, text)
    assert report.reason == reason
    assert ScoreReport.from_json(report.to_json()) == report
