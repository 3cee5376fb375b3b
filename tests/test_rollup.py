"""Rollup: reward tree (OZ StandardMerkleTree layout), epoch rewards, cumulative totals.

The tree is checked against a slow reference written straight from OZ's merkle-tree source
(eth_abi encoding, eth_hash keccak: none of the code under test); the byte-for-byte check against
OZ's own JS library is in test_reward_tree_oz.py.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest
from eth_abi.abi import encode as abi_encode
from eth_hash.auto import keccak as reference_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.errors import RollupError
from dnanet.protocol.rollup import (
    UINT256_LIMIT,
    RewardTree,
    compute_cumulative,
    compute_epoch_rewards,
    compute_leaf_hash,
    normalize_address,
    verify_proof,
)

MAX_UINT256 = UINT256_LIMIT - 1


# --- reference model (OZ core.ts / merkletree.ts, transliterated) ---------------------------


def ref_leaf(address: str, amount: int) -> bytes:
    word = abi_encode(["address", "uint256"], [address.lower(), amount])
    return bytes(reference_keccak(bytes(reference_keccak(word))))


def ref_node(a: bytes, b: bytes) -> bytes:
    return bytes(reference_keccak(b"".join(sorted([a, b]))))


def ref_tree(entries: Sequence[tuple[str, int]]) -> tuple[list[bytes], dict[str, int]]:
    """OZ's `prepare` + `makeMerkleTree`: the node array and each address's tree index."""
    hashed = sorted(
        ((ref_leaf(a, x), i) for i, (a, x) in enumerate(entries)), key=lambda item: item[0]
    )
    tree: list[bytes] = [b""] * (2 * len(hashed) - 1)
    tree_index: dict[str, int] = {}
    for leaf_index, (leaf, value_index) in enumerate(hashed):
        tree[len(tree) - 1 - leaf_index] = leaf
        tree_index[entries[value_index][0].lower()] = len(tree) - 1 - leaf_index
    for i in range(len(tree) - 1 - len(hashed), -1, -1):
        tree[i] = ref_node(tree[2 * i + 1], tree[2 * i + 2])
    return tree, tree_index


def ref_proof(tree: list[bytes], index: int) -> list[bytes]:
    proof = []
    while index > 0:
        sibling = index - (-1) ** (index % 2)
        proof.append(tree[sibling])
        index = (index - 1) // 2
    return proof


# --- helpers ---------------------------------------------------------------------------------


def random_entries(rng: random.Random, n: int) -> list[tuple[str, int]]:
    addresses = {"0x" + rng.randbytes(20).hex() for _ in range(n)}
    while len(addresses) < n:
        addresses.add("0x" + rng.randbytes(20).hex())
    return [(a, rng.randrange(UINT256_LIMIT)) for a in sorted(addresses)]


def addr(i: int) -> str:
    return "0x" + i.to_bytes(20, "big").hex()


addresses_st = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
mixed_case_addresses_st = st.tuples(
    addresses_st, st.lists(st.booleans(), min_size=40, max_size=40)
).map(
    lambda t: "0x" + "".join(c.upper() if up else c for c, up in zip(t[0][2:], t[1], strict=True))
)
amounts_st = st.one_of(
    st.integers(min_value=0, max_value=MAX_UINT256),
    st.sampled_from([0, 1, MAX_UINT256]),
)
entries_st = st.lists(
    st.tuples(addresses_st, amounts_st), min_size=1, max_size=40, unique_by=lambda e: e[0]
)


# --- leaf encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, 1, 10**18, MAX_UINT256])
def test_leaf_is_double_keccak_of_abi_encoding(amount: int) -> None:
    address = "0x52908400098527886E0F7030069857D2E4169EE7"
    assert compute_leaf_hash(address, amount) == ref_leaf(address, amount)


def test_leaf_ignores_address_case() -> None:
    address = "0x52908400098527886E0F7030069857D2E4169EE7"
    assert compute_leaf_hash(address, 7) == compute_leaf_hash(address.lower(), 7)
    assert compute_leaf_hash(address, 7) == compute_leaf_hash("0x" + address[2:].upper(), 7)


def test_leaf_depends_on_address_and_amount() -> None:
    assert compute_leaf_hash(addr(1), 5) != compute_leaf_hash(addr(2), 5)
    assert compute_leaf_hash(addr(1), 5) != compute_leaf_hash(addr(1), 6)


# --- tree shape ------------------------------------------------------------------------------


def test_one_leaf_tree_root_is_the_leaf_and_proof_is_empty() -> None:
    tree = RewardTree.build([(addr(1), 100)])
    assert tree.root == compute_leaf_hash(addr(1), 100)
    assert tree.proof(addr(1)) == []
    assert verify_proof(tree.root, addr(1), 100, [])


def test_two_leaf_tree_root_is_sorted_pair_hash() -> None:
    tree = RewardTree.build([(addr(1), 100), (addr(2), 200)])
    a, b = compute_leaf_hash(addr(1), 100), compute_leaf_hash(addr(2), 200)
    assert tree.root == ref_node(a, b)
    assert tree.proof(addr(1)) == [b]
    assert tree.proof(addr(2)) == [a]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100])
def test_tree_matches_reference_layout(n: int) -> None:
    entries = random_entries(random.Random(n), n)
    tree = RewardTree.build(entries)
    ref, ref_index = ref_tree(entries)
    assert tree.root == ref[0]
    for address, amount in entries:
        assert tree.leaf(address) == ref[ref_index[address]]
        assert tree.proof(address) == ref_proof(ref, ref_index[address])
        assert tree.amount(address) == amount


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 100])
def test_proof_lengths_are_those_of_a_complete_tree(n: int) -> None:
    entries = random_entries(random.Random(1000 + n), n)
    tree = RewardTree.build(entries)
    lengths = [len(tree.proof(a)) for a, _ in entries]
    assert min(lengths) == math.floor(math.log2(n))
    assert max(lengths) == math.ceil(math.log2(n))
    # leaves at depth d+1 come in sibling pairs that take the place of one leaf at depth d
    assert sum(2.0**-length for length in lengths) == 1.0


def test_root_and_proofs_do_not_depend_on_entry_order_or_case() -> None:
    entries = random_entries(random.Random(7), 50)
    tree = RewardTree.build(entries)
    shuffled = entries[:]
    random.Random(8).shuffle(shuffled)
    upper = [("0x" + a[2:].upper(), x) for a, x in shuffled]
    other = RewardTree.build(upper)
    assert other.root == tree.root
    for address, _ in entries:
        assert other.proof(address) == tree.proof(address)


def test_lookups_are_case_insensitive_and_keys_lowercase() -> None:
    checksummed = "0x52908400098527886E0F7030069857D2E4169EE7"
    tree = RewardTree.build([(checksummed, 9), (addr(3), 4)])
    assert checksummed in tree
    assert checksummed.lower() in tree
    assert addr(4) not in tree
    assert 42 not in tree
    assert len(tree) == 2
    assert sorted(tree) == sorted([checksummed.lower(), addr(3)])
    assert tree.amount(checksummed.lower()) == 9
    assert tree.proof(checksummed.lower()) == tree.proof("0x" + checksummed[2:].upper())


def test_amounts_at_uint256_bounds_are_accepted() -> None:
    tree = RewardTree.build([(addr(1), 0), (addr(2), MAX_UINT256)])
    assert verify_proof(tree.root, addr(1), 0, tree.proof(addr(1)))
    assert verify_proof(tree.root, addr(2), MAX_UINT256, tree.proof(addr(2)))


def test_build_accepts_lists_as_pairs() -> None:
    tree = RewardTree.build([[addr(1), 1], [addr(2), 2]])  # type: ignore[list-item]
    assert tree.root == RewardTree.build([(addr(1), 1), (addr(2), 2)]).root


def test_build_100k_leaves() -> None:
    # Its speed is measured in bench/core.py (merkle_100k_leaves_s), not asserted here.
    entries = random_entries(random.Random(100_000), 100_000)
    tree = RewardTree.build(entries)
    address, amount = entries[12_345]
    assert verify_proof(tree.root, address, amount, tree.proof(address))


# --- tree rejections -------------------------------------------------------------------------


def test_empty_tree_is_rejected() -> None:
    with pytest.raises(RollupError, match="without entries") as info:
        RewardTree.build([])
    assert info.value.field == "entries"


def test_duplicate_address_is_rejected() -> None:
    with pytest.raises(RollupError, match="appears twice") as info:
        RewardTree.build([(addr(1), 1), (addr(2), 2), (addr(1), 3)])
    assert info.value.field == "entries[2].address"


def test_duplicate_address_in_other_case_is_rejected() -> None:
    checksummed = "0x52908400098527886E0F7030069857D2E4169EE7"
    with pytest.raises(RollupError, match="appears twice"):
        RewardTree.build([(checksummed, 1), (checksummed.lower(), 1)])


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (-1, "outside the uint256 range"),
        (UINT256_LIMIT, "outside the uint256 range"),
        (True, "expected an integer, got bool"),
        (1.0, "expected an integer, got float"),
        ("1", "expected an integer, got str"),
        (None, "expected an integer, got NoneType"),
    ],
)
def test_bad_amount_is_rejected(amount: object, message: str) -> None:
    with pytest.raises(RollupError, match=message) as info:
        RewardTree.build([(addr(1), 1), (addr(2), amount)])  # type: ignore[list-item]
    assert info.value.field == "entries[1].amount"


BAD_ADDRESSES: list[object] = [
    "52908400098527886e0f7030069857d2e4169ee7",  # no prefix
    "0X52908400098527886e0f7030069857d2e4169ee7",  # prefix must be 0x
    "0x52908400098527886e0f7030069857d2e4169ee",  # 39 digits
    "0x52908400098527886e0f7030069857d2e4169ee70",  # 41 digits
    "0x52908400098527886e0f7030069857d2e4169eg7",  # not hex
    "0x52908400098527886e0f7030069857d2e4169e 7",  # whitespace
    "0x52908400098527886e0f7030069857d2e4169ee7\n",  # trailing newline
    "0x",
    "",
    bytes(20),
    None,
    0x52908400098527886E0F7030069857D2E4169EE7,
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_malformed_address_is_rejected_by_build(address: object) -> None:
    with pytest.raises(RollupError, match=r"not an address|hex string") as info:
        RewardTree.build([(addr(1), 1), (address, 2)])  # type: ignore[list-item]
    assert info.value.field == "entries[1].address"


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_malformed_address_is_rejected_everywhere(address: object) -> None:
    tree = RewardTree.build([(addr(1), 1)])
    with pytest.raises(RollupError):
        normalize_address(address)
    with pytest.raises(RollupError):
        compute_leaf_hash(address, 1)  # type: ignore[arg-type]
    with pytest.raises(RollupError):
        tree.proof(address)  # type: ignore[arg-type]
    with pytest.raises(RollupError):
        verify_proof(tree.root, address, 1, [])  # type: ignore[arg-type]
    with pytest.raises(RollupError):
        compute_epoch_rewards({address: 1}, 10)  # type: ignore[dict-item]
    with pytest.raises(RollupError):
        compute_cumulative({address: 1}, {})  # type: ignore[dict-item]


@pytest.mark.parametrize("entry", [(addr(1),), (addr(1), 1, 2), addr(1), 5, None])
def test_entry_that_is_not_a_pair_is_rejected(entry: object) -> None:
    with pytest.raises(RollupError, match=r"\(address, amount\) pair") as info:
        RewardTree.build([(addr(2), 1), entry])  # type: ignore[list-item]
    assert info.value.field == "entries[1]"


def test_lookup_of_absent_address_is_rejected() -> None:
    tree = RewardTree.build([(addr(1), 1)])
    for lookup in (tree.proof, tree.leaf, tree.amount):
        with pytest.raises(RollupError, match="not in the reward tree"):
            lookup(addr(2))


# --- proof verification ----------------------------------------------------------------------


def test_verify_rejects_wrong_amount_address_root_and_proof() -> None:
    entries = random_entries(random.Random(3), 9)
    tree = RewardTree.build(entries)
    (a, x), (b, y) = entries[0], entries[1]
    proof = tree.proof(a)
    assert verify_proof(tree.root, a, x, proof)
    assert not verify_proof(tree.root, a, x + 1, proof)
    assert not verify_proof(tree.root, b, x, proof)
    assert not verify_proof(tree.root, a, y, tree.proof(b))
    assert not verify_proof(bytes(32), a, x, proof)
    assert not verify_proof(tree.root, a, x, proof[:-1])
    assert not verify_proof(tree.root, a, x, [*proof, bytes(32)])
    assert not verify_proof(tree.root, a, x, [bytes(32), *proof[1:]])


def test_verify_rejects_siblings_in_the_wrong_level_order() -> None:
    # sorted-pair hashing frees the left/right order within a level, not the order of levels
    entries = random_entries(random.Random(4), 4)
    tree = RewardTree.build(entries)
    a, x = entries[0]
    proof = tree.proof(a)
    assert len(proof) == 2
    assert not verify_proof(tree.root, a, x, proof[::-1])


@pytest.mark.parametrize(
    ("root", "proof", "field"),
    [
        (bytes(31), [], "root"),
        ("00" * 32, [], "root"),
        (None, [], "root"),
        (bytes(32), [bytes(31)], "proof[0]"),
        (bytes(32), [bytes(32), bytes(33)], "proof[1]"),
        (bytes(32), ["00" * 32], "proof[0]"),
    ],
)
def test_verify_rejects_malformed_root_or_proof(
    root: object, proof: list[object], field: str
) -> None:
    with pytest.raises(RollupError, match="expected 32 bytes") as info:
        verify_proof(root, addr(1), 1, proof)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("amount", [-1, UINT256_LIMIT, True, 1.5])
def test_verify_rejects_out_of_range_amount(amount: object) -> None:
    with pytest.raises(RollupError) as info:
        verify_proof(bytes(32), addr(1), amount, [])  # type: ignore[arg-type]
    assert info.value.field == "amount"


@settings(max_examples=60, deadline=None)
@given(entries=entries_st)
def test_property_tree_equals_reference_and_every_proof_verifies(
    entries: list[tuple[str, int]],
) -> None:
    tree = RewardTree.build(entries)
    ref, ref_index = ref_tree(entries)
    assert tree.root == ref[0]
    n = len(entries)
    for address, amount in entries:
        proof = tree.proof(address)
        assert proof == ref_proof(ref, ref_index[address])
        assert math.floor(math.log2(n)) <= len(proof) <= math.ceil(math.log2(n))
        assert all(len(node) == 32 for node in proof)
        assert verify_proof(tree.root, address, amount, proof)


@settings(max_examples=60, deadline=None)
@given(entries=entries_st, data=st.data())
def test_property_proof_for_wrong_amount_or_address_fails(
    entries: list[tuple[str, int]], data: st.DataObject
) -> None:
    tree = RewardTree.build(entries)
    address, amount = data.draw(st.sampled_from(entries))
    proof = tree.proof(address)
    wrong_amount = data.draw(amounts_st.filter(lambda x: x != amount))
    assert not verify_proof(tree.root, address, wrong_amount, proof)
    wrong_address = data.draw(addresses_st.filter(lambda a: a != address))
    assert not verify_proof(tree.root, wrong_address, amount, proof)


@settings(max_examples=30, deadline=None)
@given(
    entries=st.lists(
        st.tuples(mixed_case_addresses_st, amounts_st),
        min_size=1,
        max_size=20,
        unique_by=lambda e: e[0].lower(),
    )
)
def test_property_case_does_not_change_the_tree(entries: list[tuple[str, int]]) -> None:
    lower = [(a.lower(), x) for a, x in entries]
    assert RewardTree.build(entries).root == RewardTree.build(lower).root


# --- epoch rewards ---------------------------------------------------------------------------


def test_rewards_proportional_when_exact() -> None:
    rewards = compute_epoch_rewards({addr(1): 1, addr(2): 3}, 400)
    assert rewards == {addr(1): 100, addr(2): 300}


def test_rewards_remainder_goes_to_largest_remainder() -> None:
    # exact shares 1/3 and 2/3 of one unit: the 2/3 wins
    assert compute_epoch_rewards({addr(1): 1, addr(2): 2}, 1) == {addr(1): 0, addr(2): 1}
    # shares 10/7 * (1, 2, 4) = 1.43, 2.86, 5.71: floors 1, 2, 5; one unit to 2.86
    rewards = compute_epoch_rewards({addr(1): 1, addr(2): 2, addr(3): 4}, 10)
    assert rewards == {addr(1): 1, addr(2): 3, addr(3): 6}


def test_rewards_ties_go_to_ascending_lowercase_address() -> None:
    # raw string order puts "0xB0.." before "0xa0..", lowercase order the other way round
    upper_b = "0xB0" + "00" * 19
    lower_a = "0xa0" + "00" * 19
    lower_c = "0xc0" + "00" * 19
    rewards = compute_epoch_rewards({lower_c: 5, upper_b: 5, lower_a: 5}, 2)
    assert rewards == {lower_a: 1, upper_b.lower(): 1, lower_c: 0}


def test_rewards_tie_break_does_not_depend_on_mapping_order() -> None:
    scores = {addr(i): 1 for i in range(10)}
    backwards = dict(reversed(list(scores.items())))
    assert compute_epoch_rewards(scores, 7) == compute_epoch_rewards(backwards, 7)
    assert compute_epoch_rewards(scores, 7) == {addr(i): int(i < 7) for i in range(10)}


def test_zero_scores_are_omitted() -> None:
    rewards = compute_epoch_rewards({addr(1): 0, addr(2): 5}, 10)
    assert rewards == {addr(2): 10}


def test_all_zero_or_no_scores_give_no_rewards() -> None:
    assert compute_epoch_rewards({addr(1): 0, addr(2): 0}, 10) == {}
    assert compute_epoch_rewards({}, 10) == {}


def test_zero_emission_gives_zero_to_positive_scores() -> None:
    assert compute_epoch_rewards({addr(1): 3, addr(2): 0}, 0) == {addr(1): 0}


def test_rewards_keys_are_lowercase() -> None:
    checksummed = "0x52908400098527886E0F7030069857D2E4169EE7"
    assert compute_epoch_rewards({checksummed: 1}, 5) == {checksummed.lower(): 5}


def test_huge_emission_and_scores_stay_exact() -> None:
    emission = MAX_UINT256
    scores = {addr(1): 2**200 + 1, addr(2): 3**120, addr(3): 1}
    rewards = compute_epoch_rewards(scores, emission)
    assert sum(rewards.values()) == emission
    total = sum(scores.values())
    for a, score in scores.items():
        assert abs(rewards[a] * total - emission * score) < total


@pytest.mark.parametrize(
    ("scores", "emission", "field"),
    [
        ({addr(1): -1}, 10, f"epoch_scores[{addr(1)}]"),
        ({addr(1): True}, 10, f"epoch_scores[{addr(1)}]"),
        ({addr(1): 1.0}, 10, f"epoch_scores[{addr(1)}]"),
        ({addr(1): 1}, -1, "emission"),
        ({addr(1): 1}, UINT256_LIMIT, "emission"),
        ({addr(1): 1}, 10.0, "emission"),
        ({addr(1): 1}, False, "emission"),
        ({"0xAB" + "00" * 19: 1, "0xab" + "00" * 19: 1}, 10, "epoch_scores"),
    ],
)
def test_rewards_reject_bad_inputs(scores: dict[str, object], emission: object, field: str) -> None:
    with pytest.raises(RollupError) as info:
        compute_epoch_rewards(scores, emission)  # type: ignore[arg-type]
    assert info.value.field == field


def test_rewards_for_100k_nodes() -> None:
    rng = random.Random(5)
    scores = {"0x" + rng.randbytes(20).hex(): rng.randrange(10**6) for _ in range(100_000)}
    emission = 10**24 + 12345
    rewards = compute_epoch_rewards(scores, emission)
    assert sum(rewards.values()) == emission


scores_st = st.dictionaries(addresses_st, st.integers(min_value=0, max_value=10**30), max_size=30)
emission_st = st.one_of(st.integers(min_value=0, max_value=1000), st.integers(0, MAX_UINT256))


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, emission=emission_st)
def test_property_rewards_conserve_emission(scores: dict[str, int], emission: int) -> None:
    rewards = compute_epoch_rewards(scores, emission)
    if any(scores.values()):
        assert sum(rewards.values()) == emission
    else:
        assert rewards == {}
    assert set(rewards) == {a for a, s in scores.items() if s > 0}


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, emission=emission_st)
def test_property_higher_score_never_gets_less(scores: dict[str, int], emission: int) -> None:
    rewards = compute_epoch_rewards(scores, emission)
    ranked = sorted(rewards, key=lambda a: scores[a])
    for lower, higher in itertools.pairwise(ranked):
        if scores[higher] > scores[lower]:
            assert rewards[higher] >= rewards[lower]
        elif scores[higher] == scores[lower]:
            assert abs(rewards[higher] - rewards[lower]) <= 1


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, emission=emission_st)
def test_property_each_reward_is_floor_or_ceil_of_exact_share(
    scores: dict[str, int], emission: int
) -> None:
    rewards = compute_epoch_rewards(scores, emission)
    total = sum(scores.values())
    for a, reward in rewards.items():
        assert abs(reward * total - emission * scores[a]) < total


@settings(max_examples=100, deadline=None)
@given(scores=scores_st, emission=emission_st, seed=st.integers(0, 2**32))
def test_property_rewards_do_not_depend_on_mapping_order(
    scores: dict[str, int], emission: int, seed: int
) -> None:
    items = list(scores.items())
    random.Random(seed).shuffle(items)
    assert compute_epoch_rewards(dict(items), emission) == compute_epoch_rewards(scores, emission)


# --- cumulative totals -----------------------------------------------------------------------


def test_cumulative_adds_rewards_and_keeps_absent_nodes() -> None:
    checksummed = "0x52908400098527886E0F7030069857D2E4169EE7"
    previous = {addr(1): 10, checksummed: 5}
    rewards = {checksummed.lower(): 3, addr(2): 7}
    assert compute_cumulative(previous, rewards) == {
        addr(1): 10,
        checksummed.lower(): 8,
        addr(2): 7,
    }


def test_cumulative_of_nothing_is_empty() -> None:
    assert compute_cumulative({}, {}) == {}


def test_cumulative_does_not_mutate_inputs() -> None:
    previous = {addr(1): 10}
    rewards = {addr(1): 1}
    compute_cumulative(previous, rewards)
    assert previous == {addr(1): 10}
    assert rewards == {addr(1): 1}


@pytest.mark.parametrize(
    ("previous", "rewards", "field"),
    [
        ({addr(1): -1}, {}, f"previous[{addr(1)}]"),
        ({}, {addr(1): -1}, f"rewards[{addr(1)}]"),
        ({}, {addr(1): 1.0}, f"rewards[{addr(1)}]"),
        ({addr(1): True}, {}, f"previous[{addr(1)}]"),
        ({addr(1): MAX_UINT256}, {addr(1): 1}, addr(1)),
        ({addr(1): UINT256_LIMIT}, {}, addr(1)),
        ({"0xAB" + "00" * 19: 1, "0xab" + "00" * 19: 1}, {}, "previous"),
        ({}, {"0xAB" + "00" * 19: 1, "0xab" + "00" * 19: 1}, "rewards"),
    ],
)
def test_cumulative_rejects_bad_inputs(
    previous: dict[str, object], rewards: dict[str, object], field: str
) -> None:
    with pytest.raises(RollupError) as info:
        compute_cumulative(previous, rewards)  # type: ignore[arg-type]
    assert info.value.field == field


@settings(max_examples=100, deadline=None)
@given(previous=scores_st, scores=scores_st, emission=emission_st)
def test_property_epoch_rollup_end_to_end(
    previous: dict[str, int], scores: dict[str, int], emission: int
) -> None:
    rewards = compute_epoch_rewards(scores, emission)
    if any(previous.get(a, 0) + reward > MAX_UINT256 for a, reward in rewards.items()):
        with pytest.raises(RollupError, match="exceeds uint256"):  # no total the chain cannot hold
            compute_cumulative(previous, rewards)
        return
    cumulative = compute_cumulative(previous, rewards)
    assert sum(cumulative.values()) == sum(previous.values()) + sum(rewards.values())
    assert set(cumulative) == set(previous) | set(rewards)
    for a, total in cumulative.items():
        assert total >= previous.get(a, 0)
    if cumulative:
        tree = RewardTree.build(list(cumulative.items()))
        for a, total in cumulative.items():
            assert verify_proof(tree.root, a, total, tree.proof(a))
