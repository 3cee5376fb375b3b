"""The four contracts together under random operations, against a Python model.

Invariants after every step: claimed <= minted; totalSupply == genesis + minted - burned and
equals the sum of all balances; the registry holds exactly the stakes; a jailed node is never
active, and every node is active exactly when the model says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import boa
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from .helpers import (
    EPOCH_BLOCKS,
    GENESIS_SUPPLY,
    INITIAL_EMISSION,
    MIN_STAKE,
    UNBOND_EPOCHS,
    ZERO32,
    ZERO_ADDRESS,
    Tree,
    block_number,
    deploy_network,
    make_accounts,
)

NODES = [a.address for a in make_accounts(4, "sm-node")]
EVIDENCE = b"\x0e" * 32
TREASURY = "0x" + "7e" * 20


@dataclass
class NodeModel:
    registered: bool = False
    stake: int = 0
    jailed: bool = False
    unbonding: bool = False
    unbond_epoch: int = 0

    @property
    def active(self) -> bool:
        return (self.registered and not self.jailed and not self.unbonding
                and self.stake >= MIN_STAKE)


class Network(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()

    @initialize(to_treasury=st.booleans())
    def deploy(self, to_treasury: bool) -> None:
        """A fresh network whose slashes go to a treasury or are burned."""
        self.net = deploy_network(treasury=TREASURY if to_treasury else ZERO_ADDRESS)
        self.nodes = {n: NodeModel() for n in NODES}
        self.punished: set[tuple[str, int]] = set()
        self.cumulative: dict[str, int] = {}
        self.claimed: dict[str, int] = {}
        self.tree: Tree | None = None
        self.minted = 0
        self.burned = 0
        for node in NODES:
            self.net.fund(node, 100 * MIN_STAKE)
            self.net.token.approve(self.net.registry.address, 2**256 - 1, sender=node)

    def teardown(self) -> None:
        self._anchor.__exit__(None, None, None)

    def epoch(self) -> int:
        return self.net.current_epoch()

    # ---------------------------------------------------------------- rules

    @rule(i=st.integers(0, 3), extra=st.integers(0, 3 * MIN_STAKE))
    def register(self, i: int, extra: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        stake = MIN_STAKE + extra
        if model.registered:
            with boa.reverts("already registered"):
                self.net.registry.register("http://n", 0, stake, sender=node)
        elif model.jailed:
            with boa.reverts("jailed"):
                self.net.registry.register("http://n", 0, stake, sender=node)
        else:
            self.net.registry.register("http://n", 0, stake, sender=node)
            self.nodes[node] = NodeModel(registered=True, stake=stake)

    @rule(i=st.integers(0, 3), amount=st.integers(1, MIN_STAKE))
    def top_up(self, i: int, amount: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        if not model.registered:
            with boa.reverts("not registered"):
                self.net.registry.top_up(amount, sender=node)
        elif model.unbonding:
            with boa.reverts("unbonding"):
                self.net.registry.top_up(amount, sender=node)
        else:
            self.net.registry.top_up(amount, sender=node)
            model.stake += amount

    @rule(i=st.integers(0, 3))
    def unbond(self, i: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        if not model.registered:
            with boa.reverts("not registered"):
                self.net.registry.unbond(sender=node)
        elif model.unbonding:
            with boa.reverts("already unbonding"):
                self.net.registry.unbond(sender=node)
        else:
            self.net.registry.unbond(sender=node)
            model.unbonding, model.unbond_epoch = True, self.epoch()

    @rule(i=st.integers(0, 3))
    def withdraw(self, i: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        if not model.unbonding:
            with boa.reverts("not unbonding"):
                self.net.registry.withdraw(sender=node)
        elif self.epoch() < model.unbond_epoch + UNBOND_EPOCHS:
            with boa.reverts("unbonding delay"):
                self.net.registry.withdraw(sender=node)
        else:
            before = self.net.token.balanceOf(node)
            self.net.registry.withdraw(sender=node)
            assert self.net.token.balanceOf(node) - before == model.stake
            self.nodes[node] = NodeModel(jailed=model.jailed)

    @rule(i=st.integers(0, 3), jail=st.booleans(), bps=st.integers(0, 10_000),
          back=st.integers(0, 2))
    def punish(self, i: int, jail: bool, bps: int, back: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        epoch = max(0, self.epoch() - back)
        sigs = b"".join(self.net.punishment_signatures(
            self.net.quorum(), node, epoch, jail, bps, EVIDENCE
        ))
        call = (node, epoch, jail, bps, EVIDENCE, sigs)
        if not jail and bps == 0:
            with boa.reverts("empty punishment"):
                self.net.registry.punish(*call)
        elif not model.registered:
            with boa.reverts("unknown node"):
                self.net.registry.punish(*call)
        elif (node, epoch) in self.punished:
            with boa.reverts("replayed"):
                self.net.registry.punish(*call)
        else:
            self.net.registry.punish(*call)
            self.punished.add((node, epoch))
            slashed = model.stake * bps // 10_000
            model.stake -= slashed
            model.jailed = model.jailed or jail
            if self.net.treasury == ZERO_ADDRESS:
                self.burned += slashed

    @rule(i=st.integers(0, 3))
    def unjail(self, i: int) -> None:
        node, model = NODES[i], self.nodes[NODES[i]]
        if not model.jailed:
            with boa.reverts("not jailed"):
                self.net.registry.unjail(node, sender=self.net.owner)
        else:
            self.net.registry.unjail(node, sender=self.net.owner)
            model.jailed = False

    @rule(blocks=st.integers(1, 2 * EPOCH_BLOCKS))
    def advance(self, blocks: int) -> None:
        boa.env.time_travel(blocks=blocks)

    @rule(shares=st.lists(st.integers(0, 5), min_size=4, max_size=4))
    def settle_next_epoch(self, shares: list[int]) -> None:
        """Settle the next epoch, rewarding the active nodes by their shares."""
        d = self.net.distributor
        epoch = d.next_epoch()
        unit = d.emission(epoch) // 20
        rewards = {n: s * unit for n, s in zip(NODES, shares, strict=True)
                   if s and self.nodes[n].active}
        for n, r in rewards.items():
            self.cumulative[n] = self.cumulative.get(n, 0) + r
        total = sum(rewards.values())
        root = Tree(dict(self.cumulative)).root if self.cumulative else ZERO32
        sigs = b"".join(self.net.settlement_signatures(
            self.net.quorum(), epoch, root, total, EVIDENCE
        ))
        if block_number() < self.net.settle_block(epoch):
            with boa.reverts("early"):
                d.submit_epoch(epoch, root, total, EVIDENCE, sigs)
            for n, r in rewards.items():
                self.cumulative[n] -= r
            return
        d.submit_epoch(epoch, root, total, EVIDENCE, sigs)
        self.minted += total
        if self.cumulative:
            self.tree = Tree(dict(self.cumulative))

    @precondition(lambda self: self.tree is not None)
    @rule(i=st.integers(0, 3))
    def claim(self, i: int) -> None:
        assert self.tree is not None
        node = NODES[i]
        if node not in self.tree.entries:
            return
        amount = self.tree.entries[node]
        if amount <= self.claimed.get(node, 0):
            with boa.reverts("already claimed"):
                self.net.distributor.claim(node, amount, self.tree.proof(node))
        else:
            self.net.distributor.claim(node, amount, self.tree.proof(node))
            self.claimed[node] = amount

    @rule(amount=st.integers(0, INITIAL_EMISSION), i=st.integers(0, 3))
    def over_emission(self, amount: int, i: int) -> None:
        """A settlement above the epoch's emission never mints."""
        d = self.net.distributor
        epoch = d.next_epoch()
        total = d.emission(epoch) + 1 + amount
        sigs = b"".join(self.net.settlement_signatures(
            self.net.quorum(), epoch, b"\x01" * 32, total, EVIDENCE
        ))
        self.net.mine_to(self.net.settle_block(epoch))
        with boa.reverts("over-emission"):
            d.submit_epoch(epoch, b"\x01" * 32, total, EVIDENCE, sigs)

    # ---------------------------------------------------------------- invariants

    @invariant()
    def claimed_never_exceeds_minted(self) -> None:
        d, token = self.net.distributor, self.net.token
        claimed = sum(d.claimed(n) for n in NODES)
        assert claimed == sum(self.claimed.values())
        assert claimed <= token.total_minted() == self.minted
        assert token.balanceOf(d.address) == token.total_minted() - claimed

    @invariant()
    def supply_is_genesis_plus_minted_minus_burned(self) -> None:
        token = self.net.token
        assert token.total_burned() == self.burned
        assert token.totalSupply() == GENESIS_SUPPLY + token.total_minted() - token.total_burned()
        holders = [self.net.faucet, self.net.distributor.address, self.net.registry.address,
                   TREASURY, *NODES]
        assert sum(token.balanceOf(h) for h in holders) == token.totalSupply()

    @invariant()
    def registry_holds_the_stakes(self) -> None:
        stakes = sum(self.net.registry.stake_of(n) for n in NODES)
        assert stakes == sum(m.stake for m in self.nodes.values())
        assert self.net.token.balanceOf(self.net.registry.address) == stakes

    @invariant()
    def jailed_nodes_are_never_active(self) -> None:
        reg = self.net.registry
        for node, model in self.nodes.items():
            jailed = reg.node_info(node)[3]
            assert jailed == model.jailed
            assert reg.is_active(node) == model.active
            if jailed:
                assert not reg.is_active(node)


Network.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, derandomize=True
)
TestNetwork = pytest.mark.slow(Network.TestCase)
