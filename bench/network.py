"""Network benchmarks: a mixer's challenge throughput, the Validator's certificate intake, the
co-signing round trip, and the wall time of one devnet epoch.

    .venv/bin/python bench/network.py [--json] [--skip-devnet]

Figures, all from this one run, on loopback:

- ``mixer_challenges_per_s``: one mixer (``run_challenge_session`` over ``HttpNodeTransport``
  on the ``NodeHttpClient`` of ``open_node_session``, 64 sessions in flight, as the mixer's
  rounds drive them) challenging 1,000 nodes once each, every session the full protocol with
  TEST's challenge sizes (16 echoes, download, upload, compute, signed response, row openings,
  verification, score), each on a WebSocket of its own. Sessions that end in anything but OK
  are counted (``..._failed``): a TIMEOUT here is the mixer's own CPU running late. The
  mixer's CPU per challenge is ``..._mixer_cpu_ms``. The nodes are 1,000 ``ChallengeProver``
  s behind one WebSocket server in a separate process (``/n/{i}/v1/challenges`` is prover
  ``i``'s session, served by ``dnanet.node.session_server``), so the mixer and the nodes do
  not share a GIL. (Over per-step HTTP requests, before sessions were WebSockets: httpx 36/s,
  aiohttp 178-190/s, the mixer's own HTTP client 277/s at 2.9 ms of mixer CPU each.)
- ``validator_intake_per_s``: single-report certificates per second into a Validator over
  HTTP (``bench/validator_intake.py``'s corpus and load generator) that runs as one process per
  CPU on one port and database (``validator run --processes``, ``--validator-processes``);
  ``..._1_process`` the same as one process (verification as the CLI's default on the host),
  and the ratio; and with ``--batch-reports`` reports per certificate (a mixer certifies one
  batch per round with every node it challenged) as reports/s; each with the Validator's CPU
  per certificate (every process of it).
- ``cosign_round_trip_p50_ms``: a peer's ``BatchProposal`` (one report) POSTed to a running
  ``MixerDaemon``'s ``/v1/batches`` until its ``CoSignature`` is back, one at a time; the
  mixer checks the batch fully (window, VRF assignment, node signature, measurements, score)
  against the fake chain of the tests.
- ``devnet_epoch_wall_s``: the wall time of one 1024-block epoch of ``Devnet`` on the
  ``local`` preset, 8 nodes and 4 mixers, from genesis until the epoch is settled on chain
  (``--skip-devnet`` leaves it out; it takes about a minute and a half).

``--json`` prints one JSON object with every figure on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402

from cputime import process_cpu_s  # noqa: E402
from dnanet.crypto import vrf  # noqa: E402
from dnanet.crypto.eip712 import Domain  # noqa: E402
from dnanet.crypto.keys import Identity  # noqa: E402
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret  # noqa: E402
from dnanet.params import TEST  # noqa: E402
from dnanet.protocol.messages import Outcome  # noqa: E402
from dnanet.protocol.schedule import compute_vrf_alpha  # noqa: E402
from dnanet.service.loop import run as run_loop  # noqa: E402

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "d7" * 20)
TARGETS = {"mixer_challenges_per_s": (">=", 200.0), "validator_intake_per_s": (">=", 2000.0),
           "cosign_round_trip_p50_ms": ("<=", 50.0), "devnet_epoch_wall_s": ("<=", 120.0)}


def identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-bench/{label}".encode()).digest())


# -- 1. a mixer challenging 1,000 nodes ---------------------------------------------------------


def serve_nodes(count: int, mixer_address: str, mixer_vrf_pk: bytes, port: int,
                ready: Any) -> None:
    """The node side: ``count`` provers behind one WebSocket server in its own process
    (``/n/{i}/v1/challenges`` is prover ``i``'s session), each session served by
    ``dnanet.node.session_server.SessionServer`` as a node daemon serves it, without its
    SQLite journal. FastAPI on uvicorn would cost more CPU per session than the mixer under
    test, and the figure is the mixer's."""
    from websockets.asyncio.server import ServerConnection, serve

    from dnanet.node.prover import ChallengeProver
    from dnanet.node.session_server import ConnectionChannel, NoJournal, SessionServer

    mixers = {mixer_address: mixer_vrf_pk}
    servers = [SessionServer(ChallengeProver(identity(f"node-{i}"), DOMAIN, lambda: mixers,
                                             device="cpu"), NoJournal())
               for i in range(count)]

    async def handle(connection: ServerConnection) -> None:
        parts = connection.request.path.split("/") if connection.request else []
        if len(parts) == 5 and parts[1] == "n" and parts[2].isdigit() and \
                int(parts[2]) < count:
            await servers[int(parts[2])].serve(ConnectionChannel(connection))

    async def main() -> None:
        async with serve(handle, "127.0.0.1", port, compression=None, max_size=1 << 20,
                         ping_interval=None, backlog=4096):
            ready.set()
            await asyncio.Future()

    run_loop(main())


@dataclass
class ChallengeRun:
    sessions: int
    wall_s: float
    outcomes: Counter[str]
    mixer_cpu_s: float = 0.0
    nodes_cpu_s: float = 0.0

    @property
    def per_s(self) -> float:
        return self.sessions / self.wall_s


CLIENTS = ("daemon",)
"""How the mixer reaches the nodes: ``HttpNodeTransport`` on the ``NodeHttpClient`` that
``MixerDaemon`` opens (``open_node_session``)."""


async def drive_challenges(base_url: str, nodes: list[str], rounds: int, concurrency: int,
                           mixer: Identity, server_pid: int, client: str) -> ChallengeRun:
    """Challenge every node once per round, ``concurrency`` sessions in flight (after a
    warm-up round over the first ``2 * concurrency`` nodes)."""
    from dnanet.mixer.node_client import HttpNodeTransport, open_node_session
    from dnanet.mixer.session import run_challenge_session

    del client  # one client kind: the daemon's
    secret = derive_vrf_secret(mixer)
    session = open_node_session(concurrency, TEST.challenge_timeout_ms / 1000 + 5)

    def transport(index: int) -> Any:
        return HttpNodeTransport(session, f"{base_url}/n/{index}")

    outcomes: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(concurrency)

    async def challenge(round_: int, beta: bytes, proof: bytes, index: int) -> None:
        async with semaphore:
            report = await run_challenge_session(
                transport(index), identity=mixer, domain=DOMAIN, preset=TEST, beta=beta,
                vrf_proof=proof, epoch=0, round_=round_, node=nodes[index], hardware_class=0)
        outcomes[Outcome(report.outcome).name] += 1

    try:
        await run_rounds(challenge, secret, range(rounds, rounds + 1),
                         range(min(len(nodes), 2 * concurrency)))
        outcomes.clear()
        cpu0, node_cpu0, started = process_cpu_s(), process_cpu_s(server_pid), time.perf_counter()
        await run_rounds(challenge, secret, range(rounds), range(len(nodes)))
        wall = time.perf_counter() - started
        cpu, node_cpu = process_cpu_s() - cpu0, process_cpu_s(server_pid) - node_cpu0
    finally:
        await session.close()
    return ChallengeRun(sum(outcomes.values()), wall, outcomes, cpu, node_cpu)


async def run_rounds(challenge: Callable[..., Any], secret: bytes, rounds: range,
                     nodes: range) -> None:
    for round_ in rounds:
        seed = hashlib.sha256(f"bench-round-{round_}".encode()).digest()
        proof = vrf.prove(secret, compute_vrf_alpha(DOMAIN.chain_id, 0, round_, seed))
        beta = vrf.proof_to_hash(proof)
        await asyncio.gather(*(challenge(round_, beta, proof, i) for i in nodes))


def bench_mixer_challenges(nodes: int, rounds: int, concurrency: int, client: str
                           ) -> ChallengeRun:
    from dnanet.devnet import free_port

    mixer = identity("mixer")
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    server = context.Process(target=serve_nodes, daemon=True, args=(
        nodes, mixer.address, derive_vrf_public_key(mixer), port, ready))
    server.start()
    try:
        if not ready.wait(120):
            raise SystemExit("the node server did not start")
        addresses = [identity(f"node-{i}").address for i in range(nodes)]
        assert server.pid is not None
        return run_loop(drive_challenges(f"http://127.0.0.1:{port}", addresses, rounds,
                                            concurrency, mixer, server.pid, client))
    finally:
        server.terminate()
        server.join(10)


# -- 2. Validator intake -------------------------------------------------------------------------


@dataclass
class IntakeRun:
    certificates: int
    reports: int
    per_s: float
    cpu_us: float
    """CPU per certificate: the Validator's process and its verifiers (load generator not)."""


def bench_validator_intake(certificates: int, connections: int, reports: int = 1,
                           processes: int = 1) -> IntakeRun:
    """Certificates/s into a Validator over HTTP (``bench/validator_intake.py``'s corpus and
    raw-HTTP load generator in another process), with ``reports`` reports per certificate,
    run as ``processes`` processes on one port and database (``validator run --processes``;
    one process verifies as the CLI's default on this host)."""
    import validator_intake as vi
    from dnanet.validator.daemon import default_workers

    gw, warm, bodies = vi.build(certificates, reports)
    workers = default_workers() if processes == 1 else 0
    wall, costs = vi.measure_over_http(gw, bodies, connections, workers, warm, processes)
    validator_cpu = sum(cpu for name, cpu in costs.items() if name != "load generator")
    return IntakeRun(len(bodies), reports, len(bodies) / wall,
                     validator_cpu / len(bodies) * 1e6)


# -- 3. co-signing round trip ---------------------------------------------------------------------


def bench_cosign(count: int) -> list[float]:
    """Milliseconds from POSTing a one-report BatchProposal to a MixerDaemon's
    ``/v1/batches`` to its CoSignature, ``count`` distinct proposals one after another."""
    from dnanet.mixer.daemon import MixerDaemon
    from dnanet.protocol.messages import BatchProposal, CoSignature
    from dnanet.protocol.quorum import compute_batch
    from validator_helpers import build_network, server_url

    gw, committee = build_network(mixers=4, nodes=max(8, count // 3 + 8), label="cosign")
    cosigner, proposers = gw.mixers[0], gw.mixers[1:]
    proposals: list[bytes] = []

    async def make() -> None:
        for round_ in range(gw.preset.rounds_per_epoch):
            gw.advance_to(gw.preset.round_blocks * round_)
            for mixer, reports in (await committee.round_reports(0, round_)).items():
                if mixer == cosigner.address:
                    continue
                signer = next(m for m in proposers if m.address == mixer)
                for report in reports:
                    batch = compute_batch(0, round_, mixer, [report])
                    proposals.append(BatchProposal(
                        batch=batch, reports=(report,),
                        signature=signer.sign_typed(gw.domain, batch.hash_struct())).to_json())

    run_loop(make())
    if len(proposals) < count:
        raise SystemExit(f"only {len(proposals)} proposals for {count} round trips")

    async def run() -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            # Only the HTTP server: the round loop would challenge the fake chain's nodes.
            daemon = MixerDaemon(cosigner, gw, Path(tmp),  # type: ignore[arg-type]
                                 validator_url="http://127.0.0.1:9",
                                 port=0)
            await daemon.server.start()
            url = server_url(daemon.server) + "/v1/batches"
            times: list[float] = []
            try:
                async with httpx.AsyncClient(timeout=30) as http:
                    for i, body in enumerate(proposals[:count]):
                        started = time.perf_counter()
                        response = await http.post(url, content=body,
                                                   headers={"content-type": "application/json"})
                        elapsed = time.perf_counter() - started
                        if response.status_code != 200:
                            raise SystemExit(f"co-signing refused: {response.text[:300]}")
                        CoSignature.from_json(response.content)
                        if i >= 10:  # the first ones fill the epoch view and open connections
                            times.append(elapsed * 1000)
            finally:
                await daemon.server.stop()
                await daemon.peers.close()
                daemon.store.close()
            return times

    return run_loop(run())


# -- 4. one devnet epoch ------------------------------------------------------------------------


def bench_devnet_epoch(backend: str) -> tuple[float, int]:
    """Seconds from genesis until epoch 0 of ``Devnet`` (local preset, 8 nodes, 4 mixers) is
    settled on chain, and the total it settled."""
    from dnanet.devnet import Devnet
    from dnanet.params import LOCAL

    async def run() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            devnet = Devnet(nodes=8, mixers=4, preset=LOCAL, data_dir=Path(tmp),
                            out=lambda _: None, backend=backend)
            try:
                await devnet.setup()  # returns with the clock started, one block before genesis
                started = time.perf_counter()
                await devnet.wait_settled(0)
                wall = time.perf_counter() - started
                settled = await asyncio.to_thread(devnet.gateway(None).settled_epoch, 0)
            finally:
                await devnet.stop()
        return wall, settled.total if settled is not None else 0

    return run_loop(run())


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="challenges per node")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="sessions in flight (MixerDaemon's default: 64)")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS),
                        help="mixer HTTP clients to measure (the first one is the headline)")
    parser.add_argument("--certificates", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-reports", type=int, default=32,
                        help="reports per certificate of the second intake run (a round's batch)")
    parser.add_argument("--validator-processes", type=int, default=os.cpu_count() or 1,
                        help="processes the Validator runs as (validator run --processes; "
                        "default: one per CPU); also measured as one process")
    parser.add_argument("--cosign", type=int, default=300, help="co-signing round trips")
    parser.add_argument("--devnet-backend", default="minilm", choices=["minilm", "trivial"],
                        help="model the devnet's nodes serve (default: the devnet's own)")
    parser.add_argument("--skip-devnet", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    figures: dict[str, Any] = {"cpus": os.cpu_count()}
    rows: list[tuple[str, str, str]] = []
    for client in args.clients:
        run = bench_mixer_challenges(args.nodes, args.rounds, args.concurrency, client)
        key = "mixer_challenges_per_s" + ("" if client == args.clients[0]
                                          else "_" + client.replace("-", "_"))
        figures[key] = round(run.per_s, 1)
        figures[f"{key}_failed"] = run.sessions - run.outcomes.get("OK", 0)
        figures[f"{key}_mixer_cpu_ms"] = round(run.mixer_cpu_s / run.sessions * 1000, 2)
        rows.append((key, f"{run.per_s:,.0f}/s",
                     f"{client}: {run.sessions} challenges, {args.concurrency} in flight, "
                     f"{run.sessions - run.outcomes.get('OK', 0)} not OK "
                     f"({dict(run.outcomes)}); CPU per challenge: mixer "
                     f"{run.mixer_cpu_s / run.sessions * 1e3:.1f} ms, nodes "
                     f"{run.nodes_cpu_s / run.sessions * 1e3:.1f} ms"))
    import validator_intake as vi

    processes = args.validator_processes
    runs = [(1, processes), *([(1, 1)] if processes > 1 else []), (args.batch_reports, processes)]
    for reports, count in runs:
        intake = bench_validator_intake(
            vi.certificates_for(args.certificates, reports), args.connections, reports, count)
        key = "validator_intake_per_s" + ("" if reports == 1 else f"_{reports}_reports") + (
            "_1_process" if count == 1 else "")
        figures[key] = round(intake.per_s, 1)
        figures[f"{key}_reports_per_s"] = round(intake.per_s * reports, 1)
        figures[f"{key}_cpu_us"] = round(intake.cpu_us)
        ratio = ""
        if (reports, count) == (1, 1) and processes > 1:
            ratio = (f"; {processes} processes took "
                     f"{figures['validator_intake_per_s'] / intake.per_s:.2f}x as many")
        rows.append((key, f"{intake.per_s:,.0f}/s",
                     f"{count} process(es): {intake.certificates} certificates of {reports} "
                     f"report(s) = {intake.per_s * reports:,.0f} reports/s, {args.connections} "
                     f"connections; Validator CPU {intake.cpu_us:,.0f} us per certificate"
                     + ratio))
    times = bench_cosign(args.cosign)
    p50, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
    figures["cosign_round_trip_p50_ms"] = round(p50, 2)
    figures["cosign_round_trip_p90_ms"] = round(p90, 2)
    rows.append(("cosign_round_trip_p50_ms", f"{p50:.1f} ms",
                 f"p90 {p90:.1f} ms over {len(times)} one-report proposals"))
    if not args.skip_devnet:
        wall, total = bench_devnet_epoch(args.devnet_backend)
        figures["devnet_epoch_wall_s"] = round(wall, 1)
        figures["devnet_epoch_settled_total"] = total
        rows.append(("devnet_epoch_wall_s", f"{wall:.1f} s",
                     f"local preset, 8 nodes ({args.devnet_backend}), 4 mixers, genesis to "
                     f"settled; settled total {total / 10**18:,.2f} DNA"))

    width = max(len(r[0]) for r in rows)
    print(f"\nbench/network.py on {os.cpu_count()} CPUs")
    for name, value, detail in rows:
        target = TARGETS.get(name)
        goal = f"(target {target[0]} {target[1]:g})" if target else ""
        print(f"{name:<{width}}  {value:>10}  {goal:<18} {detail}")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
