"""Epochs and rounds from block numbers, and VRF-based challenge assignment."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto import vrf
from dnanet.crypto.hashing import sha256
from dnanet.crypto.keys import Identity
from dnanet.errors import InvalidProof, ScheduleError
from dnanet.params import LOCAL, MAINNET, TEST, Preset
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_hash,
    compute_assignment_target,
    compute_challenge_offset,
    compute_epoch,
    compute_epoch_end_block,
    compute_oldest_open_round,
    compute_round,
    compute_round_start_block,
    compute_rounds_after,
    compute_settlement_block,
    compute_vrf_alpha,
    is_assigned,
    verify_assignment,
    verify_round_vrf,
)

PRESETS = [TEST, LOCAL, MAINNET]
CHAIN_ID = 31337
NODES = [Identity.from_entropy(sha256(b"node-%d" % i)).address for i in range(8)]
VRF_SECRET = sha256(b"mixer-0/vrf")
VRF_PUBLIC = vrf.public_key(VRF_SECRET)
SEED = sha256(b"block 96")

presets = st.sampled_from(PRESETS)


# -- epochs and rounds --------------------------------------------------------------------------
@settings(max_examples=300)
@given(preset=presets, genesis=st.integers(0, 10**7), offset=st.integers(0, 10**8))
def test_a_block_lies_in_its_round(preset: Preset, genesis: int, offset: int) -> None:
    block = genesis + offset
    rid = compute_round(block, preset, genesis)
    assert rid.epoch == compute_epoch(block, preset, genesis) == offset // preset.epoch_blocks
    assert 0 <= rid.round < preset.rounds_per_epoch
    start = compute_round_start_block(rid, preset, genesis)
    assert start <= block < start + preset.round_blocks
    assert compute_round(start, preset, genesis) == rid
    assert compute_round(start + preset.round_blocks - 1, preset, genesis) == rid
    end = compute_epoch_end_block(rid.epoch, preset, genesis)
    assert block <= end and compute_epoch(end + 1, preset, genesis) == rid.epoch + 1


@settings(max_examples=50)
@given(preset=presets, genesis=st.integers(0, 10**6), epoch=st.integers(0, 10**5))
def test_an_epoch_has_rounds_per_epoch_consecutive_rounds(
    preset: Preset, genesis: int, epoch: int
) -> None:
    first = genesis + epoch * preset.epoch_blocks
    starts = [
        compute_round_start_block(RoundId(epoch, r), preset, genesis)
        for r in range(preset.rounds_per_epoch)
    ]
    assert starts == list(range(first, first + preset.epoch_blocks, preset.round_blocks))
    assert preset.rounds_per_epoch * preset.round_blocks == preset.epoch_blocks
    rounds = {compute_round(b, preset, genesis) for b in range(first, first + preset.epoch_blocks)}
    assert rounds == {RoundId(epoch, r) for r in range(preset.rounds_per_epoch)}
    assert compute_epoch_end_block(epoch, preset, genesis) == first + preset.epoch_blocks - 1
    assert compute_settlement_block(epoch, preset, genesis) == (
        first + preset.epoch_blocks + preset.settlement_grace_blocks
    )


@settings(max_examples=200)
@given(preset=presets, genesis=st.integers(0, 10**6), first=st.integers(0, 10**6),
       count=st.integers(-3, 40))
def test_rounds_after_are_every_round_in_between_in_order(
    preset: Preset, genesis: int, first: int, count: int
) -> None:
    """The rounds after one round up to another are those whose start blocks lie between."""
    per_epoch = preset.rounds_per_epoch
    previous = RoundId(*divmod(first, per_epoch))
    last = RoundId(*divmod(max(0, first + count), per_epoch))
    rounds = compute_rounds_after(previous, last, preset)
    assert len(rounds) == max(0, count)
    assert rounds == sorted(rounds) and all(previous < r <= last for r in rounds)
    starts = [compute_round_start_block(r, preset, genesis) for r in [previous, *rounds]]
    assert all(b - a == preset.round_blocks for a, b in itertools.pairwise(starts))


@settings(max_examples=200)
@given(preset=presets, genesis=st.integers(0, 10**6), offset=st.integers(0, 10**7))
def test_the_oldest_open_round_opens_the_oldest_epoch_not_yet_closed(
    preset: Preset, genesis: int, offset: int
) -> None:
    block = genesis + offset
    oldest = compute_oldest_open_round(block, preset, genesis)
    assert oldest.round == 0
    assert block < compute_settlement_block(oldest.epoch, preset, genesis)
    assert oldest.epoch == 0 or block >= compute_settlement_block(oldest.epoch - 1, preset,
                                                                 genesis)
    assert oldest.epoch in (compute_epoch(block, preset, genesis) - 1,
                            compute_epoch(block, preset, genesis))


def test_rounds_after_and_the_oldest_open_round_worked_example() -> None:
    # TEST: 4 rounds an epoch, a 2-block grace period; genesis at block 100.
    assert compute_rounds_after(RoundId(0, 2), RoundId(1, 1), TEST) == [
        RoundId(0, 3), RoundId(1, 0), RoundId(1, 1)]
    assert compute_rounds_after(RoundId(1, 1), RoundId(1, 1), TEST) == []
    assert compute_oldest_open_round(131, TEST, 100) == RoundId(0, 0)
    assert compute_oldest_open_round(133, TEST, 100) == RoundId(0, 0)  # epoch 0's grace
    assert compute_oldest_open_round(134, TEST, 100) == RoundId(1, 0)


def test_challenge_offsets_are_fractions_spread_evenly_and_drawn_from_the_vrf_output() -> None:
    betas = [sha256(b"beta-%d" % i) for i in range(128)]
    offsets = [compute_challenge_offset(beta, node) for beta in betas for node in NODES]
    assert all(0 <= x < 1 for x in offsets)
    assert offsets == [compute_challenge_offset(beta, node) for beta in betas for node in NODES]
    assert len(set(offsets)) == len(offsets)
    # Spread over the whole range: each tenth holds about a tenth of them.
    tenths = [sum(1 for x in offsets if i / 10 <= x < (i + 1) / 10) for i in range(10)]
    assert min(tenths) > len(offsets) / 10 * 0.7 and max(tenths) < len(offsets) / 10 * 1.3


def test_test_preset_worked_example() -> None:
    # TEST: 32-block epochs of 4 rounds of 8 blocks; genesis at block 100.
    assert TEST.rounds_per_epoch == 4
    assert compute_round(100, TEST, 100) == RoundId(0, 0)
    assert compute_round(107, TEST, 100) == RoundId(0, 0)
    assert compute_round(108, TEST, 100) == RoundId(0, 1)
    assert compute_round(131, TEST, 100) == RoundId(0, 3)
    assert compute_round(132, TEST, 100) == RoundId(1, 0)
    assert compute_round_start_block(RoundId(2, 3), TEST, 100) == 100 + 64 + 24
    assert compute_settlement_block(0, TEST, 100) == 132 + TEST.settlement_grace_blocks


def test_blocks_before_genesis_and_rounds_out_of_range_are_rejected() -> None:
    with pytest.raises(ScheduleError, match="before genesis"):
        compute_epoch(99, TEST, 100)
    with pytest.raises(ScheduleError, match="before genesis"):
        compute_round(0, TEST, 1)
    for bad in (-1, TEST.rounds_per_epoch):
        with pytest.raises(ScheduleError, match="out of range"):
            compute_round_start_block(RoundId(0, bad), TEST)


def test_round_ids_order_by_epoch_then_round() -> None:
    assert RoundId(0, 3) < RoundId(1, 0) < RoundId(1, 1)


# -- VRF input ----------------------------------------------------------------------------------
def test_alpha_layout() -> None:
    alpha = compute_vrf_alpha(CHAIN_ID, 5, 3, SEED)
    assert len(alpha) == 12 + 32 + 8 + 4 + 32
    assert alpha[:12] == b"dnanet/round"
    assert alpha[12:44] == bytes(30) + bytes([0x7A, 0x69])  # 31337 = 0x7a69, big-endian
    assert alpha[44:52] == bytes(7) + b"\x05"
    assert alpha[52:56] == bytes(3) + b"\x03"
    assert alpha[56:] == SEED


@settings(max_examples=100)
@given(
    a=st.tuples(st.integers(0, 2**256 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
    b=st.tuples(st.integers(0, 2**256 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
    seed=st.binary(min_size=32, max_size=32),
)
def test_alpha_is_injective(a: tuple[int, int, int], b: tuple[int, int, int], seed: bytes) -> None:
    # Fixed-width fields: distinct (chainId, epoch, round) never share an alpha.
    assert (compute_vrf_alpha(*a, seed) == compute_vrf_alpha(*b, seed)) == (a == b)


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_alpha_needs_a_32_byte_seed(seed: bytes) -> None:
    with pytest.raises(ScheduleError) as exc:
        compute_vrf_alpha(CHAIN_ID, 0, 0, seed)
    assert exc.value.field == "roundSeed"


# -- assignment ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_mixers", "per_round", "target"),
    [
        (1, 1, 2**256 - 1),  # capped: a lone mixer challenges everyone
        (2, 1, 2**255),
        (4, 1, 2**254),
        (3, 1, 2**256 // 3),
        (3, 2, 2 * 2**256 // 3),
        (2, 3, 2**256 - 1),  # capped
        (5, 0, 0),
    ],
)
def test_assignment_target(n_mixers: int, per_round: int, target: int) -> None:
    assert compute_assignment_target(n_mixers, per_round) == target


def test_assignment_target_needs_mixers() -> None:
    for n in (0, -1):
        with pytest.raises(ScheduleError, match="empty"):
            compute_assignment_target(n, 1)


def test_assignment_hash_layout() -> None:
    beta = sha256(b"beta") * 2
    expected = sha256(b"dnanet/assign" + beta + bytes.fromhex(NODES[0][2:]))
    assert compute_assignment_hash(beta, NODES[0]) == int.from_bytes(expected, "big")
    # The address's case does not matter.
    assert compute_assignment_hash(beta, NODES[0].upper().replace("0X", "0x")) == int.from_bytes(
        expected, "big"
    )


def test_assigned_nodes_keep_order_and_agree_with_is_assigned() -> None:
    target = compute_assignment_target(2, 1)
    for i in range(20):
        beta = sha256(b"beta-%d" % i) * 2
        assigned = compute_assigned_nodes(beta, NODES, target)
        assert assigned == [n for n in NODES if is_assigned(beta, n, target)]
        assert assigned == [n for n in NODES if compute_assignment_hash(beta, n) < target]
    assert compute_assigned_nodes(sha256(b"x") * 2, NODES, 0) == []
    assert compute_assigned_nodes(sha256(b"x") * 2, NODES, 2**256 - 1) == NODES


@pytest.mark.parametrize(("n_mixers", "per_round"), [(5, 1), (3, 2), (16, 1), (8, 3)])
def test_empirical_assignment_rate(n_mixers: int, per_round: int) -> None:
    rng = random.Random(n_mixers * 1000 + per_round)
    target = compute_assignment_target(n_mixers, per_round)
    p = min(1.0, per_round / n_mixers)
    trials = 20_000
    hits = sum(
        is_assigned(rng.randbytes(64), "0x" + rng.randbytes(20).hex(), target)
        for _ in range(trials)
    )
    # Binomial: mean trials * p, standard deviation sqrt(trials * p * (1 - p)); allow 5 sigma.
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= 5 * sigma


def test_expected_challenges_per_node_per_round_across_the_committee() -> None:
    # Each of n mixers has its own beta; a node should expect challenges_per_round of them.
    rng = random.Random(7)
    n_mixers = 6
    target = compute_assignment_target(n_mixers, TEST.challenges_per_round)
    rounds = 3_000
    total = 0
    for _ in range(rounds):
        betas = [rng.randbytes(64) for _ in range(n_mixers)]
        total += sum(is_assigned(beta, NODES[0], target) for beta in betas)
    # Sum of n Bernoulli(1/n) per round: variance n * (1/n) * (1 - 1/n) per round.
    sigma = math.sqrt(rounds * (1 - 1 / n_mixers))
    assert abs(total - rounds * TEST.challenges_per_round) <= 5 * sigma


# -- VRF proofs ---------------------------------------------------------------------------------
def _prove(epoch: int, round_: int, seed: bytes = SEED, chain_id: int = CHAIN_ID) -> bytes:
    return vrf.prove(VRF_SECRET, compute_vrf_alpha(chain_id, epoch, round_, seed))


def test_verify_round_vrf_round_trip() -> None:
    proof = _prove(4, 2)
    beta = verify_round_vrf(VRF_PUBLIC, proof, CHAIN_ID, 4, 2, SEED)
    assert len(beta) == 64
    assert beta == vrf.proof_to_hash(proof)
    # Deterministic: the mixer cannot pick among several outputs.
    assert _prove(4, 2) == proof


@pytest.mark.parametrize(
    ("chain_id", "epoch", "round_", "seed"),
    [
        (CHAIN_ID, 4, 3, SEED),  # another round
        (CHAIN_ID, 5, 2, SEED),  # another epoch
        (1, 4, 2, SEED),  # another chain
        (CHAIN_ID, 4, 2, sha256(b"block 97")),  # another round seed
    ],
    ids=["round", "epoch", "chain", "seed"],
)
def test_proof_for_another_round_is_rejected(
    chain_id: int, epoch: int, round_: int, seed: bytes
) -> None:
    proof = _prove(4, 2)
    with pytest.raises(InvalidProof):
        verify_round_vrf(VRF_PUBLIC, proof, chain_id, epoch, round_, seed)


def test_proof_under_another_key_or_tampered_is_rejected() -> None:
    proof = _prove(4, 2)
    other = vrf.public_key(sha256(b"mixer-1/vrf"))
    with pytest.raises(InvalidProof):
        verify_round_vrf(other, proof, CHAIN_ID, 4, 2, SEED)
    tampered = proof[:-1] + bytes([proof[-1] ^ 1])
    with pytest.raises(InvalidProof):
        verify_round_vrf(VRF_PUBLIC, tampered, CHAIN_ID, 4, 2, SEED)


def test_verify_assignment_with_a_real_vrf_output() -> None:
    target = compute_assignment_target(4, 1)
    beta = verify_round_vrf(VRF_PUBLIC, _prove(4, 2), CHAIN_ID, 4, 2, SEED)
    many = [Identity.from_entropy(sha256(b"node-%d" % i)).address for i in range(40)]
    assigned = compute_assigned_nodes(beta, many, target)
    unassigned = [n for n in many if n not in assigned]
    # With p = 1/4 over 40 nodes both lists are non-empty (fixed seeds: checked, not hoped).
    assert assigned and unassigned
    for node in assigned:
        verify_assignment(beta, node, target)
    for node in unassigned:
        with pytest.raises(ScheduleError) as exc:
            verify_assignment(beta, node, target)
        assert exc.value.field == "node"
