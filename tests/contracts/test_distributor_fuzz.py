"""RewardsDistributor against the Python rollup: random epochs, scores and claims.

Each epoch's rewards, cumulative totals and tree come from ``dnanet.protocol.rollup`` (the code
the Validator runs). The contract must store the same root, accept the whole emission and no
more, accept every proof the Python tree gives, pay exactly cumulative - claimed, and refuse
everything else.
"""

from __future__ import annotations

import boa
import pytest
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnanet.protocol.rollup import compute_cumulative, compute_epoch_rewards

from .helpers import HALVING_EPOCHS, INITIAL_EMISSION, ZERO32, Network, Tree, make_accounts

N_ACCOUNTS = 6
ACCOUNTS = [a.address.lower() for a in make_accounts(N_ACCOUNTS, "fuzz")]

epoch_plan = st.tuples(
    # each account's epoch score (0 = earned nothing this epoch)
    st.lists(st.one_of(st.just(0), st.integers(1, 10**6)), min_size=N_ACCOUNTS,
             max_size=N_ACCOUNTS),
    st.booleans(),  # when nobody earned: submit a zero root (keep) or the same root again
    st.lists(st.integers(0, N_ACCOUNTS - 1), max_size=4),  # who claims afterwards
)


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=st.lists(epoch_plan, min_size=1, max_size=2 * HALVING_EPOCHS))
def test_distributor_pays_what_the_python_rollup_says(module_net: Network, plan) -> None:
    with boa.env.anchor():
        net, d, token = module_net, module_net.distributor, module_net.token
        cumulative: dict[str, int] = {}
        claimed = dict.fromkeys(ACCOUNTS, 0)
        minted = 0
        root = ZERO32
        tree: Tree | None = None
        stale: dict[str, tuple[int, list[bytes]]] = {}  # an older leaf and its proof
        for epoch, (scores, zero_root, claimers) in enumerate(plan):
            emission = INITIAL_EMISSION >> (epoch // HALVING_EPOCHS)
            assert d.emission(epoch) == emission
            rewards = compute_epoch_rewards(dict(zip(ACCOUNTS, scores, strict=True)), emission)
            total = sum(rewards.values())
            assert total in (0, emission)
            if tree is not None:
                for account, amount in tree.entries.items():
                    if rewards.get(account):
                        stale[account] = (amount, tree.proof(account))
            cumulative = compute_cumulative(cumulative, rewards)
            if total or (cumulative and not zero_root):
                tree = Tree(dict(cumulative))
                root = submitted = tree.root
            else:
                submitted = ZERO32  # nobody earned: the previous root stays
            if total and epoch % HALVING_EPOCHS == 0:  # at the start of each halving period
                with boa.reverts("over-emission"):
                    net.settle(epoch, submitted, total + 1)
            net.settle(epoch, submitted, total)
            minted += total
            assert d.merkle_root() == root
            assert token.total_minted() == minted
            for i in claimers:
                account = to_checksum_address(ACCOUNTS[i])
                if tree is None or ACCOUNTS[i] not in tree.entries:
                    with boa.reverts("bad proof"):
                        d.claim(account, 1, [])
                    continue
                amount, proof = tree.entries[ACCOUNTS[i]], tree.proof(account)
                owed = amount - claimed[ACCOUNTS[i]]
                if owed == 0:
                    with boa.reverts("already claimed"):
                        d.claim(account, amount, proof)
                    continue
                with boa.reverts("bad proof"):
                    d.claim(account, amount + 1, proof)
                before = token.balanceOf(account)
                d.claim(account, amount, proof)
                assert token.balanceOf(account) - before == owed
                claimed[ACCOUNTS[i]] = amount
                if ACCOUNTS[i] in stale:  # a proof under an older root pays nothing more
                    old_amount, old_proof = stale[ACCOUNTS[i]]
                    with boa.reverts("bad proof"):
                        d.claim(account, old_amount, old_proof)
            assert token.balanceOf(d.address) == minted - sum(claimed.values())
        for account in ACCOUNTS:
            assert d.claimed(to_checksum_address(account)) == claimed[account]
        if tree is not None:
            for account, amount in tree.entries.items():
                assert d.verify_claim(to_checksum_address(account), amount, tree.proof(account))
