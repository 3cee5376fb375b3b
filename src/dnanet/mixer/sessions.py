"""Challenge sessions, run on an event loop of their own that nothing else shares.

A session's figures are the mixer's own clock readings around the node's answers, so
anything else the mixer does on the same event loop (a database commit, co-signing a peer's
batch, a gateway request) would sit inside some node's round trip. ``TimingLoop`` is a
thread with its own asyncio loop where only sessions and their node client run; the
daemon's loop awaits their results. ``SessionRunner`` runs one assigned node's challenge
there, isolated: whatever goes wrong in one session is that node's report (or, for a fault
of the mixer's own, no report and a logged error), never the round's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.mixer.node_client import HttpNodeTransport, NodeHttpClient, open_node_session
from dnanet.mixer.session import NodeTransport, StepGate, run_challenge_session
from dnanet.params import Preset
from dnanet.protocol.messages import ScoreReport
from dnanet.service.network import NodeRecord

log = logging.getLogger("dnanet.mixer.sessions")

T = TypeVar("T")
TransportFactory = Callable[[str], NodeTransport]
"""endpoint -> the transport of one session to the node there (called on the timing loop)."""


class TimingLoop:
    """A daemon thread running an event loop of its own (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the timing loop and wait for its result here; cancelling the
        caller cancels it there."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"timing loop {self.name} is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None


class HostStepLock:
    """At most ``slots`` timed compute attempts at once among every mixer of one host (a
    devnet's): by default one per core, as each devnet node computes on its share of them.

    On a real network each node is its own machine. A devnet runs all its nodes on one host,
    where a node whose product is timed while more products than cores run is measured slower
    than it is (on 2 cores a product's GFLOP/s scattered 0.6 of its median from one challenge
    to the next even with each node on one thread). The host's mixers take turns at each
    attempt of the compute step through advisory locks on one file per slot (``flock``, so
    they hold across processes and between the mixers of one process); the clock starts once
    a slot is held, so waiting for it is never timed, and every other step runs as before. Not
    for a real mixer: there it would only delay challenges."""

    POLL_S = 0.001

    def __init__(self, path: Path, slots: int | None = None) -> None:
        self.path = Path(path)
        self.slots = max(1, slots if slots is not None else os.cpu_count() or 1)

    def slot_path(self, slot: int) -> Path:
        """The lock file of ``slot`` (the first is ``path`` itself)."""
        return self.path if slot == 0 else self.path.with_name(f"{self.path.name}.{slot}")

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        fds = [os.open(self.slot_path(i), os.O_RDWR | os.O_CREAT, 0o600)
               for i in range(self.slots)]
        try:
            while not any(_try_flock(fd) for fd in fds):
                # Polled: a session cancelled while waiting leaves nothing behind.
                await asyncio.sleep(self.POLL_S)
            yield
        finally:
            for fd in fds:
                os.close(fd)  # releases the slot held


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class SessionRunner:
    """Runs challenge sessions on a ``TimingLoop`` with at most ``concurrency`` at once;
    ``compute_gate`` is held around each timed attempt of a session's compute step."""

    def __init__(self, identity: Identity, domain: Domain, preset: Preset, *,
                 concurrency: int, transport: TransportFactory | None = None,
                 compute_gate: StepGate | None = None) -> None:
        self.compute_gate = compute_gate
        self.identity = identity
        self.domain = domain
        self.preset = preset
        self.concurrency = concurrency
        self.loop = TimingLoop(f"mixer-timing-{identity.address[:8]}")
        self._transport = transport
        self._client: NodeHttpClient | None = None
        self._limit: asyncio.Semaphore | None = None

    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(RuntimeError):
                await self.loop.run(client.close())
        self.loop.stop()

    def _make_transport(self, endpoint: str) -> NodeTransport:
        """On the timing loop: the session's transport (the node client is made there)."""
        if self._transport is not None:
            return self._transport(endpoint)
        if self._client is None:
            self._client = open_node_session(
                self.concurrency, self.preset.challenge_timeout_ms / 1000 + 5)
        return HttpNodeTransport(self._client, endpoint)

    async def _session(self, record: NodeRecord, *, epoch: int, round_: int, beta: bytes,
                       proof: bytes) -> ScoreReport:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        async with self._limit:
            return await run_challenge_session(
                self._make_transport(record.endpoint), identity=self.identity,
                domain=self.domain, preset=self.preset, beta=beta, vrf_proof=proof,
                epoch=epoch, round_=round_, node=record.address,
                hardware_class=record.hardware_class, compute_gate=self.compute_gate)

    async def challenge(self, record: NodeRecord, *, epoch: int, round_: int, beta: bytes,
                        proof: bytes) -> ScoreReport | None:
        """The node's report; None (and a logged error) if the mixer itself failed: a fault
        of the mixer's must neither cost the node a challenge nor the round its reports."""
        self.loop.start()  # at once if running; started on first use otherwise
        try:
            return await self.loop.run(self._session(record, epoch=epoch, round_=round_,
                                                     beta=beta, proof=proof))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("mixer %s: challenging node %s in epoch %d round %d failed on the "
                      "mixer's side (no report): %r", self.identity.address[:10],
                      record.address[:10], epoch, round_, exc, exc_info=True)
            return None


__all__ = ["HostStepLock", "SessionRunner", "TimingLoop", "TransportFactory"]
