"""Benchmarks of the protocol core, each a ratio or figure measured side by side in one run.

    python bench/core.py            # a table
    python bench/core.py --json     # the table, then one JSON object on the last line

Keys (targets in brackets): vrf_verify_over_ed25519_verify [<= 6],
quorum_verify_over_raw_ecrecover [<= 1.3], cosign_validations_per_s [>= 3000],
rollup_1m_reports_s [<= 15], merkle_100k_leaves_s [<= 2], compute_verify_over_prove [<= 0.05].
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import coincurve
import nacl.signing

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret
from dnanet.mixer.session import run_challenge_session
from dnanet.node.local import LocalTransport
from dnanet.node.prover import ChallengeProver
from dnanet.params import MAINNET, TEST
from dnanet.protocol.challenges import derive_kind_seeds
from dnanet.protocol.challenges.compute import (
    ComputeSize,
    compute_product,
    derive_check_indices,
    open_rows,
    verify_openings,
)
from dnanet.protocol.epoch import EpochState, process_epoch
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.quorum import verify_quorum
from dnanet.protocol.rollup import RewardTree
from dnanet.protocol.schedule import compute_vrf_alpha
from dnanet.protocol.validation import EpochView, NodeInfo, verify_score_report


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Minimum wall time of ``repeat`` runs (the least disturbed by a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_vrf(n: int = 200) -> dict[str, float]:
    sk = hashlib.sha256(b"bench-vrf").digest()
    pk = vrf.public_key(sk)
    proofs = [vrf.prove(sk, b"alpha-%d" % i) for i in range(n)]
    signer = nacl.signing.SigningKey(sk)
    signed = [signer.sign(b"alpha-%d" % i) for i in range(n)]
    verify_key = signer.verify_key
    t_vrf = best_of(lambda: [vrf.verify(pk, p, b"alpha-%d" % i) for i, p in enumerate(proofs)])
    t_ed = best_of(lambda: [verify_key.verify(s) for s in signed])
    return {"vrf_verify_us": t_vrf / n * 1e6, "ed25519_verify_us": t_ed / n * 1e6,
            "vrf_verify_over_ed25519_verify": t_vrf / t_ed}


def bench_quorum(rounds: int = 300) -> dict[str, float]:
    domain = Domain(31337, "0x" + "11" * 20)
    members = [Identity.from_entropy(hashlib.sha256(b"m%d" % i).digest()) for i in range(10)]
    struct_hashes = [hashlib.sha256(b"s%d" % i).digest() for i in range(rounds)]
    certs = [[m.sign_typed(domain, h) for m in members[:7]] for h in struct_hashes]
    addresses = [m.address for m in members]
    digests = [domain.digest(h) for h in struct_hashes]

    def quorum() -> None:
        for h, sigs in zip(struct_hashes, certs, strict=True):
            verify_quorum(domain, h, sigs, addresses)

    def raw() -> None:
        for d, sigs in zip(digests, certs, strict=True):
            for s in sigs:
                coincurve.PublicKey.from_signature_and_message(
                    s[:64] + bytes([s[64] - 27]), d, hasher=None)

    t_q, t_raw = best_of(quorum), best_of(raw)
    return {"quorum_7_of_10_us": t_q / rounds * 1e6, "raw_7_ecrecover_us": t_raw / rounds * 1e6,
            "quorum_verify_over_raw_ecrecover": t_q / t_raw}


def _reports_for_cosign(n_nodes: int) -> tuple[list[ScoreReport], EpochView]:
    """One mixer's real reports for one round (TEST sizes), and the co-signer's view."""
    preset = replace(TEST, challenges_per_round=1)
    domain = Domain(31337, "0x" + "22" * 20)
    mixer = Identity.from_entropy(hashlib.sha256(b"bench-mixer").digest())
    nodes = [Identity.from_entropy(hashlib.sha256(b"node%d" % i).digest()) for i in range(n_nodes)]
    vrf_keys = {mixer.address: derive_vrf_public_key(mixer)}
    seed = hashlib.sha256(b"round-seed").digest()
    proof = vrf.prove(derive_vrf_secret(mixer), compute_vrf_alpha(domain.chain_id, 0, 0, seed))
    beta = vrf.proof_to_hash(proof)

    async def run_all() -> list[ScoreReport]:
        out = []
        for node in nodes:
            prover = ChallengeProver(node, domain, lambda: vrf_keys, device="cpu")
            out.append(await run_challenge_session(
                LocalTransport(prover), identity=mixer, domain=domain, preset=preset, beta=beta,
                vrf_proof=proof, epoch=0, round_=0, node=node.address, hardware_class=0))
        return out

    reports = asyncio.run(run_all())
    assert all(r.outcome == Outcome.OK for r in reports)
    view = EpochView(domain=domain, preset=preset, epoch=0, mixers=vrf_keys,
                     round_nodes={0: {n.address: NodeInfo(0) for n in nodes}},
                     round_seeds={0: seed})
    return reports, view


def bench_cosign(n_nodes: int = 400) -> dict[str, float]:
    reports, view = _reports_for_cosign(n_nodes)

    def validate() -> None:
        # A co-signer receives a batch: fresh report objects (decoded from the wire, no cached
        # hashes) and a fresh view, so the round's VRF proof is verified once per batch.
        fresh = [ScoreReport.from_json(r.to_json()) for r in reports]
        local_view = replace(view, beta_cache={})
        t0 = time.perf_counter()
        for r in fresh:
            verify_score_report(r, local_view)
        timings.append(time.perf_counter() - t0)

    timings: list[float] = []
    for _ in range(5):
        validate()
    per_report = min(timings) / n_nodes
    return {"cosign_report_us": per_report * 1e6, "cosign_validations_per_s": 1 / per_report}


def bench_rollup(n_reports: int = 1_000_000, n_nodes: int = 100_000) -> dict[str, float]:
    rng = random.Random(7)
    nodes = ["0x" + rng.randbytes(20).hex() for _ in range(n_nodes)]
    mixers = ["0x" + rng.randbytes(20).hex() for _ in range(100)]
    template = ScoreReport(
        epoch=0, round=0, mixer=mixers[0], node=nodes[0], hardware_class=0,
        vrf_proof=b"\x01" * 80, challenge_digest=b"\x02" * 32, echo_digest=b"\x03" * 32,
        compute_root=b"\x04" * 32, download_digest=b"\x05" * 32, upload_digest=b"\x06" * 32,
        response_signature=b"\x07" * 65, rtt_us=1000, compute_us=1000, download_us=1000,
        upload_us=1000, outcome=0, reason="", evidence=b"", score=0)
    reports = []
    # 1M reports: node i is challenged by 10 (round, mixer) pairs; each report's struct hash is
    # set as the Validator holds it after intake (it verified and hashed every report then).
    for k in range(n_reports):
        node = nodes[k % n_nodes]
        j = k // n_nodes
        r = replace(template, round=j % 16, mixer=mixers[(j * 7 + k) % 100], node=node,
                    score=rng.randrange(1, 1_000_000))
        object.__setattr__(r, "_hash_struct", hashlib.sha256(b"%d" % k).digest())
        reports.append(r)
    t0 = time.perf_counter()
    rollup = process_epoch(0, reports, state=EpochState(epoch=0), preset=MAINNET)
    elapsed = time.perf_counter() - t0
    assert rollup.tree is not None and len(rollup.tree) == n_nodes
    assert rollup.settlement.total == MAINNET.epoch_emission(0)
    return {"rollup_1m_reports_s": elapsed}


def bench_merkle(n: int = 100_000) -> dict[str, float]:
    rng = random.Random(11)
    entries = [("0x" + rng.randbytes(20).hex(), rng.randrange(1, 10**24)) for _ in range(n)]
    return {"merkle_100k_leaves_s": best_of(lambda: RewardTree.build(entries), 3)}


def bench_compute() -> dict[str, float]:
    sizes = MAINNET.hardware_classes[0]
    size = ComputeSize(n=sizes.compute_n, rows=sizes.compute_rows, checks=sizes.compute_checks)
    seeds = derive_kind_seeds(hashlib.sha256(b"bench-compute").digest())
    prove_times, verify_times = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        answer = compute_product(seeds.compute_seed, size, "cpu", workers=os.cpu_count() or 1)
        indices = derive_check_indices(seeds.check_seed, answer.root, size)
        openings = open_rows(answer, indices)
        prove_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        indices = derive_check_indices(seeds.check_seed, answer.root, size)
        verify_openings(seeds.compute_seed, seeds.check_seed, size, answer.root, openings)
        verify_times.append(time.perf_counter() - t0)
    prove, verify = statistics.median(prove_times), statistics.median(verify_times)
    return {"node_compute_s": prove, "mixer_verify_s": verify,
            "compute_verify_over_prove": verify / prove}


TARGETS = {
    "vrf_verify_over_ed25519_verify": ("<=", 6),
    "quorum_verify_over_raw_ecrecover": ("<=", 1.3),
    "cosign_validations_per_s": (">=", 3000),
    "rollup_1m_reports_s": ("<=", 15),
    "merkle_100k_leaves_s": ("<=", 2),
    "compute_verify_over_prove": ("<=", 0.05),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    results |= bench_vrf(50 if args.quick else 200)
    results |= bench_quorum(50 if args.quick else 300)
    results |= bench_cosign(40 if args.quick else 400)
    results |= bench_merkle(1_000 if args.quick else 100_000)
    results |= (bench_rollup(10_000, 1_000) if args.quick else bench_rollup())
    results |= bench_compute()
    print(f"{'figure':<36} {'measured':>14} {'target':>10}")
    for key, value in results.items():
        target = TARGETS.get(key)
        mark = ""
        if target:
            op, bound = target
            ok = value <= bound if op == "<=" else value >= bound
            mark = f"{op} {bound:<6} {'ok' if ok else 'MISSED'}"
        print(f"{key:<36} {value:>14.4f} {mark:>10}")
    if args.json:
        print(json.dumps({k: round(results[k], 4) for k in TARGETS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
