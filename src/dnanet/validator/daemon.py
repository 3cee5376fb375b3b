"""The Validator daemon: certificate intake, publication and the settlement loop in one process,
and the ``dnanet validator run`` command.

The Validator holds no protocol key: the mixers' signatures are the authority on chain. The
gateway's sender account only pays for the settlement and punishment transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from dnanet.cliargs import non_negative_int, port, positive_int
from dnanet.crypto.keys import Identity
from dnanet.protocol.schedule import compute_settlement_block
from dnanet.service.http import AppLimits, Server, create_app, listen, share_metrics
from dnanet.service.logs import configure_logging
from dnanet.service.loop import cancel_once
from dnanet.service.loop import run as run_loop
from dnanet.service.network import ChainGateway
from dnanet.service.views import ViewCache
from dnanet.validator.intake import CertificateIntake
from dnanet.validator.processes import ServingProcesses
from dnanet.validator.server import ValidatorApi, ValidatorMetrics
from dnanet.validator.settle import Backoff, HttpSettlementSigner, SettlementLoop, SettlementSigner
from dnanet.validator.store import ValidatorStore

log = logging.getLogger("dnanet.validator")

DB_NAME = "validator.db"
METRICS_DIR = "metrics"
"""Under the data directory: the metrics shared by a Validator's processes."""


class ValidatorDaemon:
    """One Validator. ``start()``/``stop()`` for embedding (the devnet), ``run()`` until
    cancelled or ``stop()``.

    ``signer`` replaces the HTTP client that asks mixers for settlement signatures (tests);
    ``poll_s`` is how often the settlement loop looks at the chain (default: half a block);
    ``run_settlement=False`` serves without the loop (the caller drives ``loop.step()``);
    ``follow_chain=True`` (with ``run_settlement=False``) instead follows the chain's position
    once per poll, as the other processes of a Validator do (``dnanet.validator.processes``);
    ``workers`` > 0 verifies certificates in that many processes (else in threads);
    ``sock`` is a listening socket to serve on instead of ``host``:``port`` (shared by the
    processes of one Validator); ``parent_pid``: following the chain, stop once this process
    is no longer the parent (default: the parent when it starts).
    """

    def __init__(
        self,
        gateway: ChainGateway,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        identity: Identity | None = None,
        signer: SettlementSigner | None = None,
        poll_s: float | None = None,
        sign_timeout_s: float = 60.0,
        backoff: Backoff | None = None,
        limits: AppLimits | None = None,
        run_settlement: bool = True,
        follow_chain: bool = False,
        workers: int = 0,
        sock: socket.socket | None = None,
        shared_metrics: bool = False,
        parent_pid: int | None = None,
    ) -> None:
        self.gateway = gateway
        self.preset = gateway.preset
        self.identity = identity
        self.address = identity.address if identity else None
        """The Validator's account, shown in the status (set by the other processes)."""
        self.data_dir = Path(data_dir)
        self.store = ValidatorStore(self.data_dir / DB_NAME)
        self.views = ViewCache(gateway)
        self.app = create_app("dnanet validator", limits=limits, shared_metrics=shared_metrics)
        self.metrics = ValidatorMetrics(self.app.state.registry, self.app.state.exposition)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(sign_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        poll = poll_s if poll_s is not None else max(0.02, self.preset.block_interval_ms / 2000)
        self.loop = SettlementLoop(
            self.store, gateway, signer or HttpSettlementSigner(self.http), poll_s=poll,
            backoff=backoff, hooks=self.metrics, on_published=self._published)
        self.metrics.follow_chain(
            lambda: (self.loop.head, self.loop.chain_next),
            lambda epoch: compute_settlement_block(epoch, self.preset, gateway.genesis_block))
        self.intake = CertificateIntake(self.store, self.views,
                                        chain_next=lambda: self.loop.chain_next,
                                        workers=workers, on_result=self.metrics.intake_result)
        self.api = ValidatorApi(self.app, self.store, gateway, self.intake, self.status,
                                intake_totals=self.metrics.totals)
        self.server = Server(self.app, host, port, sock)
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._started = False
        self.run_settlement = run_settlement
        self.follow_chain = follow_chain and not run_settlement
        self.parent_pid = parent_pid
        self.processes: ServingProcesses | None = None
        """The other processes serving this Validator, when this one started them."""

    def _published(self, epoch: int) -> None:
        self.intake.mark_closed(epoch)
        self.views.forget(epoch)

    def status(self) -> dict[str, Any]:
        return {"validator": self.address,
                "head": self.loop.head, "next_epoch_to_settle": self.loop.chain_next}

    @property
    def url(self) -> str:
        """The base URL it serves on (the bound port when it was started with port 0)."""
        return self.server.url

    async def start(self) -> None:
        gw = self.gateway
        domain = await asyncio.to_thread(lambda: gw.domain)
        self.store.bind_network(domain.chain_id, domain.verifying_contract)
        if self.run_settlement:
            rebuilt = await asyncio.to_thread(self.store.ensure_carried_states, self.preset)
            if rebuilt:
                log.info("rebuilt the carried state of %d published epochs", rebuilt)
        # Know the chain's position before the first certificate arrives.
        self.loop.head = await asyncio.to_thread(gw.block_number)
        self.loop.chain_next = await asyncio.to_thread(gw.next_epoch_to_settle)
        await self.intake.start()
        await self.server.start()
        if self.processes is not None:
            await self.processes.start()
        if self.run_settlement:
            self._task = asyncio.create_task(self.loop.run(), name="validator-settlement")
        elif self.follow_chain:
            self._task = asyncio.create_task(self._follow(), name="validator-follow")
        self._started = True
        log.info("validator serving on %s (data %s)", self.url, self.data_dir)

    async def _follow(self) -> None:
        """Follow the chain's head and next epoch to settle (what the settlement loop does in
        the first process): the status shows them, and intake refuses settled epochs early.
        Views of settled epochs are dropped. Epochs whose rollup the first process has
        published are refused through the shared database (``CertificateIntake.check_open``).
        Stops this process if the process that started it is gone."""
        gw = self.gateway
        parent = self.parent_pid if self.parent_pid is not None else os.getppid()
        while True:
            try:
                self.loop.head = await asyncio.to_thread(gw.block_number)
                chain_next = await asyncio.to_thread(gw.next_epoch_to_settle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the chain is down: keep serving what is stored
                log.warning("cannot read the chain's position: %s", exc)
            else:
                self.loop.chain_next = chain_next
                self.views.forget_before(chain_next)
            if os.getppid() != parent:
                log.error("the validator process that started this one is gone: stopping")
                self._stopped.set()
                return
            await asyncio.sleep(self.loop.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._started:
            if self.processes is not None:  # they stop while this one does
                await self.processes.terminate()
            await self.server.stop()
            await self.intake.stop()
            if self.processes is not None:
                await self.processes.wait()
            self._started = False
        await self.http.aclose()
        self.store.close()
        self._stopped.set()

    async def run(self) -> None:
        """Serve (starting first unless started) until cancelled (Ctrl-C), ``stop()``, or
        (following the chain) the process that started this one is gone."""
        if not self._started:
            await self.start()
        try:
            await self._stopped.wait()
        finally:
            if self._started:
                await self.stop()


async def _serve(daemon: ValidatorDaemon,
                 signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Run ``daemon`` until one of ``signals`` arrives, then stop it cleanly (later signals
    do not interrupt the stopping: ``cancel_once``)."""
    loop = asyncio.get_running_loop()
    on_signal = cancel_once(asyncio.current_task())
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        await daemon.run()


def _validator_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.service.gateway import open_gateway

    configure_logging("INFO")
    workers = args.workers
    if workers is None:
        workers = 0 if args.processes > 1 else default_workers()
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    data_dir = Path(args.data_dir)
    if args.processes == 1:
        daemon = ValidatorDaemon(gateway, data_dir, host=args.host, port=args.port,
                                 identity=identity, workers=workers)
        run_loop(_serve(daemon))
        return 0
    sock = listen(args.host, args.port, share=True)  # before touching anything shared
    share_metrics(data_dir / METRICS_DIR, clear=True)
    daemon = ValidatorDaemon(gateway, data_dir, host=args.host, identity=identity,
                             workers=workers, sock=sock, shared_metrics=True)
    argv = [sys.executable, "-m", "dnanet.cli", "validator", "serve",
            "--port", str(sock.getsockname()[1]), "--data-dir", str(data_dir),
            "--deployment", args.deployment, "--rpc", args.rpc, "--host", args.host,
            "--validator", identity.address, "--workers", str(workers),
            "--parent", str(os.getpid())]
    daemon.processes = ServingProcesses(argv, args.processes - 1,
                                        on_restart=daemon.metrics.process_restarted)
    run_loop(_serve(daemon))
    return 0


def _validator_serve(args: argparse.Namespace) -> int:
    from dnanet.service.gateway import open_gateway

    configure_logging("INFO")
    data_dir = Path(args.data_dir)
    share_metrics(data_dir / METRICS_DIR)
    sock = listen(args.host, args.port, join=True)
    gateway = open_gateway(args.rpc, Path(args.deployment), None)
    daemon = ValidatorDaemon(gateway, data_dir, host=args.host, run_settlement=False,
                             follow_chain=True, workers=args.workers, sock=sock,
                             shared_metrics=True, parent_pid=args.parent)
    daemon.address = args.validator
    # Ctrl-C reaches the whole process group: the first process stops this one (SIGTERM)
    # once it has stopped watching, so it does not start it again meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_loop(_serve(daemon, (signal.SIGTERM,)))
    return 0


def default_workers() -> int:
    """Verification processes pay off only with cores to spare beside the HTTP server."""
    return max(0, (os.cpu_count() or 1) - 2)


def add_validator_commands(sub: Any) -> None:
    """``dnanet validator run``."""
    validator = sub.add_parser("validator", help="run the Validator (intake, rollup, settlement)")
    actions = validator.add_subparsers(dest="validator_command", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="verify certificates, publish rollups, settle epochs")
    run.add_argument("--data-dir", required=True, help="directory of the Validator's database")
    run.add_argument("--deployment", required=True, help="deployment file of the network")
    run.add_argument("--rpc", default="http://127.0.0.1:8545", help="chain JSON-RPC URL")
    run.add_argument("--keystore", required=True,
                     help="keystore of the account that submits settlements and punishments "
                     "and pays for them (password from DNANET_KEYSTORE_PASSWORD or a prompt)")
    run.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                     "interface)")
    run.add_argument("--port", type=port, default=8700,
                     help="port of the Validator's API and dashboard (default 8700)")
    run.add_argument("--workers", type=non_negative_int, default=None,
                     help="processes that verify certificates for each serving process; 0 "
                     "verifies on threads (default: CPUs - 2 with one process, so 0 on a 2-core "
                     "host; 0 with --processes)")
    run.add_argument("--processes", type=positive_int, default=1,
                     help="processes that serve the port, each taking in certificates on its "
                     "own core (default 1; see docs/validator.md)")
    run.set_defaults(handler=_validator_run)
    serve = actions.add_parser(
        "serve", help="serve beside a Validator, on its port and database (started by "
        "validator run --processes; not run by hand)")
    serve.add_argument("--port", type=port, required=True, help="the Validator's port")
    serve.add_argument("--data-dir", required=True, help="the Validator's data directory")
    serve.add_argument("--deployment", required=True, help="deployment file of the network")
    serve.add_argument("--rpc", required=True, help="chain JSON-RPC URL")
    serve.add_argument("--host", default="127.0.0.1", help="the Validator's host")
    serve.add_argument("--validator", default=None, help="the Validator's account (status)")
    serve.add_argument("--workers", type=non_negative_int, default=0,
                       help="processes that verify certificates (0: threads)")
    serve.add_argument("--parent", type=positive_int, default=None,
                       help="stop once this process (the first) is gone (default: the parent)")
    serve.set_defaults(handler=_validator_serve)


__all__ = ["DB_NAME", "ValidatorDaemon", "add_validator_commands", "default_workers"]
