"""What a node's life on chain needs before anything is sent: register, stake more, unbond,
withdraw, unjail; and a mixer-set change.

Each ``verify_*`` is a pure function over an `AccountState` (read once with
`read_account_state`) and raises ChainError with the numbers that decide it ("stake 50 DNA
is below the minimum 100 DNA"), so the command line refuses before an ``approve`` spends gas
on a transaction the registry would revert. The rules are the contracts' own (see
``NodeRegistry.vy``: ``register``, ``top_up``, ``unbond``, ``withdraw``, ``unjail``), plus the
one the chain applies to every transaction: the sender holds ETH for ``gas limit * fee cap``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dnanet.errors import ChainError
from dnanet.params import format_dna

GAS_LIMITS: dict[str, int] = {
    "approve": 70_000,
    "register": 500_000,
    "top_up": 90_000,
    "unbond": 70_000,
    "withdraw": 90_000,
    "unjail": 70_000,
}
"""Gas limits the ETH check assumes per transaction: at least the limit the sender signs
(estimate plus its 20% margin), as tests/test_node_cli.py checks against transactions really
sent; ``register`` is sized for the longest endpoint (256 bytes). ``register`` cannot be
estimated before its ``approve`` is mined, so every check uses these figures."""


@dataclass(frozen=True)
class AccountState:
    """What decides whether an account may act on the registry now (wei throughout)."""

    address: str
    eth: int
    """ETH balance, for gas."""
    dna: int
    """DNA balance."""
    allowance: int
    """DNA the registry may pull from the account (``approve``)."""
    registered: bool
    stake: int
    jailed: bool
    unbonding: bool
    unbond_epoch: int
    """The epoch ``unbond`` was called in (meaningful while unbonding)."""
    min_stake: int
    unbond_epochs: int
    current_epoch: int
    fee_cap: int
    """Most wei per gas a transaction sent now may cost."""

    @property
    def withdraw_epoch(self) -> int:
        """The first epoch ``withdraw`` succeeds in (while unbonding)."""
        return self.unbond_epoch + self.unbond_epochs


def read_account_state(client: Any, address: str) -> AccountState:
    """The registry, token and fee state of ``address`` through a ``ChainClient``."""
    info = client.node_info(address)
    return AccountState(
        address=info.address, eth=client.eth_balance(address), dna=client.balance_of(address),
        allowance=client.allowance(address, client.deployment.registry),
        registered=info.registered, stake=info.stake, jailed=info.jailed,
        unbonding=info.unbonding, unbond_epoch=info.unbond_epoch,
        min_stake=client.min_stake(), unbond_epochs=client.unbond_epochs(),
        current_epoch=client.current_epoch(), fee_cap=client.fee_cap())


def format_eth(wei: int) -> str:
    """Wei as ETH, exactly: ``0.0021 ETH``."""
    return format_dna(wei).replace(" DNA", " ETH")


def compute_approval_needed(state: AccountState, amount: int) -> bool:
    """Whether ``amount`` must be approved first (the allowance in place falls short)."""
    return state.allowance < amount


def compute_gas_cost(state: AccountState, actions: tuple[str, ...]) -> int:
    """The most ETH (wei) ``actions`` may cost at the current fee cap."""
    return sum(GAS_LIMITS[a] for a in actions) * state.fee_cap


def verify_gas(state: AccountState, actions: tuple[str, ...]) -> None:
    """Raise unless the account holds the ETH that ``actions`` may cost."""
    cost = compute_gas_cost(state, actions)
    # Verify the chain will accept the transactions: it checks gas limit * fee cap up front.
    if state.eth < cost:
        raise ChainError(
            f"{state.address} holds {format_eth(state.eth)}; {' + '.join(actions)} may cost "
            f"up to {format_eth(cost)} ({sum(GAS_LIMITS[a] for a in actions)} gas at "
            f"{state.fee_cap} wei per gas): send it ETH for gas first")


def verify_simulated(client: Any, sender: str, action: str, simulate: Callable[[], int]) -> int:
    """Run ``simulate`` (a send from ``sender`` without sending it, giving its gas limit) and
    raise ChainError, saying why, if the call would revert or ``sender`` cannot pay its gas
    at the current fee cap; its gas limit otherwise."""
    from dnanet.chain.faults import TransactionRejected, TransactionReverted

    balance = client.eth_balance(sender)
    if balance == 0:
        raise ChainError(f"{sender} holds 0 ETH and cannot pay the gas of {action}: send it "
                         "ETH for gas first")
    try:
        gas = int(simulate())
    except TransactionReverted as exc:
        raise ChainError(f"{action} would revert ({exc.reason or 'no reason given'}); "
                         "nothing was sent") from None
    except TransactionRejected as exc:  # some nodes estimate only what the sender can pay
        raise ChainError(f"{sender} holds {format_eth(balance)}; the chain would not even "
                         f"estimate {action} ({exc}): send it ETH for gas first") from None
    cost = gas * client.fee_cap()
    if balance < cost:
        raise ChainError(f"{sender} holds {format_eth(balance)}; {action} may cost up to "
                         f"{format_eth(cost)} ({gas} gas): send it ETH for gas first")
    return gas


def _verify_dna(state: AccountState, amount: int, what: str) -> None:
    if state.dna < amount:
        raise ChainError(f"{what} {format_dna(amount)} exceeds the DNA balance "
                           f"{format_dna(state.dna)} of {state.address}")


def verify_register(state: AccountState, stake: int) -> tuple[str, ...]:
    """Raise unless ``state.address`` may register with ``stake``; the transactions it takes
    (an ``approve`` only when the allowance falls short)."""
    if state.jailed:
        raise ChainError(f"{state.address} is jailed: the registry's owner must unjail it "
                           "before it can register again")
    if state.registered:
        raise ChainError(f"{state.address} is registered already (stake "
                           f"{format_dna(state.stake)}): use `dnanet node stake add` to add")
    if stake < state.min_stake:
        raise ChainError(f"stake {format_dna(stake)} is below the minimum "
                           f"{format_dna(state.min_stake)}")
    _verify_dna(state, stake, "stake")
    actions = (("approve",) if compute_approval_needed(state, stake) else ()) + ("register",)
    verify_gas(state, actions)
    return actions


def verify_top_up(state: AccountState, amount: int) -> tuple[str, ...]:
    """Raise unless ``amount`` may be added to the stake; the transactions it takes."""
    if not state.registered:
        raise ChainError(f"{state.address} is not registered: `dnanet node run` registers "
                           "it (with --stake)")
    if state.unbonding:
        raise ChainError(f"{state.address} is unbonding (since epoch {state.unbond_epoch}): "
                           f"withdraw from epoch {state.withdraw_epoch} on and register again")
    _verify_dna(state, amount, "adding")
    actions = (("approve",) if compute_approval_needed(state, amount) else ()) + ("top_up",)
    verify_gas(state, actions)
    return actions


def verify_unbond(state: AccountState) -> None:
    """Raise unless the node may start unbonding now."""
    if not state.registered:
        raise ChainError(f"{state.address} is not registered: nothing to unbond")
    if state.unbonding:
        raise ChainError(f"{state.address} is unbonding already (since epoch "
                           f"{state.unbond_epoch}); `dnanet node withdraw` from epoch "
                           f"{state.withdraw_epoch} on (now epoch {state.current_epoch})")
    verify_gas(state, ("unbond",))


def verify_withdraw(state: AccountState) -> None:
    """Raise unless the node's stake may be withdrawn now."""
    if not state.unbonding:
        what = "registered" if state.registered else "not registered"
        raise ChainError(f"{state.address} is {what} and not unbonding: "
                           "`dnanet node unbond` first")
    if state.current_epoch < state.withdraw_epoch:
        raise ChainError(f"the stake of {state.address} unlocks at epoch "
                           f"{state.withdraw_epoch} ({state.unbond_epochs} epochs after "
                           f"unbonding in epoch {state.unbond_epoch}); now epoch "
                           f"{state.current_epoch}")
    verify_gas(state, ("withdraw",))


def verify_unjail(sender: AccountState, node: AccountState, owner: str) -> None:
    """Raise unless ``sender`` (the registry's owner) may unjail ``node`` now."""
    if sender.address != owner:
        raise ChainError(f"unjail is owner-only: the NodeRegistry's owner is {owner}, not "
                           f"{sender.address} (the network operator unjails after review)")
    if not node.jailed:
        raise ChainError(f"{node.address} is not jailed")
    verify_gas(sender, ("unjail",))


__all__ = [
    "GAS_LIMITS",
    "AccountState",
    "compute_approval_needed",
    "compute_gas_cost",
    "format_eth",
    "read_account_state",
    "verify_gas",
    "verify_register",
    "verify_simulated",
    "verify_top_up",
    "verify_unbond",
    "verify_unjail",
    "verify_withdraw",
]
