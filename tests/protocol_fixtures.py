"""Builders shared by the protocol tests: a seeded committee and nodes, real challenge sessions
over ``LocalTransport`` and the ``EpochView`` a co-signer checks reports against.

Everything is derived from fixed labels, so VRF outputs, assignments and challenge seeds are
the same on every run. Reports are frozen messages: tests tamper them with
``dataclasses.replace``, which builds a new instance (and so a fresh ``hash_struct``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret
from dnanet.mixer.session import Clock, NodeTransport, StepGate, run_challenge_session
from dnanet.node.local import LocalTransport
from dnanet.node.prover import ChallengeProver, ComputeFn
from dnanet.params import TEST, Preset
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_product,
)
from dnanet.protocol.messages import BatchProposal, QuorumCertificate, ScoreReport
from dnanet.protocol.quorum import compute_batch
from dnanet.protocol.schedule import compute_assignment_target, compute_vrf_alpha, is_assigned
from dnanet.protocol.validation import EpochView, NodeInfo

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "d7" * 20)
EPOCH = 0


def seeded_identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-tests/{label}".encode()).digest())


@dataclass(frozen=True)
class Mixer:
    identity: Identity

    @property
    def address(self) -> str:
        return self.identity.address

    @cached_property
    def vrf_secret(self) -> bytes:
        return derive_vrf_secret(self.identity)

    @cached_property
    def vrf_public_key(self) -> bytes:
        return derive_vrf_public_key(self.identity)


@cache
def make_mixers(count: int, label: str = "mixer") -> tuple[Mixer, ...]:
    return tuple(Mixer(seeded_identity(f"{label}-{i}")) for i in range(count))


@cache
def make_nodes(count: int, label: str = "node") -> tuple[Identity, ...]:
    return tuple(seeded_identity(f"{label}-{i}") for i in range(count))


def compute_round_seeds(preset: Preset = TEST, epoch: int = EPOCH) -> dict[int, bytes]:
    return {
        r: hashlib.sha256(f"dnanet-tests/block/{epoch}/{r}".encode()).digest()
        for r in range(preset.rounds_per_epoch)
    }


def make_view(
    mixers: Iterable[Mixer],
    nodes: Mapping[str, NodeInfo] | Iterable[Identity],
    *,
    preset: Preset = TEST,
    epoch: int = EPOCH,
    round_seeds: Mapping[int, bytes] | None = None,
) -> EpochView:
    """A fresh view (its own VRF cache); nodes given as identities are active, class 0; the
    same registry in every round."""
    if not isinstance(nodes, Mapping):
        nodes = {n.address: NodeInfo(hardware_class=0) for n in nodes}
    seeds = dict(round_seeds if round_seeds is not None else compute_round_seeds(preset, epoch))
    return EpochView(
        domain=DOMAIN,
        preset=preset,
        epoch=epoch,
        mixers={m.address: m.vrf_public_key for m in mixers},
        round_nodes={r: dict(nodes) for r in seeds},
        round_seeds=seeds,
    )


@cache
def prove_round(mixer: Mixer, round_: int, epoch: int = EPOCH) -> tuple[bytes, bytes]:
    """The mixer's (proof, beta) for a round of the default round seeds."""
    seed = compute_round_seeds(TEST, epoch)[round_]
    proof = vrf.prove(mixer.vrf_secret, compute_vrf_alpha(DOMAIN.chain_id, epoch, round_, seed))
    return proof, vrf.proof_to_hash(proof)


def find_pairs(
    mixers: Iterable[Mixer],
    nodes: Iterable[Identity],
    *,
    assigned: bool,
    preset: Preset = TEST,
    epoch: int = EPOCH,
) -> list[tuple[Mixer, int, Identity]]:
    """Every (mixer, round, node) whose assignment is ``assigned``, in a fixed order."""
    mixers, nodes = list(mixers), list(nodes)
    target = compute_assignment_target(len(mixers), preset.challenges_per_round)
    return [
        (mixer, round_, node)
        for round_ in range(preset.rounds_per_epoch)
        for mixer in mixers
        for node in nodes
        if is_assigned(prove_round(mixer, round_, epoch)[1], node.address, target) == assigned
    ]


def make_prover(
    node: Identity, mixers: Iterable[Mixer], compute: ComputeFn | None = None
) -> ChallengeProver:
    members = {m.address: m.vrf_public_key for m in mixers}
    return ChallengeProver(node, DOMAIN, lambda: members, compute=compute, device="cpu")


def cheating_compute(wrong_fraction: float) -> ComputeFn:
    """A node that gets the last ``wrong_fraction`` of the rows wrong (off by one)."""

    def compute(seed: bytes, size: ComputeSize) -> ComputeAnswer:
        product = compute_product(seed, size, "cpu").product.copy()
        product[size.rows - round(size.rows * wrong_fraction) :] += 1
        return commit_product(size, product)

    return compute


def run_session(
    transport: NodeTransport,
    mixer: Mixer,
    round_: int,
    node: str,
    *,
    preset: Preset = TEST,
    epoch: int = EPOCH,
    hardware_class: int = 0,
    clock: Clock | None = None,
    after: Callable[[], None] | None = None,
    compute_gate: StepGate | None = None,
) -> ScoreReport:
    """One real challenge session, driven to its report; ``after`` runs inside the loop."""
    proof, beta = prove_round(mixer, round_, epoch)
    timing: dict[str, Any] = {} if clock is None else {"clock": clock}
    if compute_gate is not None:
        timing["compute_gate"] = compute_gate

    async def go() -> ScoreReport:
        try:
            return await run_challenge_session(
                transport, identity=mixer.identity, domain=DOMAIN, preset=preset, beta=beta,
                vrf_proof=proof, epoch=epoch, round_=round_, node=node,
                hardware_class=hardware_class, **timing,
            )
        finally:
            if after is not None:
                after()

    return asyncio.run(go())


def run_honest_session(
    mixers: Iterable[Mixer], mixer: Mixer, round_: int, node: Identity, *, preset: Preset = TEST
) -> ScoreReport:
    transport = LocalTransport(make_prover(node, mixers))
    return run_session(transport, mixer, round_, node.address, preset=preset)


def make_proposal(mixer: Mixer, reports: Iterable[ScoreReport]) -> BatchProposal:
    """A batch over ``reports`` (all of one round of ``mixer``) signed by its originator."""
    reports = tuple(reports)
    batch = compute_batch(reports[0].epoch, reports[0].round, mixer.address, reports)
    return BatchProposal(
        batch=batch, reports=reports,
        signature=mixer.identity.sign_typed(DOMAIN, batch.hash_struct()),
    )


def make_certificate(
    proposal: BatchProposal, signers: Iterable[Mixer]
) -> QuorumCertificate:
    struct_hash = proposal.batch.hash_struct()
    return QuorumCertificate(
        batch=proposal.batch,
        reports=proposal.reports,
        signatures=tuple(m.identity.sign_typed(DOMAIN, struct_hash) for m in signers),
    )


__all__ = [
    "DOMAIN",
    "EPOCH",
    "Mixer",
    "cheating_compute",
    "compute_round_seeds",
    "find_pairs",
    "make_certificate",
    "make_mixers",
    "make_nodes",
    "make_proposal",
    "make_prover",
    "make_view",
    "prove_round",
    "run_honest_session",
    "run_session",
]
