"""Certificate intake: verify off the event loop, store with group commits, acknowledge after.

Verification (``verify_certified_batch``: quorum signatures, then every report's VRF proof,
assignment, node signature, bounds and score) is the expensive part. It runs either in a
worker thread (``workers=0``) against the shared epoch views, or in ``workers`` processes,
which use every core: the event loop then builds a small snapshot of the view (the mixer set,
the round seeds and the records of just the nodes the certificate names, found by a quick
non-strict scan of the JSON) and a process parses strictly and verifies. Each process keeps
its own cache of verified VRF proofs per epoch.

Verified certificates wait in a queue; the writer commits everything queued in one
transaction, so concurrent certificates share a disk flush, and resolves each request only
after the commit returns: nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from dnanet import errors
from dnanet.crypto.eip712 import Domain
from dnanet.errors import DnanetError
from dnanet.params import Preset
from dnanet.protocol.codec import parse_json
from dnanet.protocol.messages import QuorumCertificate, ScoreBatch
from dnanet.protocol.validation import EpochView, NodeInfo, verify_certified_batch
from dnanet.service.views import ViewCache
from dnanet.validator.store import EpochClosed, IntakeResult, PreparedCertificate, ValidatorStore

log = logging.getLogger("dnanet.validator.intake")

MAX_GROUP_COMMIT = 1024
MAX_WORKER_CACHE = 200_000


def prepare_certificate(raw: bytes, view_for: Callable[[QuorumCertificate], EpochView]
                        ) -> PreparedCertificate:
    """Parse strictly, verify against the view ``view_for`` returns, and lay the certificate
    out for the store. Raises DnanetError naming the field."""
    certificate = QuorumCertificate.from_wire(parse_json(raw), "certificate")
    verify_certified_batch(certificate, view_for(certificate))
    return PreparedCertificate.of(certificate)


@dataclass(frozen=True)
class ViewSnapshot:
    """The part of an epoch view one certificate needs, small enough to send to a process."""

    domain: Domain
    preset: Preset
    epoch: int
    mixers: dict[str, bytes]
    nodes: dict[str, NodeInfo]
    round_seeds: dict[int, bytes]


@dataclass(frozen=True)
class RemoteError:
    """A DnanetError raised in a worker process, rebuilt with its class and field."""

    kind: str
    message: str
    field: str | None

    @classmethod
    def of(cls, exc: DnanetError) -> RemoteError:
        message = str(exc)
        if exc.field and message.startswith(f"{exc.field}: "):
            message = message[len(exc.field) + 2:]
        kind = next((k.__name__ for k in type(exc).__mro__
                     if getattr(errors, k.__name__, None) is k), "DnanetError")
        return cls(kind, message, exc.field)

    def error(self) -> DnanetError:
        kind = getattr(errors, self.kind, DnanetError)
        if not (isinstance(kind, type) and issubclass(kind, DnanetError)):
            kind = DnanetError
        return kind(self.message, field=self.field)


# One cache of verified VRF outputs per (network, epoch) in each worker process.
_worker_caches: dict[tuple[int, str, int], dict[tuple[str, int, bytes], bytes]] = {}


def _worker_prepare(raw: bytes, snapshot: ViewSnapshot | None
                    ) -> PreparedCertificate | RemoteError:
    def view_for(certificate: QuorumCertificate) -> EpochView:
        if snapshot is None or snapshot.epoch != certificate.batch.epoch:
            # The scan found no epoch where the strict parse did: cannot happen for valid JSON.
            raise errors.CodecError("certificate has no readable epoch", field="certificate")
        key = (snapshot.domain.chain_id, snapshot.domain.verifying_contract, snapshot.epoch)
        cache = _worker_caches.get(key)
        if cache is None or len(cache) > MAX_WORKER_CACHE:
            if len(_worker_caches) > 8:
                _worker_caches.clear()
            cache = _worker_caches[key] = {}
        return EpochView(domain=snapshot.domain, preset=snapshot.preset, epoch=snapshot.epoch,
                         mixers=snapshot.mixers, nodes=snapshot.nodes,
                         round_seeds=snapshot.round_seeds, beta_cache=cache)

    try:
        return prepare_certificate(raw, view_for)
    except DnanetError as exc:
        return RemoteError.of(exc)


def scan_certificate(raw: bytes) -> tuple[int, int, set[str], object] | None:
    """(epoch, round, nodes, batch JSON) read leniently from a certificate's JSON, or None if
    they are not where a valid certificate has them (the strict parse then says what is
    wrong)."""
    try:
        data = json.loads(raw)
        batch = data["batch"]
        epoch, round_ = batch["epoch"], batch["round"]
        nodes = {r["node"].lower() for r in data["reports"]}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    if type(epoch) is not int or type(round_) is not int or epoch < 0:
        return None
    return epoch, round_, nodes, batch


@dataclass
class _Pending:
    certificate: PreparedCertificate
    future: asyncio.Future[IntakeResult | EpochClosed]


class CertificateIntake:
    """Verify certificates off the event loop and store them with group commits."""

    def __init__(self, store: ValidatorStore, views: ViewCache, *,
                 chain_next: Callable[[], int | None], workers: int = 0,
                 on_result: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.views = views
        self.chain_next = chain_next
        self.workers = workers
        self.on_result = on_result or (lambda result, reports: None)
        self._pool: ProcessPoolExecutor | None = None
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed_epochs: set[int] = set()
        self._closed_lock = threading.Lock()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="validator-writer")
        if self.workers > 0:
            # spawn, not fork: the parent runs threads (uvicorn, the executor).
            self._pool = ProcessPoolExecutor(self.workers,
                                             mp_context=multiprocessing.get_context("spawn"))

    async def stop(self) -> None:
        if self._queue is not None and self._writer is not None:
            await self._queue.put(None)  # drain what is queued, then stop
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._writer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def mark_closed(self, epoch: int) -> None:
        with self._closed_lock:
            self._closed_epochs.add(epoch)

    def check_open(self, epoch: int) -> None:
        """Raise EpochClosed if ``epoch`` is settled on chain or its rollup is computed."""
        chain_next = self.chain_next()
        if chain_next is not None and epoch < chain_next:
            raise EpochClosed(f"epoch {epoch} is already settled on chain", field="epoch")
        with self._closed_lock:
            closed = epoch in self._closed_epochs
        if closed or self.store.is_closed(epoch):
            self.mark_closed(epoch)
            raise EpochClosed(f"epoch {epoch} is closed: its rollup is computed and published",
                              field="epoch")

    def _view_for(self, certificate: QuorumCertificate) -> EpochView:
        batch = certificate.batch
        self.check_open(batch.epoch)
        return self.views.view(batch.epoch, rounds=(batch.round,),
                               nodes={r.node for r in certificate.reports})

    def _prepare_here(self, raw: bytes) -> PreparedCertificate | None:
        """Thread mode: parse, skip a stored batch (None), verify, lay out."""
        certificate = QuorumCertificate.from_wire(parse_json(raw), "certificate")
        if self.store.has_batch(certificate.batch.hash_struct()):
            return None
        verify_certified_batch(certificate, self._view_for(certificate))
        return PreparedCertificate.of(certificate)

    def _snapshot(self, raw: bytes) -> ViewSnapshot | bool | None:
        """Process mode, on a thread: True for a stored batch, else the view snapshot (None
        when the scan finds no epoch: the worker's strict parse reports the error)."""
        scanned = scan_certificate(raw)
        if scanned is None:
            return None
        epoch, round_, nodes, batch = scanned
        with contextlib.suppress(DnanetError):
            if self.store.has_batch(ScoreBatch.from_wire(batch).hash_struct()):
                return True
        self.check_open(epoch)
        view = self.views.view(epoch, rounds=(round_,), nodes=nodes)
        known: Mapping[str, NodeInfo] = view.nodes
        return ViewSnapshot(view.domain, view.preset, epoch, dict(view.mixers),
                            {n: known[n] for n in nodes if n in known}, dict(view.round_seeds))

    async def _prepare(self, raw: bytes) -> PreparedCertificate | None:
        """The verified certificate, or None for a batch already stored."""
        if self._pool is None:
            return await asyncio.to_thread(self._prepare_here, raw)
        snapshot = await asyncio.to_thread(self._snapshot, raw)
        if snapshot is True:
            return None
        assert snapshot is not False
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, _worker_prepare, raw, snapshot)
        if isinstance(result, RemoteError):
            raise result.error()
        return result

    async def submit(self, raw: bytes) -> IntakeResult:
        """Verify and durably store one certificate; raises DnanetError if it is refused
        (EpochClosed when its epoch no longer takes certificates)."""
        if self._queue is None:
            raise DnanetError("the validator is not running")
        try:
            prepared = await self._prepare(raw)
        except EpochClosed:
            self.on_result("closed", 0)
            raise
        except DnanetError:
            self.on_result("rejected", 0)
            raise
        if prepared is None:
            self.on_result("duplicate", 0)
            return IntakeResult(0, 0, True)
        future: asyncio.Future[IntakeResult | EpochClosed] = (
            asyncio.get_running_loop().create_future())
        await self._queue.put(_Pending(prepared, future))
        result = await future
        if isinstance(result, EpochClosed):
            self.on_result("closed", 0)
            raise result
        self.on_result("duplicate" if result.duplicate else "accepted", result.accepted)
        return result

    async def _write_loop(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            group: list[_Pending] = []
            if first is None:
                stopping = True
            else:
                group.append(first)
            while not self._queue.empty() and len(group) < MAX_GROUP_COMMIT:
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                else:
                    group.append(item)
            if group:
                await self._commit(group)

    async def _commit(self, group: list[_Pending]) -> None:
        try:
            results = await asyncio.to_thread(
                self.store.save_certificates, [p.certificate for p in group])
        except Exception as exc:  # the disk failed: nobody gets an acknowledgement
            log.error("storing %d certificates failed: %s", len(group), exc)
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(
                        DnanetError(f"the validator could not store the certificate: {exc}"))
            return
        for pending, result in zip(group, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)


__all__ = [
    "CertificateIntake",
    "RemoteError",
    "ViewSnapshot",
    "prepare_certificate",
    "scan_certificate",
]
