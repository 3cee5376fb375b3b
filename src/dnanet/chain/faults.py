"""Chain faults: the errors the chain client raises, and how provider exceptions map to them.

    ChainError (dnanet.errors)
    ├── ChainUnavailable      the RPC endpoint cannot be reached or keeps failing
    ├── TransactionReverted   the contract rejected the call; ``.reason`` is its revert string
    ├── TransactionRejected   the node refused the transaction (e.g. insufficient funds)
    ├── NonceConflict         the sender's nonce kept clashing with other transactions
    ├── Underpriced           the fee stayed below what the node accepts after every bump
    ├── ReceiptTimeout        no receipt within the wait; ``.tx_hash`` may still be mined
    ├── ReorgDetected         a recent block holding our transaction was replaced
    └── SettlementConflict    an epoch is already settled with a different root

`classify` turns any exception raised by web3, requests or eth-tester into one of these, so
that the retry loop in ``dnanet.chain.transactions`` can decide: transient faults are retried
with backoff, a revert never is.
"""

from __future__ import annotations

import enum
import re

from dnanet.errors import ChainError


class ChainUnavailable(ChainError):
    """The chain's RPC endpoint cannot be reached (refused, timed out, 5xx) or keeps failing."""


class TransactionReverted(ChainError):
    """The contract reverted; ``reason`` is its revert string ("" when it gave none)."""

    def __init__(self, reason: str, *, action: str, tx_hash: str | None = None) -> None:
        self.reason = reason
        self.action = action
        self.tx_hash = tx_hash
        where = f" in transaction {tx_hash}" if tx_hash else ""
        shown = repr(reason) if reason else "no reason given"
        super().__init__(f"{action} reverted{where}: {shown}")


class TransactionRejected(ChainError):
    """The node refused to accept the transaction for a reason retrying will not fix."""


class NonceConflict(ChainError):
    """The sender's nonce kept clashing (another process sends from the same account?)."""


class Underpriced(ChainError):
    """The node kept rejecting the fee as too low, even after the allowed bumps."""


class ReceiptTimeout(ChainError):
    """No receipt arrived in time; the transaction may still be mined later."""

    def __init__(self, message: str, *, tx_hash: str) -> None:
        self.tx_hash = tx_hash
        super().__init__(message)


class ReorgDetected(ChainError):
    """A block that held one of our transactions left the canonical chain."""


class SettlementConflict(ChainError):
    """An epoch is already settled on chain with another root than the one being submitted."""


class Fault(enum.Enum):
    """What kind of failure an exception is, for the retry loop."""

    UNAVAILABLE = "unavailable"
    """Transport failure or overload: retry the same request after a pause."""
    REVERTED = "reverted"
    """The EVM reverted: never retry."""
    NONCE_LOW = "nonce_low"
    """The nonce is used already: find out by whom, then re-read it."""
    NONCE_HIGH = "nonce_high"
    """A gap before our nonce: re-read it."""
    UNDERPRICED = "underpriced"
    """Fee too low: bump it and re-sign with the same nonce."""
    ALREADY_KNOWN = "already_known"
    """The node holds this very transaction already: not an error."""
    REJECTED = "rejected"
    """Anything else the node refused: do not retry."""


_NONCE_LOW = re.compile(
    r"nonce too low|nonce is too low|oldnonce|invalid transaction nonce|nonce has already been",
    re.I
)
_NONCE_HIGH = re.compile(r"nonce too high|noncetoohigh|nonce gap", re.I)
_UNDERPRICED = re.compile(
    r"underpriced|fee too low|feecaptoolow|less than block base fee|gas price too low"
    r"|max fee per gas less than|lower than block.s base fee|insufficient fee|fee cap", re.I
)
_ALREADY_KNOWN = re.compile(
    r"already known|known transaction|already imported|alreadyknown|already exists"
    r"|already in (the )?(mem)?pool", re.I
)
_UNAVAILABLE = re.compile(
    r"timed? ?out|too many requests|rate limit|service unavailable|bad gateway"
    r"|gateway time|connection (refused|reset|aborted)|temporarily unavailable", re.I
)
_REVERT_PREFIX = re.compile(r"^\s*(execution reverted|VM Exception while processing transaction"
                            r"|reverted)\s*:?\s*(revert)?\s*", re.I)


def revert_reason(message: object) -> str:
    """The bare revert string inside a provider's revert message."""
    text = str(message if message is not None else "")
    return _REVERT_PREFIX.sub("", text, count=1).strip().strip("'\"")


def _message(exc: BaseException) -> str:
    """The most specific text an exception carries (RPC error messages hide in dicts)."""
    parts = [str(a) for a in exc.args if isinstance(a, str | dict | bytes)]
    for attr in ("message", "user_message"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            parts.append(value)
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict):
        error = response.get("error")
        if isinstance(error, dict):
            parts.append(str(error.get("message", "")))
            parts.append(str(error.get("data", "")))
    return " | ".join(p for p in parts if p) or type(exc).__name__


def classify(exc: BaseException) -> tuple[Fault, str]:
    """The fault kind of ``exc`` and a one-line description of it."""
    import requests
    from web3 import exceptions as w3x

    reverts: tuple[type[BaseException], ...] = (w3x.ContractLogicError,)
    try:
        from eth_tester.exceptions import TransactionFailed
    except ImportError:  # pragma: no cover - eth-tester is optional with an RPC backend
        pass
    else:
        reverts = (*reverts, TransactionFailed)
    transport = (
        requests.ConnectionError,
        requests.Timeout,
        w3x.ProviderConnectionError,
        w3x.RequestTimedOut,
        w3x.TooManyRequests,
        ConnectionError,
        TimeoutError,
    )

    text = _message(exc)
    if isinstance(exc, ChainUnavailable):
        return Fault.UNAVAILABLE, str(exc)
    if isinstance(exc, reverts):
        return Fault.REVERTED, revert_reason(getattr(exc, "message", None) or text)
    if isinstance(exc, transport):
        return Fault.UNAVAILABLE, f"{type(exc).__name__}: {text}"
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status in (408, 429):
            return Fault.UNAVAILABLE, f"HTTP {status}: {text}"
        return Fault.REJECTED, f"HTTP {status}: {text}"
    # RPC errors (Web3RPCError), py-evm's ValidationError and the like: only the text tells
    for pattern, fault in (
        (_ALREADY_KNOWN, Fault.ALREADY_KNOWN),
        (_NONCE_LOW, Fault.NONCE_LOW),
        (_NONCE_HIGH, Fault.NONCE_HIGH),
        (_UNDERPRICED, Fault.UNDERPRICED),
        (_UNAVAILABLE, Fault.UNAVAILABLE),
    ):
        if pattern.search(text):
            return fault, text
    if isinstance(exc, w3x.Web3RPCError) and re.search(r"revert", text, re.I):
        return Fault.REVERTED, revert_reason(text)
    if isinstance(exc, OSError):
        return Fault.UNAVAILABLE, f"{type(exc).__name__}: {text}"
    return Fault.REJECTED, f"{type(exc).__name__}: {text}"


__all__ = [
    "ChainUnavailable",
    "Fault",
    "NonceConflict",
    "ReceiptTimeout",
    "ReorgDetected",
    "SettlementConflict",
    "TransactionRejected",
    "TransactionReverted",
    "Underpriced",
    "classify",
    "revert_reason",
]
