"""``dnanet devnet``: a whole local network on one machine.

It starts a chain (the embedded in-process EVM by default), deploys the contracts, funds and
registers nodes and mixers, starts every role on its own loopback port, drives 1024-block
epochs on a fast block clock, settles each epoch on chain, has the nodes claim, audits each
epoch, and shows the node table: redrawn in place while an epoch runs (on a terminal;
progress lines otherwise) and printed once each epoch is settled and claimed. Nodes differ as
real ones do: one ``throttled`` (slower compute, added delay) and one ``offline`` (drops out
mid-epoch); the rest are ``normal``. With ``--shape FILE`` each node has instead the link and
compute the file gives it (``dnanet.shaping``: a shaping proxy in front of each shaped node,
which registers the proxy's URL), and the table shows what the mixers measured beside the
"true" figures a plain socket measured through the same shaping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from dnanet.ai.backends import make_backends
from dnanet.chain.backends import connect_embedded
from dnanet.chain.client import ChainClient, TransactionReverted
from dnanet.chain.deploy import MixerSpec, deploy
from dnanet.cliargs import positive_int
from dnanet.crypto.keys import Identity
from dnanet.errors import DnanetError
from dnanet.gateway.app import GatewayConfig, generate_api_key
from dnanet.keyfiles import derive_vrf_public_key
from dnanet.mixer.daemon import MixerDaemon
from dnanet.mixer.node_client import mixer_node_credentials
from dnanet.node.daemon import NodeDaemon, NodeProfile
from dnanet.node.hardware import (
    Hardware,
    devnet_compute_threads,
    limit_compute_threads,
    probe_hardware,
)
from dnanet.params import PRESETS, Preset, format_dna_short, format_score, get_preset
from dnanet.ports import free_port
from dnanet.protocol.rollup import verify_proof
from dnanet.protocol.schedule import compute_epoch_end_block, compute_settlement_block
from dnanet.service.gateway import ClientGateway
from dnanet.service.logs import close_role_log, configure_logging, in_role, open_role_log
from dnanet.service.loop import cancel_once, new_event_loop, wait_or_kill
from dnanet.shaping import (
    DevnetLinks,
    LinkMeasurement,
    LinkShape,
    ShapingThread,
    load_shape_file,
)

log = logging.getLogger("dnanet.devnet")

SETUP_BLOCKS = 400
"""Default of ``--setup-blocks``: blocks between deployment and genesis, room for the setup
transactions (on the embedded chain each mines one) and, over JSON-RPC, for every node to
register before epoch 0 begins."""


def setup_blocks_exceeded(used: int, setup_blocks: int) -> DnanetError:
    """The error of a setup that needed more than ``--setup-blocks`` blocks."""
    return DnanetError(f"setting up took {used} blocks, more than --setup-blocks "
                       f"{setup_blocks} allows before genesis: run again with --setup-blocks "
                       f"{max(2 * setup_blocks, used + used // 2)}")


def role_log_path(data_dir: Path) -> Path:
    """Where the devnet writes a role's INFO log: in the role's data directory, named after
    it (``validator/validator.log``, ``mixer-1a2b3c4d/mixer-1a2b3c4d.log``)."""
    return data_dir / f"{data_dir.name}.log"


DEFAULT_NODES = 8


def node_profiles(count: int) -> list[str]:
    """One throttled and one offline node (with at least 3 nodes), the rest normal."""
    profiles = ["normal"] * count
    if count >= 3:
        profiles[-1] = "offline"
        profiles[-2] = "throttled"
    return profiles


@dataclass
class NodeRow:
    address: str
    profile: str
    hardware: str
    latency_ms: float | None = None
    gflops: float | None = None
    download_mbs: float | None = None
    upload_mbs: float | None = None
    challenges: int = 0
    failures: int = 0
    score: int = 0
    reward: int = 0
    cumulative: int = 0
    claimed: int = 0
    shape: str | None = None
    """With ``--shape``: what is shaped (``+25ms 5MB/s x2``), and the true figures below."""
    true_latency_ms: float | None = None
    true_download_mbs: float | None = None
    true_upload_mbs: float | None = None

    def shaped_json(self) -> dict[str, Any]:
        """With ``--shape``, the measured and true figures (nothing otherwise)."""
        if self.shape is None:
            return {}
        return {"shape": self.shape,
                "measured": {"latency_ms": self.latency_ms, "gflops": self.gflops,
                             "download_mbs": self.download_mbs, "upload_mbs": self.upload_mbs},
                "true": {"latency_ms": self.true_latency_ms,
                         "download_mbs": self.true_download_mbs,
                         "upload_mbs": self.true_upload_mbs}}


@dataclass
class EpochSummary:
    epoch: int
    root: str
    settle_tx: str
    total: int
    audit_ok: bool
    nodes: list[NodeRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "root": self.root, "settle_tx": self.settle_tx,
            "total": self.total, "audit_ok": self.audit_ok,
            "nodes": [{"address": n.address, "profile": n.profile, "score": n.score,
                       "reward": n.reward, "cumulative": n.cumulative, "claimed": n.claimed,
                       **n.shaped_json()}
                      for n in self.nodes],
        }


class BlockClock:
    """Mines one block every ``interval_s`` with ``mine_one`` (run in a worker thread)."""

    def __init__(self, mine_one: Callable[[], object], interval_s: float) -> None:
        self.mine_one = mine_one
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="block-clock")

    async def _run(self) -> None:
        # One block per tick, never a burst to catch up: when the machine is busy the chain's
        # time slows down with it, as the daemons' deadlines assume.
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.mine_one)
            except Exception as exc:  # a busy or restarting RPC: the next tick tries again
                log.warning("block clock: %s", exc)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class DaemonThread:
    """Runs one daemon on its own event loop in its own thread, so that one role's busy
    moment (hashing a payload, verifying a batch) does not stall every other role's answers.
    ``start``/``stop`` are awaited from the devnet's loop. With ``log``, the role's INFO log
    (its records only) goes to that file, as a role process's log would."""

    def __init__(self, daemon: Any, name: str, log: Path | None = None, *,
                 role: str | None = None) -> None:
        self.daemon = daemon
        self.name = name
        self.role = role or name
        self.log = None if log is None else open_role_log(self.role, log)
        self.loop = new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def _call(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            in_role(self.role, coro), self.loop))

    async def start(self) -> None:
        await self._call(self.daemon.start())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._call(self.daemon.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)
        if not self.thread.is_alive():
            self.loop.close()
        if self.log is not None:
            close_role_log(self.log)


class Devnet:
    """All roles of a local network in this process, over real HTTP on loopback."""

    def __init__(self, *, nodes: int, mixers: int, preset: Preset, data_dir: Path,
                 out: Callable[[str], Any] = print, backend: str = "minilm",
                 setup_blocks: int = SETUP_BLOCKS,
                 shapes: Sequence[LinkShape] | None = None) -> None:
        if nodes < 1 or mixers < 1:
            raise DnanetError("a devnet needs at least one node and one mixer")

        self.n_nodes = nodes
        self.n_mixers = mixers
        self.setup_blocks = setup_blocks
        """Blocks between deployment and genesis (``--setup-blocks``)."""
        self.preset = preset
        self.data_dir = data_dir
        self.timing_lock = data_dir / "timing.lock"
        """The file this devnet's mixers take turns on for timed compute steps (its nodes
        share one host: ``HostStepLock``)."""
        self.out = out
        self.deployer = Identity.from_entropy(os.urandom(32))
        self.mixer_ids = [Identity.from_entropy(os.urandom(32)) for _ in range(mixers)]
        self.node_ids = [Identity.from_entropy(os.urandom(32)) for _ in range(nodes)]
        self.validator_id = Identity.from_entropy(os.urandom(32))
        self.profiles = node_profiles(nodes)
        self.shapes: list[LinkShape] | None = None
        """``--shape``: each node's link and compute (see ``use_shapes``)."""
        self.links: DevnetLinks | None = None
        self.shaping: ShapingThread | None = None
        self.truth: list[LinkMeasurement] = []
        """With ``--shape``: each node's link as a plain socket measured it through the same
        shaping, before genesis."""
        if shapes is not None:
            self.use_shapes(shapes)
        self.hardware: Hardware = probe_hardware(with_gpu=False)
        self.clock: BlockClock | None = None
        self.mixer_daemons: list[MixerDaemon] = []
        self.node_daemons: list[NodeDaemon] = []
        self.threads: list[DaemonThread] = []
        self.validator: Any = None
        self.validator_url = ""
        self.http = httpx.AsyncClient(timeout=30)
        self.summaries: list[EpochSummary] = []
        self.backend = backend
        """The model backend every node serves (minilm: the packaged all-MiniLM-L6-v2)."""
        self.api_key = generate_api_key(os.urandom(16))
        self.mixer_urls: list[str] = []
        self.live = LiveBlock(sys.stdout) if out is print and sys.stdout.isatty() else None
        """On a terminal, the table of the running epoch is redrawn in place."""

    def use_shapes(self, shapes: Sequence[LinkShape]) -> None:
        """Give node ``i`` the link and compute of ``shapes[i]`` (before ``setup``): no node
        is then throttled or goes offline but as its shape says."""
        if len(shapes) != len(self.node_ids):
            raise DnanetError(f"{len(self.node_ids)} nodes but {len(shapes)} shapes: one shape "
                              "per node")
        self.shapes = list(shapes)
        self.profiles = ["normal"] * len(shapes)

    def gateway(self, identity: Identity | None) -> ClientGateway:
        return ClientGateway(ChainClient(self.w3, self.deployment, identity), self.preset)

    @property
    def w3(self) -> Any:
        return self.chain.w3

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    async def setup(self) -> None:
        """Deploy, fund, and start every role (nodes register themselves)."""
        # Every node of this devnet computes in this process: their products share its BLAS
        # threads, as many as each node's share of the host's cores.
        limit_compute_threads(devnet_compute_threads(len(self.node_ids)))
        self.chain = connect_embedded()
        chain = self.chain
        self.clock = BlockClock(lambda: chain.mine_blocks(1), self.preset.block_interval_ms / 1000)
        for identity in (self.deployer, self.validator_id, *self.mixer_ids, *self.node_ids):
            self.chain.fund(identity.address, 1_000 * 10**18)
        mixer_ports = [free_port() for _ in self.mixer_ids]
        self.mixer_urls = [f"http://127.0.0.1:{p}" for p in mixer_ports]
        specs = [MixerSpec(m.address, derive_vrf_public_key(m), f"http://127.0.0.1:{p}")
                 for m, p in zip(self.mixer_ids, mixer_ports, strict=True)]
        stake = self.preset.min_stake
        genesis = self.chain.block_number + self.setup_blocks
        self.deployment = await asyncio.to_thread(
            deploy, self.chain.w3, self.deployer, self.preset, mixers=specs,
            genesis_block=genesis, allocations={n.address: 2 * stake for n in self.node_ids})
        self.genesis = genesis
        from dnanet.validator.daemon import ValidatorDaemon

        validator_port = free_port()
        self.validator_url = f"http://127.0.0.1:{validator_port}"
        self.validator = ValidatorDaemon(self.gateway(self.validator_id),
                                         self.data_dir / "validator", host="127.0.0.1",
                                         port=validator_port)
        await self._start(self.validator, "validator")
        for index, (identity, port) in enumerate(zip(self.mixer_ids, mixer_ports,
                                                      strict=True)):
            mixer = self.make_mixer(index, identity, port)
            await self._start(mixer, f"mixer-{identity.address[2:8]}")
            self.mixer_daemons.append(mixer)
        offline_at = genesis + self.preset.epoch_blocks // 2
        await self.setup_links()
        for index, (identity, profile) in enumerate(zip(self.node_ids, self.profiles,
                                                        strict=True)):
            link = self.links.nodes[index] if self.links is not None else None
            if self.shapes is not None:
                shape = self.shapes[index]
                node_profile = NodeProfile(shape.name, compute_slowdown=shape.compute_slowdown)
            else:
                node_profile = NodeProfile.named(profile, offline_at_block=offline_at)
            daemon = self.make_node(
                index, identity, self.data_dir / f"node-{identity.address[2:10]}",
                port=link.node_port if link is not None else free_port(),
                public_url=link.public_url if link is not None else None,
                profile=node_profile, hardware=self.hardware, stake=stake, device="cpu",
                backends=make_backends([self.backend]))
            await self._start(daemon, f"node-{identity.address[2:8]}")
            self.node_daemons.append(daemon)
        head = self.chain.block_number
        if head >= genesis:
            raise setup_blocks_exceeded(head - genesis + self.setup_blocks, self.setup_blocks)
        self.chain.mine_blocks(genesis - head - 1)
        self.clock.start()
        self.out(f"devnet: chain {self.deployment.chain_id} (embedded EVM), genesis block "
                 f"{genesis}, {len(self.node_ids)} nodes, {len(self.mixer_ids)} mixers, "
                 f"validator {self.validator_url}")
        self.announce_host()

    # -- the daemons setup() builds (the adversarial devnet builds dishonest ones) ------------
    def gateway_config(self, identity: Identity) -> GatewayConfig:
        """The OpenAI-compatible gateway of mixer ``identity``."""
        return GatewayConfig(api_keys=frozenset({self.api_key}),
                             node_credential=mixer_node_credentials(identity,
                                                                    self.gateway(identity)))

    def make_mixer(self, index: int, identity: Identity, port: int) -> MixerDaemon:
        """Mixer ``index`` of the devnet (started by the caller)."""
        return MixerDaemon(identity, self.gateway(identity),
                           self.data_dir / f"mixer-{identity.address[2:10]}",
                           validator_url=self.validator_url, port=port,
                           gateway_config=self.gateway_config(identity),
                           timing_lock=self.timing_lock)

    def make_node(self, index: int, identity: Identity, data_dir: Path,
                  **options: Any) -> NodeDaemon:
        """Node ``index`` of the devnet (started by the caller)."""
        return NodeDaemon(identity, self.gateway(identity), data_dir, **options)

    def announce_host(self) -> None:
        self.out(f"  host: {describe_hardware(self.hardware)}; every node shares it")
        self.out(f"  dashboard: {self.validator_url}/ (the validator's page, in a browser)")

    async def announce_gateway(self, timeout_s: float = 120) -> None:
        """Once a mixer's gateway lists a model, print its base URL, key and an example."""
        if not self.mixer_urls:
            return
        base = f"{self.mixer_urls[0]}/v1"
        headers = {"authorization": f"Bearer {self.api_key}"}
        deadline = time.monotonic() + timeout_s
        models: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = await self.http.get(f"{base}/models", headers=headers)
                if response.status_code == 200:
                    models = [m["id"] for m in response.json().get("data", [])]
                    if models:
                        break
            await asyncio.sleep(0.5)
        if not models:
            self.out(f"gateway: {base} key={self.api_key} (no node serves a model yet)")
            return
        model = next((m for m in models if "minilm" in m), models[0])
        self.out(f"gateway: {base} key={self.api_key}")
        if "minilm" in model or "embed" in model:
            self.out(f"  example: curl -s {base}/embeddings -H 'Authorization: Bearer "
                     f"{self.api_key}' -H 'Content-Type: application/json' -d "
                     f"'{{\"model\": \"{model}\", \"input\": \"hello world\"}}'")
        else:  # a text generation model (--backend llm)
            self.out(f"  example: curl -s {base}/chat/completions -H 'Authorization: Bearer "
                     f"{self.api_key}' -H 'Content-Type: application/json' -d "
                     f"'{{\"model\": \"{model}\", \"max_tokens\": 32, \"messages\": "
                     f"[{{\"role\": \"user\", \"content\": \"What is the capital of "
                     f"France?\"}}]}}'")

    async def setup_links(self) -> None:
        """With ``--shape``: start the shaping proxies, then measure each node's link with a
        plain socket through the same shaping (the "true" figures), before any node runs."""
        if self.shapes is None:
            return
        self.links = DevnetLinks(self.shapes, free_port)
        await self.start_proxies(self.links)
        await self.links.wait_listening()
        self.truth = await self.links.measure()
        for shape, truth in zip(self.shapes, self.truth, strict=True):
            self.out(f"  link {shape.name} ({shape.describe()}): true rtt "
                     f"{truth.rtt_s * 1e3:.2f} ms, down/up {truth.download_bps / 1e6:.1f}/"
                     f"{truth.upload_bps / 1e6:.1f} MB/s")

    async def start_proxies(self, links: DevnetLinks) -> None:
        """The proxies in a thread of their own (their timers off every role's loop)."""
        self.shaping = ShapingThread(links.proxies())
        await self.shaping.start()

    async def _start(self, daemon: Any, name: str) -> None:
        """Start ``daemon`` in a thread of its own, its INFO log in its data directory (where
        its store is: a daemon restarted on the same directory appends to the same log)."""
        data_dir = Path(daemon.store.path).parent
        thread = DaemonThread(daemon, name, role_log_path(data_dir), role=data_dir.name)
        self.threads.append(thread)
        await thread.start()

    async def wait_settled(self, epoch: int) -> None:
        gateway = self.gateway(None)
        target = compute_settlement_block(epoch, self.preset, self.genesis)
        end = compute_epoch_end_block(epoch, self.preset, self.genesis)
        last_print = 0.0
        while True:
            if await asyncio.to_thread(gateway.settled_epoch, epoch) is not None:
                return
            head = await asyncio.to_thread(self.head)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                done = min(1.0, (head - (end + 1 - self.preset.epoch_blocks)) /
                           self.preset.epoch_blocks)
                state = "settling" if head >= target else f"{done:5.1%}"
                progress = f"  epoch {epoch}: block {head} ({state})"
                if self.live is None:
                    self.out(progress)
                else:
                    table: list[str] = []
                    with contextlib.suppress(httpx.HTTPError, ValueError):  # progress only
                        rows = [await self.node_row(d, epoch) for d in self.node_daemons]
                        table = format_table(rows, final=False)
                    self.live.show([progress, *table])
            await asyncio.sleep(0.25)
        if self.live is not None:
            self.live.clear()

    async def claim_all(self) -> None:
        for daemon in self.node_daemons:
            for attempt in range(3):
                node = await self._get_json(f"{self.validator_url}/v1/nodes/{daemon.address}")
                if not node or not node.get("cumulative"):
                    break
                proof = [bytes.fromhex(p[2:]) for p in node["proof"]]
                cumulative = int(node["cumulative"])
                root = bytes.fromhex(node["root"][2:])
                if not verify_proof(root, daemon.address, cumulative, proof):
                    raise DnanetError(f"validator served a proof that does not verify for "
                                      f"{daemon.address}")
                try:
                    await asyncio.to_thread(daemon.gateway.claim, daemon.address, cumulative,
                                            proof)
                    break
                except TransactionReverted:
                    # The next epoch settled between reading the proof and claiming: the
                    # chain's root moved on, so read the new proof and claim again.
                    if attempt == 2:
                        raise

    async def _get_json(self, url: str) -> Any:
        response = await self.http.get(url)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    async def summarize(self, epoch: int) -> EpochSummary:
        from dnanet.audit import audit_epoch

        info = await self._get_json(f"{self.validator_url}/v1/epochs/{epoch}")
        settlement = info["settlement"]
        audit = await audit_epoch(self.gateway(None), self.validator_url, epoch,
                                  client=self.http)
        summary = EpochSummary(epoch=epoch, root=settlement["rewardsRoot"],
                               settle_tx=info.get("settle_tx") or "", total=settlement["total"],
                               audit_ok=bool(audit.ok))
        gateway = self.gateway(None)
        for daemon in self.node_daemons:
            row = await self.node_row(daemon, epoch)
            row.claimed = await asyncio.to_thread(gateway.claimed, daemon.address)
            summary.nodes.append(row)
        return summary

    async def node_row(self, daemon: Any, epoch: int) -> NodeRow:
        """A node's row for ``epoch`` from the Validator's breakdown: the medians of what was
        measured in its OK challenges, its score and reward (so far, while the epoch runs)."""
        row = NodeRow(address=daemon.address, profile=daemon.profile.name,
                      hardware=f"{daemon.hardware_class_name} {daemon.hardware.cpu_cores}c")
        if self.shapes is not None and self.truth:
            index = [i.address for i in self.node_ids].index(daemon.address)
            truth = self.truth[index]
            row.profile = self.shapes[index].name
            row.shape = self.shapes[index].describe()
            row.true_latency_ms = truth.rtt_s * 1e3
            row.true_download_mbs = truth.download_bps / 1e6
            row.true_upload_mbs = truth.upload_bps / 1e6
        detail = await self._get_json(
            f"{self.validator_url}/v1/nodes/{daemon.address}/epochs/{epoch}")
        if not detail:
            return row
        reports = detail.get("reports", [])
        ok = [r for r in reports if r.get("outcome") == "OK"]
        if ok:
            row.latency_ms = _median([r["rtt_us"] for r in ok]) / 1000
            row.gflops = _median([r.get("flops_per_s", 0) for r in ok]) / 1e9
            row.download_mbs = _median([r.get("download_bps", 0) for r in ok]) / 1e6
            row.upload_mbs = _median([r.get("upload_bps", 0) for r in ok]) / 1e6
        row.challenges, row.failures = len(reports), len(reports) - len(ok)
        row.score = int(detail.get("epoch_score", 0))
        row.reward = int(detail.get("reward", 0))
        row.cumulative = int(detail.get("cumulative", 0))
        return row

    def print_table(self, summary: EpochSummary) -> None:
        self.out(f"epoch {summary.epoch}: settled in {summary.settle_tx[:12]}.. root "
                 f"{summary.root[:14]}.. total {format_dna_short(summary.total)} DNA, audit "
                 f"{'OK' if summary.audit_ok else 'MISMATCH'}")
        for line in format_table(summary.nodes, final=True):
            self.out(line)

    async def run(self, epochs: int | None) -> list[EpochSummary]:
        epoch = 0
        while epochs is None or epoch < epochs:
            await self.wait_settled(epoch)
            await self.claim_all()
            summary = await self.summarize(epoch)
            self.summaries.append(summary)
            self.print_table(summary)
            epoch += 1
        return self.summaries

    async def stop(self) -> None:
        if self.clock is not None:
            await self.clock.stop()
        # Everything at once: a role stopping alone would see its peers' late requests fail.
        await asyncio.gather(*(thread.stop() for thread in self.threads),
                             *([self.shaping.stop()] if self.shaping is not None else []))
        await self.http.aclose()


ANVIL_DEV_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
"""anvil's first pre-funded development account (public knowledge; dev chains only)."""
KEYSTORE_PASSWORD = "dnanet-devnet"
STOP_S = 20.0
"""How long the devnet's role processes have to stop after SIGTERM before they are killed
(together: a dozen Python processes exiting at once on two cores take several seconds)."""
VALIDATOR_PROCESSES = 2
"""Processes the devnet's Validator runs as over JSON-RPC (``validator run --processes``): its
intake uses two cores, as a real Validator uses all of its own."""
"""Password of the devnet's throwaway keystores (they live in its data directory)."""


class ProcessDevnet(Devnet):
    """The devnet over a JSON-RPC chain (anvil from npm, or any URL), each role its own OS
    process started with the same ``dnanet`` commands an operator runs."""

    anvil_args: tuple[str, ...] = ()
    """Extra arguments of the devnet's anvil. By default anvil keeps the state of its last
    ~4,100 blocks (500 in memory, 3,600 on disk), four epochs of the local preset: an audit
    from genesis, or a mixer added to the set catching up, needs the registry at every round's
    first block since genesis. ``--max-persisted-states N`` keeps more, at a cost that grows
    with the square of the chain's length (each state on disk holds every block hash: 1.85 MB
    at block 21,000; 29 GB for the 21,347 states of a 20-epoch soak, measured)."""

    def __init__(self, *, chain: str, keystore: Path | None = None, **kwargs: Any) -> None:
        self.chain_arg = chain
        self.keystore = keystore
        self.anvil: Any = None
        self.processes: list[tuple[str, Any]] = []
        super().__init__(**kwargs)

    def _connect_chain(self) -> None:
        from dnanet.chain.anvil import ensure_anvil, start_anvil
        from dnanet.chain.backends import connect_rpc

        if self.chain_arg == "anvil":
            self.anvil = start_anvil(ensure_anvil(), extra_args=self.anvil_args)
            self.rpc_url = self.anvil.url
            self.deployer = Identity.from_hex(ANVIL_DEV_KEY)
        else:
            self.rpc_url = self.chain_arg
            if self.keystore is None:
                raise DnanetError("--chain URL needs --keystore: a funded account that deploys "
                                  "and funds the devnet's roles")
            from dnanet.keyfiles import load_identity

            self.deployer = load_identity(self.keystore)
        self._w3 = connect_rpc(self.rpc_url)

    @property
    def w3(self) -> Any:
        return self._w3

    def _fund(self, address: str, wei: int) -> None:
        from dnanet.chain.backends import fund
        from dnanet.chain.transactions import TransactionSender

        try:
            fund(self.w3, address, wei)
        except DnanetError:  # a real chain: pay from the deployer
            TransactionSender(self.w3, self.deployer).send(
                to=address, data=b"", value=wei, action=f"fund {address}")

    def _spawn(self, name: str, args: list[str], env: dict[str, str], *,
               module: str = "dnanet.cli") -> None:
        import subprocess
        import sys

        log_path = role_log_path(self.data_dir / name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # The child writes to its own copy of the descriptor; the devnet's copy can close.
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([sys.executable, "-m", module, *args],
                                       stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, env=env)
        self.processes.append((name, process))

    async def _wait_healthy(self, name: str, url: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        process = dict(self.processes)[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = role_log_path(self.data_dir / name).read_text()[-2000:]
                raise DnanetError(f"{name} exited during start-up:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
        raise DnanetError(f"{name} did not answer on {url} within {timeout_s:g} s")

    async def setup(self) -> None:
        from dnanet.keyfiles import save_identity

        await asyncio.to_thread(self._connect_chain)
        keys = self.data_dir / "keys"
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        for identity in (self.validator_id, *self.mixer_ids, *self.node_ids):
            await asyncio.to_thread(self._fund, identity.address, 100 * 10**18)
            save_identity(identity, keys / f"{identity.address}.json", KEYSTORE_PASSWORD,
                          light=True)  # mode 0600
        self.out(f"devnet: keystores in {keys} (mode 0600), password {KEYSTORE_PASSWORD!r} "
                 "(throwaway keys of this devnet only)")
        mixer_ports = [free_port() for _ in self.mixer_ids]
        self.mixer_urls = [f"http://127.0.0.1:{p}" for p in mixer_ports]
        specs = [MixerSpec(m.address, derive_vrf_public_key(m), f"http://127.0.0.1:{p}")
                 for m, p in zip(self.mixer_ids, mixer_ports, strict=True)]
        stake = self.preset.min_stake
        genesis = await asyncio.to_thread(self.head) + self.setup_blocks
        self.deployment = await asyncio.to_thread(
            deploy, self.w3, self.deployer, self.preset, mixers=specs, genesis_block=genesis,
            allocations={n.address: 2 * stake for n in self.node_ids})
        self.genesis = genesis
        deployment_file = self.data_dir / "deployment.json"
        self.deployment.save(deployment_file)
        # Secrets reach the roles through their environment (readable by this user only),
        # never their command lines (readable by every user in ps).
        env = {**os.environ, "DNANET_KEYSTORE_PASSWORD": KEYSTORE_PASSWORD,
               "DNANET_GATEWAY_KEYS": self.api_key,
               "DNANET_LOG": os.environ.get("DNANET_LOG", "INFO")}
        common = ["--rpc", self.rpc_url, "--deployment", str(deployment_file)]

        def keystore(identity: Identity) -> list[str]:
            return ["--keystore", str(keys / f"{identity.address}.json")]

        validator_port = free_port()
        self.validator_url = f"http://127.0.0.1:{validator_port}"
        self._spawn("validator", ["validator", "run", *common, *keystore(self.validator_id),
                                  "--data-dir", str(self.data_dir / "validator"),
                                  "--port", str(validator_port),
                                  "--processes", str(VALIDATOR_PROCESSES)], env)
        await self._wait_healthy("validator", self.validator_url)
        for identity, port in zip(self.mixer_ids, mixer_ports, strict=True):
            name = f"mixer-{identity.address[2:10]}"
            self._spawn(name, ["mixer", "run", *common, *keystore(identity),
                               "--data-dir", str(self.data_dir / name),
                               "--validator", self.validator_url, "--port", str(port),
                               "--timing-lock", str(self.timing_lock)], env)
        offline_at = genesis + self.preset.epoch_blocks // 2
        await self.setup_links()
        node_ports = []
        for index, (identity, profile) in enumerate(zip(self.node_ids, self.profiles,
                                                        strict=True)):
            name = f"node-{identity.address[2:10]}"
            link = self.links.nodes[index] if self.links is not None else None
            port = link.node_port if link is not None else free_port()
            node_ports.append((name, port))
            extra = ["--offline-at-block", str(offline_at)] if profile == "offline" else []
            if link is not None and link.public_url is not None:
                extra += ["--public-url", link.public_url]
            if link is not None and link.shape.compute_slowdown != 1:
                extra += ["--compute-slowdown", str(link.shape.compute_slowdown)]
            self._spawn(name, ["node", "run", *common, *keystore(identity),
                               "--data-dir", str(self.data_dir / name), "--port", str(port),
                               "--profile", profile, "--device", "cpu",
                               "--compute-threads", str(devnet_compute_threads(
                                   len(self.node_ids))),
                               "--backend", self.backend, *extra], env)
        for (name, _process), port in zip(self.processes[1:1 + len(self.mixer_ids)],
                                          mixer_ports, strict=True):
            await self._wait_healthy(name, f"http://127.0.0.1:{port}")
        for name, port in node_ports:  # each node process loads its model first
            await self._wait_healthy(name, f"http://127.0.0.1:{port}", timeout_s=300)
        self.node_views = [_NodeHandle(i, p, self.hardware, self.gateway(i))
                           for i, p in zip(self.node_ids, self.profiles, strict=True)]
        gateway = self.gateway(None)
        while len([n for n in await asyncio.to_thread(gateway.nodes)]) < len(self.node_ids):
            if await asyncio.to_thread(self.head) >= genesis - 1:
                registered = len(await asyncio.to_thread(gateway.nodes))
                raise DnanetError(
                    f"{registered} of {len(self.node_ids)} nodes registered in the "
                    f"--setup-blocks {self.setup_blocks} blocks before genesis (block "
                    f"{genesis}): run again with --setup-blocks {2 * self.setup_blocks}, or "
                    f"see the nodes' logs in {self.data_dir}")
            await asyncio.sleep(0.2)
        from dnanet.chain.backends import mine_blocks

        head = await asyncio.to_thread(self.head)
        if head < genesis - 1 and self.chain_arg == "anvil":
            await asyncio.to_thread(mine_blocks, self.w3, genesis - 1 - head)
        if self.chain_arg == "anvil":
            w3 = self.w3
            self.clock = BlockClock(lambda: mine_blocks(w3, 1),
                                    self.preset.block_interval_ms / 1000)
            self.clock.start()
        self.out(f"devnet: chain {self.deployment.chain_id} ({self.chain_arg} at {self.rpc_url}),"
                 f" genesis block {genesis}, {len(self.node_ids)} nodes, {len(self.mixer_ids)} "
                 f"mixers, validator {self.validator_url} ({VALIDATOR_PROCESSES} processes); each "
                 f"role is its own process, logs "
                 f"in {self.data_dir}")
        self.announce_host()

    async def start_proxies(self, links: DevnetLinks) -> None:
        """The proxies in a process of their own (``python -m dnanet.shaping SPEC``)."""
        spec = self.data_dir / "shaping" / "links.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps(links.spec()))
        self._spawn("shaping", [str(spec)], dict(os.environ), module="dnanet.shaping")

    @property
    def node_daemons(self) -> list[Any]:
        return getattr(self, "node_views", [])

    @node_daemons.setter
    def node_daemons(self, value: list[Any]) -> None:
        pass

    async def stop(self) -> None:
        import signal as signals

        if self.clock is not None:
            await self.clock.stop()
        for _name, process in self.processes:
            if process.poll() is None:
                process.send_signal(signals.SIGTERM)
        await wait_or_kill(self.processes, STOP_S)  # all together, not each in turn
        await self.http.aclose()
        if self.anvil is not None:
            self.anvil.stop()


@dataclass
class _NodeHandle:
    """What the devnet needs of a node that runs in another process."""

    identity: Identity
    profile_name: str
    hardware: Hardware
    gateway: ClientGateway

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def profile(self) -> NodeProfile:
        return NodeProfile(name=self.profile_name)

    @property
    def hardware_class_name(self) -> str:
        return "cpu"  # the devnet starts its nodes with --device cpu


def describe_hardware(hardware: Hardware) -> str:
    gpu = f", GPU {hardware.gpu}" if hardware.gpu else ""
    return (f"{hardware.cpu_model}, {hardware.cpu_cores} cores, "
            f"{hardware.memory_bytes / 2**30:.0f} GiB memory{gpu}")


def format_table(rows: list[NodeRow], *, final: bool) -> list[str]:
    """The devnet's node table: hardware, medians of what was measured in OK challenges
    (latency, verified compute, download/upload bandwidth), challenges failed, score, reward
    and (once settled) claimed. Scores and amounts print as on the Validator's dashboard
    (``format_score``, ``format_dna_short``). With ``--shape``, the true latency and
    bandwidth (a plain socket through the same shaping) follow the measured ones."""
    shaped = any(n.shape is not None for n in rows)
    lines = [f"  {'node':<12} {'profile':<10} {'hw':<7} {'latency':>9} {'GFLOP/s':>8} "
             f"{'down/up MB/s':>13} "
             + (f"{'true lat':>9} {'true d/u':>13} {'shape':<16} " if shaped else "")
             + f"{'failed':>7} {'score':>8} {'reward':>10}"
             + (f" {'claimed':>10}" if final else "")]
    for n in rows:
        bandwidth = _fmt_mbs(n.download_mbs, n.upload_mbs)
        truth = (f"{_fmt(n.true_latency_ms, 'ms', 2):>9} "
                 f"{_fmt_mbs(n.true_download_mbs, n.true_upload_mbs):>13} "
                 f"{n.shape or 'unshaped':<16} ") if shaped else ""
        lines.append(
            f"  {n.address[:12]} {n.profile:<10} {n.hardware:<7} "
            f"{_fmt(n.latency_ms, 'ms', 2):>9} {_fmt(n.gflops, '', 2):>8} {bandwidth:>13} "
            f"{truth}{f'{n.failures}/{n.challenges}':>7} {format_score(n.score):>8} "
            f"{format_dna_short(n.reward):>10}"
            + (f" {format_dna_short(n.claimed):>10}" if final else ""))
    return lines


class LiveBlock:
    """Lines redrawn in place on a terminal (ANSI: back to the block's first line, erase to
    the end of the screen)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.height = 0

    def show(self, lines: list[str]) -> None:
        self.clear()
        self.stream.write("".join(f"{line}\n" for line in lines))
        self.stream.flush()
        self.height = len(lines)

    def clear(self) -> None:
        if self.height:
            self.stream.write(f"\x1b[{self.height}F\x1b[J")
            self.stream.flush()
            self.height = 0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else 0.0


def _fmt(value: float | None, unit: str, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _fmt_mbs(down: float | None, up: float | None) -> str:
    """``down/up`` in MB/s: a decimal below 100 (a 2.5 MB/s link reads as such)."""
    if down is None:
        return "-"
    return "/".join(f"{v:.1f}" if v < 100 else f"{v:.0f}" for v in (down, up or 0.0))


async def run_devnet(*, nodes: int, mixers: int, epochs: int | None, preset: Preset,
                     data_dir: Path, summary: Path | None, chain: str = "embedded",
                     keystore: Path | None = None, backend: str = "minilm",
                     out: Callable[[str], Any] = print,
                     setup_blocks: int = SETUP_BLOCKS,
                     shapes: Sequence[LinkShape] | None = None,
                     scenario: str | None = None) -> list[EpochSummary]:
    devnet: Devnet
    shaped: dict[str, Any] = {} if shapes is None else {"shapes": shapes}
    if scenario is not None:  # the scenario says how many nodes and mixers
        from dnanet.devnet_scenario import build_scenario_devnet
        from dnanet.scenarios import get_scenario

        devnet = build_scenario_devnet(
            get_scenario(scenario), chain=chain, keystore=keystore, preset=preset,
            data_dir=data_dir, out=out, backend=backend, setup_blocks=setup_blocks, **shaped)
    elif chain == "embedded":
        devnet = Devnet(nodes=nodes, mixers=mixers, preset=preset, data_dir=data_dir, out=out,
                        backend=backend, setup_blocks=setup_blocks, **shaped)
    else:
        devnet = ProcessDevnet(chain=chain, keystore=keystore, nodes=nodes, mixers=mixers,
                               preset=preset, data_dir=data_dir, out=out, backend=backend,
                               setup_blocks=setup_blocks, **shaped)
    # The devnet's own INFO log, and anything logged outside every role's context.
    own_log = open_role_log(None, data_dir / "devnet.log")
    try:
        await devnet.setup()
        await devnet.announce_gateway()
        return await devnet.run(epochs)
    finally:
        await devnet.stop()
        close_role_log(own_log)
        if summary is not None:
            summary.write_text(json.dumps({
                "chain_id": devnet.deployment.chain_id if hasattr(devnet, "deployment") else None,
                "epochs": [s.to_json() for s in devnet.summaries]}, indent=2))


def _devnet_command(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    if args.chain not in ("embedded", "anvil") and not args.chain.startswith(("http://",
                                                                             "https://")):
        raise DnanetError(f"--chain {args.chain!r}: use embedded, anvil, or an http(s) RPC URL")
    shapes = load_shape_file(Path(args.shape)) if args.shape else None
    epochs = args.epochs
    if args.scenario is not None:
        from dnanet.scenarios import get_scenario

        scenario = get_scenario(args.scenario)
        if shapes is not None or args.nodes not in (None, scenario.nodes) or \
                args.mixers != scenario.mixers:
            raise DnanetError(f"--scenario {scenario.name} plays {scenario.nodes} nodes (and "
                              f"{scenario.joiners} that join) and {scenario.mixers} mixers "
                              "unshaped: leave out --nodes, --mixers and --shape")
        epochs = epochs or scenario.epochs
    if shapes is not None and args.nodes not in (None, len(shapes)):
        raise DnanetError(f"--nodes {args.nodes} but --shape {args.shape} shapes "
                          f"{len(shapes)} nodes: leave --nodes out, or give one shape per node")
    nodes = len(shapes) if shapes is not None else args.nodes or DEFAULT_NODES
    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="dnanet-"))
    loop = new_event_loop()
    task = loop.create_task(run_devnet(
        nodes=nodes, mixers=args.mixers, epochs=epochs, shapes=shapes, scenario=args.scenario,
        preset=get_preset(args.preset), data_dir=data_dir, chain=args.chain,
        keystore=Path(args.keystore) if args.keystore else None, backend=args.backend,
        summary=Path(args.summary) if args.summary else None, setup_blocks=args.setup_blocks))
    on_signal = cancel_once(task)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_signal)
        loop.add_signal_handler(signal.SIGTERM, on_signal)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        print("devnet: stopped")
    finally:
        loop.close()
    return 0


def add_devnet_command(sub: Any) -> None:
    p = sub.add_parser("devnet", help="run a whole local network (chain, mixers, validator, nodes)")
    p.add_argument("--nodes", type=positive_int, default=None,
                   help=f"AI nodes (default {DEFAULT_NODES}, or one per shape of --shape)")
    p.add_argument("--mixers", type=positive_int, default=4, help="QueryMixers (default 4)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="stop after this many settled epochs (default: run until Ctrl-C)")
    p.add_argument("--chain", default="embedded", help="embedded (default), anvil, or an RPC URL")
    p.add_argument("--preset", default="local", choices=sorted(PRESETS),
                   help="protocol parameters (default: local, 1024-block epochs on a 50 ms "
                   "block clock)")
    p.add_argument("--summary", help="write a JSON summary of every epoch to this file")
    p.add_argument("--data-dir", help="keep daemon state here (default: a new temp dir)")
    p.add_argument("--keystore", help="with --chain URL: a funded account that deploys and "
                   "funds the roles (password: $DNANET_KEYSTORE_PASSWORD or a prompt)")
    p.add_argument("--backend", default="minilm", choices=["minilm", "llm", "trivial"],
                   help="model every node serves (default: minilm, all-MiniLM-L6-v2 on the CPU; "
                   "llm: Gemma 3 270M through llama.cpp, the llm extra, installed by ./dnanet "
                   "on first use)")
    p.add_argument("--setup-blocks", type=positive_int, default=SETUP_BLOCKS, metavar="BLOCKS",
                   help=f"blocks between deployment and genesis, in which every node must "
                   f"register (default {SETUP_BLOCKS}; raise it on a slow machine or chain)")
    p.add_argument("--shape", metavar="FILE",
                   help="JSON or TOML file giving each node an added one-way delay (delay_ms), "
                   "a rate cap (rate_mbps, MB/s) and a compute slowdown (compute_slowdown): "
                   "docs/shaping.md")
    p.add_argument("--scenario", metavar="NAME",
                   help="play a scripted life of the network (churn: nodes join, unbond, fail "
                   "and cheat; a mixer and the Validator restart; a mixer is added; gateway "
                   "bursts), its events by epoch (docs/operations.md); --epochs defaults to "
                   "the scenario's")
    p.set_defaults(handler=_devnet_command)


__all__ = ["Devnet", "add_devnet_command", "node_profiles", "run_devnet"]
