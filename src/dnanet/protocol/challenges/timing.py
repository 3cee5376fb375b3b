"""From a mixer's clock readings to the three figures of a session: each one measures one thing.

A mixer times a node on its own clock (the node's is never trusted) and reports microseconds.
Every timed step but the latency echoes also carries the session's round trip, which the mixer
removes, so that a far node is not scored as a slow one (docs/scoring.md, "Measurement"):

- latency: the *minimum* of the echoes' round trips (16 or more): the path's own delay, without
  the queueing and scheduling noise that only ever adds to a sample;
- a step timed from the mixer's request to the node's answer (download, compute):
  ``raw - rtt``, but never less than ``raw / RTT_FLOOR_DIVISOR``. A node can only add to its
  echoes' round trip, and whatever it adds is removed from its steps; the floor bounds what
  that can buy (at most a factor ``RTT_FLOOR_DIVISOR`` on a step) while the added round trip
  costs it on latency;
- the compute step: several attempts, each timed from request to answer, and the *fastest*
  counts (``compute_counted_attempt``), as the fastest echo does: whatever else ran on the
  node's host during an attempt only ever slowed that one;
- the upload, where the mixer is the receiver: timed from the arrival of one of the payload's
  frames to that of its last, so neither the round trip nor the node's generation of the payload
  is in it (as M-Lab's ndt7 and iperf3 measure at the receiver). The bytes up to that frame
  arrived before the clock started, so the span covers the rest; the figure is the time the
  whole payload takes at that rate. Three such spans are taken, from the first frame and from
  the frames a quarter and half way through the frames, and the slowest counts: a
  receiver that was busy when a frame arrived reads it late and the frames queued behind it at
  once, which shortens a span that starts there, but not one that starts elsewhere. A node
  cannot shorten any span: it decides only when bytes leave, not how fast they arrive.

All arithmetic is on integers (nanoseconds in, microseconds out), rounded down; a duration is
at least 1 us, so that a rate stays finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from dnanet.errors import ChallengeError

RTT_FLOOR_DIVISOR: Final = 8
"""Removing the round trip leaves at least 1/8 of a step's raw duration."""
NS_PER_US: Final = 1000


def _check_ns(value: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChallengeError(f"must be an int >= 0, got {value!r}", field=field)


def compute_rtt_us(samples_ns: Sequence[int]) -> int:
    """The session's round trip: the minimum of the echo samples, in microseconds (at least 1,
    as every duration)."""
    if not samples_ns:
        raise ChallengeError("needs at least one sample", field="samples")
    for i, sample in enumerate(samples_ns):
        _check_ns(sample, f"samples[{i}]")
    return max(1, min(samples_ns) // NS_PER_US)


def compute_step_us(raw_ns: int, rtt_ns: int) -> int:
    """A step timed from request to answer, with the round trip removed (see the module
    docstring for the floor)."""
    _check_ns(raw_ns, "raw_ns")
    _check_ns(rtt_ns, "rtt_ns")
    floor = -(-raw_ns // RTT_FLOOR_DIVISOR)
    return max(1, max(raw_ns - rtt_ns, floor) // NS_PER_US)


def compute_counted_attempt(attempts_ns: Sequence[int]) -> int:
    """Which of the compute step's attempts counts: the index of the fastest (the first of
    equals)."""
    if not attempts_ns:
        raise ChallengeError("needs at least one attempt", field="attempts")
    for i, sample in enumerate(attempts_ns):
        _check_ns(sample, f"attempts[{i}]")
    return min(range(len(attempts_ns)), key=lambda i: attempts_ns[i])


RECEIVER_MARKS: Final = ((0, 1), (1, 4), (1, 2))
"""A receiver's spans start at the first frame, and at the frames these fractions of the way
through the frames."""


def compute_receiver_us(total_bytes: int, first_bytes: int, span_ns: int) -> int:
    """The time ``total_bytes`` take at the rate of a transfer whose receiver saw its first
    ``first_bytes`` arrive at once, then the rest over ``span_ns``."""
    _check_ns(span_ns, "span_ns")
    if not 0 < first_bytes < total_bytes:
        raise ChallengeError(f"first frame of {first_bytes} bytes must be a part of "
                             f"{total_bytes}", field="first_bytes")
    return max(1, span_ns * total_bytes // (total_bytes - first_bytes) // NS_PER_US)


def compute_upload_us(arrivals: Sequence[tuple[int, int]]) -> int:
    """The upload's time from its frames' arrivals, ``(bytes so far, clock ns)`` in order (at
    least two frames): the slowest of the spans of ``RECEIVER_MARKS`` to the last frame."""
    if len(arrivals) < 2:
        raise ChallengeError("needs two frames or more", field="arrivals")
    total, t_last = arrivals[-1]
    slowest = 0
    for num, den in RECEIVER_MARKS:
        received, t_mark = arrivals[len(arrivals) * num // den]
        if received < total:
            slowest = max(slowest, compute_receiver_us(total, received, t_last - t_mark))
    if slowest == 0:  # every frame but the first is empty: no span to time
        raise ChallengeError("the first frame holds the whole payload", field="arrivals")
    return slowest


__all__ = [
    "RECEIVER_MARKS",
    "RTT_FLOOR_DIVISOR",
    "compute_counted_attempt",
    "compute_receiver_us",
    "compute_rtt_us",
    "compute_step_us",
    "compute_upload_us",
]
