"""Canonical JSON wire codec with strict validation, and EIP-712 hashing of the same messages.

A message class is a frozen dataclass whose fields carry a wire type in their metadata
(``wire(Uint(64))``). One declaration gives:

* the canonical JSON form: sorted keys, no whitespace, integers as JSON numbers, bytes and
  addresses as lower-case ``0x`` hex;
* strict decoding: unknown or missing fields, wrong types, out-of-range integers and oversized
  values raise :class:`~dnanet.errors.CodecError` naming the field (``report.response.computeRoot``);
* the EIP-712 struct type and ``hashStruct`` for messages that are signed.

The canonical JSON of a message is written field by field by writers built once per class
(``_Plan.json``), the same text as ``canonical_json(message.to_wire())`` without building the
dictionaries first; a message keeps its text once written, so a certificate reuses the text of
reports already written on their own.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import re
from collections.abc import Callable
from functools import cached_property
from json.encoder import encode_basestring
from typing import Any, ClassVar, Generic, Self, TypeVar

from dnanet.crypto.eip712 import StructType
from dnanet.crypto.hashing import keccak256
from dnanet.errors import CodecError

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""No wire message may be larger than this (a batch of reports included)."""

T = TypeVar("T")

Predicate = Callable[[Any], bool]
Decoder = Callable[[Any], T]
Encoder = Callable[[Any], bytes]
JsonWriter = Callable[[Any], str]


class _Unhandled(Exception):
    """A fast decoder met input it does not handle: the checked path decides."""


_ZERO12 = bytes(12)
_WORD_FALSE = bytes(32)
_WORD_TRUE = (1).to_bytes(32, "big")
_LOWER_ADDRESS = re.compile(r"0x[0-9a-f]{40}")


def _uint_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _bool_word(value: bool) -> bytes:
    return _WORD_TRUE if value else _WORD_FALSE


def _address_word(value: str) -> bytes:
    return _ZERO12 + bytes.fromhex(value[2:])


_KECCAK_EMPTY = keccak256(b"")


def _hash_bytes(value: bytes) -> bytes:
    # Empty evidence and reasons are common; a Keccak costs a microsecond.
    if type(value) is bytes and not value:
        return _KECCAK_EMPTY
    return keccak256(bytes(value))


def _hash_text(value: str) -> bytes:
    if type(value) is str and not value:
        return _KECCAK_EMPTY
    return keccak256(str(value).encode())


def _same(value: bytes) -> bytes:
    return value


def _hex_wire(value: bytes) -> str:
    return "0x" + value.hex()


def _json_hex(value: bytes) -> str:
    return '"0x' + value.hex() + '"'


def _json_address(value: str) -> str:
    return '"' + value + '"'


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def _json_text_of(message: Message) -> str:
    """The canonical JSON text of ``message``, written once and kept on the instance."""
    text: str | None = message.__dict__.get("_json")
    if text is None:
        write = _plan(type(message)).json
        text = write(message) if write is not None else _CANONICAL.encode(message.to_wire())
        object.__setattr__(message, "_json", text)
    return text


class WireType(Generic[T]):
    """How one field is written, read, validated and EIP-712-typed.

    Besides the checked methods, a type may offer fast paths, built once per message class:
    each is a sound shortcut that accepts only what the checked methods accept and returns the
    same value; input it does not handle (a predicate's False, a decoder's exception) sends the
    whole message down the checked path, which names the offending field. None: no shortcut.
    """

    eip712: str | None = None

    def to_wire(self, value: T) -> Any:
        raise NotImplementedError

    def from_wire(self, data: Any, path: str) -> T:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> None:
        """Validate a Python value (used when a message is constructed in code)."""
        self.from_wire(self.to_wire(value), path)

    def schema(self) -> dict[str, Any]:
        """JSON schema of the wire form (for the daemons' OpenAPI specs)."""
        raise NotImplementedError

    def writer(self) -> Callable[[Any], Any] | None:
        """``to_wire`` as a plain function; None where a value is its own wire form."""
        return self.to_wire

    def fast_valid(self) -> Predicate | None:
        """A predicate true only for values that ``check`` accepts."""
        return None

    def fast_decoder(self) -> Decoder[T] | None:
        """``from_wire`` of plain valid input; raises (anything) on input it leaves to it."""
        return None

    def hash_encoder(self) -> Encoder | None:
        """The EIP-712 ``encodeData`` word of a value that ``check`` accepts."""
        return None

    def json_writer(self) -> JsonWriter | None:
        """The canonical JSON text of a value that ``check`` accepts (what ``canonical_json``
        writes of its ``to_wire``)."""
        return None


class Uint(WireType[int]):
    """An unsigned integer of at most ``bits`` bits (or up to ``maximum``).

    Its EIP-712 type is always ``uint256``, the type the contracts use; the narrower range is
    a wire-level bound.
    """

    eip712 = "uint256"

    def __init__(self, bits: int, *, maximum: int | None = None) -> None:
        self.bits = bits
        self.maximum = (1 << bits) - 1 if maximum is None else maximum

    def to_wire(self, value: int) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": 0, "maximum": self.maximum}

    def from_wire(self, data: Any, path: str) -> int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise CodecError(f"expected an integer, got {type(data).__name__}", field=path)
        if data < 0 or data > self.maximum:
            raise CodecError(f"integer {data} out of range [0, {self.maximum}]", field=path)
        return data

    def writer(self) -> None:
        return None

    def fast_valid(self) -> Predicate:
        maximum = self.maximum

        def valid(value: Any) -> bool:
            # IntEnum members (outcomes) are ints too; bool is not.
            return ((type(value) is int or (isinstance(value, int) and type(value) is not bool))
                    and 0 <= value <= maximum)

        return valid

    def fast_decoder(self) -> Decoder[int]:
        maximum = self.maximum

        def decode(data: Any) -> int:
            if type(data) is int and 0 <= data <= maximum:
                return data
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _uint_word

    def json_writer(self) -> JsonWriter:
        return int.__repr__  # an IntEnum member (an outcome) is written as its number


class Bool(WireType[bool]):
    eip712 = "bool"

    def to_wire(self, value: bool) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def from_wire(self, data: Any, path: str) -> bool:
        if not isinstance(data, bool):
            raise CodecError(f"expected true or false, got {type(data).__name__}", field=path)
        return data

    def writer(self) -> None:
        return None

    def fast_valid(self) -> Predicate:
        return lambda value: type(value) is bool

    def fast_decoder(self) -> Decoder[bool]:
        def decode(data: Any) -> bool:
            if type(data) is bool:
                return data
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _bool_word

    def json_writer(self) -> JsonWriter:
        return _json_bool


def _is_hex_digits(text: str) -> bool:
    # bytes.fromhex skips ASCII whitespace; a canonical message has none, so refuse it here.
    return not text or (text.isascii() and text.isalnum())


def _hex_to_bytes(data: Any, path: str) -> bytes:
    if not isinstance(data, str) or not data.startswith("0x"):
        raise CodecError("expected a 0x-prefixed hex string", field=path)
    try:
        if not _is_hex_digits(data[2:]):
            raise ValueError(data)
        return bytes.fromhex(data[2:])
    except ValueError:
        raise CodecError("invalid hex", field=path) from None


def _check_bytes(value: Any, path: str) -> None:
    # to_wire calls value.hex(): refuse str/int (AttributeError) and mutable bytearray up front.
    if not isinstance(value, bytes):
        raise CodecError(f"expected bytes, got {type(value).__name__}", field=path)


class FixedBytes(WireType[bytes]):
    def __init__(self, length: int) -> None:
        self.length = length
        self.eip712 = "bytes32" if length == 32 else "bytes"

    def to_wire(self, value: bytes) -> Any:
        return "0x" + value.hex()

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": f"^0x[0-9a-fA-F]{{{2 * self.length}}}$"}

    def from_wire(self, data: Any, path: str) -> bytes:
        raw = _hex_to_bytes(data, path)
        if len(raw) != self.length:
            raise CodecError(f"expected {self.length} bytes, got {len(raw)}", field=path)
        return raw

    def check(self, value: Any, path: str) -> None:
        _check_bytes(value, path)
        super().check(value, path)

    def writer(self) -> Callable[[bytes], str]:
        return _hex_wire

    def fast_valid(self) -> Predicate:
        length = self.length
        return lambda value: type(value) is bytes and len(value) == length

    def fast_decoder(self) -> Decoder[bytes]:
        length = self.length
        chars = 2 + 2 * length

        def decode(data: Any) -> bytes:
            if type(data) is str and len(data) == chars and data.startswith("0x"):
                # fromhex skips whitespace: all 2n characters were digits iff n bytes came out.
                raw = bytes.fromhex(data[2:])
                if len(raw) == length:
                    return raw
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _same if self.eip712 == "bytes32" else _hash_bytes

    def json_writer(self) -> JsonWriter:
        return _json_hex


class Bytes(WireType[bytes]):
    """Variable-length bytes, at most ``max_length``; ``allowed`` restricts the lengths."""

    eip712 = "bytes"

    def __init__(self, max_length: int, *, allowed: tuple[int, ...] | None = None) -> None:
        self.max_length = max_length
        self.allowed = allowed

    def to_wire(self, value: bytes) -> Any:
        return "0x" + value.hex()

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^0x([0-9a-fA-F]{2})*$",
                "maxLength": 2 + 2 * self.max_length}

    def from_wire(self, data: Any, path: str) -> bytes:
        if isinstance(data, str) and len(data) > 2 + 2 * self.max_length:
            raise CodecError(f"longer than {self.max_length} bytes", field=path)
        raw = _hex_to_bytes(data, path)
        if len(raw) > self.max_length:
            raise CodecError(f"longer than {self.max_length} bytes", field=path)
        if self.allowed is not None and len(raw) not in self.allowed:
            raise CodecError(f"length must be one of {self.allowed}, got {len(raw)}", field=path)
        return raw

    def check(self, value: Any, path: str) -> None:
        _check_bytes(value, path)
        super().check(value, path)

    def writer(self) -> Callable[[bytes], str]:
        return _hex_wire

    def fast_valid(self) -> Predicate:
        max_length = self.max_length
        allowed = self.allowed

        def valid(value: Any) -> bool:
            return (type(value) is bytes and len(value) <= max_length
                    and (allowed is None or len(value) in allowed))

        return valid

    def fast_decoder(self) -> Decoder[bytes]:
        max_chars = 2 + 2 * self.max_length
        allowed = self.allowed

        def decode(data: Any) -> bytes:
            if type(data) is str and len(data) <= max_chars and data.startswith("0x"):
                raw = bytes.fromhex(data[2:])
                # fromhex skips whitespace: every character was a digit iff none went missing.
                if 2 + 2 * len(raw) == len(data) and (allowed is None or len(raw) in allowed):
                    return raw
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _hash_bytes

    def json_writer(self) -> JsonWriter:
        return _json_hex


class Address(WireType[str]):
    """A 20-byte account, canonical as lower-case ``0x`` hex (input in any case)."""

    eip712 = "address"

    def to_wire(self, value: str) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}

    def from_wire(self, data: Any, path: str) -> str:
        if not isinstance(data, str) or len(data) != 42 or not data.startswith("0x"):
            raise CodecError("expected a 0x-prefixed 20-byte hex address", field=path)
        try:
            if not _is_hex_digits(data[2:]):
                raise ValueError(data)
            bytes.fromhex(data[2:])
        except ValueError:
            raise CodecError("invalid hex in address", field=path) from None
        return data.lower()

    def check(self, value: Any, path: str) -> None:
        if self.from_wire(value, path) != value:
            raise CodecError("addresses are stored lower-case", field=path)

    def writer(self) -> None:
        return None

    def fast_valid(self) -> Predicate:
        return lambda value: type(value) is str and _LOWER_ADDRESS.fullmatch(value) is not None

    def fast_decoder(self) -> Decoder[str]:
        def decode(data: Any) -> str:
            # 40 characters give 20 bytes only if fromhex skipped no whitespace.
            if (type(data) is str and len(data) == 42 and data.startswith("0x")
                    and len(bytes.fromhex(data[2:])) == 20):
                return data.lower()
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _address_word

    def json_writer(self) -> JsonWriter:
        return _json_address  # checked: lower-case hex, nothing to escape


class Text(WireType[str]):
    eip712 = "string"

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def to_wire(self, value: str) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_length}

    def from_wire(self, data: Any, path: str) -> str:
        if not isinstance(data, str):
            raise CodecError(f"expected a string, got {type(data).__name__}", field=path)
        try:
            encoded = data.encode()
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
            raise CodecError("not valid Unicode text", field=path) from None
        if len(encoded) > self.max_length:
            raise CodecError(f"longer than {self.max_length} bytes", field=path)
        return data

    def writer(self) -> None:
        return None

    def fast_valid(self) -> Predicate:
        max_length = self.max_length
        # ASCII text is valid UTF-8 of one byte per character.
        return lambda value: type(value) is str and len(value) <= max_length and value.isascii()

    def fast_decoder(self) -> Decoder[str]:
        max_length = self.max_length

        def decode(data: Any) -> str:
            if type(data) is str and len(data) <= max_length and data.isascii():
                return data
            raise _Unhandled

        return decode

    def hash_encoder(self) -> Encoder:
        return _hash_text

    def json_writer(self) -> JsonWriter:
        return encode_basestring  # json's own string writer (no ASCII escaping)


M = TypeVar("M", bound="Message")


class Nested(WireType[M]):
    def __init__(self, cls: type[M]) -> None:
        self.cls = cls
        self.eip712 = cls.__name__ if cls.EIP712 else None

    def to_wire(self, value: M) -> Any:
        return value.to_wire()

    def schema(self) -> dict[str, Any]:
        return self.cls.json_schema()

    def from_wire(self, data: Any, path: str) -> M:
        return self.cls.from_wire(data, path)

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, self.cls):
            raise CodecError(f"expected a {self.cls.__name__}", field=path)

    def writer(self) -> Callable[[M], Any]:
        return lambda value: value.to_wire()

    def fast_valid(self) -> Predicate:
        cls = self.cls
        return lambda value: isinstance(value, cls)

    def fast_decoder(self) -> Decoder[M] | None:
        return _plan(self.cls).decode  # type: ignore[return-value]

    def hash_encoder(self) -> Encoder | None:
        return (lambda value: value.hash_struct()) if self.eip712 is not None else None

    def json_writer(self) -> JsonWriter:
        return _json_text_of


class ListOf(WireType[tuple[T, ...]]):
    """A list of at most ``max_items`` items (a tuple in Python); not EIP-712 typed."""

    def __init__(self, item: WireType[T], max_items: int) -> None:
        self.item = item
        self.max_items = max_items

    def to_wire(self, value: tuple[T, ...]) -> Any:
        return [self.item.to_wire(v) for v in value]

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.schema(), "maxItems": self.max_items}

    def from_wire(self, data: Any, path: str) -> tuple[T, ...]:
        if not isinstance(data, list):
            raise CodecError(f"expected a list, got {type(data).__name__}", field=path)
        if len(data) > self.max_items:
            raise CodecError(f"more than {self.max_items} items", field=path)
        return tuple(self.item.from_wire(v, f"{path}[{i}]") for i, v in enumerate(data))

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, tuple):
            raise CodecError("expected a tuple", field=path)
        if len(value) > self.max_items:
            raise CodecError(f"more than {self.max_items} items", field=path)
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]")

    def writer(self) -> Callable[[tuple[T, ...]], list[Any]]:
        item = self.item.writer()
        if item is None:
            return list
        write = item
        return lambda value: [write(v) for v in value]

    def fast_valid(self) -> Predicate | None:
        item = self.item.fast_valid()
        if item is None:
            return None
        max_items = self.max_items
        return lambda value: (type(value) is tuple and len(value) <= max_items
                              and all(map(item, value)))

    def fast_decoder(self) -> Decoder[tuple[T, ...]] | None:
        item = self.item.fast_decoder()
        if item is None:
            return None
        max_items = self.max_items

        def decode(data: Any) -> tuple[T, ...]:
            if type(data) is list and len(data) <= max_items:
                return tuple(map(item, data))
            raise _Unhandled

        return decode

    def json_writer(self) -> JsonWriter | None:
        item = self.item.json_writer()
        if item is None:
            return None
        write = item
        return lambda value: "[" + ",".join(map(write, value)) + "]"


def wire(kind: WireType[Any], *, name: str | None = None) -> Any:
    """Declare a message field: its wire type and (optionally) its wire/EIP-712 name."""
    return dataclasses.field(metadata={"wire": kind, "name": name})


_SPECS: dict[type, tuple[tuple[str, str, WireType[Any]], ...]] = {}
_STRUCT_TYPES: dict[type, StructType] = {}


def _spec(cls: type[Message]) -> tuple[tuple[str, str, WireType[Any]], ...]:
    """(python attribute, wire name, type) per field, in declaration order."""
    cached = _SPECS.get(cls)
    if cached is not None:
        return cached
    out = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = f.metadata.get("wire")
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name} has no wire type")
        out.append((f.name, f.metadata.get("name") or _camel(f.name), kind))
    _SPECS[cls] = tuple(out)
    return _SPECS[cls]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


X = TypeVar("X")


def _every(items: tuple[X | None, ...]) -> tuple[X, ...] | None:
    """``items`` if none is None (a fast path for every field), else None."""
    return None if None in items else items  # type: ignore[return-value]


class _Plan:
    """A message class's fields and the fast paths built from them, once per class."""

    def __init__(self, cls: type[Message]) -> None:
        spec = _spec(cls)
        attrs = tuple(attr for attr, _, _ in spec)
        self.names = frozenset(wname for _, wname, _ in spec)
        self.writers = tuple((wname, i, kind.writer()) for i, (_, wname, kind) in enumerate(spec))
        self.checks = tuple((attr, kind, f"{cls.__name__}.{wname}") for attr, wname, kind in spec)
        values: Callable[[Message], tuple[Any, ...]] = (
            operator.attrgetter(*attrs) if len(attrs) > 1
            else lambda msg: tuple(getattr(msg, a) for a in attrs))

        self.valid: Callable[[Message], bool] | None = None
        predicates = _every(tuple(kind.fast_valid() for _, _, kind in spec))
        if predicates is not None:
            tests = tuple(zip(predicates, range(len(attrs)), strict=True))

            def valid(msg: Message) -> bool:
                row = values(msg)
                for predicate, i in tests:  # noqa: SIM110 - a loop beats all() on a generator
                    if not predicate(row[i]):
                        return False
                return True

            self.valid = valid

        self.decode: Decoder[Message] | None = None
        decoders = _every(tuple(kind.fast_decoder() for _, _, kind in spec))
        if decoders is not None:
            fields = tuple(zip(attrs, (w for _, w, _ in spec), decoders, strict=True))
            names, count, new = self.names, len(spec), object.__new__

            def decode(data: Any) -> Message:
                if type(data) is not dict or len(data) != count or not names.issuperset(data):
                    raise _Unhandled
                obj = new(cls)
                state = obj.__dict__  # what object.__setattr__ writes on a frozen dataclass
                for attr, wname, decoder in fields:
                    state[attr] = decoder(data[wname])
                return obj

            self.decode = decode

        self._cls = cls
        self.values = values

    @cached_property
    def json(self) -> Callable[[Message], str] | None:
        """Canonical JSON text of a message whose fields were checked: the fields in the order
        of their wire names, as ``canonical_json`` sorts them; built at the first write."""
        spec = sorted(_spec(self._cls), key=lambda field: field[1])
        writers = _every(tuple(kind.json_writer() for _, _, kind in spec))
        if writers is None or not spec:
            return None
        keys = tuple(json.dumps(wname) + ":" for _, wname, _ in spec)
        getter = operator.attrgetter(*(attr for attr, _, _ in spec))
        values: Callable[[Message], tuple[Any, ...]] = (
            getter if len(spec) > 1 else lambda msg: (getter(msg),))
        parts = tuple(zip(keys, writers, strict=True))

        def write(msg: Message) -> str:
            row = zip(parts, values(msg), strict=True)
            return "{" + ",".join([key + write_value(v) for (key, write_value), v in row]) + "}"

        return write

    @cached_property
    def hash(self) -> Callable[[Message], bytes] | None:
        """hashStruct of a message whose fields were checked; built at the first hash."""
        encoders = _every(tuple(kind.hash_encoder() for _, _, kind in _spec(self._cls)))
        if not self._cls.EIP712 or encoders is None:
            return None
        type_hash = _struct_type(self._cls).type_hash
        words = tuple(zip(encoders, range(len(encoders)), strict=True))
        values = self.values

        def hash_struct(msg: Message) -> bytes:
            row = values(msg)
            return keccak256(b"".join([type_hash, *[enc(row[i]) for enc, i in words]]))

        return hash_struct


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[Message]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _Plan(cls)
    return plan


class Message:
    """Base of every wire message. Subclasses are frozen dataclasses with ``wire()`` fields."""

    EIP712: ClassVar[bool] = False
    """True for messages that are signed or hashed as EIP-712 structs."""

    def __post_init__(self) -> None:
        plan = _plan(type(self))
        if plan.valid is not None and plan.valid(self):
            return
        for attr, kind, path in plan.checks:  # names the first offending field
            kind.check(getattr(self, attr), path)

    # -- JSON -----------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        plan = _plan(type(self))
        row = plan.values(self)
        return {wname: row[i] if write is None else write(row[i])
                for wname, i, write in plan.writers}

    def to_json(self) -> bytes:
        """Canonical JSON bytes."""
        return _json_text_of(self).encode()

    @classmethod
    def from_wire(cls, data: Any, path: str | None = None) -> Self:
        decode = _plan(cls).decode
        if decode is not None:
            try:
                return decode(data)  # type: ignore[return-value]
            except Exception:  # not plain valid input: the checked path decides
                pass
        return cls._from_wire_checked(data, path)

    @classmethod
    def _from_wire_checked(cls, data: Any, path: str | None = None) -> Self:
        """``from_wire`` checking each field in turn; its errors name the field."""
        path = path or cls.__name__
        if not isinstance(data, dict):
            raise CodecError(f"expected an object, got {type(data).__name__}", field=path)
        spec = _spec(cls)
        names = {wname for _, wname, _ in spec}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CodecError(f"unknown field {unknown[0]!r}", field=path)
        kwargs = {}
        for attr, wname, kind in spec:
            if wname not in data:
                raise CodecError("missing field", field=f"{path}.{wname}")
            kwargs[attr] = kind.from_wire(data[wname], f"{path}.{wname}")
        obj = cls.__new__(cls)
        for k, v in kwargs.items():  # already validated: skip __post_init__ re-checks
            object.__setattr__(obj, k, v)
        return obj

    @classmethod
    def from_json(cls, raw: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Self:
        return cls.from_wire(parse_json(raw, max_bytes=max_bytes))

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of the wire form: every field required, nothing else allowed."""
        spec = _spec(cls)
        return {
            "title": cls.__name__,
            "type": "object",
            "properties": {wname: kind.schema() for _, wname, kind in spec},
            "required": [wname for _, wname, _ in spec],
            "additionalProperties": False,
        }

    # -- EIP-712 --------------------------------------------------------------------------
    @classmethod
    def struct_type(cls) -> StructType:
        return _struct_type(cls)

    def hash_struct(self) -> bytes:
        """EIP-712 ``hashStruct`` of this message (cached on the instance)."""
        cached: bytes | None = self.__dict__.get("_hash_struct")
        if cached is None:
            fast = _plan(type(self)).hash
            if fast is not None:  # fields were checked at construction: encode directly
                cached = fast(self)
            else:
                cached = self._hash_struct_checked()
            object.__setattr__(self, "_hash_struct", cached)
        return cached

    def _hash_struct_checked(self) -> bytes:
        st = _struct_type(type(self))
        values = {}
        for attr, wname, kind in _spec(type(self)):
            value = getattr(self, attr)
            values[wname] = value.hash_struct() if isinstance(kind, Nested) else value
        return st.hash_struct(values)


def _struct_type(cls: type[Message]) -> StructType:
    cached = _STRUCT_TYPES.get(cls)
    if cached is not None:
        return cached
    if not cls.EIP712:
        raise TypeError(f"{cls.__name__} is not an EIP-712 struct")
    fields = []
    deps = []
    for _, wname, kind in _spec(cls):
        if kind.eip712 is None:
            raise TypeError(f"{cls.__name__}.{wname} has no EIP-712 type")
        fields.append((wname, kind.eip712))
        if isinstance(kind, Nested):
            deps.append(_struct_type(kind.cls))
    _STRUCT_TYPES[cls] = StructType(cls.__name__, tuple(fields), tuple(deps))
    return _STRUCT_TYPES[cls]


# What json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) builds on
# every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    return _CANONICAL.encode(value).encode()


def _reject_constant(name: str) -> Any:
    raise CodecError(f"invalid JSON number {name}")


def _reject_float(text: str) -> Any:
    raise CodecError(f"non-integer number {text} (dnanet uses integers only)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # name the first key seen twice
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise CodecError(f"duplicate field {k!r}")
            seen.add(k)
    return out


# json.loads with these arguments would build a new decoder (and scanner) on every call.
_DECODER = json.JSONDecoder(
    parse_float=_reject_float,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
)

MAX_JSON_DEPTH = 8
"""Objects and lists nest at most this deep (a certificate's reports need 3)."""

_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')


def _nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON parser could recurse deeper than ``limit`` on UTF-8 ``data``.

    An upper bound found without recursion: strings dropped, both bracket kinds treated alike,
    matched pairs peeled innermost first, unmatched openers counted.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # every level opens with one of them: the peeling below would agree
    if b"\\" in data:
        brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    else:
        # Without escapes a string runs from one quote to the next, so the same strings drop
        # out of the (much shorter) brackets and quotes alone; an unterminated last string
        # stays, as the regular expression leaves it.
        quoted = data.translate(None, _NOT_BRACKETS_OR_QUOTES)
        if quoted.count(b'"') % 2 == 0:
            # Every string is closed, so adjacent quotes (an empty string, or one string's end
            # and the next one's start) enclose nothing that stays: drop them first.
            quoted = quoted.replace(b'""', b"")
        parts = quoted.split(b'"')
        brackets = b"".join(parts[::2])
        if len(parts) % 2 == 0:
            brackets += parts[-1]
    brackets = brackets.replace(b"{", b"[").replace(b"}", b"]")
    for peeled in range(limit + 1):
        if b"[]" not in brackets:
            return peeled + brackets.count(b"[") > limit
        brackets = brackets.replace(b"[]", b"")
    return True


def _json_text(raw: bytes | str, max_bytes: int | None, max_depth: int) -> str:
    """``raw`` as text, refused before any parsing if it is too large, not UTF-8, or nested
    deeper than ``max_depth``. Raises CodecError."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise CodecError(f"message of {len(raw)} bytes exceeds the limit of {max_bytes}")
    # Decode UTF-8 here: json.loads would guess UTF-16/32 from null bytes.
    if isinstance(raw, bytes):
        data = raw
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise CodecError(f"invalid JSON: not UTF-8: {exc}") from None
    else:
        text, data = raw, raw.encode("utf-8", "surrogatepass")
    # Verify the nesting is shallow before parsing: eth_account raises the recursion limit to
    # 100000 at import, and json's C parser then overflows the C stack (a segfault) long before.
    if _nesting_exceeds(data, max_depth):
        raise CodecError(f"invalid JSON: nested deeper than {max_depth} levels")
    return text


def parse_json(raw: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Parse JSON strictly: size-limited, UTF-8, shallow, no floats, NaN or duplicate keys."""
    text = _json_text(raw, max_bytes, MAX_JSON_DEPTH)
    try:
        if text.startswith("\ufeff"):  # what json.loads refuses before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an int over 4300 digits
        raise CodecError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise CodecError("invalid JSON: nested too deeply") from None


MAX_FOREIGN_JSON_DEPTH = 32
"""How deep JSON that is not a dnanet message may nest (OpenAI requests and answers, other
services' replies)."""


def load_json(raw: bytes | str, *, max_bytes: int | None = MAX_MESSAGE_BYTES,
              max_depth: int = MAX_FOREIGN_JSON_DEPTH) -> Any:
    """Parse JSON that is not a dnanet message as ``json.loads`` does (floats, duplicate keys:
    the last wins) from anyone: at most ``max_bytes`` (None: the caller bounded it), UTF-8,
    and at most ``max_depth`` deep, refused before the parser could recurse (see
    ``parse_json``: a deep document would crash the process). Raises CodecError."""
    text = _json_text(raw, max_bytes, max_depth)
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise CodecError("invalid JSON: nested too deeply") from None


__all__ = [
    "MAX_FOREIGN_JSON_DEPTH",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_BYTES",
    "Address",
    "Bool",
    "Bytes",
    "FixedBytes",
    "ListOf",
    "Message",
    "Nested",
    "Text",
    "Uint",
    "canonical_json",
    "load_json",
    "parse_json",
    "wire",
]
