"""Validator intake throughput: certificates from 4 mixers over HTTP, and what each costs.

    .venv/bin/python bench/validator_intake.py [--certificates 4000] [--connections 32]
        [--workers 0 2] [--reports 1 32]

Builds valid certificates on the fake chain of the tests (``tests/validator_helpers.py``):
each report is an OK challenge with the node's signature over its response and the mixers'
VRF proof (the same checks as a real report; the session itself is skipped to build them
quickly), signed as mixers forward them: by the threshold, 3 of the 4 mixers, the originator
first (``--signatures 4`` for every mixer). ``--reports`` sets the reports per certificate: 1
is the worst case (4 signature recoveries per report: 3 mixers' and the node's); a real mixer
certifies one batch per round with every node it challenged (about nodes / mixers reports).

A load generator in another process sends them over keep-alive connections with raw HTTP/1.1
(cheap for the client); the Validator runs in this process. Prints certificates/s and reports/s
from one run, and the CPU each certificate cost: the Validator's main process, its verifier
processes (``--workers``) and the load generator. The same without
HTTP (verify + group commit only) for comparison. On a shared host the CPU per certificate is
the steadier figure: 1e6 / (CPU us per certificate) is what one fully available core takes in.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cputime import children_cpu_s, process_cpu_s
from dnanet.crypto import vrf
from dnanet.keyfiles import derive_vrf_secret
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.messages import (
    ChallengeResponse,
    Outcome,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import compute_batch, compute_quorum_threshold
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_target,
    compute_round_start_block,
    compute_vrf_alpha,
)
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.service.http import listen
from dnanet.service.loop import run as run_loop
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import FakeGateway, build_network


def make_certificates(gw: FakeGateway, node_keys: dict[str, object], count: int,
                      reports_per_certificate: int = 1, signatures: int | None = None
                      ) -> list[bytes]:
    """``count`` certificates of epoch 0 (as many rounds as needed), each over
    ``reports_per_certificate`` reports of one mixer and round (a mixer certifies one batch
    per round with every node it challenged: a real network's certificates carry about
    nodes / mixers reports; one report per certificate is the worst case for intake), signed
    by ``signatures`` mixers, the originator first (default: the threshold, as mixers send
    them)."""
    count_signers = signatures or compute_quorum_threshold(len(gw.mixers))
    preset = gw.preset
    target = compute_assignment_target(len(gw.mixers), preset.challenges_per_round)
    sizes = preset.sizes_for_class(0)
    out: list[bytes] = []
    for round_ in range(preset.rounds_per_epoch):
        seed = gw.block_hash(compute_round_start_block(RoundId(0, round_), preset))
        alpha = compute_vrf_alpha(gw.domain.chain_id, 0, round_, seed)
        for mixer in gw.mixers:
            proof = vrf.prove(derive_vrf_secret(mixer), alpha)
            beta = vrf.proof_to_hash(proof)
            assigned = compute_assigned_nodes(beta, sorted(node_keys), target)
            for first in range(0, len(assigned) - reports_per_certificate + 1,
                               reports_per_certificate):
                reports = tuple(
                    _report(gw, node_keys, mixer, round_, proof, beta, node, sizes)
                    for node in assigned[first:first + reports_per_certificate])
                batch = compute_batch(0, round_, mixer.address, reports)
                order = [mixer] + [m for m in gw.mixers if m is not mixer]
                certificate = QuorumCertificate(
                    batch=batch, reports=reports,
                    signatures=tuple(m.sign_typed(gw.domain, batch.hash_struct())
                                     for m in order[:count_signers]))
                out.append(certificate.to_json())
                if len(out) >= count:
                    return out
    raise SystemExit(f"the network has too few nodes for {count} certificates of "
                     f"{reports_per_certificate} reports")


def _report(gw: FakeGateway, node_keys: dict[str, object], mixer: Any, round_: int,
            proof: bytes, beta: bytes, node: str, sizes: Any) -> ScoreReport:
    """An OK report of ``node``, signed by the node as a real session's response is."""
    preset = gw.preset
    challenge = compute_challenge(beta=beta, epoch=0, round_=round_, mixer=mixer.address,
                                  node=node, hardware_class=0, preset=preset)
    response = ChallengeResponse(
        epoch=0, round=round_, mixer=mixer.address, node=node,
        challenge_digest=challenge.hash_struct(), echo_digest=os.urandom(32),
        compute_root=os.urandom(32), download_digest=os.urandom(32),
        upload_digest=os.urandom(32))
    measured = dict(rtt_us=900, compute_us=40_000, download_us=2_000, upload_us=2_500)
    score = compute_challenge_score(sizes, outcome=Outcome.OK, params=preset.scoring, **measured)
    return ScoreReport(
        epoch=0, round=round_, mixer=mixer.address, node=node, hardware_class=0,
        vrf_proof=proof, challenge_digest=challenge.hash_struct(),
        echo_digest=response.echo_digest, compute_root=response.compute_root,
        download_digest=response.download_digest, upload_digest=response.upload_digest,
        response_signature=node_keys[node].sign_typed(  # type: ignore[attr-defined]
            gw.domain, response.hash_struct()),
        outcome=Outcome.OK, reason="", evidence=b"", score=score.total, **measured)


def nodes_needed(certificates: int, reports_per_certificate: int, mixers: int, rounds: int
                 ) -> int:
    """Nodes enough for ``certificates`` such certificates in one epoch (with slack: the
    VRF assigns each node to about one mixer per round)."""
    per_round_and_mixer = -(-certificates // (rounds * mixers)) + 1
    return max(8, int(per_round_and_mixer * reports_per_certificate * mixers * 1.5) + 100)


def load(port: int, bodies: list[bytes], connections: int, result: object) -> None:
    """Send every body once over ``connections`` keep-alive connections; store elapsed s."""

    async def worker(queue: asyncio.Queue[bytes], failures: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            body = queue.get_nowait()
            writer.write(b"POST /v1/certificates HTTP/1.1\r\nHost: v\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                failures.append(1)
        writer.close()

    async def main() -> float:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        failures: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(queue, failures) for _ in range(connections)))
        if failures:
            raise SystemExit(f"{len(failures)} certificates were refused")
        return time.perf_counter() - t0

    result.value = run_loop(main())  # type: ignore[attr-defined]


def verifiers_cpu_s(daemon: ValidatorDaemon) -> float:
    """CPU seconds of the Validator's verifier processes so far (Linux /proc; 0 without)."""
    pool = daemon.intake._pool
    return sum(process_cpu_s(pid) for pid in list(getattr(pool, "_processes", None) or {}))


async def warm_up(daemon: ValidatorDaemon, bodies: list[bytes]) -> None:
    """Start the worker processes (and fill the views) before timing."""
    await asyncio.gather(*(daemon.intake.submit(b) for b in bodies))


def _line(label: str, count: int, reports: int, wall: float, costs: dict[str, float]) -> str:
    total = sum(costs.values())
    parts = ", ".join(f"{name} {cpu / count * 1e6:,.0f}" for name, cpu in costs.items() if cpu)
    return (f"{label}: {count} certificates ({reports} report(s) each) in {wall:.2f} s = "
            f"{count / wall:,.0f} certificates/s, {count * reports / wall:,.0f} reports/s; "
            f"CPU us per certificate {total / count * 1e6:,.0f} ({parts})")


def _serve_beside(gw: FakeGateway, data_dir: Path, port: int, warm: list[bytes],
                  conn: Any) -> None:
    """In a forked process: one more process of the Validator (``--processes``), on the same
    port and database; reports its CPU seconds when told the load is over."""

    async def main() -> None:
        daemon = ValidatorDaemon(gw, data_dir, run_settlement=False,
                                 sock=listen("127.0.0.1", port, join=True))
        await daemon.start()
        try:
            await warm_up(daemon, warm)
            conn.send("ready")
            c0 = process_cpu_s()
            while not conn.poll():
                await asyncio.sleep(0.05)
            conn.recv()
            conn.send(process_cpu_s() - c0)
        finally:
            await daemon.stop()

    run_loop(main())


def measure_over_http(gw: FakeGateway, bodies: list[bytes], connections: int, workers: int,
                      warm: list[bytes], processes: int = 1) -> tuple[float, dict[str, float]]:
    """Send ``bodies`` to a fresh Validator over HTTP: the load's wall seconds and the CPU
    seconds of the Validator's processes, its verifiers and the load generator. With
    ``processes`` > 1 the others are forked beside it, as ``validator run --processes`` starts
    them (each on the same port and database)."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = listen("127.0.0.1", 0, share=processes > 1)
        port = int(sock.getsockname()[1])
        beside = []
        fork = multiprocessing.get_context("fork")
        for _ in range(processes - 1):  # forked before this process runs a loop or threads
            here, there = fork.Pipe()
            child = fork.Process(target=_serve_beside, args=(gw, Path(tmp), port, warm, there))
            child.start()
            beside.append((here, child))
        for here, _child in beside:
            here.recv()
        elapsed, costs = run_loop(_measure(gw, Path(tmp), sock, bodies, connections, workers,
                                           warm))
        others = 0.0
        for here, child in beside:
            here.send("stop")
            others += here.recv()
            child.join()
        if processes > 1:
            costs = {"main": costs["main"], f"{processes - 1} other(s)": others,
                     **{k: v for k, v in costs.items() if k != "main"}}
    return elapsed, costs


async def _measure(gw: FakeGateway, data_dir: Path, sock: Any, bodies: list[bytes],
                   connections: int, workers: int, warm: list[bytes]
                   ) -> tuple[float, dict[str, float]]:
    daemon = ValidatorDaemon(gw, data_dir, run_settlement=False, workers=workers, sock=sock)
    await daemon.start()
    try:
        await warm_up(daemon, warm)
        port = int(daemon.url.rsplit(":", 1)[1])
        elapsed = multiprocessing.Value("d", 0.0)
        proc = multiprocessing.Process(target=load,
                                       args=(port, bodies, connections, elapsed))
        c0, k0, v0 = process_cpu_s(), children_cpu_s(), verifiers_cpu_s(daemon)
        proc.start()
        while proc.is_alive():
            await asyncio.sleep(0.05)
        proc.join()
        c1, k1, v1 = process_cpu_s(), children_cpu_s(), verifiers_cpu_s(daemon)
        stored = daemon.store.certificate_count(0) - len(warm)
    finally:
        await daemon.stop()
    if proc.exitcode != 0 or stored != len(bodies):
        raise SystemExit(f"load generator failed (exit {proc.exitcode}, stored {stored} of "
                         f"{len(bodies)})")
    return float(elapsed.value), {"main": c1 - c0, "verifiers": v1 - v0,
                                  "load generator": k1 - k0}


def over_http(gw: FakeGateway, bodies: list[bytes], connections: int, workers: int,
              warm: list[bytes], reports: int, processes: int = 1) -> float:
    """Certificates/s over HTTP; prints the figures."""
    wall, costs = measure_over_http(gw, bodies, connections, workers, warm, processes)
    label = f"HTTP, {processes} processes" if processes > 1 else f"HTTP, workers={workers}"
    print(_line(f"{label}, {connections} connections", len(bodies), reports, wall, costs))
    return len(bodies) / wall


async def without_http(gw: FakeGateway, bodies: list[bytes], concurrency: int, workers: int,
                       warm: list[bytes], reports: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = ValidatorDaemon(gw, Path(tmp), port=0, run_settlement=False, workers=workers)
        await daemon.start()
        await warm_up(daemon, warm)
        queue = list(bodies)

        async def worker() -> None:
            while queue:
                await daemon.intake.submit(queue.pop())

        c0, v0, t0 = process_cpu_s(), verifiers_cpu_s(daemon), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, c1, v1 = time.perf_counter() - t0, process_cpu_s(), verifiers_cpu_s(daemon)
        await daemon.stop()
    print(_line(f"no HTTP, workers={workers}", len(bodies), reports, wall,
                {"main": c1 - c0, "verifiers": v1 - v0}))


def certificates_for(single_report: int, reports: int) -> int:
    """How many certificates of ``reports`` reports a run sends where it would send
    ``single_report`` single-report ones: about as many reports, and at least 100."""
    return single_report if reports == 1 else max(100, single_report // reports)


def build(certificates: int, reports: int, signatures: int | None = None
          ) -> tuple[FakeGateway, list[bytes], list[bytes]]:
    """The network and ``certificates`` bodies (plus 64 to warm up with); ``signatures``
    mixers sign each (default: the threshold)."""
    from dnanet.params import TEST  # build_network's preset

    nodes = nodes_needed(certificates + 64, reports, 4, TEST.rounds_per_epoch)
    gw, committee = build_network(mixers=4, nodes=nodes, label="bench")
    gw.advance_to(compute_round_start_block(RoundId(0, gw.preset.rounds_per_epoch - 1),
                                            gw.preset))
    keys = {address: t.prover.identity for address, t in committee.transports.items()}
    bodies = make_certificates(gw, keys, certificates + 64, reports, signatures)
    return gw, bodies[:64], bodies[64:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="verification processes to compare (0: threads)")
    parser.add_argument("--reports", type=int, nargs="+", default=[1, 32],
                        help="reports per certificate to compare")
    parser.add_argument("--processes", type=int, nargs="*", default=[2],
                        help="also run the Validator as this many processes on one port and "
                        "database (validator run --processes), verifying on threads")
    parser.add_argument("--signatures", type=int, choices=(3, 4), default=3,
                        help="mixer signatures per certificate (3: the threshold, as mixers "
                             "forward them)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs")
    for reports in args.reports:
        count = certificates_for(args.certificates, reports)
        t0 = time.perf_counter()
        gw, warm, bodies = build(count, reports, args.signatures)
        print(f"built {len(bodies)} certificates of {reports} report(s) ({args.signatures} "
              f"mixer signatures each) in {time.perf_counter() - t0:.1f} s")
        for workers in args.workers:
            run_loop(without_http(gw, bodies, args.connections, workers, warm, reports))
            over_http(gw, bodies, args.connections, workers, warm, reports)
        for processes in args.processes:
            over_http(gw, bodies, args.connections, 0, warm, reports, processes)


if __name__ == "__main__":
    main()
