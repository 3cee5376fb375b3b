"""The Validator's HTTP API: certificate intake and the publication of everything it settles.

=======================================  =====================================================
``POST /v1/certificates``                a QuorumCertificate; 200 ``{"accepted", "skipped",
                                         "duplicate"}`` once it is on disk; 400 malformed,
                                         409 epoch closed, 422 invalid (the field is named)
``GET /v1/batches/{batch_hash}``         the stored certificate of a batch (epoch, round,
                                         mixer, reports, accepted), or 404: how a co-signer
                                         learns whether to forward a batch itself
``GET /v1/epochs``                       epoch summaries, newest first (``before``, ``limit``)
``GET /v1/epochs/{epoch}``               summary, settlement, punishments
``GET /v1/epochs/{epoch}/certificates``  the stored certificates (``offset``, ``limit``)
``GET /v1/epochs/{epoch}/reports``       the selected reports the rollup is computed from
``GET /v1/nodes/{address}``              cumulative total, proof and root of the latest
                                         settled epoch, and the node's per-epoch rows
``GET /v1/nodes/{address}/epochs/{e}``   the score breakdown of one epoch and, once its rollup
                                         is computed, the node's proof against its root
``GET /v1/status``                       chain position and what is pending
``GET /``, ``GET /nodes/{address}``      the web dashboard's pages (``dnanet.validator.pages``)
=======================================  =====================================================

Intake (``dnanet.validator.intake``) verifies off the event loop and commits in groups; none
is acknowledged before its transaction is durable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dnanet.errors import CodecError, DnanetError
from dnanet.params import Preset
from dnanet.protocol.codec import MAX_MESSAGE_BYTES, Address, FixedBytes, canonical_json
from dnanet.protocol.messages import ZERO32, Outcome, QuorumCertificate
from dnanet.protocol.quorum import compute_quorum_threshold
from dnanet.protocol.rollup import RewardTree
from dnanet.protocol.schedule import compute_epoch
from dnanet.protocol.scoring import (
    compute_epoch_scores,
    compute_node_epoch_scores,
    compute_report_score,
)
from dnanet.service.http import add_direct_route, error_body, message_schema
from dnanet.service.network import ChainGateway
from dnanet.validator.intake import CertificateIntake
from dnanet.validator.pages import DashboardPages
from dnanet.validator.store import (
    COLLECTING,
    EpochClosed,
    EpochRecord,
    ValidatorStore,
)

log = logging.getLogger("dnanet.validator")

MAX_EPOCH = (1 << 63) - 1
KEEP_TREES = 4
"""Reward trees kept in memory (the latest settled epoch's is the one claims use)."""
_ADDRESS = Address()
_HASH = FixedBytes(32)
INTAKE_RESULTS = ("accepted", "duplicate", "rejected", "closed")


class ValidatorMetrics:
    """The Validator's Prometheus metrics, registered on the app's ``registry``; ``totals``
    reads them from ``exposition`` (the same registry, or with shared metrics the sums over
    every process of the Validator). Once ``follow_chain`` is called: the settlement lag of
    each epoch as it settles, and (read when scraped) how far the next settlement is
    overdue."""

    def __init__(self, registry: CollectorRegistry,
                 exposition: CollectorRegistry | None = None) -> None:
        self.certificates = Counter("dnanet_validator_certificates", "certificates received",
                                    ["result"], registry=registry)
        self.reports = Counter("dnanet_validator_reports_accepted",
                               "new reports stored", registry=registry)
        self.epochs_settled = Counter("dnanet_validator_epochs_settled", "epochs settled",
                                      registry=registry)
        self.punishments = Counter("dnanet_validator_punishments_submitted",
                                   "punishments submitted", registry=registry)
        self.refusals = Counter("dnanet_validator_settlement_refusals",
                                "times a mixer refused or failed to sign a settlement",
                                ["mixer"], registry=registry)
        self.restarts = Counter("dnanet_validator_process_restarts",
                                "serving processes started again after they exited",
                                registry=registry)
        # Only the first process settles; the others' value stays 0, so "max" is its value.
        self.settlement_lag = Gauge(
            "dnanet_validator_settlement_lag_blocks", "blocks from the latest settled epoch's "
            "settlement block to the head at which this Validator saw it settled",
            registry=registry, multiprocess_mode="max")
        self.registry = registry
        self.exposition = exposition if exposition is not None else registry
        self._position: Callable[[], tuple[int | None, int | None]] | None = None
        self._settlement_block: Callable[[int], int] | None = None
        for result in INTAKE_RESULTS:
            self.certificates.labels(result)

    def follow_chain(self, position: Callable[[], tuple[int | None, int | None]],
                     settlement_block: Callable[[int], int]) -> None:
        """Measure settlements against the chain: ``position`` gives the head and the next
        epoch to settle as this process last read them, ``settlement_block`` an epoch's first
        block of settlement. Adds ``dnanet_validator_settlement_overdue_blocks``, computed at
        each scrape by the process that serves it."""
        self._position = position
        self._settlement_block = settlement_block
        self.exposition.register(_OverdueCollector(position, settlement_block))

    def intake_result(self, result: str, reports: int) -> None:
        self.certificates.labels(result).inc()
        if reports:
            self.reports.inc(reports)

    def totals(self) -> dict[str, int]:
        """Certificates by result, and new reports (``reports``), since start: the counters'
        values."""
        sample = self.exposition.get_sample_value
        out = {r: int(sample("dnanet_validator_certificates_total", {"result": r}) or 0)
               for r in INTAKE_RESULTS}
        out["reports"] = int(sample("dnanet_validator_reports_accepted_total") or 0)
        return out

    def process_restarted(self) -> None:
        self.restarts.inc()

    # SettlementHooks
    def settled(self, epoch: int) -> None:
        self.epochs_settled.inc()
        if self._position is not None and self._settlement_block is not None:
            head, _ = self._position()
            if head is not None:
                self.settlement_lag.set(max(0, head - self._settlement_block(epoch)))

    def punished(self) -> None:
        self.punishments.inc()

    def refused(self, epoch: int, mixer: str) -> None:
        self.refusals.labels(mixer).inc()


class _OverdueCollector(Collector):
    """``dnanet_validator_settlement_overdue_blocks``: blocks the next epoch to settle is past
    its settlement block (0 until it is due); growing, a stuck settlement."""

    def __init__(self, position: Callable[[], tuple[int | None, int | None]],
                 settlement_block: Callable[[int], int]) -> None:
        self.position = position
        self.settlement_block = settlement_block

    def collect(self) -> Iterable[GaugeMetricFamily]:
        head, next_epoch = self.position()
        overdue = (0 if head is None or next_epoch is None
                   else max(0, head - self.settlement_block(next_epoch)))
        yield GaugeMetricFamily(
            "dnanet_validator_settlement_overdue_blocks", "blocks the next epoch to settle is "
            "past its settlement block (0 until it is due)", value=overdue)


class InconsistentState(DnanetError):
    """The Validator's own database contradicts itself (a bug or a damaged file)."""


def parse_epoch(text: str, name: str = "epoch") -> int:
    """A non-negative epoch number from a path or query parameter (CodecError otherwise)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise CodecError(f"expected a non-negative integer, got {text[:40]!r}", field=name)
    value = int(text)
    if value > MAX_EPOCH:
        raise CodecError(f"{value} is too large", field=name)
    return value


def parse_address(text: str) -> str:
    return _ADDRESS.from_wire(text, "address")


def _query_int(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = parse_epoch(raw, name)
    if value > maximum:
        raise CodecError(f"at most {maximum}", field=name)
    return value


def _json_list(items: list[bytes]) -> Response:
    return Response(b"[" + b",".join(items) + b"]", media_type="application/json")


def _not_found(message: str, field: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "NotFound", "message": message, "field": field}},
                        status_code=404)


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


class ValidatorApi:
    """Routes of the Validator app (see the module docstring)."""

    def __init__(self, app: FastAPI, store: ValidatorStore, gateway: ChainGateway,
                 intake: CertificateIntake, status: Callable[[], dict[str, Any]],
                 intake_totals: Callable[[], dict[str, int]] = dict) -> None:
        self.store = store
        self.gateway = gateway
        self.preset: Preset = gateway.preset
        self.intake = intake
        self.status = status
        self.intake_totals = intake_totals
        self._trees: dict[int, RewardTree | None] = {}
        self._trees_lock = threading.Lock()
        self._install(app)

    def current_epoch(self) -> int | None:
        head = self.status().get("head")
        if head is None or head < self.gateway.genesis_block:
            return None
        return compute_epoch(head, self.preset, self.gateway.genesis_block)

    def epoch_record(self, epoch: int) -> EpochRecord | None:
        record = self.store.epoch_record(epoch)
        if record is not None:
            return record
        reports = self.store.report_count(epoch)
        current = self.current_epoch()
        if reports == 0 and (current is None or epoch > current):
            return None
        return EpochRecord(epoch, COLLECTING, reports, None, None, None, None)

    def tree(self, epoch: int) -> RewardTree | None:
        """The reward tree after ``epoch`` (None if nobody has earned yet), rebuilt from the
        stored totals and checked against the stored root; the last ``KEEP_TREES`` are kept."""
        with self._trees_lock:
            if epoch in self._trees:
                return self._trees[epoch]
        entries = self.store.tree_entries(epoch)
        tree = RewardTree.build(entries) if entries else None
        settlement = self.store.settlement(epoch)
        root = tree.root if tree is not None else ZERO32
        if settlement is None or root != settlement.rewards_root:
            raise InconsistentState(f"the stored totals of epoch {epoch} do not rebuild its root")
        with self._trees_lock:
            self._trees[epoch] = tree
            while len(self._trees) > KEEP_TREES:
                del self._trees[next(iter(self._trees))]
        return tree

    def tree_claim(self, address: str, epoch: int) -> dict[str, Any]:
        """The root of ``epoch``'s reward tree and ``address``'s leaf in it: its cumulative
        total and the proof (empty and not in the tree if it has earned nothing yet)."""
        tree = self.tree(epoch)
        out: dict[str, Any] = {"root": _hex(tree.root if tree is not None else ZERO32),
                               "cumulative": 0, "proof": [], "in_tree": False}
        if tree is not None and address in tree:
            out.update(cumulative=tree.amount(address),
                       proof=[_hex(p) for p in tree.proof(address)], in_tree=True)
        return out

    def node_summary(self, address: str) -> dict[str, Any]:
        settled = self.store.latest_settled_epoch()
        rows = self.store.node_epochs(address)
        out: dict[str, Any] = {"address": address, "epoch": settled, "root": None,
                               "cumulative": 0, "proof": [], "in_tree": False}
        if settled is not None:
            out.update(self.tree_claim(address, settled))
        out["epochs"] = [dict(r.to_json(), settled=settled is not None and r.epoch <= settled)
                         for r in rows]
        return out

    def node_epoch_breakdown(self, address: str, epoch: int) -> dict[str, Any]:
        reports = self.store.node_reports(epoch, address)
        record = self.store.epoch_record(epoch)
        row = self.store.node_epoch(address, epoch)
        published = record is not None and record.settlement is not None
        entries = []
        for report in reports:
            score = compute_report_score(report, self.preset)
            entries.append({
                "round": report.round, "mixer": report.mixer,
                "outcome": Outcome(report.outcome).name, "reason": report.reason,
                "rtt_us": report.rtt_us, "compute_us": report.compute_us,
                "download_us": report.download_us, "upload_us": report.upload_us,
                "latency": score.latency, "compute": score.compute,
                "bandwidth": score.bandwidth, "score": report.score,
                "flops_per_s": score.flops_per_s, "download_bps": score.download_bps,
                "upload_bps": score.upload_bps, "fraud": Outcome(report.outcome).is_fraud,
            })
        node_score = compute_node_epoch_scores(
            reports, challengers=self.store.epoch_challengers(epoch)).get(address)
        sentenced = self.store.sentenced(epoch)
        scoring = self.preset.scoring
        # The node's leaf in this epoch's reward tree, once the rollup has computed it.
        claim = (self.tree_claim(address, epoch) if published
                 else {"root": None, "proof": [], "in_tree": False})
        return {
            "address": address, "epoch": epoch,
            "status": record.status if record is not None else COLLECTING,
            "final": published,
            "challenges": len(reports),
            "failures": node_score.failures if node_score else 0,
            "strike": bool(node_score and node_score.is_striking(self.preset)),
            "fraud": bool(node_score and node_score.fraud),
            "canaries": bool(node_score and node_score.is_canary_cheat()),
            "epoch_score": row.score if row else (
                compute_epoch_scores({address: node_score}, self.preset,
                                     sentenced)[address] if node_score else 0),
            "sentenced": address in sentenced,
            "reward": row.reward if row else 0,
            "cumulative": row.cumulative if row else self.store.cumulative_at(address, epoch),
            "weights_bps": {"compute": scoring.weight_compute_bps,
                            "bandwidth": scoring.weight_bandwidth_bps,
                            "latency": scoring.weight_latency_bps},
            "root": claim["root"], "proof": claim["proof"], "in_tree": claim["in_tree"],
            "reports": entries,
        }

    def _install(self, app: FastAPI) -> None:
        store = self.store

        async def certificates(raw: bytes) -> tuple[int, bytes]:
            try:
                result = await self.intake.submit(raw)
            except EpochClosed as exc:
                return 409, canonical_json(error_body(exc))
            return 200, canonical_json({"accepted": result.accepted, "skipped": result.skipped,
                                        "duplicate": result.duplicate})

        add_direct_route(app, "/v1/certificates", certificates, max_body_bytes=MAX_MESSAGE_BYTES,
                         tags=["validator"], openapi_extra=message_schema(QuorumCertificate))

        @app.get("/v1/batches/{batch_hash}", tags=["validator"])
        async def batch(batch_hash: str) -> Any:
            key = _HASH.from_wire(batch_hash.lower(), "batch_hash")
            record = await asyncio.to_thread(store.batch_record, key)
            if record is None:
                return _not_found(f"no certificate of batch {batch_hash[:18]}.. is stored",
                                  "batch_hash")
            return record

        @app.get("/v1/epochs", tags=["validator"])
        async def epochs(request: Request) -> Any:
            before = request.query_params.get("before")
            limit = _query_int(request, "limit", 100, 1000)
            records = store.epoch_records(
                before=None if before is None else parse_epoch(before, "before"), limit=limit)
            return [r.summary() for r in records]

        @app.get("/v1/epochs/{epoch}", tags=["validator"])
        async def epoch_detail(epoch: str) -> Any:
            number = parse_epoch(epoch)
            record = self.epoch_record(number)
            if record is None:
                return _not_found(f"epoch {number} has not started", "epoch")
            out = record.summary()
            out["certificates"] = store.certificate_count(number)
            out["settlement"] = None if record.settlement is None else record.settlement.to_wire()
            out["punishments"] = [p.to_json() for p in store.punishments(number)]
            out["note"] = record.note
            return out

        @app.get("/v1/epochs/{epoch}/certificates", tags=["validator"])
        async def epoch_certificates(epoch: str, request: Request) -> Response:
            number = parse_epoch(epoch)
            offset = _query_int(request, "offset", 0, MAX_EPOCH)
            limit = _query_int(request, "limit", MAX_EPOCH, MAX_EPOCH)
            items = await asyncio.to_thread(store.certificates_json, number, offset,
                                            min(limit, MAX_EPOCH))
            return _json_list(items)

        @app.get("/v1/epochs/{epoch}/reports", tags=["validator"])
        async def epoch_reports(epoch: str, request: Request) -> Response:
            number = parse_epoch(epoch)
            offset = _query_int(request, "offset", 0, MAX_EPOCH)
            limit = _query_int(request, "limit", MAX_EPOCH, MAX_EPOCH)
            items = await asyncio.to_thread(store.reports_json, number, offset, limit)
            return _json_list(items)

        @app.get("/v1/nodes/{address}", tags=["validator"])
        async def node(address: str) -> Any:
            node_address = parse_address(address)
            try:
                return await asyncio.to_thread(self.node_summary, node_address)
            except InconsistentState as exc:
                log.error("%s", exc)
                return JSONResponse(error_body(exc), status_code=500)

        @app.get("/v1/nodes/{address}/epochs/{epoch}", tags=["validator"])
        async def node_epoch(address: str, epoch: str) -> Any:
            node_address, number = parse_address(address), parse_epoch(epoch)
            return await asyncio.to_thread(self.node_epoch_breakdown, node_address, number)

        @app.get("/v1/status", tags=["validator"])
        async def status() -> Any:
            return self.full_status()

        DashboardPages(store, self.gateway, status=self.full_status,
                       intake_totals=self.intake_totals).install(app)

    def full_status(self) -> dict[str, Any]:
        out = dict(self.status())
        out["latest_settled"] = self.store.latest_settled_epoch()
        out["latest_published"] = self.store.last_published_epoch()
        out["diverged"] = self.store.diverged_epochs()
        out["pending_punishments"] = len(self.store.punishments(status="pending"))
        out["settlement"] = self.settlement_status()
        return out

    def settlement_status(self) -> dict[str, Any] | None:
        """The epoch being settled (the oldest published and not settled): how many mixer
        signatures it has of how many it needs, and each mixer's refusal and why."""
        settled = self.store.latest_settled_epoch()
        epoch = 0 if settled is None else settled + 1
        settlement = self.store.settlement(epoch)
        if settlement is None:
            return None
        members = self.gateway.mixer_set(epoch)
        return {
            "epoch": epoch,
            "signatures": len(self.store.signatures(epoch, settlement.hash_struct())),
            "threshold": compute_quorum_threshold(len(members)),
            "refusals": self.store.settlement_refusals(epoch),
        }


__all__ = [
    "InconsistentState",
    "ValidatorApi",
    "ValidatorMetrics",
    "parse_address",
    "parse_epoch",
]
