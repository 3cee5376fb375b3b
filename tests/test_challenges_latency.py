"""Latency challenge: nonces, the echo digest, echo verification, the median."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnanet.errors import ChallengeError, ConfigError
from dnanet.protocol.challenges import (
    LATENCY_ECHOES,
    derive_kind_seeds,
    echo_digest,
    echo_nonces,
    median_rtt_us,
    verify_echoes,
)

SEED = derive_kind_seeds(hashlib.sha256(b"latency-test").digest()).latency_seed


def test_nonces_match_reference() -> None:
    nonces = echo_nonces(SEED, 5)
    assert nonces == [
        hashlib.sha256(b"dnanet/echo-nonce" + SEED + struct.pack(">I", i)).digest()[:16]
        for i in range(5)
    ]
    assert len(set(nonces)) == 5 and all(len(x) == 16 for x in nonces)
    assert echo_nonces(SEED, 3) == nonces[:3]
    assert echo_nonces(hashlib.sha256(SEED).digest(), 5) != nonces


def test_pinned_vector() -> None:
    seed = bytes(range(32))
    nonces = echo_nonces(seed, 2)
    assert [x.hex() for x in nonces] == [
        "08a037e1063887a39e574e4fe8a0748f",
        "e512292ddf856025fc3ec59b13e1b490",
    ]
    assert echo_digest(nonces).hex() == (
        "4001094a9938bacb51fd620873dbd073643d96007ff6ef9ac80752e7e694d3d7"
    )


def test_echo_digest() -> None:
    nonces = echo_nonces(SEED, 4)
    expected = hashlib.sha256(b"dnanet/echo-digest" + struct.pack(">I", 4) + b"".join(nonces))
    assert echo_digest(nonces) == expected.digest()
    assert echo_digest(nonces[::-1]) != echo_digest(nonces)  # order matters
    assert echo_digest(nonces[:3]) != echo_digest(nonces)


def test_echo_digest_rejects() -> None:
    nonces = echo_nonces(SEED, 3)
    with pytest.raises(ChallengeError, match="must be 16 bytes") as err:
        echo_digest([nonces[0], nonces[1][:15], nonces[2]])
    assert err.value.field == "nonces[1]"
    with pytest.raises(ChallengeError, match="got 0") as err:
        echo_digest([])
    assert err.value.field == "nonces"


def test_verify_echoes() -> None:
    count = LATENCY_ECHOES["cpu"]
    assert count == 16
    nonces = echo_nonces(SEED, count)
    verify_echoes(SEED, count, nonces)
    for echoed, match, field in (
        (nonces[:-1], "got 15 echoes, expected 16", "echoed"),
        ([*nonces, nonces[0]], "got 17 echoes", "echoed"),
        ([nonces[1], nonces[0], *nonces[2:]], "does not match", "echoed[0]"),
        ([*nonces[:3], bytes(16), *nonces[4:]], "does not match", "echoed[3]"),
        ([*nonces[:15], nonces[15][:15]], "does not match", "echoed[15]"),
        (echo_nonces(hashlib.sha256(SEED).digest(), count), "does not match", "echoed[0]"),
    ):
        with pytest.raises(ChallengeError, match=match) as err:
            verify_echoes(SEED, count, echoed)
        assert err.value.field == field


def test_bad_seed_and_count() -> None:
    with pytest.raises(ChallengeError) as err:
        echo_nonces(SEED[:16], 3)
    assert err.value.field == "latency_seed"
    for count in (0, -1, 10**6):
        with pytest.raises(ConfigError) as cerr:
            echo_nonces(SEED, count)
        assert cerr.value.field == "count"


def test_median() -> None:
    assert median_rtt_us([7]) == 7
    assert median_rtt_us([30, 10, 20]) == 20
    assert median_rtt_us([40, 10, 30, 20]) == 20  # even count: the lower median
    assert median_rtt_us([5, 5, 1000, 1000]) == 5
    assert median_rtt_us([0, 0]) == 0
    assert median_rtt_us((3, 1, 2, 900_000, 4)) == 3  # an outlier does not move it


@pytest.mark.parametrize(
    ("samples", "field"),
    [([], "samples"), ([1, -1], "samples[1]"), ([True], "samples[0]"), ([1.5], "samples[0]")],
)
def test_median_rejects(samples: list[object], field: str) -> None:
    with pytest.raises(ChallengeError) as err:
        median_rtt_us(samples)  # type: ignore[arg-type]
    assert err.value.field == field


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=50))
def test_median_is_a_lower_median_sample(samples: list[int]) -> None:
    m = median_rtt_us(samples)
    assert m in samples
    assert sum(s <= m for s in samples) >= (len(samples) + 1) // 2
    assert sum(s >= m for s in samples) >= len(samples) // 2 + 1
    assert median_rtt_us(sorted(samples, reverse=True)) == m


def test_counts_per_class() -> None:
    assert set(LATENCY_ECHOES) >= {"test", "cpu", "gpu"}
    assert all(c >= 1 for c in LATENCY_ECHOES.values())
