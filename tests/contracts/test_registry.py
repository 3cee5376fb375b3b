"""NodeRegistry: stake, endpoint, unbonding and quorum-signed punishment."""

from __future__ import annotations

import boa
import pytest

from .helpers import (
    EPOCH_BLOCKS,
    GENESIS_SUPPLY,
    MIN_STAKE,
    UNBOND_EPOCHS,
    ZERO_ADDRESS,
    Network,
    block_number,
    chain_id,
    deploy_network,
    domain,
    events,
    mine,
    partial,
)

EVIDENCE = b"\x0e" * 32


def punish(net: Network, node: str, epoch: int, jail: bool, bps: int, signers=None,
           sigs: list[bytes] | None = None) -> None:
    if sigs is None:
        sigs = net.punishment_signatures(
            net.quorum() if signers is None else signers, node, epoch, jail, bps, EVIDENCE
        )
    net.registry.punish(node, epoch, jail, bps, EVIDENCE, b"".join(sigs))


def info(net: Network, node: str) -> dict:
    (endpoint, hw_class, stake, jailed, unbonding, unbond_epoch, registered) = (
        net.registry.node_info(node)
    )
    return {
        "endpoint": endpoint, "hw_class": hw_class, "stake": stake, "jailed": jailed,
        "unbonding": unbonding, "unbond_epoch": unbond_epoch, "registered": registered,
    }


# ---------------------------------------------------------------- register


def test_register_pulls_stake_and_lists_node(net: Network, nodes: list[str]) -> None:
    reg = net.registry
    net.register(nodes[0], stake=3 * MIN_STAKE, endpoint="http://10.0.0.1:8000", hw_class=1)
    (event,) = events(reg, "NodeRegistered")
    assert (event.node, event.endpoint, event.hw_class, event.stake) == (
        nodes[0], "http://10.0.0.1:8000", 1, 3 * MIN_STAKE
    )
    assert info(net, nodes[0]) == {
        "endpoint": "http://10.0.0.1:8000", "hw_class": 1, "stake": 3 * MIN_STAKE,
        "jailed": False, "unbonding": False, "unbond_epoch": 0, "registered": True,
    }
    assert reg.is_active(nodes[0]) and reg.stake_of(nodes[0]) == 3 * MIN_STAKE
    assert net.token.balanceOf(reg.address) == 3 * MIN_STAKE
    assert net.token.balanceOf(nodes[0]) == 0
    net.register(nodes[1])
    assert reg.node_count() == 2
    assert [reg.node_at(0), reg.node_at(1)] == nodes[:2]
    with boa.reverts("index out of range"):
        reg.node_at(2)
    assert not reg.is_active(nodes[2])


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 255, 256])
def test_endpoint_round_trips(net: Network, nodes: list[str], length: int) -> None:
    endpoint = ("http://" + "abcdefghij" * 26)[:length]
    net.register(nodes[0], endpoint=endpoint)
    assert info(net, nodes[0])["endpoint"] == endpoint


def test_update_node(net: Network, nodes: list[str]) -> None:
    net.register(nodes[0], endpoint="http://" + "x" * 90, hw_class=0)
    net.registry.update_node("http://short", 1, sender=nodes[0])
    (event,) = events(net.registry, "NodeUpdated")
    assert (event.node, event.endpoint, event.hw_class) == (nodes[0], "http://short", 1)
    got = info(net, nodes[0])
    assert (got["endpoint"], got["hw_class"], got["stake"]) == ("http://short", 1, MIN_STAKE)
    with boa.reverts("empty endpoint"):
        net.registry.update_node("", 1, sender=nodes[0])
    with boa.reverts("not registered"):
        net.registry.update_node("http://a", 1, sender=nodes[1])


def test_register_rejections(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.fund(node, 5 * MIN_STAKE)
    net.token.approve(reg.address, MIN_STAKE, sender=node)
    with boa.reverts("empty endpoint"):
        reg.register("", 0, MIN_STAKE, sender=node)
    with boa.reverts("stake below minimum"):
        reg.register("http://a", 0, MIN_STAKE - 1, sender=node)
    with boa.reverts("stake too large"):
        reg.register("http://a", 0, 2**128, sender=node)
    with boa.reverts("insufficient allowance"):
        reg.register("http://a", 0, MIN_STAKE + 1, sender=node)
    net.token.approve(reg.address, 10 * MIN_STAKE, sender=node)
    with boa.reverts("insufficient balance"):
        reg.register("http://a", 0, 6 * MIN_STAKE, sender=node)
    reg.register("http://a", 0, MIN_STAKE, sender=node)
    with boa.reverts("already registered"):
        reg.register("http://a", 0, MIN_STAKE, sender=node)


def test_constructor_rejects_zero_min_stake(net: Network) -> None:
    with boa.reverts("zero min stake"):
        partial("NodeRegistry").deploy(net.mixer_set.address, net.token.address, 0, 1, ZERO_ADDRESS)


# ---------------------------------------------------------------- top up, unbond, withdraw


def test_top_up(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node)
    net.fund(node, 5)
    net.token.approve(reg.address, 5, sender=node)
    reg.top_up(5, sender=node)
    (event,) = events(reg, "StakeAdded")
    assert (event.node, event.amount, event.stake) == (node, 5, MIN_STAKE + 5)
    assert reg.stake_of(node) == MIN_STAKE + 5
    with boa.reverts("zero amount"):
        reg.top_up(0, sender=node)
    with boa.reverts("stake too large"):
        reg.top_up(2**128, sender=node)
    with boa.reverts("insufficient allowance"):
        reg.top_up(1, sender=node)
    with boa.reverts("not registered"):
        reg.top_up(1, sender=nodes[1])
    reg.unbond(sender=node)
    with boa.reverts("unbonding"):
        reg.top_up(1, sender=node)


def test_unbond_then_withdraw_after_delay(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node, stake=2 * MIN_STAKE)
    net.mine_to_epoch(3)
    reg.unbond(sender=node)
    (event,) = events(reg, "Unbonding")
    assert (event.node, event.epoch, event.withdraw_epoch) == (node, 3, 3 + UNBOND_EPOCHS)
    assert not reg.is_active(node)
    got = info(net, node)
    assert got["unbonding"] and got["unbond_epoch"] == 3 and got["registered"]
    with boa.reverts("already unbonding"):
        reg.unbond(sender=node)
    net.mine_to(net.genesis_block + (3 + UNBOND_EPOCHS) * EPOCH_BLOCKS - 1)
    with boa.reverts("unbonding delay"):
        reg.withdraw(sender=node)
    net.mine_to_epoch(3 + UNBOND_EPOCHS)
    reg.withdraw(sender=node)
    (event,) = events(reg, "Withdrawn")
    assert (event.node, event.amount) == (node, 2 * MIN_STAKE)
    assert net.token.balanceOf(node) == 2 * MIN_STAKE
    assert net.token.balanceOf(reg.address) == 0
    assert info(net, node) == {
        "endpoint": "", "hw_class": 0, "stake": 0, "jailed": False, "unbonding": False,
        "unbond_epoch": 0, "registered": False,
    }
    with boa.reverts("not unbonding"):
        reg.withdraw(sender=node)
    # registering again does not list the node twice
    net.token.approve(reg.address, MIN_STAKE, sender=node)
    reg.register("http://back", 0, MIN_STAKE, sender=node)
    assert reg.node_count() == 1 and reg.is_active(node)


def test_unbond_and_withdraw_rejections(net: Network, nodes: list[str]) -> None:
    with boa.reverts("not registered"):
        net.registry.unbond(sender=nodes[0])
    with boa.reverts("not unbonding"):
        net.registry.withdraw(sender=nodes[0])
    net.register(nodes[0])
    with boa.reverts("not unbonding"):
        net.registry.withdraw(sender=nodes[0])


# ---------------------------------------------------------------- punish


def test_punish_slashes_burns_and_jails(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node, stake=4 * MIN_STAKE)
    net.mine_to_epoch(2)
    supply = net.token.totalSupply()
    punish(net, node, 1, True, 2_500)
    (event,) = events(reg, "Punished")
    assert (event.node, event.epoch, event.jail, event.slash_bps, event.slashed) == (
        node, 1, True, 2_500, MIN_STAKE
    )
    assert event.evidence_digest == EVIDENCE
    assert event.signers == 2**7 - 1
    assert reg.stake_of(node) == 3 * MIN_STAKE
    assert net.token.totalSupply() == supply - MIN_STAKE
    assert net.token.total_burned() == MIN_STAKE
    assert net.token.balanceOf(reg.address) == 3 * MIN_STAKE
    assert info(net, node)["jailed"] and not reg.is_active(node)
    assert reg.punished(node, 1)


def test_slash_to_treasury(nodes: list[str]) -> None:
    treasury = "0x" + "7e" * 20
    with boa.env.anchor():
        net = deploy_network(treasury=treasury)
        net.register(nodes[0], stake=10 * MIN_STAKE)
        punish(net, nodes[0], 0, False, 10_000)
        assert net.token.balanceOf(treasury) == 10 * MIN_STAKE
        assert net.token.totalSupply() == GENESIS_SUPPLY
        assert net.registry.stake_of(nodes[0]) == 0
        assert not net.registry.is_active(nodes[0])  # below the minimum stake, not jailed
        assert not info(net, nodes[0])["jailed"]


def test_slash_below_minimum_deactivates_until_top_up(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node, stake=MIN_STAKE)
    punish(net, node, 0, False, 1)
    assert reg.stake_of(node) == MIN_STAKE - MIN_STAKE // 10_000
    assert not reg.is_active(node)
    net.fund(node, MIN_STAKE)
    net.token.approve(reg.address, MIN_STAKE, sender=node)
    reg.top_up(MIN_STAKE, sender=node)
    assert reg.is_active(node)


def test_unbonding_stake_is_still_slashable(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node, stake=2 * MIN_STAKE)
    reg.unbond(sender=node)
    punish(net, node, 0, False, 5_000)
    net.mine_to_epoch(UNBOND_EPOCHS)
    reg.withdraw(sender=node)
    assert net.token.balanceOf(node) == MIN_STAKE


def test_jailed_node_cannot_reregister_out_of_jail(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node)
    punish(net, node, 0, True, 0)
    reg.unbond(sender=node)
    net.mine_to_epoch(UNBOND_EPOCHS)
    reg.withdraw(sender=node)
    net.token.approve(reg.address, MIN_STAKE, sender=node)
    with boa.reverts("jailed"):
        reg.register("http://again", 0, MIN_STAKE, sender=node)
    reg.unjail(node, sender=net.owner)
    reg.register("http://again", 0, MIN_STAKE, sender=node)
    assert reg.is_active(node)


def test_unjail(net: Network, nodes: list[str]) -> None:
    reg, node = net.registry, nodes[0]
    net.register(node)
    with boa.reverts("not jailed"):
        reg.unjail(node, sender=net.owner)
    punish(net, node, 0, True, 0)
    with boa.reverts("only owner"):
        reg.unjail(node, sender=node)
    reg.unjail(node, sender=net.owner)
    (event,) = events(reg, "Unjailed")
    assert event.node == node
    assert reg.is_active(node)


def test_transfer_ownership(net: Network, nodes: list[str]) -> None:
    reg = net.registry
    with boa.reverts("only owner"):
        reg.transfer_ownership(nodes[0], sender=nodes[0])
    reg.transfer_ownership(nodes[0], sender=net.owner)
    assert reg.owner() == nodes[0]
    net.register(nodes[1])
    punish(net, nodes[1], 0, True, 0)
    with boa.reverts("only owner"):
        reg.unjail(nodes[1], sender=net.owner)
    reg.unjail(nodes[1], sender=nodes[0])


def test_punish_argument_rejections(net: Network, nodes: list[str]) -> None:
    node = nodes[0]
    net.register(node)
    with boa.reverts("bad slash bps"):
        punish(net, node, 0, True, 10_001)
    with boa.reverts("empty punishment"):
        punish(net, node, 0, False, 0)
    with boa.reverts("future epoch"):
        punish(net, node, 1, True, 0)
    with boa.reverts("unknown node"):
        punish(net, nodes[1], 0, True, 0)


def test_punishment_is_not_replayable(net: Network, nodes: list[str]) -> None:
    node = nodes[0]
    net.register(node, stake=4 * MIN_STAKE)
    sigs = net.punishment_signatures(net.quorum(), node, 0, False, 1_000, EVIDENCE)
    punish(net, node, 0, False, 1_000, sigs=sigs)
    with boa.reverts("replayed"):
        punish(net, node, 0, False, 1_000, sigs=sigs)
    with boa.reverts("replayed"):  # a different punishment for the same (node, epoch)
        punish(net, node, 0, True, 0)
    net.mine_to_epoch(1)
    punish(net, node, 1, False, 1_000)  # another epoch is another offence


def test_punishment_without_quorum_reverts(net: Network, nodes: list[str], outsiders: list) -> None:
    node = nodes[0]
    net.register(node)
    with boa.reverts("below threshold"):
        punish(net, node, 0, True, 100, signers=net.mixers[:6])
    with boa.reverts("non-member"):
        punish(net, node, 0, True, 100, signers=net.mixers[:6] + outsiders[:1])
    sigs = net.punishment_signatures(net.mixers[:6], node, 0, True, 100, EVIDENCE)
    with boa.reverts("duplicate"):
        punish(net, node, 0, True, 100, sigs=sigs + sigs[:1])
    wrong = domain(chain_id(), str(net.registry.address))  # the anchor is the MixerSet
    bad = net.punishment_signatures(net.mixers[6:7], node, 0, True, 100, EVIDENCE, dom=wrong)
    with boa.reverts("non-member"):
        punish(net, node, 0, True, 100, sigs=sigs + bad)
    # signatures over other terms than those submitted
    other = net.punishment_signatures(net.quorum(), node, 0, True, 101, EVIDENCE)
    with boa.reverts("non-member"):
        punish(net, node, 0, True, 100, sigs=other)
    assert net.registry.is_active(node)


def test_punishment_checks_the_set_of_its_epoch(net: Network, nodes: list[str], outsiders: list) -> None:
    node = nodes[0]
    net.register(node, stake=4 * MIN_STAKE)
    old_quorum = net.quorum()
    for m in net.mixers[:4]:
        net.mixer_set.remove_mixer(m.address, sender=net.owner)
    net.mine_to_epoch(2)
    # epoch 1 has 6 members (threshold 5); the removed mixers signed for epoch 0 only
    with boa.reverts("non-member"):
        punish(net, node, 1, False, 100, signers=old_quorum)
    punish(net, node, 1, False, 100, signers=net.mixers[4:9])
    punish(net, node, 0, False, 100, signers=old_quorum)


# ---------------------------------------------------------------- listing and change block


def test_nodes_page_lists_the_registry_in_order_with_activity(net: Network,
                                                            nodes: list[str]) -> None:
    reg = net.registry
    assert reg.nodes_page(0, 64) == []
    for i, node in enumerate(nodes[:3]):
        net.register(node, endpoint=f"http://n{i}", hw_class=i % 2)
    punish(net, nodes[1], 0, True, 0)
    page = reg.nodes_page(0, 64)
    assert [(e[0], e[1], e[2], e[8]) for e in page] == [
        (nodes[0], "http://n0", 0, True), (nodes[1], "http://n1", 1, False),
        (nodes[2], "http://n2", 0, True)]
    for entry, node in zip(page, nodes, strict=False):
        assert tuple(entry[1:8]) == reg.node_info(node)
    assert reg.nodes_page(1, 1) == page[1:2]
    assert reg.nodes_page(2, 64) == page[2:]
    assert reg.nodes_page(3, 64) == [] and reg.nodes_page(2**255, 64) == []
    assert reg.nodes_page(0, 2**256 - 1) == page  # capped at PAGE_MAX, no overflow


def test_last_change_is_the_block_of_every_change_to_a_record(net: Network,
                                                              nodes: list[str]) -> None:
    reg = net.registry
    assert reg.last_change() == 0
    changes = [
        lambda: net.register(nodes[0]),
        lambda: reg.update_node("http://new", 1, sender=nodes[0]),
        lambda: (net.fund(nodes[0], MIN_STAKE),
                 net.token.approve(reg.address, MIN_STAKE, sender=nodes[0]),
                 reg.top_up(MIN_STAKE, sender=nodes[0])),
        lambda: punish(net, nodes[0], 0, False, 100),
        lambda: reg.unbond(sender=nodes[0]),
    ]
    for change in changes:
        mine(3)
        change()
        assert reg.last_change() == block_number()
    mine(3)
    before = block_number()
    reg.node_count()  # a read changes nothing
    assert reg.last_change() < before
