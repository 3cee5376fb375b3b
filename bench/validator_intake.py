"""Validator intake throughput: single-report certificates from 4 mixers, over HTTP.

    .venv/bin/python bench/validator_intake.py [--certificates 4000] [--connections 32]

Builds valid certificates on the fake chain of the tests (``tests/validator_helpers.py``):
each report is an OK challenge with the node's signature over its response and the mixers'
VRF proof (the same checks as a real report; the session itself is skipped to build them
quickly), signed by all 4 mixers. A load generator in another process sends them over
keep-alive connections with raw HTTP/1.1 (cheap for the client); the Validator runs in this
process. Prints certificates/s and the Validator's CPU seconds per certificate, and the same
without HTTP (verify + group commit only).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dnanet.crypto import vrf
from dnanet.keyfiles import derive_vrf_secret
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.messages import (
    ChallengeResponse,
    Outcome,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import compute_batch
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_target,
    compute_round_start_block,
    compute_vrf_alpha,
)
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import FakeGateway, build_network


def make_certificates(gw: FakeGateway, node_keys: dict[str, object], count: int
                      ) -> list[bytes]:
    """Single-report certificates of epoch 0 (as many rounds as needed)."""
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
            for node in compute_assigned_nodes(beta, sorted(node_keys), target):
                challenge = compute_challenge(beta=beta, epoch=0, round_=round_,
                                              mixer=mixer.address, node=node, hardware_class=0,
                                              preset=preset)
                response = ChallengeResponse(
                    epoch=0, round=round_, mixer=mixer.address, node=node,
                    challenge_digest=challenge.hash_struct(), echo_digest=os.urandom(32),
                    compute_root=os.urandom(32), download_digest=os.urandom(32),
                    upload_digest=os.urandom(32))
                measured = dict(rtt_us=900, compute_us=40_000, download_us=2_000,
                                upload_us=2_500)
                score = compute_challenge_score(sizes, outcome=Outcome.OK, params=preset.scoring,
                                                **measured)
                report = ScoreReport(
                    epoch=0, round=round_, mixer=mixer.address, node=node, hardware_class=0,
                    vrf_proof=proof, challenge_digest=challenge.hash_struct(),
                    echo_digest=response.echo_digest, compute_root=response.compute_root,
                    download_digest=response.download_digest,
                    upload_digest=response.upload_digest,
                    response_signature=node_keys[node].sign_typed(  # type: ignore[attr-defined]
                        gw.domain, response.hash_struct()),
                    outcome=Outcome.OK, reason="", evidence=b"", score=score.total, **measured)
                batch = compute_batch(0, round_, mixer.address, [report])
                order = [mixer] + [m for m in gw.mixers if m is not mixer]
                certificate = QuorumCertificate(
                    batch=batch, reports=(report,),
                    signatures=tuple(m.sign_typed(gw.domain, batch.hash_struct())
                                     for m in order))
                out.append(certificate.to_json())
                if len(out) >= count:
                    return out
    return out


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

    result.value = asyncio.run(main())  # type: ignore[attr-defined]


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def warm_up(daemon: ValidatorDaemon, bodies: list[bytes]) -> None:
    """Start the worker processes (and fill the views) before timing."""
    await asyncio.gather(*(daemon.intake.submit(b) for b in bodies))


async def over_http(gw: FakeGateway, bodies: list[bytes], connections: int, workers: int,
                    warm: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = ValidatorDaemon(gw, Path(tmp), port=0, run_settlement=False, workers=workers)
        await daemon.start()
        await warm_up(daemon, warm)
        port = int(daemon.url.rsplit(":", 1)[1])
        elapsed = multiprocessing.Value("d", 0.0)
        proc = multiprocessing.Process(target=load, args=(port, bodies, connections, elapsed))
        c0 = cpu_s()
        proc.start()
        while proc.is_alive():
            await asyncio.sleep(0.05)
        c1 = cpu_s()
        stored = daemon.store.certificate_count(0) - len(warm)
        await daemon.stop()
    if proc.exitcode != 0 or stored != len(bodies):
        raise SystemExit(f"load generator failed (exit {proc.exitcode}, stored {stored})")
    wall = elapsed.value
    print(f"HTTP, workers={workers}: {len(bodies)} certificates in {wall:.2f} s = "
          f"{len(bodies) / wall:,.0f}/s ({connections} connections); main process CPU "
          f"{(c1 - c0) / len(bodies) * 1e6:,.0f} us per certificate")


async def without_http(gw: FakeGateway, bodies: list[bytes], concurrency: int, workers: int,
                       warm: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = ValidatorDaemon(gw, Path(tmp), port=0, run_settlement=False, workers=workers)
        await daemon.start()
        await warm_up(daemon, warm)
        queue = list(bodies)

        async def worker() -> None:
            while queue:
                await daemon.intake.submit(queue.pop())

        c0, t0 = cpu_s(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        await daemon.stop()
    print(f"no HTTP, workers={workers}: {len(bodies)} certificates in {wall:.2f} s = "
          f"{len(bodies) / wall:,.0f}/s; main process CPU {cpu / len(bodies) * 1e6:,.0f} us "
          "per certificate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certificates", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="verification processes to compare (0: threads)")
    args = parser.parse_args()
    nodes = max(8, args.certificates // 4 + 100)
    gw, committee = build_network(mixers=4, nodes=nodes, label="bench")
    gw.advance_to(compute_round_start_block(RoundId(0, gw.preset.rounds_per_epoch - 1),
                                            gw.preset))
    keys = {address: t.prover.identity for address, t in committee.transports.items()}
    t0 = time.perf_counter()
    bodies = make_certificates(gw, keys, args.certificates + 64)
    warm, bodies = bodies[:64], bodies[64:]
    print(f"built {len(bodies)} single-report certificates (4 mixer signatures each) in "
          f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs")
    for workers in args.workers:
        asyncio.run(without_http(gw, bodies, args.connections, workers, warm))
        asyncio.run(over_http(gw, bodies, args.connections, workers, warm))


if __name__ == "__main__":
    main()
