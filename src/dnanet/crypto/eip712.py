"""EIP-712 typed structured data: struct hashing, domain separation, signing and recovery.

Every signed dnanet message is an EIP-712 struct under the domain
``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`` with
``name="dnanet"``, ``version="1"``. Signatures are 65 bytes ``r || s || v`` with ``v`` in
{27, 28}; high-s signatures are rejected (EIP-2), exactly as the contracts do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import coincurve

# libsecp256k1 through coincurve's cffi binding (coincurve >= 20): its object API derives
# keys and wraps results on every call, a third of a recovery's cost, most of a signature's.
from coincurve._libsecp256k1 import ffi as _ffi
from coincurve._libsecp256k1 import lib as _lib
from coincurve.context import GLOBAL_CONTEXT as _CONTEXT

from dnanet.crypto.hashing import keccak256
from dnanet.errors import CryptoError, SignatureError

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
SIGNATURE_LENGTH = 65

DOMAIN_NAME = "dnanet"
DOMAIN_VERSION = "1"

_ATOMIC = {"address", "bool", "bytes32", "string", "bytes"}


def _is_uint(type_name: str) -> bool:
    return type_name.startswith("uint") and type_name[4:].isdigit()


@dataclass(frozen=True)
class StructType:
    """An EIP-712 struct type: a name and ordered ``(field, type)`` pairs.

    Field types are ``uintN``, ``address``, ``bool``, ``bytes32``, ``bytes``, ``string``, or the
    name of another struct given in ``dependencies``.
    """

    name: str
    fields: tuple[tuple[str, str], ...]
    dependencies: tuple[StructType, ...] = field(default=())

    def __post_init__(self) -> None:
        known = {dep.name for dep in self.dependencies}
        for fname, ftype in self.fields:
            if not (ftype in _ATOMIC or _is_uint(ftype) or ftype in known):
                raise CryptoError(f"unsupported EIP-712 type {ftype!r}", field=fname)

    @cached_property
    def encode_type(self) -> str:
        """``Name(type1 field1,...)`` followed by referenced struct types in name order."""
        deps: dict[str, StructType] = {}

        def collect(struct: StructType) -> None:
            for dep in struct.dependencies:
                if dep.name not in deps:
                    deps[dep.name] = dep
                    collect(dep)

        collect(self)
        deps.pop(self.name, None)
        return _own_type(self) + "".join(_own_type(deps[name]) for name in sorted(deps))

    @cached_property
    def type_hash(self) -> bytes:
        return keccak256(self.encode_type.encode())

    @cached_property
    def _encoders(self) -> tuple[tuple[str, Callable[[Any], bytes]], ...]:
        # One small checking encoder per field, chosen once per struct type.
        deps = {dep.name: dep for dep in self.dependencies}
        return tuple((fname, _encoder(ftype, fname, deps)) for fname, ftype in self.fields)

    def hash_struct(self, values: Mapping[str, Any]) -> bytes:
        """``keccak256(typeHash || encodeData(values))``.

        Values are checked (CryptoError naming the field); a nested struct's value may be its
        mapping or its already computed 32-byte hashStruct.
        """
        parts = [self.type_hash]
        parts += [encode(values[fname]) for fname, encode in self._encoders]
        return keccak256(b"".join(parts))


def _own_type(struct: StructType) -> str:
    return f"{struct.name}(" + ",".join(f"{t} {n}" for n, t in struct.fields) + ")"


_ZERO12 = bytes(12)
_WORD_FALSE = bytes(32)
_WORD_TRUE = (1).to_bytes(32, "big")


def _encoder(ftype: str, fname: str, deps: Mapping[str, StructType]) -> Callable[[Any], bytes]:
    """The 32-byte ``encodeData`` word of one field of type ``ftype``, checking the value."""
    if _is_uint(ftype):

        def encode_uint(value: Any) -> bytes:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CryptoError("expected a non-negative integer", field=fname)
            return value.to_bytes(32, "big")

        return encode_uint
    if ftype == "address":
        return lambda value: _ZERO12 + address_to_bytes(value)
    if ftype == "bytes32":

        def encode_bytes32(value: Any) -> bytes:
            if not isinstance(value, bytes) or len(value) != 32:
                raise CryptoError("expected 32 bytes", field=fname)
            return value

        return encode_bytes32
    if ftype == "bool":
        return lambda value: _WORD_TRUE if value else _WORD_FALSE
    if ftype == "bytes":
        return lambda value: keccak256(bytes(value))
    if ftype == "string":
        return lambda value: keccak256(str(value).encode())
    struct = deps[ftype]

    def encode_struct(value: Any) -> bytes:
        if isinstance(value, bytes) and len(value) == 32:  # an already computed hashStruct
            return value
        return struct.hash_struct(value)

    return encode_struct


EIP712_DOMAIN = StructType(
    "EIP712Domain",
    (
        ("name", "string"),
        ("version", "string"),
        ("chainId", "uint256"),
        ("verifyingContract", "address"),
    ),
)


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain of one dnanet network (one chain, one MixerSet contract)."""

    chain_id: int
    verifying_contract: str
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    @cached_property
    def separator(self) -> bytes:
        return EIP712_DOMAIN.hash_struct(
            {
                "name": self.name,
                "version": self.version,
                "chainId": self.chain_id,
                "verifyingContract": self.verifying_contract,
            }
        )

    @cached_property
    def _digest_prefix(self) -> bytes:
        return b"\x19\x01" + self.separator

    def digest(self, struct_hash: bytes) -> bytes:
        """The 32-byte digest that is signed: ``keccak256(0x1901 || separator || structHash)``."""
        return keccak256(self._digest_prefix + struct_hash)


def address_to_bytes(address: Any) -> bytes:
    """20 bytes of a ``0x``-prefixed hex address (any case)."""
    if isinstance(address, bytes) and len(address) == 20:
        return address
    if not isinstance(address, str) or len(address) != 42 or address[:2] not in ("0x", "0X"):
        raise CryptoError(f"not an address: {address!r}")
    # bytes.fromhex skips whitespace, which would yield fewer than 20 bytes.
    if not (address[2:].isascii() and address[2:].isalnum()):
        raise CryptoError(f"not an address: {address!r}")
    try:
        return bytes.fromhex(address[2:])
    except ValueError:
        raise CryptoError(f"not an address: {address!r}") from None


def normalize_address(address: str) -> str:
    """Lower-case ``0x`` form of an address; raises CryptoError if malformed."""
    return "0x" + address_to_bytes(address).hex()


def to_checksum_address(address: str) -> str:
    """EIP-55 mixed-case checksum form of an address."""
    hexaddr = address_to_bytes(address).hex()
    hashed = keccak256(hexaddr.encode()).hex()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(hashed[i], 16) >= 8 else c for i, c in enumerate(hexaddr)
    )


def public_key_to_address(public_key: coincurve.PublicKey) -> str:
    return _uncompressed_key_to_address(public_key.format(compressed=False))


def _uncompressed_key_to_address(public_key: bytes) -> str:
    """The address of a 65-byte uncompressed public key: the last 20 bytes of its keccak."""
    return "0x" + keccak256(public_key[1:])[12:].hex()


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; returns 65 bytes ``r || s || v`` (v in {27, 28}, low s)."""
    if len(digest) != 32:
        raise CryptoError("a signed digest must be 32 bytes")
    # Straight to libsecp256k1 (RFC 6979 nonces): coincurve.PrivateKey would first derive
    # the public key, two more curve multiplications per signature.
    ctx = _CONTEXT.ctx
    signature = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if len(private_key) != 32 or not _lib.secp256k1_ecdsa_sign_recoverable(
            ctx, signature, digest, private_key, _ffi.NULL, _ffi.NULL):
        raise CryptoError("not a valid secp256k1 private key (zero or >= n)")
    compact = _ffi.new("unsigned char[64]")
    recovery_id = _ffi.new("int *")
    _lib.secp256k1_ecdsa_recoverable_signature_serialize_compact(ctx, compact, recovery_id,
                                                                 signature)
    return bytes(_ffi.buffer(compact, 64)) + bytes([recovery_id[0] + 27])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The lower-case address that signed ``digest``; raises SignatureError if invalid.

    Rejects: a missing or wrong-length signature, ``v`` not in {27, 28}, ``r`` or ``s`` out of
    range, high ``s`` (malleable), and signatures from which no key can be recovered.
    """
    # Verify the signature is present and well-formed before any curve math.
    if not signature:
        raise SignatureError("signature is missing")
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N):
        raise SignatureError("signature r is out of range")
    if not (0 < s <= SECP256K1_HALF_N):
        raise SignatureError("signature s is zero or high (malleable): rejected")
    if len(digest) != 32:
        raise SignatureError("a signed digest must be 32 bytes")
    return _uncompressed_key_to_address(_recover_public_key(digest, signature[:64], v - 27))


def _recover_public_key(digest: bytes, compact: bytes, recovery_id: int) -> bytes:
    """The uncompressed (65-byte) public key recovered from a checked compact signature."""
    ctx = _CONTEXT.ctx
    parsed = _ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if not _lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, parsed, compact,
                                                                     recovery_id):
        raise SignatureError("signature does not recover a key: it does not parse")
    public_key = _ffi.new("secp256k1_pubkey *")
    if not _lib.secp256k1_ecdsa_recover(ctx, public_key, parsed, digest):
        raise SignatureError("signature does not recover a key")
    out = _ffi.new("unsigned char[65]")
    size = _ffi.new("size_t *", 65)
    _lib.secp256k1_ec_pubkey_serialize(ctx, out, size, public_key, _lib.SECP256K1_EC_UNCOMPRESSED)
    return bytes(_ffi.buffer(out, 65))


def verify_signer(digest: bytes, signature: bytes, expected: str) -> None:
    """Raise SignatureError unless ``signature`` over ``digest`` is by ``expected``."""
    signer = recover_signer(digest, signature)
    if signer != normalize_address(expected):
        raise SignatureError(f"signed by {signer}, expected {normalize_address(expected)}")


def sign_typed(private_key: bytes, domain: Domain, struct_hash: bytes) -> bytes:
    """Sign the EIP-712 digest of an already computed struct hash."""
    return sign_digest(private_key, domain.digest(struct_hash))


def recover_typed(domain: Domain, struct_hash: bytes, signature: bytes) -> str:
    """Recover the signer of an EIP-712 struct hash under ``domain``."""
    return recover_signer(domain.digest(struct_hash), signature)



__all__ = [
    "EIP712_DOMAIN",
    "SECP256K1_HALF_N",
    "SECP256K1_N",
    "Domain",
    "StructType",
    "address_to_bytes",
    "normalize_address",
    "recover_signer",
    "recover_typed",
    "sign_digest",
    "sign_typed",
    "to_checksum_address",
    "verify_signer",
]
