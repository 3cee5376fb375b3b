"""The AI node daemon: registers on chain, answers challenges from current mixers.

The compute device is resolved when the daemon is built (``--device``: a bad value, or
"cuda" without a CUDA device, fails there, not at the first challenge), and the hardware class
the node declares on chain follows that device: GPU only when compute runs on CUDA.

The node reads the chain's head every half round (``head``): it takes a challenge only for a
round still open at that head, and a mixer's credential for its AI endpoints only over a block
near it. Challenge ids it took up are kept in its database, so a restart does not reopen them.
Its AI endpoints serve current mixers and the holder of the operator's key
(``DNANET_NODE_API_KEY`` or the 0600 file ``node-api-key`` in the data directory).

A node's behaviour can be shaped for tests and the devnet (``NodeProfile``): a ``throttled``
node computes more slowly and answers with added delay, an ``offline`` node stops answering
at a given block. Scores follow from what mixers measure, so these nodes earn less.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request, Response

from dnanet.ai.backends import BackendSet
from dnanet.crypto.keys import Identity
from dnanet.errors import ConfigError
from dnanet.node.access import AiAccess, api_key_from_environment
from dnanet.node.ai_api import mount_ai_api
from dnanet.node.compute_process import ComputeProcess, HeldAnswer
from dnanet.node.hardware import Hardware, declared_class, probe_hardware
from dnanet.node.prover import COMPUTING_ATTEMPT, ChainView, ChallengeProver
from dnanet.node.server import NODE_SCHEMA, StoreSeen, build_node_app
from dnanet.params import hardware_class_name
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_product,
    resolve_compute_device,
)
from dnanet.protocol.schedule import compute_epoch
from dnanet.service.http import Server
from dnanet.service.network import ChainGateway
from dnanet.service.store import Store

log = logging.getLogger("dnanet.node")

PROFILES = ("normal", "throttled", "offline")


@dataclass(frozen=True)
class NodeProfile:
    name: str = "normal"
    compute_slowdown: float = 1.0
    """Compute takes this many times as long (a node with fewer threads)."""
    added_delay_s: float = 0.0
    """Added to every HTTP answer (a slow link)."""
    offline_at_block: int | None = None
    """From this block on, the node stops answering (it drops out)."""
    cheat_at_block: int | None = None
    """Devnets only (``node run --cheat-at-block``, hidden): the products of the first
    challenge whose compute step starts once the node's head reaches this block (every
    attempt of it, so the counted one too) are wrong in every entry, committed and signed as
    if right, once: the signed fraud a mixer's spot check catches and a settlement punishes
    (``dnanet devnet --scenario churn``)."""

    @classmethod
    def named(cls, name: str, *, offline_at_block: int | None = None) -> NodeProfile:
        if name == "normal":
            return cls()
        if name == "throttled":
            return cls(name, compute_slowdown=3.0, added_delay_s=0.015)
        if name == "offline":
            return cls(name, offline_at_block=offline_at_block)
        raise ValueError(f"unknown node profile {name!r}; choose one of {PROFILES}")


def resolve_device(device: str) -> str:
    """The device compute will run on for ``--device`` ("auto", "cpu" or "cuda"): "cpu" or
    "cuda". Raises ConfigError naming ``--device`` when it is invalid or unavailable."""
    try:
        return resolve_compute_device(device)
    except ConfigError as exc:
        raise ConfigError(f"--device {device!r}: {exc.detail}") from None


class NodeDaemon:
    """One AI node: HTTP challenge API + chain registration + mixer-set refresh."""

    def __init__(
        self,
        identity: Identity,
        gateway: ChainGateway,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_url: str | None = None,
        stake: int | None = None,
        profile: NodeProfile | None = None,
        hardware: Hardware | None = None,
        device: str = "auto",
        backends: BackendSet | None = None,
        api_key: str | None = None,
        compute_process: bool = False,
        compute_threads: int | None = None,
    ) -> None:
        # First, before any file or port is opened: a bad --device fails here.
        self.device = resolve_device(device)
        """The device compute runs on: "cpu" or "cuda"."""
        self.hardware_class = declared_class(self.device)
        """The class declared on chain: it follows the device compute runs on."""
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.profile = profile or NodeProfile()
        self.hardware = hardware or probe_hardware()
        if self.hardware.gpu and self.device != "cuda":
            log.warning("a GPU (%s) is present but compute runs on the CPU (--device %s%s): "
                        "the node declares the CPU class", self.hardware.gpu, device,
                        "" if device == "cpu" else "; torch with CUDA is not available")
        self.stake = stake if stake is not None else gateway.preset.min_stake
        self._public_url = public_url
        self._mixers: dict[str, bytes] = {}
        self.head: int | None = None
        """The chain's head block as the node last read it."""
        self._cheat_session: bytes | None = None
        """The challenge whose products are the profile's wrong ones, once chosen."""
        self._cheat_lock = threading.Lock()
        self._compute_in_process = compute_process
        self._compute_threads = compute_threads
        self.compute_process: ComputeProcess | None = None
        """Where products are computed when ``compute_process`` (``node run``): a child
        process, so the event loop's work does not stretch a timed product (see
        ``dnanet.node.compute_process``); None: a thread of this process."""
        preset = gateway.preset
        self.store = Store(data_dir / "node.db", NODE_SCHEMA)
        self.prover = ChallengeProver(
            identity, gateway.domain, lambda: self._mixers, compute=self._compute,
            chain=ChainView(preset, gateway.genesis_block, lambda: self.head),
            seen=StoreSeen(self.store))
        self.app = build_node_app(
            self.prover, self.store, status=self._status,
            reply_delay=lambda: self.profile.added_delay_s, online=lambda: not self.offline,
            timeout_s=2 * preset.challenge_timeout_ms / 1000)
        self.backends = backends or BackendSet([])
        self.access = AiAccess(
            domain=gateway.domain, mixers=lambda: self._mixers, head=lambda: self.head,
            endpoint=lambda: self.url, window_blocks=preset.round_blocks,
            api_key=api_key if api_key is not None else api_key_from_environment(data_dir))
        mount_ai_api(self.app, self.backends, self.access)
        self._install_profile_middleware()
        self.server = Server(self.app, host, port)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.offline = False

    @property
    def url(self) -> str:
        return self._public_url or self.server.url

    def _compute(self, seed: bytes, size: ComputeSize) -> ComputeAnswer | HeldAnswer:
        t0 = time.perf_counter()
        wrong = self._cheats_now()
        if wrong:
            log.warning("node %s: devnet profile: signing a wrong product", self.address[:10])
        answer: ComputeAnswer | HeldAnswer
        if self.compute_process is not None:
            answer = self.compute_process.compute(seed, size, wrong=wrong)
        else:
            answer = compute_product(seed, size, self.device)
            if wrong:
                answer = commit_product(size, answer.product + 1)
        if self.profile.compute_slowdown > 1:
            time.sleep((time.perf_counter() - t0) * (self.profile.compute_slowdown - 1))
        return answer

    def _cheats_now(self) -> bool:
        """Whether this product is one of the wrong ones of ``cheat_at_block``: every attempt
        of the first challenge whose compute step starts at or after that block."""
        block = self.profile.cheat_at_block
        attempt = COMPUTING_ATTEMPT.get()
        if block is None or attempt is None:
            return False
        challenge_id, index = attempt
        with self._cheat_lock:
            if self._cheat_session is None and index == 0 and self.head is not None \
                    and self.head >= block:
                self._cheat_session = challenge_id
            return self._cheat_session == challenge_id

    def _install_profile_middleware(self) -> None:
        profile = self.profile

        @self.app.middleware("http")
        async def shape(request: Request,
                        call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if self.offline:
                # An offline node: drop the connection's answer (the mixer sees an error).
                return Response(status_code=503)
            if profile.added_delay_s:
                await asyncio.sleep(profile.added_delay_s)
            return await call_next(request)

    @property
    def hardware_class_name(self) -> str:
        return hardware_class_name(self.hardware_class)

    def _status(self) -> dict[str, object]:
        return {"hardware": self.hardware.to_dict(), "device": self.device,
                "hardware_class": self.hardware_class_name, "profile": self.profile.name,
                "mixers": sorted(self._mixers), "models": self.backends.models()}

    async def refresh_mixers(self) -> None:
        """Read the chain's head and the mixer sets of its epoch, the one before and the one
        after (a mixer added from the next epoch challenges as soon as that epoch begins,
        possibly before this node's next read of the head)."""
        head = await asyncio.to_thread(self.gateway.block_number)
        self.head = head
        genesis = self.gateway.genesis_block
        epoch = compute_epoch(max(head, genesis), self.gateway.preset, genesis)
        members: dict[str, bytes] = {}
        for e in {max(epoch - 1, 0), epoch, epoch + 1}:
            for m in await asyncio.to_thread(self.gateway.mixer_set, e):
                members[m.address] = m.vrf_public_key
        self._mixers = members
        if self.profile.offline_at_block is not None and head >= self.profile.offline_at_block:
            if not self.offline:
                log.info("node %s goes offline at block %d", self.address[:10], head)
            self.offline = True

    async def ensure_registered(self) -> None:
        record = await asyncio.to_thread(self.gateway.node, self.address)
        if record is None:
            await asyncio.to_thread(self.gateway.register_node, self.url,
                                    self.hardware_class, self.stake)
            log.info("node %s registered at %s as class %s", self.address[:10], self.url,
                     self.hardware_class_name)
        elif (record.endpoint, record.hardware_class) != (self.url, self.hardware_class):
            # Moved, or now computing on another device: mixers must reach the node where it
            # is and size its challenges for what it computes on.
            await asyncio.to_thread(self.gateway.update_node, self.url, self.hardware_class)
            log.warning("node %s was registered at %s as class %s; updated to %s as class %s "
                        "(computing on %s)", self.address[:10], record.endpoint,
                        hardware_class_name(record.hardware_class),
                        self.url, self.hardware_class_name, self.device)

    async def start(self, *, register: bool = True) -> None:
        # A missing model backend fails here, before the node registers or serves.
        await self.backends.load()
        await self.server.start()
        if self._compute_in_process and self.compute_process is None:
            # After the bind: the port a devnet picked stays free for the shortest time.
            self.compute_process = ComputeProcess(self.device, self._compute_threads)
            await asyncio.to_thread(self.compute_process.wait_ready)
        if register:
            await self.ensure_registered()
        await self.refresh_mixers()
        self._task = asyncio.create_task(self._loop(), name=f"node-{self.address[:8]}")

    async def _loop(self) -> None:
        # Every half round: the head decides which rounds' challenges and which credentials'
        # blocks the node takes, and a round is the finest unit either is judged in.
        preset = self.gateway.preset
        interval = max(0.02, preset.block_interval_ms / 1000 * preset.round_blocks / 2)
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            try:
                await self.refresh_mixers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("node %s: cannot refresh the mixer set: %s", self.address[:10], exc)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.server.stop()
        await self.backends.close()
        if self.compute_process is not None:
            await asyncio.to_thread(self.compute_process.close)
            self.compute_process = None
        self.app.state.flush_progress()
        self.store.close()


__all__ = ["PROFILES", "NodeDaemon", "NodeProfile"]
