"""``dnanet demo``: one epoch of the protocol in one process, no chain and no sockets.

Mixers draw their round assignments by VRF, challenge in-process nodes (really computing the
products, really transferring the payloads), score, batch, co-sign each other's batches after
full validation, certify, and the Validator rolls the epoch up into a reward tree whose root the
mixers co-sign. Every step calls the same ``dnanet.protocol`` functions the daemons call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnanet.cliargs import positive_int
from dnanet.crypto import vrf
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret
from dnanet.mixer.session import run_challenge_session
from dnanet.node.local import LocalTransport
from dnanet.node.prover import ChallengeProver
from dnanet.params import WEI_PER_DNA, Preset, get_preset
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_product,
)
from dnanet.protocol.epoch import EpochRollup, EpochState, process_epoch
from dnanet.protocol.messages import (
    BatchProposal,
    Outcome,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import compute_batch, compute_quorum_threshold, verify_quorum
from dnanet.protocol.rollup import verify_proof
from dnanet.protocol.schedule import (
    compute_assigned_nodes,
    compute_assignment_target,
    compute_vrf_alpha,
)
from dnanet.protocol.validation import (
    BatchRejected,
    EpochView,
    NodeInfo,
    verify_batch_proposal,
    verify_certified_batch,
)

PROFILES = ("normal", "throttled", "offline", "cheater")


@dataclass
class DemoNode:
    identity: Identity
    profile: str
    transport: LocalTransport


@dataclass
class DemoMixer:
    identity: Identity
    vrf_secret: bytes


def _seeded_identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-demo/{label}".encode()).digest())


def _throttled_compute(factor: float) -> Callable[[bytes, ComputeSize], ComputeAnswer]:
    def compute(seed: bytes, size: ComputeSize) -> ComputeAnswer:
        t0 = time.perf_counter()
        answer = compute_product(seed, size, "cpu")
        time.sleep((time.perf_counter() - t0) * (factor - 1))
        return answer

    return compute


def _cheating_compute(seed: bytes, size: ComputeSize) -> ComputeAnswer:
    """Computes only half of the rows and fills the rest with zeros."""
    product = compute_product(seed, size, "cpu").product.copy()
    product[size.rows // 2 :] = 0
    return commit_product(size, product)


def _profile_for(index: int, count: int) -> str:
    # One throttled, one offline and one cheater when there are enough nodes; the rest normal.
    special = {count - 1: "offline", count - 2: "throttled", count - 3: "cheater"} if count >= 4 else {}
    return special.get(index, "normal")


async def run_demo(
    *, nodes: int, mixers: int, preset: Preset, out: Callable[[str], Any] = print
) -> EpochRollup:
    """Run one epoch; returns the rollup (also printed)."""
    for cls, sizes in enumerate(preset.hardware_classes):
        _SIZES[cls] = (sizes.compute_n, sizes.compute_rows, sizes.download_bytes)
    domain = Domain(chain_id=31337, verifying_contract="0x" + "d7" * 20)
    committee = [
        DemoMixer(m, derive_vrf_secret(m))
        for m in (_seeded_identity(f"mixer-{i}") for i in range(mixers))
    ]
    vrf_keys = {m.identity.address: derive_vrf_public_key(m.identity) for m in committee}
    members = list(vrf_keys)
    roster: list[DemoNode] = []
    for i in range(nodes):
        identity = _seeded_identity(f"node-{i}")
        profile = _profile_for(i, nodes)
        compute: Callable[[bytes, ComputeSize], ComputeAnswer] | None = None
        if profile == "throttled":
            compute = _throttled_compute(4.0)
        elif profile == "cheater":
            compute = _cheating_compute
        prover = ChallengeProver(identity, domain, lambda: vrf_keys, compute=compute, device="cpu")
        roster.append(DemoNode(identity, profile, LocalTransport(
            prover, delay_s=0.002 if profile == "throttled" else 0.0)))
    by_address = {n.identity.address: n for n in roster}
    epoch = 0
    round_seeds = {
        r: hashlib.sha256(f"demo-block-{r * preset.round_blocks}".encode()).digest()
        for r in range(preset.rounds_per_epoch)
    }
    view = EpochView(
        domain=domain, preset=preset, epoch=epoch, mixers=vrf_keys,
        round_nodes={r: {a: NodeInfo(hardware_class=0) for a in by_address}
                     for r in round_seeds},
        round_seeds=round_seeds,
    )
    target = compute_assignment_target(len(committee), preset.challenges_per_round)
    threshold = compute_quorum_threshold(len(committee))
    certified: list[ScoreReport] = []
    out(f"dnanet demo: {nodes} nodes, {mixers} mixers (quorum {threshold}), preset {preset.name}, "
        f"{preset.rounds_per_epoch} rounds")
    for round_ in range(preset.rounds_per_epoch):
        if round_ == preset.rounds_per_epoch // 2:
            for node in roster:
                if node.profile == "offline":
                    node.transport.online = False  # drops out mid-epoch
        alpha = compute_vrf_alpha(domain.chain_id, epoch, round_, round_seeds[round_])
        sessions = []
        for mixer in committee:
            proof = vrf.prove(mixer.vrf_secret, alpha)
            beta = vrf.proof_to_hash(proof)
            for address in compute_assigned_nodes(beta, list(by_address), target):
                sessions.append((mixer, run_challenge_session(
                    by_address[address].transport, identity=mixer.identity, domain=domain,
                    preset=preset, beta=beta, vrf_proof=proof, epoch=epoch, round_=round_,
                    node=address, hardware_class=0,
                )))
        reports = await asyncio.gather(*(s for _, s in sessions))
        per_mixer: dict[str, list[ScoreReport]] = {}
        for (mixer, _), report in zip(sessions, reports, strict=True):
            per_mixer.setdefault(mixer.identity.address, []).append(report)
        for mixer in committee:
            batch_reports = per_mixer.get(mixer.identity.address, [])
            if not batch_reports:
                continue
            batch = compute_batch(epoch, round_, mixer.identity.address, batch_reports)
            proposal = BatchProposal(
                batch=batch, reports=tuple(batch_reports),
                signature=mixer.identity.sign_typed(domain, batch.hash_struct()),
            )
            signatures = [proposal.signature]
            for cosigner in committee:
                if cosigner is mixer:
                    continue
                try:
                    verify_batch_proposal(proposal, view)
                except BatchRejected as exc:
                    out(f"  {cosigner.identity.address[:10]} refused a batch: {exc}")
                    continue
                signatures.append(cosigner.identity.sign_typed(domain, batch.hash_struct()))
            certificate = QuorumCertificate(batch=batch, reports=tuple(batch_reports),
                                            signatures=tuple(signatures))
            verify_certified_batch(certificate, view)  # the Validator's intake
            certified.extend(certificate.reports)
        outcomes = [Outcome(r.outcome).name for r in reports]
        out(f"  round {round_:2d}: {len(reports)} challenges "
            f"({', '.join(f'{o.lower()} {outcomes.count(o)}' for o in sorted(set(outcomes)))})")

    rollup = process_epoch(epoch, certified, state=EpochState(epoch=epoch),
                           preset=preset)
    settlement_hash = rollup.settlement.hash_struct()
    settlement_sigs = [m.identity.sign_typed(domain, settlement_hash) for m in committee]
    signers = verify_quorum(domain, settlement_hash, settlement_sigs, members)
    _print_table(out, roster, rollup)
    out(f"epoch {epoch}: root 0x{rollup.settlement.rewards_root.hex()} "
        f"total {rollup.settlement.total / WEI_PER_DNA:,.2f} DNA, settlement signed by "
        f"{len(signers)}/{len(members)} mixers")
    for punishment in rollup.punishments:
        out(f"punishment: {punishment.node} jail={punishment.jail} "
            f"slash={punishment.slash_bps / 100:.2f}%")
    if rollup.tree is not None:
        for address, amount in rollup.cumulative.items():
            if amount and not verify_proof(rollup.settlement.rewards_root, address, amount,
                                           rollup.proof(address)):
                raise AssertionError(f"proof for {address} does not verify")
    return rollup


def _print_table(out: Callable[[str], Any], roster: list[DemoNode], rollup: EpochRollup) -> None:
    out(f"{'node':<12} {'profile':<10} {'chal':>4} {'fail':>4} {'rtt ms':>7} {'GFLOP/s':>8} "
        f"{'MB/s':>7} {'score':>8} {'reward DNA':>12}")
    for node in roster:
        address = node.identity.address
        mine = [r for r in rollup.reports if r.node == address]
        ok = [r for r in mine if r.outcome == Outcome.OK]
        entry = rollup.node_scores.get(address)
        rtt = np.median([r.rtt_us for r in ok]) / 1000 if ok else float("nan")
        gflops = (
            np.median([_flops(r) for r in ok]) / 1e9 if ok else float("nan")
        )
        mbps = np.median([_bandwidth(r) for r in ok]) / 1e6 if ok else float("nan")
        out(f"{address[:12]} {node.profile:<10} {len(mine):>4} "
            f"{entry.failures if entry else 0:>4} {rtt:>7.2f} {gflops:>8.2f} {mbps:>7.1f} "
            f"{rollup.epoch_scores.get(address, 0):>8} "
            f"{rollup.rewards.get(address, 0) / WEI_PER_DNA:>12.2f}")


_SIZES: dict[int, tuple[int, int, int]] = {}


def _flops(report: ScoreReport) -> int:
    n, rows, _ = _SIZES[report.hardware_class]
    return 2 * rows * n * n * 1_000_000 // report.compute_us


def _bandwidth(report: ScoreReport) -> int:
    _, _, nbytes = _SIZES[report.hardware_class]
    return nbytes * 1_000_000 // max(report.download_us, 1)


def _demo_command(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    asyncio.run(run_demo(nodes=args.nodes, mixers=args.mixers, preset=preset))
    return 0


def add_demo_command(sub: Any) -> None:
    demo = sub.add_parser("demo", help="one epoch of the protocol in one process (no chain)")
    demo.add_argument("--nodes", type=positive_int, default=8, help="AI nodes (default 8)")
    demo.add_argument("--mixers", type=positive_int, default=4, help="QueryMixers (default 4)")
    demo.add_argument("--preset", default="test", help="parameter preset (test, local)")
    demo.set_defaults(handler=_demo_command)


__all__ = ["PROFILES", "run_demo"]
