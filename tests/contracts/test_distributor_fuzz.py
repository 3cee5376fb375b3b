"""RewardsDistributor against a Python model: random epochs, rewards and claims.

The roots come from the protocol's reward tree (``dnanet.protocol.rollup``); the contract must
accept every proof the Python tree gives, pay exactly cumulative - claimed, and refuse the rest.
"""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import INITIAL_EMISSION, ZERO32, Network, Tree, make_accounts

N_ACCOUNTS = 6
ACCOUNTS = [a.address for a in make_accounts(N_ACCOUNTS, "fuzz")]

epoch_plan = st.tuples(
    # each account's reward this epoch (0 = earned nothing); at most emission / N each
    st.lists(
        st.one_of(st.just(0), st.integers(1, INITIAL_EMISSION // N_ACCOUNTS)),
        min_size=N_ACCOUNTS,
        max_size=N_ACCOUNTS,
    ),
    st.booleans(),  # when the epoch earned nothing: keep the root with a zero root?
    st.lists(st.integers(0, N_ACCOUNTS - 1), max_size=4),  # who claims afterwards
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(plan=st.lists(epoch_plan, min_size=1, max_size=10))
def test_distributor_pays_what_the_python_rollup_says(module_net: Network, plan) -> None:
    with boa.env.anchor():
        net, d, token = module_net, module_net.distributor, module_net.token
        cumulative: dict[str, int] = {}
        claimed = {a: 0 for a in ACCOUNTS}
        minted = 0
        root = ZERO32
        tree: Tree | None = None
        stale: dict[str, tuple[int, list[bytes]]] = {}  # an older leaf and its proof
        for epoch, (rewards, zero_root, claimers) in enumerate(plan):
            # halvings are not the point here: keep every epoch under the initial emission
            rewards = [r >> (epoch // d.HALVING_EPOCHS()) for r in rewards]
            total = sum(rewards)
            for account, reward in zip(ACCOUNTS, rewards, strict=True):
                if reward:
                    cumulative[account] = cumulative.get(account, 0) + reward
            if tree is not None:
                for account in tree.entries:
                    if cumulative[account] != tree.entries[account]:
                        stale[account] = (tree.entries[account], tree.proof(account))
            if total or (cumulative and not zero_root):
                tree = Tree(dict(cumulative))
                submitted = tree.root
                root = tree.root
            else:
                submitted = ZERO32  # nobody earned: the previous root stays
            net.settle(epoch, submitted, total)
            minted += total
            assert d.merkle_root() == root
            assert token.total_minted() == minted
            for i in claimers:
                account = ACCOUNTS[i]
                if tree is None or account not in tree.entries:
                    with boa.reverts("bad proof"):
                        d.claim(account, 1, [])
                    continue
                owed = cumulative[account] - claimed[account]
                if owed == 0:
                    with boa.reverts("already claimed"):
                        d.claim(account, cumulative[account], tree.proof(account))
                    continue
                before = token.balanceOf(account)
                d.claim(account, cumulative[account], tree.proof(account))
                assert token.balanceOf(account) - before == owed
                claimed[account] = cumulative[account]
                if account in stale:  # a proof of an older root does not pay again
                    old_amount, old_proof = stale[account]
                    with boa.reverts("bad proof"):
                        d.claim(account, old_amount, old_proof)
            for account in ACCOUNTS:
                assert d.claimed(account) == claimed[account]
            assert token.balanceOf(d.address) == minted - sum(claimed.values())
        if tree is not None:
            for account, amount in tree.entries.items():
                assert d.verify_claim(account, amount, tree.proof(account))
