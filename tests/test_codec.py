"""The wire codec: canonical JSON round trips, and strict rejection that names the field."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dnanet.protocol.codec as codec_module
from dnanet.crypto.hashing import sha256
from dnanet.errors import CodecError
from dnanet.params import BPS_ONE, SCORE_ONE
from dnanet.protocol.codec import (
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    Message,
    canonical_json,
    parse_json,
)
from dnanet.protocol.messages import (
    MAX_BATCH_REPORTS,
    MAX_EVIDENCE_BYTES,
    MAX_SIGNATURES,
    BatchProposal,
    CoSignature,
    EpochSettlement,
    Outcome,
    Punishment,
    QuorumCertificate,
    ScoreBatch,
    ScoreReport,
)
from strategies import ALL_CLASSES, any_message, messages, synthetic_report

MIXER = "0x" + sha256(b"mixer-0")[:20].hex()
NODE = "0x" + sha256(b"node-0")[:20].hex()


# -- strategies ---------------------------------------------------------------------------------


# -- fixtures -----------------------------------------------------------------------------------
def make_report(**overrides: Any) -> ScoreReport:
    return synthetic_report(**{"epoch": 7, "round": 2, "mixer": MIXER, "node": NODE, **overrides})


def make_batch(**overrides: Any) -> ScoreBatch:
    fields: dict[str, Any] = dict(
        epoch=7, round=2, mixer=MIXER, reports_root=b"\x09" * 32, report_count=2
    )
    fields.update(overrides)
    return ScoreBatch(**fields)


def make_certificate() -> QuorumCertificate:
    return QuorumCertificate(
        batch=make_batch(report_count=3),
        reports=(make_report(), make_report(node="0x" + "ab" * 20), make_report(score=0)),
        signatures=(b"\x11" * 65, b"\x12" * 65),
    )


def wire_of(message: Message) -> dict[str, Any]:
    """The decoded JSON object of a message (plain dicts and lists), to corrupt in tests."""
    result: dict[str, Any] = json.loads(message.to_json())
    return result


def decode_error(cls: type[Message], obj: Any) -> CodecError:
    raw = json.dumps(obj)
    with pytest.raises(CodecError) as exc:
        cls.from_json(raw)
    return exc.value


# -- round trips and canonical form -------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(message=any_message)
def test_round_trip_is_identity_and_canonical(message: Message) -> None:
    raw = message.to_json()
    decoded = type(message).from_json(raw)
    assert decoded == message
    assert decoded.to_json() == raw
    assert type(message).from_json(raw.decode()) == message  # str input works too
    # Canonical: exactly json.dumps with sorted keys and no whitespace between tokens.
    assert canonical_json(json.loads(raw)) == raw
    assert (
        raw
        == json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_class_round_trips(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(messages(cls))
    assert cls.from_json(message.to_json()) == message


def _walk(value: Any, visit: Callable[[str, Any], None], key: str = "") -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for k, v in value.items():
            _walk(v, visit, k)
    elif isinstance(value, list):
        for v in value:
            _walk(v, visit, key)
    else:
        visit(key, value)


@settings(max_examples=60, deadline=None)
@given(message=any_message)
def test_canonical_form_sorted_keys_no_spaces_lower_hex(message: Message) -> None:
    raw = message.to_json()
    texts: list[str] = []

    def visit(key: str, value: Any) -> None:
        if key == "reason":  # the only free-text field
            texts.append(value)
        elif isinstance(value, str):
            assert value.startswith("0x") and value == value.lower()
        else:
            assert isinstance(value, (int, bool))

    _walk(json.loads(raw), visit)  # also asserts sorted keys at every level
    # Spaces appear only inside free text, never between tokens; newlines and tabs only escaped.
    assert raw.count(b" ") == sum(t.count(" ") for t in texts)
    assert b"\n" not in raw and b"\t" not in raw and b"\r" not in raw


def test_non_canonical_input_decodes_to_the_canonical_message() -> None:
    cert = make_certificate()
    obj = wire_of(cert)
    # Upper-case hex, a checksum-style address, reversed key order and whitespace.
    obj["batch"]["reportsRoot"] = obj["batch"]["reportsRoot"].upper().replace("0X", "0x")
    obj["batch"]["mixer"] = "0x" + obj["batch"]["mixer"][2:].upper()
    reordered = {k: obj[k] for k in reversed(sorted(obj))}
    loose = json.dumps(reordered, indent=2)
    decoded = QuorumCertificate.from_json(loose)
    assert decoded == cert
    assert decoded.to_json() == cert.to_json()


def test_nested_certificate_with_reports_round_trips() -> None:
    cert = make_certificate()
    raw = cert.to_json()
    assert QuorumCertificate.from_json(raw) == cert
    proposal = BatchProposal(batch=cert.batch, reports=cert.reports, signature=b"\x33" * 65)
    assert BatchProposal.from_json(proposal.to_json()) == proposal
    # Decoding yields real message objects whose EIP-712 hashes equal the originals'.
    decoded = QuorumCertificate.from_json(raw)
    assert [r.hash_struct() for r in decoded.reports] == [r.hash_struct() for r in cert.reports]
    assert decoded.batch.hash_struct() == cert.batch.hash_struct()


def test_limits_are_inclusive() -> None:
    report = make_report(score=SCORE_ONE, evidence=b"\xee" * MAX_EVIDENCE_BYTES, reason="é" * 100)
    assert ScoreReport.from_json(report.to_json()) == report
    punishment = Punishment(
        node=NODE, epoch=2**64 - 1, jail=False, slash_bps=BPS_ONE, evidence_digest=b"\x00" * 32
    )
    assert Punishment.from_json(punishment.to_json()) == punishment
    settlement = EpochSettlement(
        epoch=0, rewards_root=b"\x00" * 32, total=2**256 - 1, reports_digest=b"\x00" * 32
    )
    assert EpochSettlement.from_json(settlement.to_json()) == settlement
    unsigned = make_report(response_signature=b"", outcome=Outcome.TIMEOUT)
    assert ScoreReport.from_json(unsigned.to_json()) == unsigned


# -- rejections while decoding ------------------------------------------------------------------
def test_unknown_field() -> None:
    obj = wire_of(make_batch())
    obj["extra"] = 1
    err = decode_error(ScoreBatch, obj)
    assert err.field == "ScoreBatch" and "'extra'" in str(err)
    obj = wire_of(make_certificate())
    obj["reports"][1]["bonus"] = 1
    err = decode_error(QuorumCertificate, obj)
    assert err.field == "QuorumCertificate.reports[1]" and "'bonus'" in str(err)


@pytest.mark.parametrize(
    ("cls", "path", "field"),
    [
        (ScoreBatch, ["reportsRoot"], "ScoreBatch.reportsRoot"),
        (Punishment, ["slashBps"], "Punishment.slashBps"),
        (QuorumCertificate, ["reports", 1, "score"], "QuorumCertificate.reports[1].score"),
        (QuorumCertificate, ["batch", "epoch"], "QuorumCertificate.batch.epoch"),
        (QuorumCertificate, ["signatures"], "QuorumCertificate.signatures"),
    ],
)
def test_missing_field(cls: type[Message], path: list[Any], field: str) -> None:
    sample = {
        ScoreBatch: make_batch(),
        Punishment: Punishment(
            node=NODE, epoch=1, jail=True, slash_bps=1, evidence_digest=b"\x00" * 32
        ),
        QuorumCertificate: make_certificate(),
    }[cls]
    obj = wire_of(sample)
    target = obj
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    err = decode_error(cls, obj)
    assert err.field == field
    assert "missing" in str(err)


def _set(obj: Any, path: list[Any], value: Any) -> Any:
    target = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return obj


CERT_CASES: list[tuple[str, list[Any], Any, str]] = [
    # wrong types
    ("string for int", ["batch", "epoch"], "7", "expected an integer"),
    ("bool for int", ["batch", "epoch"], True, "expected an integer"),
    ("null for int", ["reports", 0, "rttUs"], None, "expected an integer"),
    ("int for bytes", ["batch", "reportsRoot"], 5, "0x-prefixed"),
    ("int for address", ["batch", "mixer"], 5, "address"),
    ("int for text", ["reports", 0, "reason"], 5, "expected a string"),
    ("list for object", ["batch"], [1, 2], "expected an object"),
    ("string for object", ["reports", 2], "report", "expected an object"),
    ("object for list", ["signatures"], {}, "expected a list"),
    # out of range
    ("negative", ["batch", "epoch"], -1, "out of range"),
    ("u64 overflow", ["batch", "epoch"], 2**64, "out of range"),
    ("u32 overflow", ["batch", "round"], 2**32, "out of range"),
    ("u8 overflow", ["reports", 1, "hardwareClass"], 256, "out of range"),
    ("score above one", ["reports", 0, "score"], SCORE_ONE + 1, "out of range"),
    ("unknown outcome", ["reports", 0, "outcome"], max(Outcome) + 1, "out of range"),
    ("too many reports", ["batch", "reportCount"], MAX_BATCH_REPORTS + 1, "out of range"),
    # bytes
    ("bytes32 short", ["batch", "reportsRoot"], "0x" + "00" * 31, "expected 32 bytes"),
    ("bytes32 long", ["batch", "reportsRoot"], "0x" + "00" * 33, "expected 32 bytes"),
    ("no 0x", ["batch", "reportsRoot"], "00" * 32, "0x-prefixed"),
    ("0X prefix", ["batch", "reportsRoot"], "0X" + "00" * 32, "0x-prefixed"),
    ("odd hex", ["batch", "reportsRoot"], "0x" + "0" * 63, "invalid hex"),
    ("non-hex", ["batch", "reportsRoot"], "0x" + "zz" * 32, "invalid hex"),
    ("spaces in hex", ["batch", "reportsRoot"], "0x" + "00 " * 31 + "00", "invalid hex"),
    ("vrf proof length", ["reports", 0, "vrfProof"], "0x" + "01" * 79, "length must be"),
    (
        "evidence too long",
        ["reports", 0, "evidence"],
        "0x" + "ee" * (MAX_EVIDENCE_BYTES + 1),
        "longer than",
    ),
    ("reason too long", ["reports", 0, "reason"], "é" * 101, "longer than 200 bytes"),
    ("lone surrogate", ["reports", 0, "reason"], "\ud800", "not valid Unicode"),
    # signatures
    ("signature 64 bytes", ["signatures", 1], "0x" + "11" * 64, "longer than|length must be"),
    ("signature 66 bytes", ["signatures", 0], "0x" + "11" * 66, "longer than"),
    ("signature empty", ["signatures", 0], "0x", "length must be"),
    ("response signature 1 byte", ["reports", 2, "responseSignature"], "0x11", "length must be"),
    ("too many signatures", ["signatures"], ["0x" + "11" * 65] * (MAX_SIGNATURES + 1), "more than"),
    # addresses
    ("address short", ["batch", "mixer"], "0x" + "11" * 19, "address"),
    ("address long", ["batch", "mixer"], "0x" + "11" * 21, "address"),
    ("address no 0x", ["batch", "mixer"], "11" * 21, "address"),
    ("address non-hex", ["reports", 0, "node"], "0x" + "gg" * 20, "invalid hex"),
    ("address spaces", ["reports", 0, "node"], "0x" + "ab" * 19 + "  ", "invalid hex"),
    ("address inner space", ["reports", 0, "mixer"], "0x" + " ab" * 13 + "a", "invalid hex"),
]


def _field_path(path: list[Any]) -> str:
    out = "QuorumCertificate"
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out


@pytest.mark.parametrize(
    ("path", "value", "needle"), [c[1:] for c in CERT_CASES], ids=[c[0] for c in CERT_CASES]
)
def test_bad_values_name_the_field(path: list[Any], value: Any, needle: str) -> None:
    obj = _set(wire_of(make_certificate()), path, value)
    err = decode_error(QuorumCertificate, obj)
    assert err.field == _field_path(path)
    assert err.field is not None and str(err).startswith(err.field + ": ")
    assert re.search(needle, str(err)), str(err)


def test_punishment_slash_above_ten_thousand_bps() -> None:
    obj = wire_of(
        Punishment(node=NODE, epoch=1, jail=True, slash_bps=BPS_ONE, evidence_digest=b"\x00" * 32)
    )
    obj["slashBps"] = BPS_ONE + 1
    assert decode_error(Punishment, obj).field == "Punishment.slashBps"
    obj["slashBps"] = 500
    obj["jail"] = 1  # an int is not a bool
    assert decode_error(Punishment, obj).field == "Punishment.jail"


def test_top_level_must_be_an_object() -> None:
    for raw in ("[]", "1", '"x"', "null", "true"):
        with pytest.raises(CodecError) as exc:
            ScoreBatch.from_json(raw)
        assert exc.value.field == "ScoreBatch"


def _batch_json_with(value: str) -> str:
    return json.dumps(wire_of(make_batch())).replace('"epoch": 7', f'"epoch": {value}')


@pytest.mark.parametrize("number", ["1.5", "1e3", "1E3", "7.0", "-0.0", "1e-3"])
def test_floats_are_rejected(number: str) -> None:
    raw = _batch_json_with(number)
    assert number in raw
    with pytest.raises(CodecError, match="non-integer"):
        ScoreBatch.from_json(raw)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant: str) -> None:
    with pytest.raises(CodecError, match="invalid JSON number"):
        ScoreBatch.from_json(_batch_json_with(constant))


def test_duplicate_keys_are_rejected() -> None:
    raw = _batch_json_with('7, "epoch": 8')
    with pytest.raises(CodecError, match="duplicate field 'epoch'"):
        ScoreBatch.from_json(raw)
    nested = json.dumps(wire_of(make_certificate())).replace(
        '"rttUs": 900', '"rttUs": 900, "rttUs": 1'
    )
    with pytest.raises(CodecError, match="duplicate field 'rttUs'"):
        QuorumCertificate.from_json(nested)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"{}}",
        b"{'epoch': 1}",
        b"\xff\xfe{}",
        b'{"epoch": 01}',
        "1" * 5000,
        '{"a":1}'.encode("utf-16-le"),
        "[" * 100_000 + "]" * 100_000,
        '{"epoch":' * 20 + "1" + "}" * 20,
        "[" * 100_000,
    ],
    ids=[
        "empty",
        "unclosed",
        "trailing",
        "single-quotes",
        "not-utf8",
        "leading-zero",
        "5000-digit-int",
        "utf-16",
        "deep-nesting",
        "deep-objects",
        "deep-unclosed",
    ],
)
def test_invalid_json_is_rejected(raw: bytes | str) -> None:
    with pytest.raises(CodecError, match="invalid JSON"):
        ScoreBatch.from_json(raw)


def test_deep_nesting_is_refused_before_the_parser_recurses() -> None:
    # eth_account raises the recursion limit to 100000 at import; json's C parser would then
    # overflow the C stack (a segfault) on deep nesting instead of raising RecursionError.
    import eth_account  # noqa: F401

    assert sys.getrecursionlimit() >= 100_000
    for raw in ("[" * 200_000, '{"a":' * 100_000, '[{"a":' * 60_000, "[" * 50_000 + "}"):
        with pytest.raises(CodecError, match=f"nested deeper than {MAX_JSON_DEPTH}"):
            parse_json(raw)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


# Strings full of brackets, quotes and backslashes must not confuse the depth check.
_tricky_text = st.text(alphabet='[]{}"\\ab\n', max_size=8)
json_values = st.recursive(
    st.integers(-(10**6), 10**6) | _tricky_text | st.booleans() | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky_text, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, wrap=st.integers(0, MAX_JSON_DEPTH + 2))
def test_json_depth_limit_is_exact(value: Any, wrap: int) -> None:
    for _ in range(wrap):
        value = [value]
    raw = json.dumps(value)
    if _depth(value) <= MAX_JSON_DEPTH:
        assert parse_json(raw) == value
        assert parse_json(raw.encode()) == value
    else:
        with pytest.raises(CodecError, match="nested deeper"):
            parse_json(raw)


def test_oversized_message_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = make_certificate().to_json()
    assert QuorumCertificate.from_json(raw, max_bytes=len(raw)) == make_certificate()

    def must_not_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed an oversized message")

    monkeypatch.setattr(json, "loads", must_not_parse)
    monkeypatch.setattr(codec_module._DECODER, "decode", must_not_parse)
    with pytest.raises(CodecError, match="exceeds the limit"):
        QuorumCertificate.from_json(raw, max_bytes=len(raw) - 1)
    with pytest.raises(CodecError, match="exceeds the limit"):
        parse_json(b" " * (MAX_MESSAGE_BYTES + 1))


# -- rejections while constructing in code ------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "field", "needle"),
    [
        (lambda: make_batch(epoch=-1), "ScoreBatch.epoch", "out of range"),
        (lambda: make_batch(epoch=True), "ScoreBatch.epoch", "integer"),
        (lambda: make_batch(epoch="7"), "ScoreBatch.epoch", "integer"),
        (lambda: make_batch(report_count=MAX_BATCH_REPORTS + 1), "ScoreBatch.reportCount", "range"),
        (
            lambda: make_batch(mixer=MIXER.upper().replace("0X", "0x")),
            "ScoreBatch.mixer",
            "lower-case",
        ),
        (lambda: make_batch(mixer=b"\x11" * 20), "ScoreBatch.mixer", "address"),
        (lambda: make_batch(reports_root=b"\x00" * 31), "ScoreBatch.reportsRoot", "32 bytes"),
        (
            lambda: make_batch(reports_root="0x" + "00" * 32),
            "ScoreBatch.reportsRoot",
            "expected bytes",
        ),
        (lambda: make_batch(reports_root=5), "ScoreBatch.reportsRoot", "expected bytes"),
        (
            lambda: make_batch(reports_root=bytearray(32)),
            "ScoreBatch.reportsRoot",
            "expected bytes",
        ),
        (lambda: make_report(score=SCORE_ONE + 1), "ScoreReport.score", "out of range"),
        (lambda: make_report(outcome=6), "ScoreReport.outcome", "out of range"),
        (lambda: make_report(vrf_proof=b"\x00" * 81), "ScoreReport.vrfProof", "longer than"),
        (
            lambda: make_report(response_signature=b"\x00" * 64),
            "ScoreReport.responseSignature",
            "length must be",
        ),
        (
            lambda: make_report(evidence=b"\x00" * (MAX_EVIDENCE_BYTES + 1)),
            "ScoreReport.evidence",
            "longer than",
        ),
        (lambda: make_report(reason="x" * 201), "ScoreReport.reason", "longer than"),
        (lambda: make_report(reason=None), "ScoreReport.reason", "expected a string"),
        (
            lambda: Punishment(
                node=NODE,
                epoch=1,
                jail=1,  # type: ignore[arg-type]
                slash_bps=0,
                evidence_digest=b"\x00" * 32,
            ),
            "Punishment.jail",
            "true or false",
        ),
        (
            lambda: Punishment(
                node=NODE, epoch=1, jail=True, slash_bps=BPS_ONE + 1, evidence_digest=b"\x00" * 32
            ),
            "Punishment.slashBps",
            "out of range",
        ),
        (
            lambda: QuorumCertificate(batch=make_batch(), reports=[make_report()], signatures=()),  # type: ignore[arg-type]
            "QuorumCertificate.reports",
            "tuple",
        ),
        (
            lambda: QuorumCertificate(batch=make_report(), reports=(), signatures=()),  # type: ignore[arg-type]
            "QuorumCertificate.batch",
            "expected a ScoreBatch",
        ),
        (
            lambda: QuorumCertificate(batch=make_batch(), reports=(make_batch(),), signatures=()),  # type: ignore[arg-type]
            "QuorumCertificate.reports[0]",
            "expected a ScoreReport",
        ),
        (
            lambda: QuorumCertificate(
                batch=make_batch(), reports=(), signatures=(b"\x11" * 65, b"\x11" * 64)
            ),
            "QuorumCertificate.signatures[1]",
            "length must be",
        ),
        (
            lambda: CoSignature(signer=MIXER, signature=b""),
            "CoSignature.signature",
            "length must be",
        ),
    ],
)
def test_constructing_bad_messages_raises_codec_error(
    build: Callable[[], Message], field: str, needle: str
) -> None:
    with pytest.raises(CodecError, match=needle) as exc:
        build()
    assert exc.value.field == field


def test_messages_are_immutable() -> None:
    batch = make_batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.epoch = 8  # type: ignore[misc]
    decoded = ScoreBatch.from_json(batch.to_json())
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.epoch = 8  # type: ignore[misc]


def test_hash_struct_only_for_signed_messages() -> None:
    with pytest.raises(TypeError):
        QuorumCertificate.struct_type()
    assert make_batch().hash_struct() != make_batch(epoch=8).hash_struct()
