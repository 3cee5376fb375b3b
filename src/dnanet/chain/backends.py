"""Where the chain client's ``Web3`` comes from: an in-process EVM or any JSON-RPC URL.

- `connect_embedded()`: py-evm inside this process (eth-tester), the default of the devnet;
  needs nothing but Python. It mines a block per transaction and on demand
  (`EmbeddedChain.mine_blocks`, about 800 empty blocks/s on one core).
- `connect_rpc(url)`: any EVM JSON-RPC endpoint over HTTP (anvil, a testnet, mainnet).

Dev-chain helpers `mine_blocks` and `fund` work on both the embedded EVM and anvil (through its
``anvil_*`` methods), so tests and the devnet drive either the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dnanet.chain.faults import ChainUnavailable, classify
from dnanet.crypto.eip712 import to_checksum_address
from dnanet.errors import ChainError, ConfigError

DEFAULT_RPC_TIMEOUT_S = 10.0


def _web3() -> Any:
    try:
        import web3
    except ImportError:
        raise ConfigError(
            "the chain client needs web3 and eth-tester: pip install 'dnanet[chain]'"
        ) from None
    return web3


class EmbeddedChain:
    """An in-process EVM (py-evm) behind a ``Web3``; safe to share between threads.

    The chain id is eth-tester's (131277322940537). Ten pre-funded accounts (1,000,000 ETH
    each) pay for `fund`; dnanet code never uses them to sign its own transactions.
    """

    intercept: Callable[[str, Any, Callable[[], Any]], Any] | None = None
    """Test hook: ``intercept(method, params, forward)`` sees every JSON-RPC request and
    returns its response, e.g. ``forward()`` or an injected fault."""

    def __init__(self) -> None:
        web3 = _web3()
        try:
            from eth_tester import EthereumTester, PyEVMBackend
            from web3.providers.eth_tester import EthereumTesterProvider
        except ImportError:
            raise ConfigError(
                "the embedded EVM needs eth-tester with py-evm: pip install 'eth-tester[py-evm]'"
            ) from None

        lock = threading.RLock()
        chain = self

        class _LockedProvider(EthereumTesterProvider):
            # eth-tester is not thread-safe; daemons call the client from a thread pool
            def make_request(self, method: Any, params: Any) -> Any:
                with lock:
                    def forward() -> Any:
                        return super(_LockedProvider, self).make_request(method, params)

                    if chain.intercept is not None:
                        return chain.intercept(str(method), params, forward)
                    return forward()

        self._lock = lock
        self.tester = EthereumTester(PyEVMBackend())
        self.w3: Any = web3.Web3(_LockedProvider(self.tester))
        # Without a default account web3's eth-tester middleware asks for eth_accounts twice
        # per eth_call (measured: ~40% of the chain's locked time in a devnet).
        self.w3.eth.default_account = self.tester.get_accounts()[0]
        self._funder = self.tester.get_accounts()[0]

    @property
    def block_number(self) -> int:
        with self._lock:
            return self._head()

    def mine_blocks(self, count: int) -> int:
        """Mine ``count`` empty blocks; returns the new head's number."""
        if count < 0:
            raise ConfigError(f"cannot mine {count} blocks", field="count")
        with self._lock:
            tester = self.tester
            filters = [getattr(tester, name, True) for name in
                       ("_log_filters", "_block_filters", "_pending_transaction_filters")]
            if count and tester.auto_mine_transactions and not any(filters):
                # EthereumTester.mine_blocks re-reads every new block to feed filters; with
                # none installed, the backend alone mines about a third faster
                tester.backend.mine_blocks(count)
            elif count:
                tester.mine_blocks(count)
            return self._head()

    def _head(self) -> int:
        # the canonical head is the latest mined block; cheaper than serializing it
        return int(self.tester.backend.chain.get_canonical_head().block_number)

    def fund(self, address: str, wei: int) -> None:
        """Send ``wei`` of ETH to ``address`` from a pre-funded test account."""
        with self._lock:
            self.tester.send_transaction(
                {
                    "from": self._funder,
                    "to": to_checksum_address(address),
                    "value": wei,
                    "gas": 21_000,
                }
            )

    def snapshot(self) -> int:
        """A snapshot id to `revert` to (tests use it to simulate reorgs)."""
        with self._lock:
            return int(self.tester.take_snapshot())

    def revert(self, snapshot: int) -> None:
        """Drop every block after ``snapshot`` (they leave the canonical chain)."""
        with self._lock:
            self.tester.revert_to_snapshot(snapshot)


def connect_embedded() -> EmbeddedChain:
    """A fresh in-process EVM at block 0."""
    return EmbeddedChain()


def connect_rpc(url: str, *, timeout_s: float = DEFAULT_RPC_TIMEOUT_S, check: bool = True) -> Any:
    """A ``Web3`` over HTTP JSON-RPC at ``url``.

    With ``check`` (the default) it asks for the chain id once and raises `ChainUnavailable`,
    naming the URL, if the endpoint does not answer. The provider's own retries are off: the
    chain client retries with its own backoff and knows which calls are safe to repeat.
    """
    web3 = _web3()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"RPC URL must start with http:// or https://, got {url!r}", field="rpc")
    provider = web3.HTTPProvider(
        url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
    )
    w3 = web3.Web3(provider)
    if check:
        try:
            w3.eth.chain_id  # noqa: B018 - the request is the check
        except Exception as exc:
            _, detail = classify(exc)
            raise ChainUnavailable(
                f"cannot reach the chain at {url}: {detail} (is the node running and the "
                "URL right?)"
            ) from None
    return w3


def _embedded_of(w3: Any) -> Any | None:
    tester = getattr(w3.provider, "ethereum_tester", None)
    return tester


def mine_blocks(w3: Any, count: int) -> None:
    """Mine ``count`` blocks on a dev chain: the embedded EVM, anvil, or hardhat."""
    if count <= 0:
        return
    tester = _embedded_of(w3)
    if tester is not None:
        w3.provider.make_request("evm_mine", [count])
        return
    for method, params in (("anvil_mine", [hex(count)]), ("hardhat_mine", [hex(count)])):
        response = w3.provider.make_request(method, params)
        if "error" not in response:
            return
    for _ in range(count):
        response = w3.provider.make_request("evm_mine", [])
        if "error" in response:
            raise ChainError(f"this chain cannot mine on demand: {response['error']}")


def fund(w3: Any, address: str, wei: int) -> None:
    """Give ``address`` ``wei`` more ETH on a dev chain (embedded EVM or anvil)."""
    tester = _embedded_of(w3)
    target = to_checksum_address(address)
    if tester is not None:
        w3.eth.send_transaction(
            {"from": w3.eth.accounts[0], "to": target, "value": wei, "gas": 21_000}
        )
        return
    balance = int(w3.eth.get_balance(target))
    for method in ("anvil_setBalance", "hardhat_setBalance"):
        response = w3.provider.make_request(method, [target, hex(balance + wei)])
        if "error" not in response:
            return
    raise ChainError("this chain cannot set balances: fund the account with a transfer instead")


__all__ = [
    "DEFAULT_RPC_TIMEOUT_S",
    "EmbeddedChain",
    "connect_embedded",
    "connect_rpc",
    "fund",
    "mine_blocks",
]
