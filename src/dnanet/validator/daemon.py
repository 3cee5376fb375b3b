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
from pathlib import Path
from typing import Any

import httpx

from dnanet.crypto.keys import Identity
from dnanet.service.http import AppLimits, Server, create_app
from dnanet.service.logs import configure_logging
from dnanet.service.loop import run as run_loop
from dnanet.service.network import ChainGateway
from dnanet.service.views import ViewCache
from dnanet.validator.intake import CertificateIntake
from dnanet.validator.server import ValidatorApi, ValidatorMetrics
from dnanet.validator.settle import Backoff, HttpSettlementSigner, SettlementLoop, SettlementSigner
from dnanet.validator.store import ValidatorStore

log = logging.getLogger("dnanet.validator")

DB_NAME = "validator.db"


class ValidatorDaemon:
    """One Validator. ``start()``/``stop()`` for embedding (the devnet), ``run()`` until
    cancelled or ``stop()``.

    ``signer`` replaces the HTTP client that asks mixers for settlement signatures (tests);
    ``poll_s`` is how often the settlement loop looks at the chain (default: half a block);
    ``run_settlement=False`` serves without the loop (the caller drives ``loop.step()``);
    ``workers`` > 0 verifies certificates in that many processes (else in threads).
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
        workers: int = 0,
    ) -> None:
        self.gateway = gateway
        self.preset = gateway.preset
        self.identity = identity
        self.data_dir = Path(data_dir)
        self.store = ValidatorStore(self.data_dir / DB_NAME)
        self.views = ViewCache(gateway)
        self.app = create_app("dnanet validator", limits=limits)
        self.metrics = ValidatorMetrics(self.app.state.registry)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(sign_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        poll = poll_s if poll_s is not None else max(0.02, self.preset.block_interval_ms / 2000)
        self.loop = SettlementLoop(
            self.store, gateway, signer or HttpSettlementSigner(self.http), poll_s=poll,
            backoff=backoff, hooks=self.metrics, on_published=self._published)
        self.intake = CertificateIntake(self.store, self.views,
                                        chain_next=lambda: self.loop.chain_next,
                                        workers=workers, on_result=self.metrics.intake_result)
        self.api = ValidatorApi(self.app, self.store, gateway, self.intake, self.status,
                                intake_totals=self.metrics.totals)
        self.server = Server(self.app, host, port)
        self._task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._started = False
        self.run_settlement = run_settlement

    def _published(self, epoch: int) -> None:
        self.intake.mark_closed(epoch)
        self.views.forget(epoch)

    def status(self) -> dict[str, Any]:
        return {"validator": self.identity.address if self.identity else None,
                "head": self.loop.head, "next_epoch_to_settle": self.loop.chain_next}

    @property
    def url(self) -> str:
        """The base URL it serves on (the bound port when it was started with port 0)."""
        return self.server.url

    async def start(self) -> None:
        gw = self.gateway
        domain = await asyncio.to_thread(lambda: gw.domain)
        self.store.bind_network(domain.chain_id, domain.verifying_contract)
        # Know the chain's position before the first certificate arrives.
        self.loop.head = await asyncio.to_thread(gw.block_number)
        self.loop.chain_next = await asyncio.to_thread(gw.next_epoch_to_settle)
        await self.intake.start()
        await self.server.start()
        if self.run_settlement:
            self._task = asyncio.create_task(self.loop.run(), name="validator-settlement")
        self._started = True
        log.info("validator serving on %s (data %s)", self.url, self.data_dir)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._started:
            await self.server.stop()
            await self.intake.stop()
            self._started = False
        await self.http.aclose()
        self.store.close()
        self._stopped.set()

    async def run(self) -> None:
        """Serve until cancelled (Ctrl-C) or ``stop()``."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            if not self._stopped.is_set():
                await self.stop()


async def _serve(daemon: ValidatorDaemon) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel if task else (lambda: None))
    with contextlib.suppress(asyncio.CancelledError):
        await daemon.run()


def _validator_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.service.gateway import open_gateway

    configure_logging("INFO")
    gateway = open_gateway(args.rpc, Path(args.deployment), load_identity(Path(args.keystore)))
    daemon = ValidatorDaemon(gateway, Path(args.data_dir), host=args.host, port=args.port,
                             workers=args.workers)
    run_loop(_serve(daemon))
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
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8700)
    run.add_argument("--workers", type=int, default=default_workers(),
                     help="processes that verify certificates; 0 verifies on threads of the main "
                     "process (default: CPUs - 2, so 0 on a 2-core host)")
    run.set_defaults(handler=_validator_run)


__all__ = ["DB_NAME", "ValidatorDaemon", "add_validator_commands", "default_workers"]
