"""The timing rules (dnanet.protocol.challenges.timing) and the seed commitments: properties,
exact values and every refusal."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.errors import ChallengeError
from dnanet.protocol.challenges import (
    LABEL_SEED_HASH,
    compute_seed_hash,
    verify_seed_reveal,
)
from dnanet.protocol.challenges.timing import (
    RTT_FLOOR_DIVISOR,
    compute_counted_attempt,
    compute_receiver_us,
    compute_rtt_us,
    compute_step_us,
    compute_upload_us,
)

NS = st.integers(0, 10**12)


def test_rtt_is_the_fastest_echo() -> None:
    assert compute_rtt_us([900_000, 250_000, 4_000_000, 251_999]) == 250
    assert compute_rtt_us([10]) == 1  # every duration is at least 1 us


@pytest.mark.parametrize("samples", [[], [-1], [True], [1.5]])
def test_rtt_refuses_bad_samples(samples: list[object]) -> None:
    with pytest.raises(ChallengeError) as exc:
        compute_rtt_us(samples)  # type: ignore[arg-type]
    assert exc.value.field is not None and exc.value.field.startswith("samples")


@settings(derandomize=True)
@given(st.lists(NS, min_size=1, max_size=8))
def test_the_fastest_attempt_counts_and_the_first_of_equals(attempts: list[int]) -> None:
    counted = compute_counted_attempt(attempts)
    assert attempts[counted] == min(attempts)
    assert all(attempts[i] > attempts[counted] for i in range(counted))


@pytest.mark.parametrize("attempts", [[], [-1], [True], [1.5]])
def test_counted_attempt_refuses_bad_samples(attempts: list[object]) -> None:
    with pytest.raises(ChallengeError) as exc:
        compute_counted_attempt(attempts)  # type: ignore[arg-type]
    assert exc.value.field is not None and exc.value.field.startswith("attempts")


@settings(max_examples=300, derandomize=True)
@given(raw=NS, rtt=NS)
def test_a_step_loses_the_round_trip_down_to_the_floor(raw: int, rtt: int) -> None:
    us = compute_step_us(raw, rtt)
    assert us >= 1
    assert us * 1000 <= max(raw, 1000)  # never longer than it took
    floor = -(-raw // RTT_FLOOR_DIVISOR)
    assert us == max(1, max(raw - rtt, floor) // 1000)
    if rtt * RTT_FLOOR_DIVISOR <= raw * (RTT_FLOOR_DIVISOR - 1):
        assert us == max(1, (raw - rtt) // 1000)  # the round trip removed exactly


@settings(max_examples=200, derandomize=True)
@given(raw=NS, rtt=NS, more=st.integers(0, 10**9))
def test_a_step_is_monotonic(raw: int, rtt: int, more: int) -> None:
    assert compute_step_us(raw + more, rtt) >= compute_step_us(raw, rtt)
    assert compute_step_us(raw, rtt + more) <= compute_step_us(raw, rtt)


def test_step_refuses_negative_durations() -> None:
    for raw, rtt, field in ((-1, 0, "raw_ns"), (0, -1, "rtt_ns")):
        with pytest.raises(ChallengeError) as exc:
            compute_step_us(raw, rtt)
        assert exc.value.field == field


def test_receiver_time_scales_the_span_to_the_whole_payload() -> None:
    # 8 frames of 256 KiB; the last 7 took 70 ms: the whole payload takes 80 ms at that rate.
    assert compute_receiver_us(8 << 18, 1 << 18, 70_000_000) == 80_000
    assert compute_receiver_us(100, 1, 0) == 1


@pytest.mark.parametrize("first", [0, 100, 101])
def test_receiver_time_needs_a_first_frame_that_is_part_of_the_payload(first: int) -> None:
    with pytest.raises(ChallengeError) as exc:
        compute_receiver_us(100, first, 10)
    assert exc.value.field == "first_bytes"


FRAME = 1 << 18
GAP_NS = 12_500_000  # 256 KiB at ~21 MB/s


def arrivals(frames: int = 8, gap_ns: int = GAP_NS, start: int = 10**9) -> list[tuple[int, int]]:
    return [((i + 1) * FRAME, start + i * gap_ns) for i in range(frames)]


def test_an_upload_is_timed_from_its_frames_arrivals() -> None:
    # 8 frames 12.5 ms apart: the 7 after the first took 87.5 ms, the payload 100 ms.
    assert compute_upload_us(arrivals()) == 100_000


def test_a_receiver_busy_when_the_upload_began_still_measures_the_rate() -> None:
    # The receiver read frames 0-2 only when frame 2 had arrived (30 ms late for frame 0):
    # the span from the first frame is short, those from a quarter and a half are not.
    late = arrivals()
    late[0] = (late[0][0], late[2][1])
    late[1] = (late[1][0], late[2][1])
    assert compute_upload_us(late) == 100_000
    # Read late at the end: every span is longer; never shorter than the link's time.
    tail = arrivals()
    tail[-1] = (tail[-1][0], tail[-1][1] + 50_000_000)
    assert compute_upload_us(tail) > 100_000


@settings(max_examples=200, derandomize=True)
@given(gaps=st.lists(st.integers(GAP_NS, 10 * GAP_NS), min_size=7, max_size=7))
def test_frames_no_faster_than_the_link_never_time_faster_than_the_link(
        gaps: list[int]) -> None:
    times = [10**9]
    for gap in gaps:
        times.append(times[-1] + gap)
    timed = compute_upload_us([((i + 1) * FRAME, t) for i, t in enumerate(times)])
    assert timed >= 100_000  # each frame took at least its 12.5 ms on the link


@pytest.mark.parametrize("frames", [[], [(FRAME, 1)], [(FRAME, 1), (FRAME, 2)]])
def test_an_upload_needs_a_span_to_time(frames: list[tuple[int, int]]) -> None:
    with pytest.raises(ChallengeError) as exc:
        compute_upload_us(frames)
    assert exc.value.field == "arrivals"


def test_seed_commitment_is_the_labelled_hash_and_only_its_seed_opens_it() -> None:
    seed = hashlib.sha256(b"seed").digest()
    commitment = compute_seed_hash(seed)
    assert commitment == hashlib.sha256(LABEL_SEED_HASH + seed).digest()
    verify_seed_reveal(seed, commitment, "computeSeed")
    for wrong in (bytes(32), seed[:31], seed + b"\0", commitment):
        with pytest.raises(ChallengeError) as exc:
            verify_seed_reveal(wrong, commitment, "computeSeed")
        assert exc.value.field == "computeSeed"
    with pytest.raises(ChallengeError):
        compute_seed_hash(b"short")
