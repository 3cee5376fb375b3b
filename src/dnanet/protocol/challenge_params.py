"""From a mixer's round VRF output to the Challenge it sends one node.

``challenge_seed = sha256("dnanet/challenge" || beta || node)`` and every secret of the session
(compute seed, upload seed, download payload seed, latency nonces) is derived from it by
:func:`dnanet.protocol.challenges.derive_kind_seeds`. ``challenge_id = sha256("dnanet/session-id"
|| challenge_seed)`` names the session without revealing the seed. Sizes come from the preset's
entry for the node's declared hardware class. Anyone holding the VRF proof can rebuild the
Challenge and compare its struct hash with the report's ``challengeDigest``.
"""

from __future__ import annotations

from dnanet.crypto.eip712 import address_to_bytes
from dnanet.crypto.hashing import sha256
from dnanet.errors import ChallengeError
from dnanet.params import Preset
from dnanet.protocol.challenges import KindSeeds, derive_kind_seeds
from dnanet.protocol.messages import Challenge


def compute_challenge_seed(beta: bytes, node: str) -> bytes:
    if len(beta) != 64:
        raise ChallengeError("a VRF output (beta) is 64 bytes", field="beta")
    return sha256(b"dnanet/challenge" + beta + address_to_bytes(node))


def compute_kind_seeds(beta: bytes, node: str) -> KindSeeds:
    return derive_kind_seeds(compute_challenge_seed(beta, node))


def compute_challenge(
    *,
    beta: bytes,
    epoch: int,
    round_: int,
    mixer: str,
    node: str,
    hardware_class: int,
    preset: Preset,
) -> Challenge:
    """The Challenge that ``mixer`` sends ``node`` in (epoch, round)."""
    sizes = preset.sizes_for_class(hardware_class)
    challenge_seed = compute_challenge_seed(beta, node)
    seeds = derive_kind_seeds(challenge_seed)
    return Challenge(
        epoch=epoch,
        round=round_,
        mixer=mixer.lower(),
        node=node.lower(),
        challenge_id=sha256(b"dnanet/session-id" + challenge_seed),
        hardware_class=hardware_class,
        compute_seed=seeds.compute_seed,
        compute_n=sizes.compute_n,
        compute_rows=sizes.compute_rows,
        compute_checks=sizes.compute_checks,
        upload_seed=seeds.upload_seed,
        upload_bytes=sizes.upload_bytes,
        download_bytes=sizes.download_bytes,
        latency_echoes=sizes.latency_echoes,
    )


__all__ = ["compute_challenge", "compute_challenge_seed", "compute_kind_seeds"]
