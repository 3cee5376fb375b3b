"""Builders shared by the protocol tests: hypothesis strategies that draw any message from its
wire declaration, and a synthetic ScoreReport with valid field values to override."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from dnanet.protocol.codec import (
    Address,
    Bool,
    Bytes,
    FixedBytes,
    ListOf,
    Message,
    Nested,
    Text,
    Uint,
    WireType,
)
from dnanet.protocol.messages import (
    BatchProposal,
    Challenge,
    ChallengeResponse,
    CoSignature,
    EpochSettlement,
    Outcome,
    Punishment,
    QuorumCertificate,
    ScoreBatch,
    ScoreReport,
    SignedChallenge,
    SignedChallengeResponse,
)

ALL_CLASSES: list[type[Message]] = [
    Challenge, SignedChallenge, ChallengeResponse, SignedChallengeResponse, ScoreReport,
    ScoreBatch, BatchProposal, CoSignature, QuorumCertificate, EpochSettlement, Punishment,
]
"""Every wire message class."""


def field_values(kind: WireType[Any]) -> st.SearchStrategy[Any]:
    """Any valid value of a wire type (with its bounds drawn often)."""
    if isinstance(kind, Uint):
        return st.one_of(st.integers(0, kind.maximum), st.just(kind.maximum), st.just(0))
    if isinstance(kind, Bool):
        return st.booleans()
    if isinstance(kind, FixedBytes):
        return st.binary(min_size=kind.length, max_size=kind.length)
    if isinstance(kind, Bytes):
        if kind.allowed is not None:
            return st.sampled_from(kind.allowed).flatmap(
                lambda n: st.binary(min_size=n, max_size=n)
            )
        return st.binary(max_size=min(kind.max_length, 96))
    if isinstance(kind, Address):
        return st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
    if isinstance(kind, Text):
        return st.text(max_size=40)
    if isinstance(kind, Nested):
        return messages(kind.cls)
    if isinstance(kind, ListOf):
        return st.lists(field_values(kind.item), max_size=3).map(tuple)
    raise AssertionError(f"no strategy for {kind!r}")


def messages(cls: type[Message]) -> st.SearchStrategy[Any]:
    """Any valid message of ``cls``."""
    fields = {f.name: field_values(f.metadata["wire"]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


any_message = st.sampled_from(ALL_CLASSES).flatmap(messages)


REPORT_DEFAULTS: dict[str, Any] = dict(
    epoch=0,
    round=0,
    mixer="0x" + "aa" * 20,
    node="0x" + "bb" * 20,
    hardware_class=0,
    vrf_proof=b"\x01" * 80,
    challenge_digest=b"\x02" * 32,
    echo_digest=b"\x03" * 32,
    compute_root=b"\x04" * 32,
    download_digest=b"\x05" * 32,
    upload_digest=b"\x06" * 32,
    response_signature=b"\x07" * 65,
    rtt_us=900,
    compute_us=100_000,
    download_us=2_000,
    upload_us=2_000,
    outcome=Outcome.OK,
    reason="",
    evidence=b"",
    score=123_456,
)


def synthetic_report(**overrides: Any) -> ScoreReport:
    """A well-formed ScoreReport (not signed, not scored) with ``overrides`` applied."""
    return ScoreReport(**{**REPORT_DEFAULTS, **overrides})
