"""How well a challenge session measures a link: the latency floor, and the error on shaped links.

    python bench/session_timing.py [--sessions 4] [--json]

A node (the daemon's app: uvicorn, the session WebSocket, a prover on the CPU) and a plain-socket
probe server run in a process of their own, each behind user-space shaping proxies
(``dnanet.shaping``) in a thread of that process: no shaping, an added one-way delay, or a rate
cap. The mixer (``run_challenge_session`` over ``HttpNodeTransport``, the ``local`` preset's
sizes) challenges the node through each link ``--sessions`` times, one session at a time, and a
blocking plain socket measures the same link through the same shaping (``measure_link``): that
is "true", not the nominal setting. Figures, all from this one run:

- ``latency_floor_ms``: the lowest ``rttUs`` of the sessions on the unshaped link (each is the
  fastest of 16 echoes), with ``latency_floor_median_ms`` (the median session) and the plain
  socket's round trip beside it; target <= 0.5 ms;
- ``latency_error_max``: worst |measured - true| / true added round trip over the delayed links
  (the session's median, against the plain socket's minimum); target <= 0.10;
- ``bandwidth_error_max``: worst |measured - true| / true rate over the rate-capped links, both
  directions (the session's median); target <= 0.15;
- ``compute_error_max``: worst |measured - unshaped| / unshaped compute time over the delayed
  links (medians), with ``compute_spread_unshaped`` (max / min - 1 of the unshaped sessions):
  where the host's own spread is larger than the target, judge against it.

The host is shared: ``load_1m`` is printed beside the figures.
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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret
from dnanet.params import LOCAL
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.schedule import compute_vrf_alpha
from dnanet.service.loop import run as run_loop

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "d7" * 20)
SIZES = LOCAL.hardware_classes[0]
LINKS: list[tuple[str, float, float | None]] = [
    ("unshaped", 0.0, None),
    ("delay 10 ms", 10.0, None),
    ("delay 50 ms", 50.0, None),
    ("rate 2 MB/s", 0.0, 2.0),
    ("rate 10 MB/s", 0.0, 10.0),
    ("rate 20 MB/s", 0.0, 20.0),
]
"""(name, added one-way delay in ms, rate cap in MB/s)."""
TARGETS = {"latency_floor_ms": 0.5, "latency_error_max": 0.10, "bandwidth_error_max": 0.15,
           "compute_error_max": 0.15}


def identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-bench/{label}".encode()).digest())


def serve_node(mixer_address: str, mixer_vrf_pk: bytes, links: list[Any], ports: Any,
               ready: Any) -> None:
    """The node's process: its app, a probe server, and a proxy pair per link."""
    from dnanet.node.prover import ChallengeProver
    from dnanet.node.server import NODE_SCHEMA, build_node_app
    from dnanet.service.http import Server
    from dnanet.service.store import Store
    from dnanet.shaping import LinkShape, ProbeServer, ShapingProxy

    async def main() -> None:
        store = Store(Path(tempfile.mkdtemp()) / "node.db", NODE_SCHEMA)
        mixers = {mixer_address: mixer_vrf_pk}
        prover = ChallengeProver(identity("node"), DOMAIN, lambda: mixers, device="cpu")
        server = Server(build_node_app(prover, store), "127.0.0.1", 0)
        await server.start()
        probe = ProbeServer()
        await probe.start()
        node_port = int(server.url.rsplit(":", 1)[1])
        proxies: dict[str, tuple[int, int]] = {}
        started = threading.Event()

        def shapers() -> None:  # the proxies on a loop of their own, as the devnet runs them
            async def run_proxies() -> None:
                for name, delay_ms, rate in links:
                    shape = LinkShape(name, delay_ms, rate)
                    pair = [ShapingProxy(shape, ("127.0.0.1", port))
                            for port in (node_port, probe.port)]
                    for proxy in pair:
                        await proxy.start()
                    proxies[name] = (pair[0].port, pair[1].port)
                started.set()
                await asyncio.Future()

            asyncio.run(run_proxies())

        threading.Thread(target=shapers, daemon=True).start()
        await asyncio.to_thread(started.wait)
        ports.update({"node": node_port, "probe": probe.port, **{
            name: list(pair) for name, pair in proxies.items()}})
        ready.set()
        await asyncio.Future()

    run_loop(main())


@dataclass
class LinkRun:
    name: str
    true_rtt_ms: float
    true_down_mbps: float
    true_up_mbps: float
    reports: list[ScoreReport]

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.reports))

    @property
    def rtt_ms(self) -> float:
        return self.median("rtt_us") / 1000

    @property
    def down_mbps(self) -> float:
        return SIZES.download_bytes / self.median("download_us")

    @property
    def up_mbps(self) -> float:
        return SIZES.upload_bytes / self.median("upload_us")

    @property
    def compute_ms(self) -> float:
        return self.median("compute_us") / 1000


async def challenge(url: str, sessions: int, round0: int, mixer: Identity,
                    node: str) -> list[ScoreReport]:
    from dnanet.mixer.node_client import HttpNodeTransport, open_node_session
    from dnanet.mixer.session import run_challenge_session

    secret = derive_vrf_secret(mixer)
    reports = []
    async with open_node_session(4, 30) as client:
        for i in range(sessions):
            round_ = (round0 + i) % LOCAL.rounds_per_epoch
            seed = hashlib.sha256(f"bench-timing-{round0 + i}".encode()).digest()
            proof = vrf.prove(secret, compute_vrf_alpha(DOMAIN.chain_id, 0, round_, seed))
            report = await run_challenge_session(
                HttpNodeTransport(client, url), identity=mixer, domain=DOMAIN, preset=LOCAL,
                beta=vrf.proof_to_hash(proof), vrf_proof=proof, epoch=0, round_=round_,
                node=node, hardware_class=0)
            if report.outcome != Outcome.OK:
                raise SystemExit(f"{url}: {Outcome(report.outcome).name}: {report.reason}")
            reports.append(report)
    return reports


def run(sessions: int, links: list[tuple[str, float, float | None]] = LINKS
        ) -> tuple[list[LinkRun], dict[str, float]]:
    from dnanet.shaping import measure_link

    mixer = identity("mixer")
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    ports = manager.dict()
    ready = context.Event()
    node = context.Process(target=serve_node, daemon=True, args=(
        mixer.address, derive_vrf_public_key(mixer), links, ports, ready))
    node.start()
    runs = []
    try:
        if not ready.wait(120):
            raise SystemExit("the node did not start")
        for index, (name, _, _) in enumerate(links):
            node_port, probe_port = ports[name]
            true = measure_link("127.0.0.1", probe_port, echoes=32,
                                transfer_bytes=SIZES.download_bytes)
            reports = run_loop(challenge(f"http://127.0.0.1:{node_port}", sessions,
                                         index * sessions, mixer, identity("node").address))
            runs.append(LinkRun(name, true.rtt_s * 1000, true.download_bps / 1e6,
                                true.upload_bps / 1e6, reports))
    finally:
        node.terminate()
        node.join(10)
        manager.shutdown()
    return runs, figures(runs, links)


def figures(runs: list[LinkRun], links: list[tuple[str, float, float | None]]
            ) -> dict[str, float]:
    base = runs[0]
    compute = [r.compute_us for r in base.reports]
    out = {
        "latency_floor_ms": min(r.rtt_us for r in base.reports) / 1000,
        "latency_floor_median_ms": base.rtt_ms,
        "latency_floor_socket_ms": base.true_rtt_ms,
        "latency_error_max": 0.0, "bandwidth_error_max": 0.0, "compute_error_max": 0.0,
        "compute_spread_unshaped": max(compute) / min(compute) - 1,
    }
    for link, (_, delay_ms, rate) in zip(runs[1:], links[1:], strict=True):
        if delay_ms:
            added = link.true_rtt_ms - base.true_rtt_ms
            out["latency_error_max"] = max(out["latency_error_max"], abs(
                (link.rtt_ms - base.rtt_ms) - added) / added)
            out["compute_error_max"] = max(out["compute_error_max"], abs(
                link.compute_ms - base.compute_ms) / base.compute_ms)
        if rate:
            for measured, true in ((link.down_mbps, link.true_down_mbps),
                                   (link.up_mbps, link.true_up_mbps)):
                out["bandwidth_error_max"] = max(out["bandwidth_error_max"],
                                                 abs(measured - true) / true)
    out["load_1m"] = os.getloadavg()[0]
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4, help="sessions per link")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs, out = run(args.sessions)
    print(f"{'link':<14} {'rtt ms true/meas':>18} {'down MB/s true/meas':>21} "
          f"{'up MB/s true/meas':>19} {'compute ms':>11}")
    for r in runs:
        print(f"{r.name:<14} {r.true_rtt_ms:8.3f} /{r.rtt_ms:8.3f} {r.true_down_mbps:9.1f} /"
              f"{r.down_mbps:9.1f} {r.true_up_mbps:8.1f} /{r.up_mbps:8.1f} {r.compute_ms:11.1f}")
    for key, target in TARGETS.items():
        verdict = "ok" if out[key] <= target else "MISSED"
        print(f"{key}: {out[key]} (target <= {target}: {verdict})")
    print(f"compute_spread_unshaped: {out['compute_spread_unshaped']}, load_1m: {out['load_1m']}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
