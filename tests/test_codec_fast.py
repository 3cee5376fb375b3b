"""The codec's fast paths agree with its checked paths.

Messages are checked at construction, decoded and EIP-712-hashed through shortcuts built once
per class; anything a shortcut does not handle goes down the checked path, which names the
field. These tests hold the shortcuts to the checked paths: same values, same hashes, same
errors (type, message and field), and the JSON depth pre-scan to its reference form.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto.eip712 import StructType
from dnanet.errors import CodecError
from dnanet.protocol import codec
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
    load_json,
    parse_json,
)
from dnanet.protocol.messages import (
    BatchProposal,
    Outcome,
    ScoreBatch,
    ScoreReport,
)
from strategies import ALL_CLASSES, REPORT_DEFAULTS, any_message, messages

SIGNED_CLASSES = [c for c in ALL_CLASSES if c.EIP712]
any_signed = st.sampled_from(SIGNED_CLASSES).flatmap(messages)

# Values near and across every kind's edges: wrong types, bounds, hex with whitespace, upper
# case, non-ASCII digits and text, nested containers.
_hexes = st.sampled_from(["0x", "0X", "", "00", "0x0", "0xzz", "0x 0", "0x\t00", "0x٣٣"])
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2**8, 2**32, 2**64, 2**256]),
    st.integers(), st.floats(allow_nan=False), _hexes,
    st.binary(max_size=70).map(lambda b: "0x" + b.hex()),
    st.binary(max_size=70).map(lambda b: "0x" + b.hex().upper()),
    st.binary(max_size=70).map(lambda b: "0x " + b.hex()),
    st.binary(max_size=70).map(lambda b: "0x" + b.hex() + " "),
    st.binary(max_size=70), st.binary(max_size=4).map(bytearray),
    st.text(max_size=8), st.text(alphabet="é\ud800€a", max_size=250),
    st.lists(st.integers(0, 3), max_size=3), st.lists(st.integers(0, 3), max_size=2).map(tuple),
    st.dictionaries(st.sampled_from(["a", "epoch"]), st.integers(0, 3), max_size=2),
    st.sampled_from(list(Outcome)),
)


def _error(call: Any) -> tuple[str, str, str | None] | None:
    try:
        call()
    except CodecError as exc:
        return type(exc).__name__, str(exc), exc.field
    return None


def _outcome(call: Any) -> Any:
    """The value returned, or the CodecError (type, message, field) raised."""
    try:
        return ("ok", call())
    except CodecError as exc:
        return type(exc).__name__, str(exc), exc.field


def _reference_to_wire(message: Message) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        kind = f.metadata["wire"]
        out[f.metadata.get("name") or codec._camel(f.name)] = kind.to_wire(
            getattr(message, f.name))
    return out


def _kinds() -> list[WireType[Any]]:
    kinds: list[WireType[Any]] = []
    for cls in ALL_CLASSES:
        kinds.extend(f.metadata["wire"] for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return kinds


ALL_KINDS = _kinds()


# -- hashing and writing ------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(message=any_signed)
def test_fast_hash_struct_equals_the_checked_one(message: Message) -> None:
    checked = message._hash_struct_checked()
    assert message.hash_struct() == checked
    # And the checked one is StructType.hash_struct over the wire names.
    values = {wname: getattr(message, attr) for attr, wname, _ in codec._spec(type(message))}
    values = {k: v.hash_struct() if isinstance(v, Message) else v for k, v in values.items()}
    assert type(message).struct_type().hash_struct(values) == checked


def test_hash_struct_only_for_signed_classes_still() -> None:
    proposal = BatchProposal(batch=ScoreBatch(epoch=1, round=1, mixer="0x" + "11" * 20,
                                              reports_root=bytes(32), report_count=0),
                             reports=(), signature=b"\x01" * 65)
    with pytest.raises(TypeError):
        proposal.hash_struct()


@settings(max_examples=80, deadline=None)
@given(message=any_message)
def test_fast_to_wire_equals_each_kinds_to_wire(message: Message) -> None:
    wire = message.to_wire()
    assert wire == _reference_to_wire(message)
    assert list(wire) == list(_reference_to_wire(message))
    assert message.to_json() == json.dumps(
        wire, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=40, deadline=None)
@given(message=any_message)
def test_json_written_once_is_the_same_text_for_the_message_and_inside_others(
        message: Message) -> None:
    """Each message keeps its written text: nested in another, or written again, it reads the
    same as a fresh json.dumps of the wire form."""
    reference = json.dumps(message.to_wire(), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    for _ in range(2):
        assert message.to_json() == reference
    proposal = BatchProposal(batch=ScoreBatch(epoch=1, round=1, mixer="0x" + "11" * 20,
                                              reports_root=bytes(32), report_count=1),
                             reports=(ScoreReport(**REPORT_DEFAULTS),), signature=b"\x01" * 65)
    proposal.reports[0].to_json()  # the report's text first, then the proposal's around it
    assert proposal.to_json() == json.dumps(
        proposal.to_wire(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- decoding -----------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(message=any_message)
def test_fast_decode_equals_the_checked_decode(message: Message) -> None:
    cls = type(message)
    data = json.loads(message.to_json())
    fast = cls.from_wire(data)
    checked = cls._from_wire_checked(data)
    assert fast == checked == message
    assert fast.__dict__ == checked.__dict__


def _corrupt(data: Any, draw: st.DrawFn) -> Any:
    """``data`` with one value somewhere replaced, a key added or removed."""
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
        action = draw(st.sampled_from(["replace", "descend", "drop", "add"]))
        out = dict(data)
        if action == "drop":
            del out[key]
        elif action == "add":
            out[draw(st.sampled_from(["extra", key.upper()]))] = 1
        elif action == "descend" and isinstance(data[key], dict | list) and data[key]:
            out[key] = _corrupt(data[key], draw)
        else:
            out[key] = draw(junk)
        return out
    if isinstance(data, list) and data:
        i = draw(st.integers(0, len(data) - 1))
        out_list = list(data)
        out_list[i] = _corrupt(data[i], draw) if draw(st.booleans()) else draw(junk)
        return out_list
    return draw(junk)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corrupted_input_fails_as_the_checked_decode_does(data: st.DataObject) -> None:
    message = data.draw(any_message)
    cls = type(message)
    wire = json.loads(message.to_json())
    corrupted = data.draw(st.composite(lambda draw: _corrupt(wire, draw))())
    assert _outcome(lambda: cls.from_wire(corrupted, "m")) == _outcome(
        lambda: cls._from_wire_checked(corrupted, "m"))


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(ALL_KINDS), value=junk)
def test_fast_decoders_accept_only_what_from_wire_accepts(kind: WireType[Any],
                                                          value: Any) -> None:
    decode = kind.fast_decoder()
    if decode is None or isinstance(kind, Nested | ListOf):
        return
    try:
        fast = decode(value)
    except Exception:
        return  # left to from_wire
    checked = kind.from_wire(value, "x")
    assert fast == checked
    assert type(fast) is type(checked)


# -- construction -------------------------------------------------------------------------------
@settings(max_examples=600, deadline=None)
@given(kind=st.sampled_from(ALL_KINDS), value=junk)
def test_fast_predicates_accept_only_what_check_accepts(kind: WireType[Any], value: Any) -> None:
    valid = kind.fast_valid()
    assert valid is not None
    if valid(value):
        kind.check(value, "x")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_construction_fails_as_the_field_checks_do(data: st.DataObject) -> None:
    message = data.draw(any_message)
    cls = type(message)
    attrs = [f.name for f in dataclasses.fields(message)]
    attr = data.draw(st.sampled_from(attrs))
    fields = {a: getattr(message, a) for a in attrs}
    fields[attr] = data.draw(junk)
    expected = None
    for a, kind, path in codec._plan(cls).checks:  # the checked path, in field order
        expected = _error(lambda a=a, kind=kind, path=path: kind.check(fields[a], path))
        if expected is not None:
            break
    assert _error(lambda: cls(**fields)) == expected


def test_intenum_outcomes_and_valid_reports_take_the_fast_path() -> None:
    plan = codec._plan(ScoreReport)
    assert plan.valid is not None and plan.decode is not None and plan.hash is not None
    report = ScoreReport(**{**REPORT_DEFAULTS, "outcome": Outcome.WRONG_ANSWER})
    assert plan.valid(report)
    assert report.outcome is Outcome.WRONG_ANSWER
    assert report.response().node == report.node


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (Uint(8), [0, 255, Outcome.OK], [-1, 256, True, 1.0, "1"]),
        (Bool(), [True, False], [0, 1, None]),
        (FixedBytes(4), [b"abcd"], [b"abc", bytearray(4), "0x61626364"]),
        (Bytes(3, allowed=(0, 3)), [b"", b"abc"], [b"ab", b"abcd", bytearray(3)]),
        (Address(), ["0x" + "ab" * 20], ["0x" + "AB" * 20, "0x" + "ab" * 19, b"\xab" * 20]),
        (Text(3), ["", "abc", "é"], ["abcd", "éé", "\ud800", None]),
    ],
)
def test_construction_checks_by_kind(kind: WireType[Any], good: list[Any],
                                     bad: list[Any]) -> None:
    valid = kind.fast_valid()
    assert valid is not None
    for value in good:
        kind.check(value, "x")
    for value in bad:
        assert not valid(value)
        with pytest.raises(CodecError) as exc:
            kind.check(value, "x")
        assert exc.value.field == "x"


# -- JSON ---------------------------------------------------------------------------------------
_REF_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)


def _reference_nesting_exceeds(data: bytes, limit: int) -> bool:
    brackets = _REF_STRING.sub(b"", data).translate(None, codec._NOT_BRACKETS)
    brackets = brackets.replace(b"{", b"[").replace(b"}", b"]")
    for peeled in range(limit + 1):
        if b"[]" not in brackets:
            return peeled + brackets.count(b"[") > limit
        brackets = brackets.replace(b"[]", b"")
    return True


@settings(max_examples=800, deadline=None)
@given(data=st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b":", b'""',
                                      b"[[[[", b"]]]]", b'"[', b']"']), max_size=40).map(b"".join),
       limit=st.integers(0, 9))
def test_depth_prescan_equals_its_reference(data: bytes, limit: int) -> None:
    assert codec._nesting_exceeds(data, limit) == _reference_nesting_exceeds(data, limit)


def test_duplicate_keys_name_the_first_repeated() -> None:
    with pytest.raises(CodecError, match="duplicate field 'b'"):
        parse_json(b'{"a":1,"b":2,"c":3,"b":4,"a":5}')
    assert parse_json(b'{"a":{"a":1},"b":[{"a":2}]}') == {"a": {"a": 1}, "b": [{"a": 2}]}


def test_byte_order_mark_is_refused_as_json_loads_does() -> None:
    with pytest.raises(CodecError) as exc:
        parse_json("\ufeff{}")
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads("\ufeff{}")
    assert str(exc.value) == f"invalid JSON: {reference.value}"


def test_struct_type_hash_struct_keeps_its_conversions() -> None:
    struct = StructType("S", (("n", "uint256"), ("b", "bool"), ("t", "string"), ("x", "bytes")))
    values = {"n": 5, "b": 1, "t": 7, "x": b""}
    first = struct.hash_struct(values)
    assert first == struct.hash_struct({"n": 5, "b": True, "t": "7", "x": b""})
    with pytest.raises(KeyError):
        struct.hash_struct({"n": 5})


def test_deep_documents_are_refused_before_parsing_under_eth_accounts_recursion_limit() -> None:
    """eth_account (imported by every daemon through web3) raises the recursion limit to
    100,000; json's C parser then overflows the C stack on a document nested that deep and the
    process dies. Both parsers refuse such a document before parsing it."""
    program = (
        "import sys, eth_account\n"
        "from dnanet.errors import CodecError\n"
        "from dnanet.protocol.codec import load_json, parse_json\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "for parse in (parse_json, load_json):\n"
        "    for doc in (b'[' * 100_000, b'{\"a\":' * 60_000 + b'1' + b'}' * 60_000):\n"
        "        try:\n"
        "            parse(doc)\n"
        "        except CodecError as exc:\n"
        "            print(parse.__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "parse_json invalid JSON: nested deeper than 8 levels"] * 2 + [
        "load_json invalid JSON: nested deeper than 32 levels"] * 2


def test_load_json_parses_what_json_loads_does_within_its_limits() -> None:
    document = {"model": "m", "temperature": 0.5, "messages": [{"role": "user",
                                                                 "content": [{"text": "é"}]}]}
    raw = json.dumps(document).encode()
    assert load_json(raw) == document
    assert load_json(b'{"a": 1, "a": 2}') == {"a": 2}
    with pytest.raises(CodecError, match="exceeds the limit of 4"):
        load_json(raw, max_bytes=4)
    with pytest.raises(CodecError, match="not UTF-8"):
        load_json(b'"\xff"')
    nested: list[Any] = []
    for _ in range(31):
        nested = [nested]
    assert load_json(b"[" * 32 + b"]" * 32) == nested
    with pytest.raises(CodecError, match="nested deeper than 32 levels"):
        load_json(b"[" * 33 + b"]" * 33)
