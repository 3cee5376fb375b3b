"""From a mixer's round VRF output to the Challenge it sends one node.

``challenge_seed = sha256("dnanet/challenge" || beta || node)`` and every secret of the session
(compute seed, upload seed, download payload seed, latency nonces) is derived from it by
:func:`dnanet.protocol.challenges.derive_kind_seeds`, and the compute step's attempt seeds from
the compute seed (:func:`~dnanet.protocol.challenges.derive_attempt_seeds`). ``challenge_id =
sha256("dnanet/session-id" || challenge_seed)`` names the session without revealing the seed;
the compute and upload seeds appear only as commitments (``compute_seed_hash`` commits to the
first attempt's seed), revealed at their steps. Sizes come from the preset's entry for the
node's declared hardware class. Anyone holding the VRF proof can rebuild the Challenge and
compare its struct hash with the report's ``challengeDigest``.

A node takes a challenge only in its round (``verify_challenge_timeliness``): not before the
oldest round whose epoch still takes reports (the co-signers' own rule, so a mixer may
challenge a round it missed while its epoch is open), and not past the round after the node's
view of the chain's head (which may lag the mixer's by a fraction of a round).
"""

from __future__ import annotations

from dnanet.crypto.eip712 import address_to_bytes
from dnanet.crypto.hashing import sha256
from dnanet.errors import ChallengeError, ConfigError, ScheduleError
from dnanet.params import Preset
from dnanet.protocol.challenges import (
    KindSeeds,
    compute_seed_hash,
    derive_attempt_seeds,
    derive_kind_seeds,
)
from dnanet.protocol.messages import Challenge
from dnanet.protocol.schedule import RoundId, compute_oldest_open_round, compute_round


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
        compute_seed_hash=compute_seed_hash(
            derive_attempt_seeds(seeds.compute_seed, sizes.compute_attempts)[0]),
        compute_n=sizes.compute_n,
        compute_rows=sizes.compute_rows,
        compute_checks=sizes.compute_checks,
        compute_attempts=sizes.compute_attempts,
        upload_seed_hash=compute_seed_hash(seeds.upload_seed),
        upload_bytes=sizes.upload_bytes,
        download_bytes=sizes.download_bytes,
        latency_echoes=sizes.latency_echoes,
    )


SIZE_FIELDS = (("compute_n", "computeN"), ("compute_rows", "computeRows"),
               ("compute_checks", "computeChecks"), ("compute_attempts", "computeAttempts"),
               ("upload_bytes", "uploadBytes"), ("download_bytes", "downloadBytes"),
               ("latency_echoes", "latencyEchoes"))
"""The sizes a Challenge carries: attribute of ``ChallengeSizes`` and ``Challenge``, wire name."""


def verify_challenge_sizes(challenge: Challenge, preset: Preset) -> None:
    """Raise ChallengeError (naming the field) unless ``challenge`` asks exactly the work the
    preset sets for its hardware class: a node checks it before any work, so a mixer cannot
    make it compute or send more than the protocol asks (co-signers would refuse the report,
    but only after the node had done the work)."""
    try:
        sizes = preset.sizes_for_class(challenge.hardware_class)
    except ConfigError as exc:
        raise ChallengeError(exc.detail, field="hardwareClass") from None
    for attr, name in SIZE_FIELDS:
        asked, expected = getattr(challenge, attr), getattr(sizes, attr)
        if asked != expected:
            raise ChallengeError(f"{asked} is not the preset's {expected} for hardware class "
                                 f"{challenge.hardware_class}", field=name)


def compute_round_claim(challenge: Challenge) -> bytes:
    """The key under which a node records that ``challenge``'s mixer challenged it in its round:
    a mixer's VRF output gives one challenge of a node a round, so a second one for the same
    (mixer, epoch, round), under any id, is not the schedule's and is refused."""
    return sha256(b"dnanet/mixer-round" + address_to_bytes(challenge.mixer)
                  + challenge.epoch.to_bytes(8, "big") + challenge.round.to_bytes(4, "big"))


def compute_max_sessions_per_mixer(preset: Preset) -> int:
    """How many sessions one mixer may have open with one node at once: a session may last the
    challenge timeout, and an honest mixer starts one a round (and may catch up on a round it
    missed), so as many as there are rounds in a timeout, and two more. Mainnet 3, local 6,
    test 27: one mixer cannot take every slot of a node, nor hold the memory of every
    session's products."""
    round_ms = preset.round_blocks * preset.block_interval_ms
    return -(-preset.challenge_timeout_ms // round_ms) + 2


def compute_challenge_window(head_block: int, preset: Preset,
                             genesis_block: int = 0) -> tuple[RoundId, RoundId]:
    """The first and last round a node takes challenges for when the chain's head (as it last
    read it) is ``head_block``: from the oldest round still open for reports to the round
    after the head's."""
    head = max(head_block, genesis_block)
    oldest = compute_oldest_open_round(head, preset, genesis_block)
    current = compute_round(head, preset, genesis_block)
    epoch, round_ = divmod(current.epoch * preset.rounds_per_epoch + current.round + 1,
                           preset.rounds_per_epoch)
    return oldest, RoundId(epoch, round_)


def verify_challenge_timeliness(challenge: Challenge, head_block: int, preset: Preset,
                                genesis_block: int = 0) -> None:
    """Raise ScheduleError unless ``challenge`` is for a round in the window of
    ``compute_challenge_window``."""
    if not 0 <= challenge.round < preset.rounds_per_epoch:
        raise ScheduleError(f"round {challenge.round} is outside [0, {preset.rounds_per_epoch})",
                            field="round")
    oldest, newest = compute_challenge_window(head_block, preset, genesis_block)
    rid = RoundId(challenge.epoch, challenge.round)
    if rid < oldest:
        raise ScheduleError(
            f"challenge is for epoch {rid.epoch} round {rid.round}, before epoch {oldest.epoch} "
            f"round {oldest.round}, the oldest round still open for reports", field="round")
    if rid > newest:
        raise ScheduleError(
            f"challenge is for epoch {rid.epoch} round {rid.round}, after epoch {newest.epoch} "
            f"round {newest.round}, the next round at the chain's head", field="round")


__all__ = [
    "compute_challenge",
    "compute_challenge_seed",
    "compute_challenge_window",
    "compute_kind_seeds",
    "compute_max_sessions_per_mixer",
    "compute_round_claim",
    "verify_challenge_sizes",
    "verify_challenge_timeliness",
]
