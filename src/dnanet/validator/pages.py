"""The dashboard's routes: ``GET /``, ``GET /nodes/{address}`` and ``GET /static/{name}``.

Builds each page's view from the store (``ValidatorHistory``), the Validator's status and,
for a node's page, the chain (its registry entry and claims; a chain that cannot be read is
said on the page, not an error). Rendering is ``dnanet.validator.dashboard``'s. Every error
is an HTML page with the status the JSON API would answer (400 for a bad parameter, 404 for
an unknown node or an epoch not started).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from dnanet.errors import CodecError, DnanetError
from dnanet.protocol.codec import Address
from dnanet.protocol.schedule import compute_epoch, compute_settlement_block
from dnanet.service.http import status_for
from dnanet.service.network import ChainGateway, NodeRecord
from dnanet.validator import dashboard
from dnanet.validator.history import HISTORY_EPOCHS, MAX_HISTORY_EPOCHS, ValidatorHistory
from dnanet.validator.store import ValidatorStore

log = logging.getLogger("dnanet.validator")

STATIC_FILES = {
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "dashboard.js": "text/javascript",
}
"""What ``/static/`` serves (and nothing else), from the package's ``static`` folder."""
_ADDRESS = Address()
MAX_EPOCH = (1 << 63) - 1


class PageError(DnanetError):
    """A page that cannot be shown: rendered as an error page with ``status``."""

    def __init__(self, status: int, title: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.hint = hint


def _query_number(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise PageError(400, "Bad request", f"?{name}= must be a non-negative integer, got "
                        f"{raw[:40]!r}", f"For example ?{name}={min(default, maximum)}.")
    value = int(raw)
    if value > maximum:
        raise PageError(400, "Bad request", f"?{name}= is at most {maximum:,}, got {value:,}")
    return value


class DashboardPages:
    """The pages of one Validator app (blocking reads run off the event loop)."""

    def __init__(self, store: ValidatorStore, gateway: ChainGateway, *,
                 status: Callable[[], dict[str, Any]],
                 intake_totals: Callable[[], dict[str, int]]) -> None:
        self.store = store
        self.gateway = gateway
        self.preset = gateway.preset
        self.history = ValidatorHistory(store, gateway.preset)
        self.status = status
        self.intake_totals = intake_totals

    @property
    def title(self) -> str:
        """The pages' title (reads the chain id: call it off the event loop)."""
        return f"chain {self.gateway.domain.chain_id}"

    def chain_position(self, status: dict[str, Any]) -> dashboard.ChainPosition:
        head, genesis = status.get("head"), self.gateway.genesis_block
        current = None if head is None or head < genesis else compute_epoch(
            head, self.preset, genesis)
        epoch_block = 0 if current is None or head is None else (
            head - genesis - current * self.preset.epoch_blocks + 1)
        next_epoch = status.get("next_epoch_to_settle")
        settled = status.get("latest_settled")
        if settled is not None and (next_epoch is None or next_epoch <= settled):
            next_epoch = settled + 1  # settled since the chain was last read
        settle_at = (None if next_epoch is None
                     else compute_settlement_block(next_epoch, self.preset, genesis))
        return dashboard.ChainPosition(head, genesis, current, epoch_block, next_epoch,
                                       settle_at)

    # -- views --------------------------------------------------------------------------------
    def overview(self, epoch: int | None, nodes: int, refresh_s: int) -> str:
        status = self.status()
        chain = self.chain_position(status)
        epochs = self.history.epoch_lines(dashboard.EPOCHS_SHOWN)
        if epoch is not None and chain.head is not None and (
                chain.current_epoch is None or epoch > chain.current_epoch):
            now = ("the chain has not reached genesis yet" if chain.current_epoch is None
                   else f"the chain is in epoch {chain.current_epoch}")
            raise PageError(404, "Epoch not started", f"epoch {epoch} has not started: {now}",
                            "An epoch's figures appear once its first round begins.")
        if epoch is None and epochs:
            epoch = epochs[0].record.epoch
        final, figures, count = (False, [], 0) if epoch is None else \
            self.history.epoch_figures(epoch, nodes)
        current = ((0, 0) if chain.current_epoch is None
                   else self.history.epoch_intake(chain.current_epoch))
        view = dashboard.OverviewView(
            title=self.title, preset=self.preset, status=status, chain=chain,
            intake=dict(self.intake_totals()), current_intake=current, epochs=epochs,
            epoch=epoch, final=final, nodes=figures, node_count=count, refresh_s=refresh_s)
        return dashboard.render_overview(view)

    def node(self, address: str, epochs: int, refresh_s: int) -> str:
        registry: NodeRecord | None = None
        registry_error = None
        claimed = None
        try:
            registry = self.gateway.node(address)
            claimed = self.gateway.claimed(address)
        except DnanetError as exc:  # the chain is down: show what is stored
            registry_error = str(exc)
        known = self.history.is_known(address)
        if registry is None and registry_error is None and not known:
            raise PageError(404, "Unknown node",
                            f"node {address} is not registered and no challenge of it is "
                            "stored", "Check the address, or wait for its first round.")
        settled = self.store.latest_settled_epoch()
        cumulative = 0 if settled is None else self.store.cumulative_at(address, settled)
        history = self.history.node_history(address, epochs)
        # The strike window the next rollup looks back on.
        published = self.store.last_published_epoch()
        upto = 0 if published is None else published + 1
        window = self.preset.strike_window_epochs
        strikes = [r.epoch for r in self.store.node_epochs(address)
                   if r.strike and upto - window <= r.epoch < upto]
        view = dashboard.NodeView(
            title=self.title, preset=self.preset, address=address, registry=registry,
            registry_error=registry_error, claimed=claimed, latest_settled=settled,
            cumulative=cumulative, history=history, failures=self.history.failures(address),
            punishments=self.history.punishments(address), strike_epochs=strikes,
            refresh_s=refresh_s)
        return dashboard.render_node(view)

    # -- routes -------------------------------------------------------------------------------
    def install(self, app: FastAPI) -> None:
        async def page(build: Callable[[], str]) -> HTMLResponse:
            try:
                return HTMLResponse(await asyncio.to_thread(build))
            except PageError as exc:
                return HTMLResponse(dashboard.render_error(exc.status, exc.title, exc.detail,
                                                           hint=exc.hint),
                                    status_code=exc.status)
            except DnanetError as exc:
                code = status_for(exc)
                return HTMLResponse(dashboard.render_error(
                    code, "Cannot show this page", exc.detail), status_code=code)

        def epoch_param(request: Request) -> int | None:
            raw = request.query_params.get("epoch")
            if raw is None:
                return None
            return _query_number(request, "epoch", 0, MAX_EPOCH)

        @app.get("/", tags=["ops"], response_class=HTMLResponse)
        async def overview(request: Request) -> HTMLResponse:
            """The dashboard: the chain, settlement, intake, the latest epochs and one epoch's
            nodes (``epoch``, ``nodes``; ``refresh``: seconds between reloads, 0 never)."""
            try:
                epoch = epoch_param(request)
                nodes = _query_number(request, "nodes", dashboard.DEFAULT_NODES,
                                      dashboard.MAX_NODES)
                refresh = _query_number(request, "refresh", dashboard.REFRESH_S, 3600)
            except PageError as exc:
                return await page(_raiser(exc))
            return await page(lambda: self.overview(epoch, nodes, refresh))

        @app.get("/nodes/{address}", tags=["ops"], response_class=HTMLResponse)
        async def node_page(address: str, request: Request) -> HTMLResponse:
            """One node's page (``epochs``: how many epochs to plot; ``refresh`` as ``/``)."""
            try:
                try:
                    node = _ADDRESS.from_wire(address, "address")
                except CodecError as exc:
                    raise PageError(400, "Bad address", f"{address[:60]!r} is not a node "
                                    f"address: {exc.detail}",
                                    "A node address is 0x and 40 hex digits.") from exc
                epochs = _query_number(request, "epochs", HISTORY_EPOCHS, MAX_HISTORY_EPOCHS)
                refresh = _query_number(request, "refresh", dashboard.REFRESH_S * 2, 3600)
            except PageError as exc:
                return await page(_raiser(exc))
            return await page(lambda: self.node(node, max(epochs, 1), refresh))

        @app.get("/static/{name}", tags=["ops"], include_in_schema=False)
        async def static(name: str) -> Response:
            kind = STATIC_FILES.get(name)
            if kind is None:
                return HTMLResponse(dashboard.render_error(
                    404, "Not found", f"no file {name[:60]!r} is served here"), status_code=404)
            data = resources.files("dnanet.validator").joinpath("static", name).read_bytes()
            return Response(data, media_type=kind,
                            headers={"Cache-Control": "public, max-age=3600"})


def _raiser(exc: PageError) -> Callable[[], str]:
    def build() -> str:
        raise exc

    return build


__all__ = ["STATIC_FILES", "DashboardPages", "PageError"]
