"""MixerSet: versioned membership, the clock, the EIP-712 domain and verify_quorum."""

from __future__ import annotations

import boa
import pytest
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnanet.crypto.eip712 import Domain

from .helpers import (
    DOMAIN_FIELDS,
    EPOCH_BLOCKS,
    SETTLEMENT_FIELDS,
    ZERO_ADDRESS,
    Network,
    block_number,
    chain_id,
    domain,
    high_s_twin,
    make_accounts,
    mine,
    partial,
    settlement_message,
    settlement_struct_hash,
)

ROOT = b"\x01" * 32
DIGEST = b"\x02" * 32
STRUCT = settlement_struct_hash(3, ROOT, 5, DIGEST)


def sigs(net: Network, signers: list, dom: dict | None = None) -> list[bytes]:
    return net.settlement_signatures(signers, 3, ROOT, 5, DIGEST, dom=dom)


def fresh_set(genesis_in: int = 10, n: int = 0):
    """A MixerSet whose genesis is `genesis_in` blocks ahead, with `n` initial members."""
    accounts = make_accounts(n, "fresh")
    return partial("MixerSet").deploy(
        block_number() + genesis_in,
        EPOCH_BLOCKS,
        [a.address for a in accounts],
        [keccak(bytes([i])) for i in range(n)],
        [f"http://m{i}" for i in range(n)],
    )


# ---------------------------------------------------------------- construction and clock


def test_initial_set_and_views(net: Network) -> None:
    ms = net.mixer_set
    addresses = [m.address for m in net.mixers]
    assert ms.members(0) == addresses
    assert ms.member_count(0) == 10 and ms.threshold(0) == 7
    assert ms.is_member(0, addresses[3]) and not ms.is_member(0, net.owner)
    assert ms.mixer_info(addresses[2]) == (keccak(b"vrf2"), "http://mixer2:7000")
    assert ms.mixer_info(net.owner) == (b"\x00" * 32, "")
    assert ms.owner() == net.owner
    assert ms.MAX_MIXERS() == 32


def test_clock(net: Network) -> None:
    ms = net.mixer_set
    g = net.genesis_block
    assert ms.GENESIS_BLOCK() == g and ms.EPOCH_BLOCKS() == EPOCH_BLOCKS
    assert ms.epoch_of_block(g) == 0
    assert ms.epoch_of_block(g + EPOCH_BLOCKS - 1) == 0
    assert ms.epoch_of_block(g + 5 * EPOCH_BLOCKS + 3) == 5
    with boa.reverts("before genesis"):
        ms.epoch_of_block(g - 1)
    net.mine_to(g + 3 * EPOCH_BLOCKS)
    assert ms.current_epoch() == 3
    net.mine_to(g + 4 * EPOCH_BLOCKS - 1)
    assert ms.current_epoch() == 3


def test_current_epoch_is_zero_before_genesis() -> None:
    ms = fresh_set(genesis_in=50)
    assert ms.current_epoch() == 0


def test_constructor_rejects_bad_arguments() -> None:
    deployer = partial("MixerSet")
    with boa.reverts("zero epoch blocks"):
        deployer.deploy(0, 0, [], [], [])
    with boa.reverts("length mismatch"):
        deployer.deploy(0, 4, [make_accounts(1, "x")[0].address], [], ["http://a"])
    with boa.reverts("length mismatch"):
        deployer.deploy(0, 4, [], [b"\x01" * 32], [])


@pytest.mark.parametrize("n", range(1, 33))
def test_threshold_is_two_thirds_floor_plus_one(n: int) -> None:
    ms = fresh_set(n=n)
    assert ms.member_count(0) == n
    assert ms.threshold(0) == (2 * n) // 3 + 1


# ---------------------------------------------------------------- EIP-712 domain


def test_domain_matches_eth_account_and_dnanet_crypto(net: Network) -> None:
    ms = net.mixer_set
    dom = domain(chain_id(), str(ms.address))
    message = settlement_message(3, ROOT, 5, DIGEST)
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": DOMAIN_FIELDS, "EpochSettlement": SETTLEMENT_FIELDS},
            "primaryType": "EpochSettlement",
            "domain": dom,
            "message": message,
        }
    )
    assert ms.domain_separator() == signable.header
    assert signable.body == STRUCT
    expected = keccak(b"\x19\x01" + signable.header + signable.body)
    assert ms.typed_data_hash(STRUCT) == expected
    py_domain = Domain(chain_id=chain_id(), verifying_contract=str(ms.address))
    assert py_domain.separator == ms.domain_separator()
    assert py_domain.digest(STRUCT) == expected


def test_eip5267_domain(net: Network) -> None:
    fields, name, version, cid, contract, salt, extensions = net.mixer_set.eip712Domain()
    assert (fields, name, version, cid) == (b"\x0f", "dnanet", "1", chain_id())
    assert contract == net.mixer_set.address
    assert salt == b"\x00" * 32 and extensions == []


def test_domain_separator_follows_chain_id(net: Network) -> None:
    before = net.mixer_set.domain_separator()
    patch = boa.env.evm.patch
    old = patch.chain_id
    patch.chain_id = old + 1
    try:
        after = net.mixer_set.domain_separator()
        assert after != before
        assert after == Domain(chain_id=old + 1, verifying_contract=str(net.mixer_set.address)).separator
    finally:
        patch.chain_id = old


# ---------------------------------------------------------------- membership changes


def test_changes_take_effect_next_epoch(net: Network, outsiders: list) -> None:
    ms = net.mixer_set
    new = outsiders[0].address
    net.mine_to_epoch(2)
    ms.add_mixer(new, b"\x05" * 32, "http://new:1", sender=net.owner)
    (event,) = ms.get_logs()
    assert (event.mixer, event.effective_epoch, event.endpoint) == (new, 3, "http://new:1")
    assert not ms.is_member(2, new) and ms.member_count(2) == 10
    assert ms.is_member(3, new) and ms.member_count(3) == 11
    assert ms.threshold(3) == 8
    gone = net.mixers[0].address
    ms.remove_mixer(gone, sender=net.owner)
    (event,) = ms.get_logs()
    assert (event.mixer, event.effective_epoch) == (gone, 3)
    assert ms.is_member(2, gone) and not ms.is_member(3, gone)
    # the last member takes the removed member's index
    assert ms.members(3)[0] == new
    assert ms.members(3)[1:] == [m.address for m in net.mixers[1:]]
    assert ms.version_count() == 2  # both changes edited the same pending version
    net.mine_to_epoch(3)
    assert ms.members(ms.current_epoch()) == ms.members(3)
    assert ms.members(2) == [m.address for m in net.mixers]


def test_edits_before_genesis_change_epoch_zero(outsiders: list) -> None:
    ms = fresh_set(genesis_in=20)
    assert ms.member_count(0) == 0
    ms.add_mixer(outsiders[0].address, b"\x01" * 32, "http://a", sender=boa.env.eoa)
    assert ms.members(0) == [outsiders[0].address]
    assert ms.version_count() == 1


def test_only_owner_changes_the_set(net: Network, outsiders: list) -> None:
    ms = net.mixer_set
    stranger = outsiders[1].address
    with boa.reverts("only owner"):
        ms.add_mixer(stranger, b"\x01" * 32, "http://a", sender=stranger)
    with boa.reverts("only owner"):
        ms.remove_mixer(net.mixers[0].address, sender=stranger)
    with boa.reverts("only owner"):
        ms.transfer_ownership(stranger, sender=stranger)
    ms.transfer_ownership(stranger, sender=net.owner)
    assert ms.owner() == stranger
    with boa.reverts("only owner"):
        ms.add_mixer(stranger, b"\x01" * 32, "http://a", sender=net.owner)
    ms.add_mixer(outsiders[2].address, b"\x01" * 32, "http://a", sender=stranger)


def test_add_mixer_rejections(net: Network, outsiders: list) -> None:
    ms = net.mixer_set
    o = net.owner
    with boa.reverts("zero address"):
        ms.add_mixer(ZERO_ADDRESS, b"\x01" * 32, "http://a", sender=o)
    with boa.reverts("empty vrf key"):
        ms.add_mixer(outsiders[0].address, b"\x00" * 32, "http://a", sender=o)
    with boa.reverts("empty endpoint"):
        ms.add_mixer(outsiders[0].address, b"\x01" * 32, "", sender=o)
    with boa.reverts("already member"):
        ms.add_mixer(net.mixers[4].address, b"\x01" * 32, "http://a", sender=o)
    with boa.reverts("not member"):
        ms.remove_mixer(outsiders[0].address, sender=o)


def test_set_is_capped(outsiders: list) -> None:
    ms = fresh_set(n=32)
    with boa.reverts("set full"):
        ms.add_mixer(outsiders[0].address, b"\x01" * 32, "http://a", sender=boa.env.eoa)


def test_readding_updates_info(net: Network) -> None:
    ms = net.mixer_set
    m = net.mixers[1].address
    ms.remove_mixer(m, sender=net.owner)
    ms.add_mixer(m, b"\x09" * 32, "http://moved:1", sender=net.owner)
    assert ms.mixer_info(m) == (b"\x09" * 32, "http://moved:1")
    assert ms.is_member(1, m)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 11)), min_size=1, max_size=14
    )
)
def test_every_past_set_stays_readable(module_net: Network, outsiders: list, steps) -> None:
    """Random changes over random epochs: members(e) always equals the model's set of e."""
    pool = [m.address for m in module_net.mixers] + [o.address for o in outsiders[:2]]
    with boa.env.anchor():
        ms = module_net.mixer_set
        scheduled = [m.address for m in module_net.mixers]  # the set of the next epoch
        changes: list[tuple[int, list[str]]] = [(-1, list(scheduled))]
        for gap, add, pick in steps:
            mine(gap * EPOCH_BLOCKS)
            addr = pool[pick]
            if add and addr not in scheduled:
                ms.add_mixer(addr, b"\x01" * 32, "http://x", sender=module_net.owner)
                scheduled.append(addr)
            elif not add and addr in scheduled:
                ms.remove_mixer(addr, sender=module_net.owner)
                i = scheduled.index(addr)
                scheduled[i] = scheduled[-1]
                scheduled.pop()
            changes.append((ms.current_epoch(), list(scheduled)))
        last = ms.current_epoch()
        for e in range(last + 2):
            # a change made during epoch c applies from epoch c + 1 on
            expected = [s for c, s in changes if c < e][-1]
            assert ms.members(e) == expected, e
            assert ms.threshold(e) == 2 * len(expected) // 3 + 1


# ---------------------------------------------------------------- verify_quorum


def test_quorum_of_threshold_signers_returns_their_bitmap(net: Network) -> None:
    signers = [net.mixers[i] for i in (9, 0, 4, 2, 7, 5, 1)]  # any order
    bitmap = net.mixer_set.verify_quorum(3, STRUCT, b"".join(sigs(net, signers)))
    assert bitmap == sum(1 << i for i in (9, 0, 4, 2, 7, 5, 1))


def test_all_members_may_sign(net: Network) -> None:
    assert net.mixer_set.verify_quorum(3, STRUCT, b"".join(sigs(net, net.mixers))) == 2**10 - 1


def test_below_threshold_reverts(net: Network) -> None:
    with boa.reverts("below threshold"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join(sigs(net, net.mixers[:6])))
    with boa.reverts("below threshold"):
        net.mixer_set.verify_quorum(3, STRUCT, b"")


def test_duplicate_signer_reverts(net: Network) -> None:
    s = sigs(net, net.mixers[:7])
    with boa.reverts("duplicate"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join([*s[:6], s[0]]))


def test_duplicate_via_malleated_twin_is_rejected_as_high_s(net: Network) -> None:
    s = sigs(net, net.mixers[:7])
    with boa.reverts("high-s"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join([*s[:6], high_s_twin(s[0])]))


def test_high_s_reverts(net: Network) -> None:
    s = sigs(net, net.mixers[:7])
    s[3] = high_s_twin(s[3])
    with boa.reverts("high-s"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join(s))


def test_non_member_reverts(net: Network, outsiders: list) -> None:
    s = sigs(net, [*net.mixers[:6], outsiders[0]])
    with boa.reverts("non-member"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join(s))


@pytest.mark.parametrize("change", ["chainId", "verifyingContract", "name", "version"])
def test_wrong_domain_reverts_as_non_member(net: Network, change: str) -> None:
    dom = domain(chain_id(), str(net.mixer_set.address))
    dom[change] = {
        "chainId": chain_id() + 1,
        "verifyingContract": str(net.distributor.address),
        "name": "other",
        "version": "2",
    }[change]
    s = sigs(net, net.mixers[:6]) + sigs(net, net.mixers[6:7], dom=dom)
    with boa.reverts("non-member"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join(s))


def test_signature_over_another_message_reverts(net: Network) -> None:
    other = settlement_struct_hash(4, ROOT, 5, DIGEST)
    with boa.reverts("non-member"):
        net.mixer_set.verify_quorum(3, other, b"".join(sigs(net, net.mixers[:7])))


def test_bad_v_reverts(net: Network) -> None:
    s = sigs(net, net.mixers[:7])
    for v in (0, 1, 29):
        bad = list(s)
        bad[2] = bad[2][:64] + bytes([v])
        with boa.reverts("bad v"):
            net.mixer_set.verify_quorum(3, STRUCT, b"".join(bad))


def test_unrecoverable_signature_reverts(net: Network) -> None:
    s = sigs(net, net.mixers[:7])
    s[0] = b"\x00" * 32 + s[0][32:]  # r = 0: ecrecover yields no address
    with boa.reverts("bad signature"):
        net.mixer_set.verify_quorum(3, STRUCT, b"".join(s))


def test_bad_signature_length_reverts(net: Network) -> None:
    s = b"".join(sigs(net, net.mixers[:7]))
    with boa.reverts("bad signature length"):
        net.mixer_set.verify_quorum(3, STRUCT, s[:-1])
    with boa.reverts("bad signature length"):
        net.mixer_set.verify_quorum(3, STRUCT, s + b"\x00")


def test_empty_set_reverts() -> None:
    ms = fresh_set(n=0)
    with boa.reverts("empty set"):
        ms.verify_quorum(0, STRUCT, b"")


def test_old_signatures_verify_against_the_old_set(net: Network, outsiders: list) -> None:
    ms = net.mixer_set
    old = net.mixers[:7]
    old_sigs = b"".join(sigs(net, old))
    net.mine_to_epoch(1)
    for m in net.mixers[:5]:
        ms.remove_mixer(m.address, sender=net.owner)
    newcomers = outsiders[:3]
    for o in newcomers:
        ms.add_mixer(o.address, b"\x01" * 32, "http://o", sender=net.owner)
    net.mine_to_epoch(6)
    # epochs 0 and 1 keep the old set; from epoch 2 on the new set applies
    assert ms.verify_quorum(0, STRUCT, old_sigs) == ms.verify_quorum(1, STRUCT, old_sigs)
    with boa.reverts("non-member"):
        ms.verify_quorum(2, STRUCT, old_sigs)
    new_members = net.mixers[5:] + newcomers  # 8 members, threshold 6
    assert ms.threshold(2) == 6
    new_sigs = b"".join(sigs(net, new_members[:6]))
    assert ms.verify_quorum(5, STRUCT, new_sigs) > 0
    with boa.reverts("non-member"):  # newcomers were no members of epoch 1
        ms.verify_quorum(1, STRUCT, b"".join(sigs(net, new_members[:7])))
