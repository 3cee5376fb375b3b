"""The QueryMixer daemon: its parts, put together and started.

=============================  ================================================================
``dnanet.mixer.rounds``        each round: prove the VRF output, challenge the assigned nodes,
                               certify the batch (``RoundScheduler``)
``dnanet.mixer.sessions``      challenge sessions on an event loop of their own, so nothing else
                               the mixer does sits inside a node's timing (``SessionRunner``)
``dnanet.mixer.certify``       sign a batch, gather co-signatures, forward the certificate
``dnanet.mixer.outbox``        what has not reached the Validator yet, retried; peers' batches
                               watched and forwarded in their originator's stead
``dnanet.mixer.cosign``        check a peer's batch and sign it, or refuse it with the reasons
``dnanet.mixer.settlement``    recompute an epoch from the carried state and sign only a match
``dnanet.mixer.routes``        the HTTP API; ``dnanet.mixer.peers``: talking to other mixers and
                               the Validator; ``dnanet.mixer.store``: every SQL statement
=============================  ================================================================

Everything the mixer signs or accepts is in its SQLite store first. I/O is injected: the chain
(``ChainGateway``), peers (``Peers``), node transports (a factory), the clock (``Clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from dnanet.crypto.keys import Identity
from dnanet.gateway.app import CallbackDirectory, Gateway, GatewayConfig
from dnanet.gateway.canary import CanaryBook, ReferenceModels
from dnanet.gateway.scheduler import stats_from_reports
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.certify import Certifier
from dnanet.mixer.cosign import CoSigner, MeasurementBook
from dnanet.mixer.metrics import MixerMetrics
from dnanet.mixer.outbox import Outbox
from dnanet.mixer.peers import HttpPeers, Peers
from dnanet.mixer.rounds import RoundScheduler
from dnanet.mixer.routes import install_routes
from dnanet.mixer.sessions import HostStepLock, SessionRunner, TransportFactory
from dnanet.mixer.settlement import SettlementSigner
from dnanet.mixer.store import MixerStore
from dnanet.service.clock import Clock, SystemClock
from dnanet.service.http import Server, create_app
from dnanet.service.network import ChainGateway
from dnanet.service.views import ViewCache

log = logging.getLogger("dnanet.mixer")

CHALLENGE_SPREAD = 0.5
"""The part of a round over which a mixer spreads the starts of its challenges."""
ROUND_POLLS = 32
"""How many times a round the round loop reads the chain's head (at most every 20 ms)."""
GATEWAY_STATS_REPORTS = 1024
"""The mixer's newest reports the gateway's view of each node is drawn from."""


class MixerDaemon:
    """One QueryMixer. ``start()`` serves HTTP and drives rounds until ``stop()``."""

    def __init__(
        self,
        identity: Identity,
        gateway: ChainGateway,
        data_dir: Path,
        *,
        validator_url: str,
        host: str = "127.0.0.1",
        port: int = 0,
        concurrency: int = 64,
        poll_s: float | None = None,
        gateway_config: GatewayConfig | None = None,
        references: ReferenceModels | None = None,
        retry_s: tuple[float, float] | None = None,
        backup_s: float | None = None,
        spread_s: float | None = None,
        peers: Peers | None = None,
        node_transport: TransportFactory | None = None,
        clock: Clock | None = None,
        timing_lock: Path | None = None,
    ) -> None:
        """``retry_s``: the outbox's first and longest wait between passes while something is
        pending (default 2 s, and one round's time up to 60 s). ``backup_s``: how long after
        co-signing a peer's batch the mixer looks whether the Validator holds it (default two
        rounds' time, at least 10 s); if not, it forwards the batch itself from ``backup_s``
        times one more than its backup rank on. ``spread_s``: the challenges of a round start
        within this many seconds of the round's start (default ``CHALLENGE_SPREAD`` of the
        round's time on the preset's block clock). ``peers``, ``node_transport``, ``clock``:
        the I/O, injected (default: HTTP, HTTP, the system clock). ``timing_lock``: a file
        the host's mixers take turns on for timed compute steps (devnets only:
        ``HostStepLock``)."""
        self.identity = identity
        self.address = identity.address
        self.gateway = gateway
        self.preset = preset = gateway.preset
        self.validator_url = validator_url.rstrip("/")
        self.clock = clock or SystemClock()
        round_s = preset.round_blocks * preset.block_interval_ms / 1000
        # The round loop looks for a new round this often: a round starts at most this late.
        poll_s = poll_s if poll_s is not None else max(0.02, round_s / ROUND_POLLS)
        if retry_s is None:
            retry_s = (2.0, min(60.0, max(2.0, round_s)))
        if not 0 < retry_s[0] <= retry_s[1]:
            raise ValueError(f"retry_s must be 0 < first <= longest, not {retry_s}")
        if backup_s is None:
            backup_s = max(10.0, 2 * round_s)
        if not backup_s > 0:
            raise ValueError(f"backup_s must be positive, not {backup_s}")
        if spread_s is None:
            spread_s = CHALLENGE_SPREAD * round_s
        if not spread_s >= 0:
            raise ValueError(f"spread_s must be 0 or more, not {spread_s}")
        self.retry_s, self.backup_s, self.spread_s = retry_s, backup_s, spread_s

        self.store = MixerStore(Path(data_dir) / "mixer.db")
        self.views = ViewCache(gateway)
        self.app = create_app("dnanet mixer")
        self.metrics = MixerMetrics(self.app.state.registry)
        self.peers = peers or HttpPeers(self.validator_url,
                                        preset.challenge_timeout_ms / 1000 + 5)
        self.sessions = SessionRunner(
            identity, gateway.domain, preset, concurrency=concurrency, transport=node_transport,
            compute_gate=HostStepLock(timing_lock).hold if timing_lock is not None else None)
        self.certifier = Certifier(identity, gateway, self.store, self.peers, self.metrics)
        self.book = MeasurementBook()
        self.book.add(self.store.latest_reports(GATEWAY_STATS_REPORTS))
        self.cosigner = self._make_cosigner()
        self.settlements = self._make_settlements()
        # The OpenAI-compatible gateway shares the mixer's app and its measured reports.
        self.ai_gateway: Gateway | None = None
        if gateway_config is not None:
            self.ai_gateway = Gateway(
                gateway_config,
                CallbackDirectory(gateway.nodes, lambda: stats_from_reports(
                    self.store.latest_reports(GATEWAY_STATS_REPORTS), preset)),
                canaries=CanaryBook(self.store), references=references)
            self.ai_gateway.mount(self.app)
        self.rounds = self._make_rounds(
            poll_s=poll_s, spread_s=spread_s, on_round_done=self._round_done,
            report_filter=(self.ai_gateway.canaries.apply if self.ai_gateway is not None
                           else None),
            on_reports=self.book.add)
        self.outbox = Outbox(self.certifier, gateway, self.store, self.peers, self.metrics,
                             self.clock, retry_s=retry_s, backup_s=backup_s,
                             round_running=self.rounds.is_running)
        install_routes(self.app, address=self.address, store=self.store,
                       cosigner=self.cosigner, settlements=self.settlements,
                       metrics=self.metrics)
        self.server = Server(self.app, host, port)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _round_done(self) -> None:
        self.outbox.wake.set()

    # -- parts (``dnanet.mixer.byzantine`` builds faulty ones for the adversarial devnet) -----
    def _make_cosigner(self) -> CoSigner:
        return CoSigner(self.identity, self.gateway, self.views, self.store, self.clock,
                        self.backup_s, self.book)

    def _make_settlements(self) -> SettlementSigner:
        return SettlementSigner(self.identity, self.gateway, self.store, self.peers,
                                self.metrics, self.clock)

    def _make_rounds(self, **options: Any) -> RoundScheduler:
        return RoundScheduler(
            self.identity, derive_vrf_secret(self.identity), self.gateway, self.views.registry,
            self.store, self.sessions, self.certifier, self.metrics, self.clock, **options)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.sessions.start()
        await self.server.start()
        if self.ai_gateway is not None:
            await self.ai_gateway.start()
        self._tasks = [
            asyncio.create_task(self.rounds.run(self._stopping),
                                name=f"mixer-{self.address[:8]}"),
            asyncio.create_task(self.outbox.run(self._stopping),
                                name=f"mixer-outbox-{self.address[:8]}"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.rounds.cancel()
        if self.ai_gateway is not None:
            await self.ai_gateway.stop()
        await self.server.stop()
        await self.peers.close()
        await self.sessions.stop()
        self.store.close()

    @property
    def url(self) -> str:
        """The base URL it serves on (the bound port when it was started with port 0)."""
        return self.server.url


__all__ = ["MixerDaemon"]
