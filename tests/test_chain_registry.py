"""The registry at past blocks rebuilt from its events equals the contract's own state there.

A seeded random life of three nodes on the embedded EVM (register, update, top up, unbond,
withdraw, register again, punish with and without jail, unjail); after every transaction the
registry that ``RegistryHistory`` rebuilds for that block is compared with the contract's
state read at that block (``eth_call`` at a past block: the embedded EVM keeps every state).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from dnanet.chain.backends import connect_embedded
from dnanet.chain.client import ChainClient, TransactionReverted
from dnanet.chain.registry import RegistryEntry, RegistryEvent, RegistryHistory, apply_event
from dnanet.crypto.hashing import keccak256
from dnanet.errors import ChainError
from dnanet.params import TEST, WEI_PER_DNA
from dnanet.protocol.messages import Punishment
from dnanet.service.gateway import ClientGateway
from test_chain_client import Net, make_net

STEPS = 30


def registry_now(net: Net, block: int) -> list[tuple[object, ...]]:
    """The contract's registry at ``block`` (its state there), as comparable tuples."""
    return [(n.address, n.endpoint, n.hw_class, n.stake, n.jailed, n.active)
            for n in net.client().nodes(block=block) if n.registered]


def registry_from_events(gateway: ClientGateway, block: int) -> list[tuple[object, ...]]:
    return [(n.address, n.endpoint, n.hardware_class, n.stake, n.jailed, n.active)
            for n in gateway.nodes(block=block)]


def step(net: Net, rng: random.Random, punished: set[tuple[str, int]]) -> str:
    """One random registry transaction that the contract accepts (or None sent)."""
    node = rng.choice(net.nodes)
    client = net.client(node)
    info = client.node_info(node.address)
    epoch = client.current_epoch()
    choices = []
    if not info.registered and not info.jailed:
        choices.append("register")
    if info.registered and not info.unbonding:
        choices += ["update", "top_up", "unbond"]
    if info.unbonding:
        choices.append("withdraw")
    if info.registered and (node.address, epoch) not in punished:
        choices.append("punish")
    if info.jailed:
        choices.append("unjail")
    if not choices:
        net.mine(1)
        return "mine"
    action = rng.choice(choices)
    if action == "register":
        client.register_node(f"http://n{rng.randrange(100)}:8600", rng.randrange(2),
                             TEST.min_stake)
    elif action == "update":
        client.update_node(f"http://moved{rng.randrange(100)}:8600", rng.randrange(2))
    elif action == "top_up":
        client.top_up(WEI_PER_DNA)
    elif action == "unbond":
        client.unbond()
    elif action == "withdraw":
        net.mine_to(net.deployment.epoch_start(info.unbond_epoch + TEST.unbond_epochs))
        client.withdraw()
    elif action == "punish":
        punishment = Punishment(node=node.address, epoch=epoch, jail=rng.random() < 0.5,
                                slash_bps=rng.choice([0, 500, 2_000]) or 100,
                                evidence_digest=keccak256(b"test"))
        net.client(net.nodes[0]).punish(punishment, net.sign(punishment.hash_struct()))
        punished.add((node.address, epoch))
    elif action == "unjail":
        net.client(net.deployer).unjail(node.address)
    return action


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
def test_the_registry_rebuilt_from_events_is_the_contracts_at_every_block(seed: int) -> None:
    chain = connect_embedded()
    net = make_net(chain.w3, chain.mine_blocks, chain.fund)
    gateway = ClientGateway(ChainClient(chain.w3, net.deployment))
    rng = random.Random(seed)
    punished: set[tuple[str, int]] = set()
    blocks = [chain.w3.eth.block_number]
    actions = []
    for _ in range(STEPS):
        try:
            actions.append(step(net, rng, punished))
        except TransactionReverted:  # a random choice the contract refuses: fine, skip it
            continue
        blocks.append(chain.w3.eth.block_number)
    assert {"register", "punish", "unbond"} <= set(actions), actions
    for block in blocks:
        assert registry_from_events(gateway, block) == registry_now(net, block), block
        assert gateway.registry_changed_at(block=block) == net.client().registry_changed_at(
            block=block)


def test_a_block_not_mined_yet_has_no_registry() -> None:
    history = RegistryHistory(lambda a, b: [], 0, head=lambda: 10)
    assert history.at(10) == [] and history.changed_at(10) == 0
    with pytest.raises(ChainError, match="not known yet"):
        history.at(11)


def test_events_read_once_and_snapshots_built_from_the_nearest_one() -> None:
    reads: list[tuple[int, int]] = []
    node = "0x" + "aa" * 20
    events = [RegistryEvent(5, 0, "NodeRegistered", node,
                            {"endpoint": "http://a", "hw_class": 0, "stake": 10}),
              RegistryEvent(9, 0, "StakeAdded", node, {"amount": 5, "stake": 15})]

    def read(a: int, b: int) -> list[RegistryEvent]:
        reads.append((a, b))
        return [e for e in events if a <= e.block <= b]

    history = RegistryHistory(read, 1, head=lambda: 20)
    assert history.at(4) == []
    assert history.at(7) == [RegistryEntry(node, "http://a", 0, 10, registered=True)]
    assert history.at(20)[0].stake == 15 and history.changed_at(20) == 9
    assert history.at(8)[0].stake == 10
    assert reads == [(1, 4), (5, 7), (8, 20)]


def test_a_withdrawal_keeps_only_the_jail_mark() -> None:
    entry = RegistryEntry("0x" + "bb" * 20, "http://b", 1, 50, jailed=True, unbonding=True,
                          unbond_epoch=3, registered=True)
    after = apply_event(entry, RegistryEvent(1, 0, "Withdrawn", entry.address, {"amount": 50}))
    assert after == RegistryEntry(entry.address, jailed=True)
    assert not replace(after, jailed=False).is_active(1)
