"""The one exception tree of dnanet.

    DnanetError                     base of everything this package raises on purpose
    ├── ConfigError                 bad preset, parameter, option or file
    ├── CodecError                  a wire message is malformed (names the field)
    ├── CryptoError                 keys, keystores and signatures
    │   ├── KeystoreError           cannot read, decrypt or write a keystore file
    │   ├── SignatureError          missing, malformed, high-s or wrong signer
    │   └── InvalidProof            an ECVRF proof does not verify
    ├── ProtocolError               a message is well-formed but breaks a protocol rule
    │   ├── ScheduleError           wrong epoch, round, or not assigned
    │   ├── ChallengeError          a challenge answer is wrong or inconsistent
    │   ├── ScoringError            measurements out of bounds, score mismatch
    │   ├── QuorumError             not enough distinct valid member signatures
    │   └── RollupError             inconsistent rollup inputs
    ├── ChainError                  the chain refused or could not be reached
    ├── NodeUnreachable             a node's endpoint could not be reached or failed in transport
    ├── PeerUnreachable             another mixer or the Validator could not be reached
    └── Unavailable                 a daemon cannot serve now through a fault of its own (503)

Every error carries a message a user can act on; `CodecError` and `ProtocolError`
also carry the name of the offending field in `.field` where there is one.
"""

from __future__ import annotations


class DnanetError(Exception):
    """Base of every error dnanet raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.detail = message
        """The message without the field's name (``str(exc)`` is ``"field: detail"``)."""
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(DnanetError):
    """A preset, parameter, option or configuration file is invalid."""


class CodecError(DnanetError):
    """A wire message is malformed: unknown field, wrong type, out of range, too large."""


class CryptoError(DnanetError):
    """A key, keystore or signature problem."""


class KeystoreError(CryptoError):
    """A keystore file cannot be read, decrypted or written."""


class SignatureError(CryptoError):
    """A signature is missing, malformed, high-s, or from the wrong signer."""


class InvalidProof(CryptoError):
    """An ECVRF proof or public key is invalid."""


class ProtocolError(DnanetError):
    """A well-formed message breaks a protocol rule."""


class ScheduleError(ProtocolError):
    """Wrong epoch or round, or a node not assigned to the mixer."""


class ChallengeError(ProtocolError):
    """A challenge answer is wrong or inconsistent with its commitment."""


class ScoringError(ProtocolError):
    """Measurements out of protocol bounds, or a score that does not recompute."""


class QuorumError(ProtocolError):
    """A certificate lacks a quorum of distinct, valid member signatures."""


class RollupError(ProtocolError):
    """Rollup inputs are inconsistent."""


class ChainError(DnanetError):
    """The chain refused a transaction or could not be reached."""


class NodeUnreachable(DnanetError):
    """A node's endpoint could not be reached or answered with a transport error."""


class PeerUnreachable(DnanetError):
    """Another mixer or the Validator could not be reached."""


class Unavailable(DnanetError):
    """A daemon cannot serve a request now through a fault of its own (a dead worker process,
    a failed disk, too much held at once), not the request's: retry later (HTTP 503)."""
