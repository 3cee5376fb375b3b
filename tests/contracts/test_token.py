"""DNAToken: ERC-20 behaviour, minting rights and burns."""

from __future__ import annotations

import boa

from .helpers import GENESIS_SUPPLY, ZERO_ADDRESS, Network, partial


def test_metadata_and_genesis_supply(net: Network) -> None:
    token = net.token
    assert token.name() == "dnanet DNA"
    assert token.symbol() == "DNA"
    assert token.decimals() == 18
    assert token.totalSupply() == GENESIS_SUPPLY == token.GENESIS_SUPPLY()
    assert token.balanceOf(net.faucet) == GENESIS_SUPPLY
    assert token.total_minted() == 0 and token.total_burned() == 0


def test_transfer_moves_balance_and_logs(net: Network, nodes: list[str]) -> None:
    a, b = nodes[0], nodes[1]
    net.fund(a, 100)
    net.token.transfer(b, 30, sender=a)
    logs = net.token.get_logs()
    assert [(e.sender, e.receiver, e.value) for e in logs] == [(a, b, 30)]
    assert net.token.balanceOf(a) == 70 and net.token.balanceOf(b) == 30


def test_transfer_beyond_balance_reverts(net: Network, nodes: list[str]) -> None:
    net.fund(nodes[0], 100)
    with boa.reverts("insufficient balance"):
        net.token.transfer(nodes[1], 101, sender=nodes[0])


def test_transfer_to_zero_address_reverts(net: Network, nodes: list[str]) -> None:
    net.fund(nodes[0], 100)
    with boa.reverts("zero address"):
        net.token.transfer(ZERO_ADDRESS, 1, sender=nodes[0])


def test_approve_and_transfer_from(net: Network, nodes: list[str]) -> None:
    owner, spender, receiver = nodes[:3]
    net.fund(owner, 100)
    net.token.approve(spender, 60, sender=owner)
    (approval,) = net.token.get_logs()
    assert (approval.owner, approval.spender, approval.value) == (owner, spender, 60)
    net.token.transferFrom(owner, receiver, 40, sender=spender)
    assert net.token.allowance(owner, spender) == 20
    assert net.token.balanceOf(receiver) == 40 and net.token.balanceOf(owner) == 60


def test_transfer_from_beyond_allowance_reverts(net: Network, nodes: list[str]) -> None:
    owner, spender = nodes[:2]
    net.fund(owner, 100)
    net.token.approve(spender, 10, sender=owner)
    with boa.reverts("insufficient allowance"):
        net.token.transferFrom(owner, spender, 11, sender=spender)


def test_transfer_from_beyond_balance_reverts(net: Network, nodes: list[str]) -> None:
    owner, spender = nodes[:2]
    net.fund(owner, 5)
    net.token.approve(spender, 10, sender=owner)
    with boa.reverts("insufficient balance"):
        net.token.transferFrom(owner, spender, 6, sender=spender)


def test_unlimited_allowance_is_not_decreased(net: Network, nodes: list[str]) -> None:
    owner, spender = nodes[:2]
    net.fund(owner, 100)
    unlimited = 2**256 - 1
    net.token.approve(spender, unlimited, sender=owner)
    net.token.transferFrom(owner, spender, 100, sender=spender)
    assert net.token.allowance(owner, spender) == unlimited


def test_only_the_distributor_mints(net: Network, nodes: list[str]) -> None:
    assert net.token.minter() == net.distributor.address
    for caller in (net.owner, net.faucet, nodes[0]):
        with boa.reverts("only minter"):
            net.token.mint(caller, 1, sender=caller)


def test_minter_is_set_once_and_owner_cleared(net: Network) -> None:
    assert net.token.owner() == ZERO_ADDRESS
    with boa.reverts("only owner"):
        net.token.set_minter(net.owner, sender=net.owner)


def test_set_minter_rules_on_a_fresh_token(nodes: list[str]) -> None:
    token = partial("DNAToken").deploy(nodes[0], 1000)
    deployer = boa.env.eoa
    with boa.reverts("only owner"):
        token.set_minter(nodes[1], sender=nodes[1])
    with boa.reverts("zero address"):
        token.set_minter(ZERO_ADDRESS, sender=deployer)
    with boa.reverts("only minter"):  # nobody mints before the minter is set
        token.mint(nodes[0], 1, sender=deployer)
    token.set_minter(nodes[1], sender=deployer)
    token.mint(nodes[2], 7, sender=nodes[1])
    assert token.totalSupply() == 1007 and token.total_minted() == 7
    with boa.reverts("zero address"):
        token.mint(ZERO_ADDRESS, 1, sender=nodes[1])


def test_genesis_to_zero_address_rejected() -> None:
    with boa.reverts("zero address"):
        partial("DNAToken").deploy(ZERO_ADDRESS, 1)


def test_burn_reduces_supply(net: Network, nodes: list[str]) -> None:
    net.fund(nodes[0], 100)
    net.token.burn(40, sender=nodes[0])
    assert net.token.totalSupply() == GENESIS_SUPPLY - 40
    assert net.token.total_burned() == 40
    assert net.token.balanceOf(nodes[0]) == 60
    with boa.reverts("insufficient balance"):
        net.token.burn(61, sender=nodes[0])
