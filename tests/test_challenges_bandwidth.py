"""Bandwidth challenge: payload generation, digests, verification, throughput."""

from __future__ import annotations

import hashlib
import itertools
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.errors import ChallengeError, ConfigError
from dnanet.protocol.challenges import (
    BANDWIDTH_SIZES,
    BandwidthSize,
    PayloadDigest,
    derive_kind_seeds,
    download_payload,
    iter_download_payload,
    iter_upload_payload,
    payload_digest,
    throughput_bps,
    upload_payload,
    verify_download_digest,
    verify_upload,
)
from dnanet.protocol.challenges.bandwidth import PAYLOAD_CHUNK_BYTES

SEEDS = derive_kind_seeds(hashlib.sha256(b"bandwidth-test").digest())
CHUNK = PAYLOAD_CHUNK_BYTES


def ref_payload(label: bytes, seed: bytes, nbytes: int) -> bytes:
    out = b""
    j = 0
    while len(out) < nbytes:
        out += hashlib.shake_128(label + seed + struct.pack(">I", j)).digest(65536)
        j += 1
    return out[:nbytes]


@pytest.mark.parametrize("nbytes", [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_payloads_match_reference(nbytes: int) -> None:
    down = download_payload(SEEDS.download_seed, nbytes)
    up = upload_payload(SEEDS.upload_seed, nbytes)
    assert down == ref_payload(b"dnanet/down-payload", SEEDS.download_seed, nbytes)
    assert up == ref_payload(b"dnanet/up-payload", SEEDS.upload_seed, nbytes)
    assert len(down) == len(up) == nbytes


def test_pinned_vectors() -> None:
    seed = bytes(range(32))
    assert download_payload(seed, 16).hex() == "84bfd9db52b531cbdd2cebb36eb48fa7"
    assert upload_payload(seed, 16).hex() == "0c5b13d065df42c76e204586733159a1"
    assert payload_digest(download_payload(seed, 1000)).hex() == (
        "c13c264b9852c1aa23540a4b4658b90e387effaf093f68def0dd8f1af4673466"
    )


def test_chunks_and_prefixes() -> None:
    nbytes = 2 * CHUNK + 10
    chunks = list(iter_download_payload(SEEDS.download_seed, nbytes))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, 10]
    whole = download_payload(SEEDS.download_seed, nbytes)
    assert b"".join(chunks) == whole
    assert download_payload(SEEDS.download_seed, CHUNK + 3) == whole[: CHUNK + 3]
    assert b"".join(iter_upload_payload(SEEDS.upload_seed, 5)) == upload_payload(
        SEEDS.upload_seed, 5
    )


def test_directions_and_seeds_are_independent() -> None:
    seed = SEEDS.download_seed
    assert download_payload(seed, 64) != upload_payload(seed, 64)
    assert download_payload(seed, 64) != download_payload(SEEDS.upload_seed, 64)


def test_payload_is_incompressible() -> None:
    data = download_payload(SEEDS.download_seed, BANDWIDTH_SIZES["test"].download_bytes)
    assert len(zlib.compress(data, 9)) >= len(data)
    data = upload_payload(SEEDS.upload_seed, BANDWIDTH_SIZES["test"].upload_bytes)
    assert len(zlib.compress(data, 9)) >= len(data)


def test_payload_digest_is_domain_separated() -> None:
    data = b"hello"
    assert payload_digest(data) == hashlib.sha256(b"dnanet/payload-digest" + data).digest()
    assert payload_digest(data) != hashlib.sha256(data).digest()


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4000), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_streaming_digest_equals_one_shot(data: bytes, cuts: list[int]) -> None:
    digest = PayloadDigest()
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, stop in itertools.pairwise(points):
        digest.update(data[start:stop])
        assert digest.digest() == payload_digest(data[:stop])  # reading does not end the stream
    assert digest.nbytes == len(data)
    assert digest.digest() == payload_digest(data)


def test_verify_download_digest() -> None:
    nbytes = CHUNK + 77
    received = PayloadDigest()
    for chunk in iter_download_payload(SEEDS.download_seed, nbytes):
        received.update(chunk)
    verify_download_digest(SEEDS.download_seed, nbytes, received.digest())


@pytest.mark.parametrize(
    ("digest_of", "match"),
    [
        (lambda d: payload_digest(d[:-1]), "does not match"),  # one byte short
        (lambda d: payload_digest(d + b"\x00"), "does not match"),  # one byte more
        (lambda d: payload_digest(bytes([d[0] ^ 1]) + d[1:]), "does not match"),  # one bit off
        (lambda d: hashlib.sha256(d).digest(), "does not match"),  # no domain label
        (lambda d: payload_digest(d)[:31], "must be 32 bytes"),
        (lambda d: b"", "must be 32 bytes"),
    ],
)
def test_verify_download_digest_rejects(digest_of: object, match: str) -> None:
    data = download_payload(SEEDS.download_seed, 1000)
    with pytest.raises(ChallengeError, match=match) as err:
        verify_download_digest(SEEDS.download_seed, 1000, digest_of(data))  # type: ignore[operator]
    assert err.value.field == "digest"


def test_verify_download_digest_rejects_other_seed() -> None:
    digest = payload_digest(download_payload(SEEDS.upload_seed, 1000))
    with pytest.raises(ChallengeError, match="does not match"):
        verify_download_digest(SEEDS.download_seed, 1000, digest)


def test_verify_upload_accepts_bytes_and_streamed_digest() -> None:
    nbytes = 2 * CHUNK + 1
    data = upload_payload(SEEDS.upload_seed, nbytes)
    verify_upload(SEEDS.upload_seed, nbytes, data)
    received = PayloadDigest()
    for i in range(0, nbytes, 1000):  # arrival in pieces unrelated to the generator's chunks
        received.update(data[i : i + 1000])
    verify_upload(SEEDS.upload_seed, nbytes, received)


def test_verify_upload_rejects() -> None:
    nbytes = 5000
    data = upload_payload(SEEDS.upload_seed, nbytes)
    flipped = data[:100] + bytes([data[100] ^ 0x80]) + data[101:]
    for received, match in (
        (data[:-1], "got 4999 bytes, expected 5000"),
        (data + b"x", "got 5001 bytes"),
        (flipped, "bytes differ"),
        (download_payload(SEEDS.upload_seed, nbytes), "bytes differ"),
    ):
        with pytest.raises(ChallengeError, match=match) as err:
            verify_upload(SEEDS.upload_seed, nbytes, received)
        assert err.value.field == "upload"
    for feed, match in ((flipped, "digest does not match"), (data[:-3], "got 4997 bytes")):
        digest = PayloadDigest()
        digest.update(feed)
        with pytest.raises(ChallengeError, match=match) as err:
            verify_upload(SEEDS.upload_seed, nbytes, digest)
        assert err.value.field == "upload"


def test_bad_seed_and_size() -> None:
    with pytest.raises(ChallengeError) as err:
        download_payload(b"\x00" * 31, 10)
    assert err.value.field == "download_seed"
    with pytest.raises(ChallengeError) as err:
        upload_payload(b"", 10)
    assert err.value.field == "upload_seed"
    with pytest.raises(ChallengeError) as err:
        download_payload(SEEDS.download_seed, -1)
    assert err.value.field == "nbytes"


def test_throughput() -> None:
    assert throughput_bps(1_000_000, 1_000_000) == 1_000_000
    assert throughput_bps(4 << 20, 333_333) == (4 << 20) * 1_000_000 // 333_333
    assert throughput_bps(1, 3) == 333_333  # rounded down, integer
    assert throughput_bps(0, 5) == 0
    assert isinstance(throughput_bps(10**12, 7), int)
    for nbytes, micros, field in ((10, 0, "micros"), (10, -5, "micros"), (-1, 10, "nbytes")):
        with pytest.raises(ChallengeError) as err:
            throughput_bps(nbytes, micros)
        assert err.value.field == field


def test_sizes() -> None:
    assert BANDWIDTH_SIZES["test"] == BandwidthSize(64 << 10, 64 << 10)
    assert BANDWIDTH_SIZES["cpu"].download_bytes == 8 << 20
    assert BANDWIDTH_SIZES["gpu"].download_bytes >= BANDWIDTH_SIZES["cpu"].download_bytes
    with pytest.raises(ConfigError) as err:
        BandwidthSize(download_bytes=0, upload_bytes=1)
    assert err.value.field == "download_bytes"
    with pytest.raises(ConfigError) as err:
        BandwidthSize(download_bytes=1, upload_bytes=-1)
    assert err.value.field == "upload_bytes"
