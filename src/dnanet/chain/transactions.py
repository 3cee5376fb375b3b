"""Sending transactions: sign locally, retry transient faults, wait, and never double-send.

One `TransactionSender` per sending identity. It signs with the identity's key (eth_account),
so the same code runs on the embedded EVM, anvil and a public RPC endpoint, none of which
needs to hold our keys. Guarantees:

- A revert is never retried: the gas estimate replays the call first and raises
  `TransactionReverted` with the contract's reason before anything is broadcast.
- A transport fault re-sends the *same* signed bytes (same hash), so a send whose answer was
  lost cannot become two transactions; "already known" counts as sent.
- Every variant of one send (fee bumps after "underpriced") reuses one nonce, so at most one
  of them can ever be mined.
- A fresh nonce is taken only once the old one is spent by a transaction that is not ours
  and the caller's ``already_done`` check says the work is still undone.
- Sends from one sender are serialized, so concurrent callers never race for a nonce.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dnanet.chain.faults import (
    ChainUnavailable,
    Fault,
    NonceConflict,
    ReceiptTimeout,
    ReorgDetected,
    TransactionRejected,
    TransactionReverted,
    Underpriced,
    classify,
)
from dnanet.crypto.eip712 import to_checksum_address
from dnanet.crypto.keys import Identity
from dnanet.errors import ConfigError

T = TypeVar("T")
_UNKNOWN: Any = object()
"""A receipt lookup the node could not answer (``TransactionSender._get_receipt``)."""
DEFAULT_PRIORITY_FEE = 10**9  # 1 gwei, when the node cannot suggest one


@dataclass(frozen=True)
class SendPolicy:
    """How hard to try. The defaults suit a dev chain; raise ``confirmations`` on a real one."""

    attempts: int = 6
    """Tries per request (reads and sends) before giving up on a transient fault."""
    backoff_s: float = 0.2
    """First pause after a transient fault; doubles after each further one."""
    max_backoff_s: float = 5.0
    receipt_timeout_s: float = 120.0
    poll_interval_s: float = 0.05
    confirmations: int = 0
    """Blocks on top of a receipt's block before it counts; then the block hash is re-checked
    to detect a reorg. 0 on dev chains (no reorgs)."""
    fee_bump_percent: int = 25
    """Fee increase after "underpriced" (nodes want >= 10% to replace a pending tx)."""
    gas_margin_percent: int = 20
    """Gas limit above the estimate."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("at least one attempt", field="attempts")
        if min(self.backoff_s, self.max_backoff_s, self.receipt_timeout_s) < 0:
            raise ConfigError("times must be non-negative", field="backoff_s")
        if self.poll_interval_s <= 0:
            raise ConfigError("the poll interval must be positive", field="poll_interval_s")
        if self.confirmations < 0:
            raise ConfigError("confirmations must be >= 0", field="confirmations")
        if self.fee_bump_percent < 10:
            raise ConfigError("nodes accept a replacement only with >= 10% more fee",
                              field="fee_bump_percent")

    def delay(self, attempt: int) -> float:
        """The pause after the ``attempt``-th failure (0-based): exponential, capped."""
        return float(min(self.max_backoff_s, self.backoff_s * (2**attempt)))


@dataclass(frozen=True)
class TxReceipt:
    """A mined transaction that succeeded."""

    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int
    contract_address: str | None
    logs: tuple[Any, ...]


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    return text if text.startswith("0x") else "0x" + text


class RequestRunner:
    """Runs read requests with retry and backoff on transient faults; maps every fault."""

    def __init__(
        self, policy: SendPolicy, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.policy = policy
        self.sleep = sleep

    def run(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried on transient faults; ChainError subclasses on failure."""
        for attempt in range(self.policy.attempts):
            try:
                return fn()
            except Exception as exc:
                fault, detail = classify(exc)
                if fault is Fault.REVERTED:
                    raise TransactionReverted(detail, action=what) from None
                if fault is not Fault.UNAVAILABLE:
                    raise TransactionRejected(f"{what}: the node refused: {detail}") from None
                if attempt + 1 == self.policy.attempts:
                    raise ChainUnavailable(
                        f"{what}: the chain did not answer after {self.policy.attempts} "
                        f"tries: {detail}"
                    ) from None
                self.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


class TransactionSender:
    """Signs and sends transactions from one identity; see the module docstring."""

    def __init__(
        self,
        w3: Any,
        identity: Identity,
        policy: SendPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.w3 = w3
        self.identity = identity
        self.policy = policy or SendPolicy()
        self.requests = RequestRunner(self.policy, sleep=sleep)
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._chain_id: int | None = None
        self.address = to_checksum_address(identity.address)

    # ------------------------------------------------------------------ helpers

    def _read(self, fn: Callable[[], T], what: str) -> T:
        return self.requests.run(fn, what)

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._read(lambda: self.w3.eth.chain_id, "read the chain id"))
        return self._chain_id

    def _nonce(self) -> int:
        return int(self._read(
            lambda: self.w3.eth.get_transaction_count(self.address, "pending"), "read the nonce"
        ))

    def _fees(self) -> dict[str, int]:
        return suggest_fees(self.w3, self.requests)

    def _bump(self, fees: dict[str, int]) -> dict[str, int]:
        pct = 100 + self.policy.fee_bump_percent
        return {key: value * pct // 100 + 1 for key, value in fees.items()}

    # ------------------------------------------------------------------ send

    def send(
        self,
        *,
        to: str | None,
        data: bytes,
        action: str,
        value: int = 0,
        already_done: Callable[[], bool] | None = None,
    ) -> TxReceipt | None:
        """Send one transaction and wait for its successful receipt.

        ``to=None`` deploys ``data`` as init code. ``already_done``, when given, is asked
        before anything is signed and again whenever the outcome of an earlier attempt is
        unknown; if it says True, nothing (more) is sent and None is returned.
        Raises TransactionReverted (never retried), ChainUnavailable, NonceConflict,
        Underpriced, TransactionRejected, ReceiptTimeout or ReorgDetected.
        """
        with self._lock:
            if already_done is not None and already_done():
                return None
            return self._send_locked(to, data, action, value, already_done)

    def _send_locked(
        self,
        to: str | None,
        data: bytes,
        action: str,
        value: int,
        already_done: Callable[[], bool] | None,
    ) -> TxReceipt | None:
        call: dict[str, Any] = {"from": self.address, "data": _hex(data), "value": value}
        if to is not None:
            call["to"] = to_checksum_address(to)
        # Verify the call succeeds now: a revert surfaces here, with its reason, unsent.
        estimate = int(self._read(lambda: self.w3.eth.estimate_gas(call), action))
        gas = compute_gas_limit(estimate, self.policy)
        chain_id = self.chain_id()
        nonce = self._nonce()
        fees = self._fees()
        sent: list[str] = []
        last_fault = Fault.UNAVAILABLE
        last_detail = ""
        for attempt in range(self.policy.attempts):
            tx = {**call, "gas": gas, "nonce": nonce, "chainId": chain_id, **fees}
            tx.pop("from")
            signed = self._sign(tx)
            tx_hash = _hex(signed.hash)
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception as exc:
                fault, detail = classify(exc)
            else:
                fault, detail = Fault.ALREADY_KNOWN, ""
            if fault is Fault.ALREADY_KNOWN:
                if tx_hash not in sent:
                    sent.append(tx_hash)
                return self._wait(sent, nonce, action, already_done)
            last_fault, last_detail = fault, detail
            if fault is Fault.REVERTED:
                raise TransactionReverted(detail, action=action)
            if fault is Fault.REJECTED:
                raise TransactionRejected(f"{action}: the node refused the transaction: {detail}")
            if fault is Fault.UNAVAILABLE:
                # the node may have taken it before the answer was lost: look for it later
                if tx_hash not in sent:
                    sent.append(tx_hash)
            elif fault is Fault.UNDERPRICED:
                fees = self._bump(fees)
            elif fault is Fault.NONCE_HIGH:
                nonce = self._nonce()
            elif fault is Fault.NONCE_LOW:
                mined = self._find_receipt(sent)
                if mined is _UNKNOWN:  # one of ours may have taken the nonce: wait and see
                    return self._wait(sent, nonce, action, already_done)
                if mined is not None:
                    return self._finish(mined, action)
                if already_done is not None and already_done():
                    return None
                nonce = self._nonce()
            if attempt + 1 < self.policy.attempts:
                self._sleep(self.policy.delay(attempt))
        mined = self._find_receipt(sent)
        if mined is not None and mined is not _UNKNOWN:  # an answer was lost, but it made it
            return self._finish(mined, action)
        raise self._give_up(action, last_fault, last_detail, sent)

    def _give_up(self, action: str, fault: Fault, detail: str, sent: list[str]) -> Exception:
        tries = self.policy.attempts
        if fault in (Fault.NONCE_LOW, Fault.NONCE_HIGH):
            return NonceConflict(
                f"{action}: the nonce of {self.address} kept clashing after {tries} tries "
                f"({detail}); is another process sending from this account?"
            )
        if fault is Fault.UNDERPRICED:
            return Underpriced(
                f"{action}: the node still rejects the fee after {tries} bumps of "
                f"{self.policy.fee_bump_percent}% ({detail})"
            )
        maybe = f"; {sent[-1]} may still be mined" if sent else ""
        return ChainUnavailable(
            f"{action}: could not hand the transaction to the chain after {tries} tries: "
            f"{detail}{maybe}"
        )

    def _sign(self, tx: dict[str, Any]) -> Any:
        from eth_account import Account

        return Account.sign_transaction(tx, self.identity.private_key)

    # ------------------------------------------------------------------ receipts

    def _get_receipt(self, tx_hash: str) -> Any | None:
        """The receipt, None if the node has none, or ``_UNKNOWN`` if it could not answer."""
        from web3.exceptions import TransactionNotFound

        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        except Exception as exc:
            fault, _ = classify(exc)
            if fault is Fault.UNAVAILABLE:
                return _UNKNOWN  # keep polling until the timeout
            # eth-tester raises its own "unknown transaction" error
            if "not found" in str(exc).lower() or "unknown" in str(exc).lower():
                return None
            raise

    def _find_receipt(self, hashes: list[str]) -> Any | None:
        """The first of ``hashes`` with a receipt; None if none has one, or ``_UNKNOWN`` if
        none has one as far as the node answered and some lookup failed."""
        unknown = False
        for tx_hash in hashes:
            receipt = self._get_receipt(tx_hash)
            if receipt is _UNKNOWN:
                unknown = True
            elif receipt is not None:
                return receipt
        return _UNKNOWN if unknown else None

    def _wait(
        self,
        hashes: list[str],
        nonce: int,
        action: str,
        already_done: Callable[[], bool] | None,
    ) -> TxReceipt | None:
        deadline = self._clock() + self.policy.receipt_timeout_s
        while True:
            receipt = self._find_receipt(hashes)
            if receipt is not None and receipt is not _UNKNOWN:
                return self._finish(receipt, action)
            if self._nonce_spent_by_other(nonce, hashes):
                if already_done is not None and already_done():
                    return None
                raise NonceConflict(
                    f"{action}: nonce {nonce} of {self.address} was used by another "
                    "transaction; is another process sending from this account?"
                )
            if self._clock() >= deadline:
                raise ReceiptTimeout(
                    f"{action}: no receipt for {hashes[-1]} after "
                    f"{self.policy.receipt_timeout_s:g} s; it may still be mined",
                    tx_hash=hashes[-1],
                )
            self._sleep(self.policy.poll_interval_s)

    def _nonce_spent_by_other(self, nonce: int, hashes: list[str]) -> bool:
        try:
            mined = int(self.w3.eth.get_transaction_count(self.address, "latest"))
        except Exception:
            return False
        # Our nonce is consumed; give our own receipt a last chance to show up first. Only a
        # definite "no receipt" for every one of our hashes means another sender took it: a
        # lookup that failed (a loaded node timing out) proves nothing.
        return mined > nonce and self._find_receipt(hashes) is None

    def _finish(self, receipt: Any, action: str) -> TxReceipt:
        tx_hash = _hex(receipt["transactionHash"])
        if int(receipt["status"]) != 1:
            raise TransactionReverted(
                self._replay_reason(tx_hash, int(receipt["blockNumber"])),
                action=action,
                tx_hash=tx_hash,
            )
        result = TxReceipt(
            tx_hash=tx_hash,
            block_number=int(receipt["blockNumber"]),
            block_hash=_hex(receipt["blockHash"]),
            gas_used=int(receipt["gasUsed"]),
            contract_address=(
                str(receipt["contractAddress"]).lower() if receipt.get("contractAddress")
                else None
            ),
            logs=tuple(receipt.get("logs", ())),
        )
        if self.policy.confirmations:
            self._confirm(result, action)
        return result

    def _replay_reason(self, tx_hash: str, block_number: int) -> str:
        """The revert reason of a mined, failed transaction (replayed on its parent state)."""
        try:
            tx = self.w3.eth.get_transaction(tx_hash)
            call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "value": tx["value"]}
            self.w3.eth.call(call, max(block_number - 1, 0))
        except Exception as exc:
            fault, detail = classify(exc)
            if fault is Fault.REVERTED:
                return detail
        return ""

    def _confirm(self, receipt: TxReceipt, action: str) -> None:
        """Wait for ``confirmations`` blocks, then check the receipt's block is still there."""
        target = receipt.block_number + self.policy.confirmations
        deadline = self._clock() + self.policy.receipt_timeout_s
        while int(self._read(lambda: self.w3.eth.block_number, "read the block number")) < target:
            if self._clock() >= deadline:
                raise ReceiptTimeout(
                    f"{action}: {receipt.tx_hash} did not reach {self.policy.confirmations} "
                    f"confirmations in {self.policy.receipt_timeout_s:g} s",
                    tx_hash=receipt.tx_hash,
                )
            self._sleep(self.policy.poll_interval_s)
        check_still_canonical(self.w3, receipt, action)


def compute_gas_limit(estimate: int, policy: SendPolicy) -> int:
    """The gas limit sent for a call whose gas estimate is ``estimate`` (the policy's margin)."""
    return estimate * (100 + policy.gas_margin_percent) // 100


def suggest_fees(w3: Any, requests: RequestRunner) -> dict[str, int]:
    """The fee fields a transaction is signed with now: EIP-1559 ``maxFeePerGas`` (twice the
    base fee plus the tip, so it survives a few full blocks) and ``maxPriorityFeePerGas``, or
    a legacy ``gasPrice`` on a chain without a base fee."""
    block = requests.run(lambda: w3.eth.get_block("latest"), "read the latest block")
    base = block.get("baseFeePerGas")
    if base is None:
        return {"gasPrice": int(requests.run(lambda: w3.eth.gas_price, "read the gas price"))}
    try:
        tip = int(w3.eth.max_priority_fee)
    except Exception:  # not every node suggests a tip; 1 gwei is a common floor
        tip = DEFAULT_PRIORITY_FEE
    return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}


def compute_fee_cap(fees: dict[str, int]) -> int:
    """The most wei per gas a transaction signed with ``fees`` can cost: the chain accepts it
    only from an account holding ``gas limit * this`` (plus its value)."""
    return fees.get("maxFeePerGas", fees.get("gasPrice", 0))


def check_still_canonical(w3: Any, receipt: TxReceipt, action: str) -> None:
    """Raise ReorgDetected unless ``receipt``'s block is still the canonical one at its height."""
    try:
        block = w3.eth.get_block(receipt.block_number)
        fresh = w3.eth.get_transaction_receipt(receipt.tx_hash)
    except Exception as exc:
        fault, detail = classify(exc)
        if fault is Fault.UNAVAILABLE:
            raise ChainUnavailable(f"{action}: cannot re-check the receipt: {detail}") from None
        fresh = None
        block = None
    if (
        block is None
        or _hex(block["hash"]) != receipt.block_hash
        or fresh is None
        or _hex(fresh["blockHash"]) != receipt.block_hash
    ):
        raise ReorgDetected(
            f"{action}: block {receipt.block_number} ({receipt.block_hash}) holding "
            f"{receipt.tx_hash} was replaced by a reorg; repeat the call (it is idempotent)"
        )


__all__ = [
    "RequestRunner",
    "SendPolicy",
    "TransactionSender",
    "TxReceipt",
    "check_still_canonical",
    "compute_fee_cap",
    "compute_gas_limit",
    "suggest_fees",
]
