"""RewardsDistributor: quorum-signed settlements, the emission cap, and Merkle claims."""

from __future__ import annotations

import boa
import pytest

from .helpers import (
    GRACE_BLOCKS,
    HALVING_EPOCHS,
    INITIAL_EMISSION,
    WEI,
    ZERO32,
    MiniTree,
    Network,
    Tree,
    chain_id,
    deploy_network,
    domain,
    events,
    high_s_twin,
    make_accounts,
    partial,
)

DIGEST = b"\x0d" * 32


def submit(net: Network, epoch: int, root: bytes, total: int, signers=None,
           sigs: list[bytes] | None = None, digest: bytes = DIGEST) -> None:
    if sigs is None:
        sigs = net.settlement_signatures(
            net.quorum() if signers is None else signers, epoch, root, total, digest
        )
    net.distributor.submit_epoch(epoch, root, total, digest, b"".join(sigs))


@pytest.fixture(scope="module")
def earners() -> list[str]:
    return [a.address for a in make_accounts(6, "earner")]


# ---------------------------------------------------------------- settlement


def test_settle_mints_stores_root_and_logs(net: Network, earners: list[str]) -> None:
    d = net.distributor
    tree = Tree({earners[0]: 3 * WEI, earners[1]: 4 * WEI})
    net.mine_to(net.settle_block(0))
    signers = [net.mixers[i] for i in (8, 1, 3, 0, 6, 2, 9)]
    submit(net, 0, tree.root, 7 * WEI, signers=signers)
    (event,) = events(d, "EpochSettled")
    assert (event.epoch, event.rewards_root, event.total, event.reports_digest) == (
        0, tree.root, 7 * WEI, DIGEST
    )
    assert event.signers == sum(1 << i for i in (8, 1, 3, 0, 6, 2, 9))
    assert d.next_epoch() == 1 and d.merkle_root() == tree.root
    assert net.token.balanceOf(d.address) == 7 * WEI
    assert net.token.total_minted() == 7 * WEI


def test_views_and_constructor(net: Network) -> None:
    d = net.distributor
    assert d.MIXER_SET() == net.mixer_set.address and d.TOKEN() == net.token.address
    assert d.GENESIS_BLOCK() == net.genesis_block and d.GRACE_BLOCKS() == GRACE_BLOCKS
    assert d.settle_block(4) == net.settle_block(4)
    assert d.FIRST_EPOCH() == 0 and d.next_epoch() == 0
    with boa.reverts("zero halving epochs"):
        partial("RewardsDistributor").deploy(net.mixer_set.address, net.token.address, 1, 0, 0, 0)


@pytest.mark.parametrize("epoch", [0, 1, HALVING_EPOCHS - 1, HALVING_EPOCHS, 3 * HALVING_EPOCHS + 2,
                                   256 * HALVING_EPOCHS, 2**200])
def test_emission_schedule(net: Network, epoch: int) -> None:
    assert net.distributor.emission(epoch) == INITIAL_EMISSION >> (epoch // HALVING_EPOCHS)


def test_early_settlement_reverts(net: Network) -> None:
    net.mine_to(net.settle_block(0) - 1)
    with boa.reverts("early"):
        submit(net, 0, b"\x01" * 32, 1)
    net.mine_to(net.settle_block(0))
    submit(net, 0, b"\x01" * 32, 1)


def test_replayed_and_out_of_order_epochs_revert(net: Network) -> None:
    net.settle(0, b"\x01" * 32, 1)
    net.mine_to(net.settle_block(3))
    with boa.reverts("replayed"):
        submit(net, 0, b"\x01" * 32, 1)
    with boa.reverts("out of order"):
        submit(net, 2, b"\x01" * 32, 1)
    submit(net, 1, b"\x02" * 32, 1)
    with boa.reverts("replayed"):
        submit(net, 1, b"\x02" * 32, 1)


def test_over_emission_reverts(net: Network) -> None:
    net.mine_to(net.settle_block(HALVING_EPOCHS))
    with boa.reverts("over-emission"):
        submit(net, 0, b"\x01" * 32, INITIAL_EMISSION + 1)
    submit(net, 0, b"\x01" * 32, INITIAL_EMISSION)
    for epoch in range(1, HALVING_EPOCHS):
        submit(net, epoch, b"\x01" * 32, 0)
    half = INITIAL_EMISSION // 2
    with boa.reverts("over-emission"):
        submit(net, HALVING_EPOCHS, b"\x01" * 32, half + 1)
    submit(net, HALVING_EPOCHS, b"\x01" * 32, half)
    assert net.token.total_minted() == INITIAL_EMISSION + half


def test_empty_epoch_settles_with_zero_total(net: Network, earners: list[str]) -> None:
    tree = Tree({earners[0]: WEI})
    net.settle(0, tree.root, WEI)
    net.mine_to(net.settle_block(2))
    with boa.reverts("empty root"):
        submit(net, 1, ZERO32, 1)
    submit(net, 1, ZERO32, 0)  # a zero root keeps the previous one
    assert net.distributor.merkle_root() == tree.root
    submit(net, 2, b"\x05" * 32, 0)  # any root, nothing minted
    assert net.distributor.merkle_root() == b"\x05" * 32
    assert net.token.total_minted() == WEI and net.distributor.next_epoch() == 3


def test_settlement_quorum_rejections(net: Network, outsiders: list) -> None:
    net.mine_to(net.settle_block(0))
    root, total = b"\x01" * 32, 5
    good = net.settlement_signatures(net.mixers[:6], 0, root, total, DIGEST)
    with boa.reverts("below threshold"):
        submit(net, 0, root, total, sigs=good)
    with boa.reverts("duplicate"):
        submit(net, 0, root, total, sigs=good + good[:1])
    with boa.reverts("high-s"):
        submit(net, 0, root, total, sigs=[*good[1:], high_s_twin(good[0]), good[0]])
    with boa.reverts("non-member"):
        submit(net, 0, root, total, signers=net.mixers[:6] + outsiders[:1])
    wrong = domain(chain_id(), str(net.distributor.address))  # the anchor is the MixerSet
    bad = net.settlement_signatures(net.mixers[6:7], 0, root, total, DIGEST, dom=wrong)
    with boa.reverts("non-member"):
        submit(net, 0, root, total, sigs=good + bad)
    # signatures over other terms than those submitted recover other addresses
    for other in [(root, total + 1, DIGEST), (b"\x02" * 32, total, DIGEST), (root, total, ZERO32)]:
        sigs = net.settlement_signatures(net.quorum(), 0, *other)
        with boa.reverts("non-member"):
            submit(net, 0, root, total, sigs=sigs)
    assert net.distributor.next_epoch() == 0 and net.token.total_minted() == 0


def test_settlement_uses_the_set_of_its_epoch(net: Network, outsiders: list) -> None:
    ms = net.mixer_set
    net.mine_to_epoch(1)
    for m in net.mixers[:4]:
        ms.remove_mixer(m.address, sender=net.owner)
    for o in outsiders[:3]:
        ms.add_mixer(o.address, b"\x01" * 32, "http://o", sender=net.owner)
    new_set = net.mixers[4:] + outsiders[:3]  # epoch 2 on: 9 members, threshold 7
    net.settle(0, b"\x01" * 32, 1)
    net.settle(1, b"\x01" * 32, 1)  # epoch 1 keeps the old set
    with boa.reverts("non-member"):
        net.settle(2, b"\x01" * 32, 1)  # the old quorum includes removed mixers
    net.settle(2, b"\x01" * 32, 1, signers=new_set[2:])


def test_an_epoch_without_mixers_cannot_settle(earners: list[str]) -> None:
    with boa.env.anchor():
        net = deploy_network(initial_mixers=False)
        net.mine_to(net.settle_block(0))
        with boa.reverts("empty set"):
            submit(net, 0, b"\x01" * 32, 1, sigs=[])


def test_first_epoch_is_configurable(net: Network) -> None:
    d = partial("RewardsDistributor").deploy(
        net.mixer_set.address, net.token.address, INITIAL_EMISSION, HALVING_EPOCHS, 0, 5
    )
    assert d.next_epoch() == 5
    net.mine_to(net.settle_block(6))
    sigs = b"".join(net.settlement_signatures(net.quorum(), 4, b"\x01" * 32, 0, DIGEST))
    with boa.reverts("replayed"):
        d.submit_epoch(4, b"\x01" * 32, 0, DIGEST, sigs)
    sigs = b"".join(net.settlement_signatures(net.quorum(), 5, b"\x01" * 32, 0, DIGEST))
    d.submit_epoch(5, b"\x01" * 32, 0, DIGEST, sigs)
    assert d.next_epoch() == 6


# ---------------------------------------------------------------- claims


def test_claim_pays_the_account_whoever_calls(net: Network, earners: list[str]) -> None:
    d = net.distributor
    amounts = {a: (i + 1) * WEI for i, a in enumerate(earners)}
    tree = Tree(amounts)
    net.settle(0, tree.root, sum(amounts.values()))
    caller = earners[5]
    d.claim(earners[2], 3 * WEI, tree.proof(earners[2]), sender=caller)
    (event,) = events(d, "Claimed")
    assert (event.account, event.amount, event.cumulative) == (earners[2], 3 * WEI, 3 * WEI)
    assert net.token.balanceOf(earners[2]) == 3 * WEI
    assert net.token.balanceOf(caller) == 0
    assert d.claimed(earners[2]) == 3 * WEI
    with boa.reverts("already claimed"):
        d.claim(earners[2], 3 * WEI, tree.proof(earners[2]))


def test_bad_proofs_revert(net: Network, earners: list[str]) -> None:
    d = net.distributor
    tree = Tree({earners[0]: WEI, earners[1]: 2 * WEI, earners[2]: 3 * WEI})
    net.settle(0, tree.root, 6 * WEI)
    proof = tree.proof(earners[0])
    assert d.verify_claim(earners[0], WEI, proof)
    cases = [
        (earners[0], WEI + 1, proof),  # wrong amount
        (earners[1], WEI, proof),  # someone else's leaf
        (earners[0], WEI, proof[:-1]),  # truncated
        (earners[0], WEI, [*proof, b"\x00" * 32]),  # extended
        (earners[0], WEI, []),  # none
        (earners[0], WEI, [b"\x13" * 32, *proof[1:]]),  # forged sibling
    ]
    for account, amount, bad in cases:
        assert not d.verify_claim(account, amount, bad)
        with boa.reverts("bad proof"):
            d.claim(account, amount, bad)
    # an internal node is not a leaf: (address, amount) cannot be forged from one
    with boa.reverts("bad proof"):
        d.claim(earners[3], 0, [])


def test_no_claim_before_any_root(net: Network, earners: list[str]) -> None:
    with boa.reverts("bad proof"):
        net.distributor.claim(earners[0], 1, [])


def test_claims_follow_the_latest_root(net: Network, earners: list[str]) -> None:
    d = net.distributor
    a, b = earners[0], earners[1]
    first = Tree({a: WEI, b: WEI})
    net.settle(0, first.root, 2 * WEI)
    d.claim(a, WEI, first.proof(a))
    second = Tree({a: 3 * WEI, b: WEI})
    net.settle(1, second.root, 2 * WEI)
    with boa.reverts("bad proof"):  # the old root is gone
        d.claim(a, WEI, first.proof(a))
    d.claim(a, 3 * WEI, second.proof(a))
    assert net.token.balanceOf(a) == 3 * WEI
    (event,) = events(d, "Claimed")
    assert (event.amount, event.cumulative) == (2 * WEI, 3 * WEI)
    # an unchanged leaf keeps working under the new root
    d.claim(b, WEI, second.proof(b))
    assert net.token.balanceOf(d.address) == 0


def test_a_node_that_waited_twenty_epochs_claims_once(net: Network, earners: list[str]) -> None:
    d = net.distributor
    cumulative: dict[str, int] = {}
    for epoch in range(20):
        for i, account in enumerate(earners):
            cumulative[account] = cumulative.get(account, 0) + (epoch + 1) * (i + 1) * 10**15
        tree = Tree(cumulative)
        net.settle(epoch, tree.root, sum((epoch + 1) * (i + 1) * 10**15 for i in range(6)))
    patient = earners[4]
    d.claim(patient, cumulative[patient], tree.proof(patient))
    assert net.token.balanceOf(patient) == cumulative[patient] == 5 * 210 * 10**15
    with boa.reverts("already claimed"):
        d.claim(patient, cumulative[patient], tree.proof(patient))


def test_one_leaf_tree_and_leaf_format(net: Network, earners: list[str]) -> None:
    """A one-leaf tree's root is the leaf itself: the contract's leaf is OZ's double hash."""
    tree = Tree({earners[0]: 12345})
    assert tree.proof(earners[0]) == []
    net.settle(0, tree.root, 12345)
    assert net.distributor.verify_claim(earners[0], 12345, [])
    net.distributor.claim(earners[0], 12345, [])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 33])
def test_protocol_tree_matches_the_reference_tree(earners: list[str], size: int) -> None:
    accounts = [a.address for a in make_accounts(size, "ref")]
    entries = {a: (i + 1) * 7 for i, a in enumerate(accounts)}
    ours, ref = Tree(entries), MiniTree(sorted(entries.items()))
    assert ours.root == ref.root
    assert all(ours.proof(a) == ref.proof(a) for a in accounts)
