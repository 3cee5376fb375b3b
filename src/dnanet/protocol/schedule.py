"""Time and assignment: epochs and rounds from block numbers, and VRF-based challenge assignment.

Chain blocks are the clock: ``epoch = (block - genesis) // epoch_blocks`` and an epoch has
``epoch_blocks // round_blocks`` rounds. A round's seed is the hash of its first block.

For each round a mixer computes ``(pi, beta) = ECVRF_prove(vrf_sk, alpha)`` with
``alpha = "dnanet/round" || chainId (32 bytes) || epoch (8) || round (4) || round_seed (32)``
(integers big-endian). Node ``a`` is assigned to that mixer in that round iff
``int(sha256("dnanet/assign" || beta || a)) < target`` with
``target = floor(2^256 * challenges_per_round / n_mixers)`` (capped at 2^256 - 1), so that each
node expects ``challenges_per_round`` challenges per round across the committee. Nobody can
predict beta before the round seed exists, and the mixer cannot choose it: the proof travels
with every report and anyone holding the mixer's VRF public key can check the assignment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import address_to_bytes
from dnanet.crypto.hashing import sha256
from dnanet.errors import ScheduleError
from dnanet.params import Preset

_TWO_256 = 1 << 256


@dataclass(frozen=True, order=True)
class RoundId:
    epoch: int
    round: int


def compute_epoch(block: int, preset: Preset, genesis_block: int = 0) -> int:
    """The epoch that ``block`` belongs to."""
    if block < genesis_block:
        raise ScheduleError(f"block {block} is before genesis block {genesis_block}")
    return (block - genesis_block) // preset.epoch_blocks


def compute_round(block: int, preset: Preset, genesis_block: int = 0) -> RoundId:
    """The (epoch, round) that ``block`` belongs to."""
    epoch = compute_epoch(block, preset, genesis_block)
    offset = block - genesis_block - epoch * preset.epoch_blocks
    return RoundId(epoch, offset // preset.round_blocks)


def compute_round_start_block(rid: RoundId, preset: Preset, genesis_block: int = 0) -> int:
    """The first block of a round (whose hash seeds the round)."""
    if not 0 <= rid.round < preset.rounds_per_epoch:
        raise ScheduleError(f"round {rid.round} out of range [0, {preset.rounds_per_epoch})")
    return genesis_block + rid.epoch * preset.epoch_blocks + rid.round * preset.round_blocks


def compute_epoch_end_block(epoch: int, preset: Preset, genesis_block: int = 0) -> int:
    """The last block of ``epoch``."""
    return genesis_block + (epoch + 1) * preset.epoch_blocks - 1


def compute_settlement_block(epoch: int, preset: Preset, genesis_block: int = 0) -> int:
    """The first block at which ``epoch`` may be settled (its end plus the grace period)."""
    return compute_epoch_end_block(epoch, preset, genesis_block) + 1 + preset.settlement_grace_blocks


def compute_rounds_after(previous: RoundId, last: RoundId, preset: Preset) -> list[RoundId]:
    """Every round after ``previous`` up to and including ``last``, in order (none when
    ``last`` <= ``previous``)."""
    per_epoch = preset.rounds_per_epoch
    return [RoundId(*divmod(index, per_epoch))
            for index in range(previous.epoch * per_epoch + previous.round + 1,
                               last.epoch * per_epoch + last.round + 1)]


def compute_oldest_open_round(block: int, preset: Preset, genesis_block: int = 0) -> RoundId:
    """The first round of the oldest epoch that still takes reports at ``block``: the previous
    epoch's until its settlement block (the grace period), else the current epoch's."""
    epoch = compute_epoch(block, preset, genesis_block)
    if epoch > 0 and block < compute_settlement_block(epoch - 1, preset, genesis_block):
        return RoundId(epoch - 1, 0)
    return RoundId(epoch, 0)


def compute_vrf_alpha(chain_id: int, epoch: int, round_: int, round_seed: bytes) -> bytes:
    """The VRF input of a round."""
    if len(round_seed) != 32:
        raise ScheduleError("a round seed is a 32-byte block hash", field="roundSeed")
    return (
        b"dnanet/round"
        + chain_id.to_bytes(32, "big")
        + epoch.to_bytes(8, "big")
        + round_.to_bytes(4, "big")
        + round_seed
    )


def compute_assignment_target(n_mixers: int, challenges_per_round: int) -> int:
    """The threshold below which ``H(beta || node)`` assigns a node to a mixer."""
    if n_mixers <= 0:
        raise ScheduleError("the mixer set is empty")
    return min(_TWO_256 - 1, (_TWO_256 * challenges_per_round) // n_mixers)


def compute_assignment_hash(beta: bytes, node: str) -> int:
    return int.from_bytes(sha256(b"dnanet/assign" + beta + address_to_bytes(node)), "big")


def compute_challenge_offset(beta: bytes, node: str) -> float:
    """When a mixer whose round output is ``beta`` starts challenging ``node``: a fraction in
    [0, 1) of the part of the round its challenges are spread over. Nobody can tell it before
    the mixer reveals its proof; nobody checks it (co-signers take any round of an open epoch)."""
    digest = sha256(b"dnanet/challenge-offset" + beta + address_to_bytes(node))
    return int.from_bytes(digest[:8], "big") / 2**64


def is_assigned(beta: bytes, node: str, target: int) -> bool:
    """Whether ``node`` is assigned to the mixer whose round VRF output is ``beta``."""
    return compute_assignment_hash(beta, node) < target


def compute_assigned_nodes(beta: bytes, nodes: Iterable[str], target: int) -> list[str]:
    """The nodes (in the given order) assigned to the mixer with output ``beta``."""
    return [node for node in nodes if is_assigned(beta, node, target)]


def verify_round_vrf(
    vrf_public_key: bytes, proof: bytes, chain_id: int, epoch: int, round_: int, round_seed: bytes
) -> bytes:
    """Verify a mixer's round proof; returns beta. Raises InvalidProof."""
    beta: bytes = vrf.verify(vrf_public_key, proof, compute_vrf_alpha(chain_id, epoch, round_, round_seed))
    return beta


def verify_assignment(beta: bytes, node: str, target: int) -> None:
    """Raise ScheduleError unless the node is assigned."""
    if not is_assigned(beta, node, target):
        raise ScheduleError(f"node {node} is not assigned to this mixer in this round", field="node")


__all__ = [
    "RoundId",
    "compute_assigned_nodes",
    "compute_assignment_hash",
    "compute_assignment_target",
    "compute_challenge_offset",
    "compute_epoch",
    "compute_epoch_end_block",
    "compute_oldest_open_round",
    "compute_round",
    "compute_round_start_block",
    "compute_rounds_after",
    "compute_settlement_block",
    "compute_vrf_alpha",
    "is_assigned",
    "verify_assignment",
    "verify_round_vrf",
]
