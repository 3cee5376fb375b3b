"""Certificate intake: verify in chunks off the event loop, store with group commits,
acknowledge after.

A request hands its body to the intake and waits. Bodies that arrive while earlier ones are
being verified queue up and are verified together as one chunk: one hop to a thread (or one
task for a worker process) per chunk instead of per certificate, one check per chunk that
the epoch still takes certificates, one view lookup per epoch. Verification
(``verify_certified_batch``: quorum signatures, then every report's VRF proof, assignment,
node signature, bounds and score) is the expensive part. It runs either on a worker thread
(``workers=0``) against the shared epoch views, or in ``workers`` processes, which use every
core: a thread then builds a small snapshot of the view for the chunk (the mixer set, the
round seeds and the records of just the nodes the certificates name, found by a quick
non-strict scan of the JSON) and a process parses strictly and verifies. Each process keeps
its own cache of verified VRF proofs per epoch.

A batch already stored is acknowledged as a duplicate without being verified again: the
intake remembers the batch hashes it stored for open epochs (and asks the database for a
closed epoch, so a mixer re-sending learns its batch is stored rather than that the epoch is
closed). After a restart the memory is empty; a re-sent batch is then verified again and the
store, which checks every batch hash inside its transaction, reports it as a duplicate.

Verified certificates wait in a queue; the writer commits everything queued in one
transaction, so concurrent certificates share a disk flush, and resolves each request only
after the commit returns: nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal

from dnanet import errors
from dnanet.crypto.eip712 import Domain
from dnanet.errors import CodecError, DnanetError, Unavailable
from dnanet.params import Preset
from dnanet.protocol.codec import MAX_JSON_DEPTH, load_json, parse_json
from dnanet.protocol.messages import QuorumCertificate, ScoreBatch
from dnanet.protocol.quorum import verify_certificate
from dnanet.protocol.validation import EpochView, NodeInfo, verify_certified_batch
from dnanet.service.views import ViewCache
from dnanet.validator.store import EpochClosed, IntakeResult, PreparedCertificate, ValidatorStore

log = logging.getLogger("dnanet.validator.intake")

MAX_CHUNK = 256
"""Certificates verified in one hop to a thread or a worker process."""
MAX_GROUP_COMMIT = 1024
MAX_WORKER_CACHE = 200_000
OPEN_RECHECK_S = 1.0
"""How long an epoch found open in the database is taken to be open without reading again."""
MAX_REMEMBERED = 1_000_000
"""Stored batch hashes remembered per epoch (beyond it, the store answers duplicates)."""

Verdict = PreparedCertificate | DnanetError | None
"""What verification says of one certificate: ready to store, refused, or already stored."""


def prepare_certificate(raw: bytes, view_for: Callable[[QuorumCertificate], EpochView]
                        ) -> PreparedCertificate:
    """Parse strictly, verify against the view ``view_for`` returns, and lay the certificate
    out for the store. Raises DnanetError naming the field."""
    certificate = QuorumCertificate.from_wire(parse_json(raw), "certificate")
    verify_certified_batch(certificate, view_for(certificate))
    return PreparedCertificate.of(certificate)


@dataclass(frozen=True)
class ViewSnapshot:
    """The part of an epoch view a chunk of certificates needs, small enough to send to a
    process."""

    domain: Domain
    preset: Preset
    epoch: int
    mixers: dict[str, bytes]
    round_nodes: dict[int, dict[str, NodeInfo]]
    """Per round the chunk names, the registry entries of the nodes it names."""
    round_seeds: dict[int, bytes]


@dataclass(frozen=True)
class RemoteError:
    """A DnanetError raised in a worker process, rebuilt with its class and field."""

    kind: str
    message: str
    field: str | None

    @classmethod
    def of(cls, exc: DnanetError) -> RemoteError:
        kind = next((k.__name__ for k in type(exc).__mro__
                     if getattr(errors, k.__name__, None) is k), "DnanetError")
        return cls(kind, exc.detail, exc.field)

    def error(self) -> DnanetError:
        kind = getattr(errors, self.kind, DnanetError)
        if not (isinstance(kind, type) and issubclass(kind, DnanetError)):
            kind = DnanetError
        return kind(self.message, field=self.field)


# One cache of verified VRF outputs per (network, epoch) in each worker process.
_worker_caches: dict[tuple[int, str, int], dict[tuple[str, int, bytes], bytes]] = {}


def _worker_view(snapshot: ViewSnapshot) -> EpochView:
    key = (snapshot.domain.chain_id, snapshot.domain.verifying_contract, snapshot.epoch)
    cache = _worker_caches.get(key)
    if cache is None or len(cache) > MAX_WORKER_CACHE:
        if len(_worker_caches) > 8:
            _worker_caches.clear()
        cache = _worker_caches[key] = {}
    return EpochView(domain=snapshot.domain, preset=snapshot.preset, epoch=snapshot.epoch,
                     mixers=snapshot.mixers, round_nodes=snapshot.round_nodes,
                     round_seeds=snapshot.round_seeds, beta_cache=cache)


def _worker_prepare_chunk(raws: Sequence[bytes], snapshots: dict[int, ViewSnapshot]
                          ) -> list[PreparedCertificate | RemoteError]:
    """In a worker process: parse strictly and verify each certificate of a chunk."""
    views: dict[int, EpochView] = {}

    def view_for(certificate: QuorumCertificate) -> EpochView:
        epoch = certificate.batch.epoch
        if epoch not in snapshots:
            # The scan found no epoch where the strict parse did: cannot happen for valid JSON.
            raise errors.CodecError("certificate has no readable epoch", field="certificate")
        if epoch not in views:
            views[epoch] = _worker_view(snapshots[epoch])
        return views[epoch]

    out: list[PreparedCertificate | RemoteError] = []
    for raw in raws:
        try:
            out.append(prepare_certificate(raw, view_for))
        except DnanetError as exc:
            out.append(RemoteError.of(exc))
    return out


def scan_certificate(raw: bytes) -> tuple[int, int, set[str], object] | None:
    """(epoch, round, nodes, batch JSON) read leniently from a certificate's JSON, or None if
    they are not where a valid certificate has them (the strict parse then says what is
    wrong)."""
    try:
        # Depth-checked like the strict parse: a deep document would crash the process.
        data = load_json(raw, max_bytes=None, max_depth=MAX_JSON_DEPTH)
        batch = data["batch"]
        epoch, round_ = batch["epoch"], batch["round"]
        nodes = {r["node"].lower() for r in data["reports"]}
    except (CodecError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if type(epoch) is not int or type(round_) is not int or epoch < 0:
        return None
    return epoch, round_, nodes, batch


def _refuse(futures: Sequence[asyncio.Future[Any]], why: str) -> None:
    """Answer every request still waiting with ``the validator <why>``: Unavailable (503), a
    fault of the Validator's own, so mixers send the certificate again."""
    for future in futures:
        if not future.done():
            future.set_exception(Unavailable(f"the validator {why}; retry later"))


@dataclass
class _Pending:
    certificate: PreparedCertificate
    future: asyncio.Future[IntakeResult | EpochClosed]


@dataclass
class _Arrival:
    raw: bytes
    future: asyncio.Future[Verdict]


class CertificateIntake:
    """Verify certificates in chunks off the event loop and store them with group commits."""

    def __init__(self, store: ValidatorStore, views: ViewCache, *,
                 chain_next: Callable[[], int | None], workers: int = 0,
                 on_result: Callable[[str, int], None] | None = None) -> None:
        self.store = store
        self.views = views
        self.chain_next = chain_next
        self.workers = workers
        self.on_result = on_result or (lambda result, reports: None)
        self._pool: ProcessPoolExecutor | None = None
        self._arrivals: list[_Arrival] = []
        self._arrived: asyncio.Event | None = None
        self._verifier: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed_epochs: set[int] = set()
        self._closed_lock = threading.Lock()
        self._stored: dict[int, set[bytes]] = {}
        self._found_open: dict[int, float] = {}

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="validator-writer")
        self._verifier = asyncio.create_task(self._verify_loop(), name="validator-verifier")
        if self.workers > 0:
            self._pool = self._new_pool()

    async def stop(self) -> None:
        """Finish what has arrived (verify, store, answer), then stop."""
        if self._verifier is not None:
            self._verifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._verifier
            self._verifier = None
        if self._queue is not None and self._writer is not None:
            await self._queue.put(None)  # drain what is queued, then stop
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._writer = None
        self._queue = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- epochs that no longer take certificates ------------------------------------------------
    def mark_closed(self, epoch: int) -> None:
        with self._closed_lock:
            self._closed_epochs.add(epoch)
            self._stored.pop(epoch, None)
            self._found_open.pop(epoch, None)

    def check_open(self, epoch: int) -> None:
        """Raise EpochClosed if ``epoch`` is settled on chain or its rollup is computed.

        The database is read at most once per ``OPEN_RECHECK_S`` for an epoch found open (a
        read waits while the writer commits); the writer's transaction checks again, so a
        certificate of an epoch closed meanwhile is refused, not stored."""
        chain_next = self.chain_next()
        if chain_next is not None and epoch < chain_next:
            raise EpochClosed(f"epoch {epoch} is already settled on chain", field="epoch")
        now = time.monotonic()
        with self._closed_lock:
            closed = epoch in self._closed_epochs
            recent = now - self._found_open.get(epoch, -OPEN_RECHECK_S) < OPEN_RECHECK_S
        if not closed and recent:
            return
        if closed or self.store.is_closed(epoch):
            self.mark_closed(epoch)
            raise EpochClosed(f"epoch {epoch} is closed: its rollup is computed and published",
                              field="epoch")
        with self._closed_lock:
            if len(self._found_open) > 64:
                self._found_open.clear()
            self._found_open[epoch] = now

    def _remember(self, epoch: int, batch_hash: bytes) -> None:
        with self._closed_lock:
            if epoch in self._closed_epochs:
                return
            stored = self._stored.setdefault(epoch, set())
            if len(stored) >= MAX_REMEMBERED:
                stored.clear()
            stored.add(batch_hash)

    def _admit(self, epoch: int, batch_hash: bytes | None,
               open_epochs: dict[int, str | None]) -> bool:
        """True to verify; False for a batch already stored. Raises EpochClosed. One check
        per epoch per chunk (``open_epochs``): the writer checks again in its transaction."""
        with self._closed_lock:
            if batch_hash is not None and batch_hash in self._stored.get(epoch, ()):
                return False
        if epoch not in open_epochs:
            try:
                self.check_open(epoch)
                open_epochs[epoch] = None
            except EpochClosed as exc:
                open_epochs[epoch] = exc.detail
        why_closed = open_epochs[epoch]
        if why_closed is None:
            return True
        if batch_hash is not None and self.store.has_batch(batch_hash):
            return False
        raise EpochClosed(why_closed, field="epoch")

    # -- verification ---------------------------------------------------------------------------
    def _verify_stored(self, certificate: QuorumCertificate) -> None:
        """A certificate of a batch stored before (verified whole then) is a duplicate only if
        it is one: its reports are those the batch commits to and a quorum of the epoch's set
        signed it (raises otherwise). Verified before it is answered, so forged signatures
        on a known batch are refused, not acknowledged."""
        view = self.views.view(certificate.batch.epoch)
        verify_certificate(view.domain, certificate, list(view.mixers))

    def _verify_here(self, raws: Sequence[bytes]) -> list[Verdict]:
        """Thread mode: parse, skip stored batches, verify and lay out each certificate."""
        open_epochs: dict[int, str | None] = {}
        out: list[Verdict] = []
        for raw in raws:
            try:
                certificate = QuorumCertificate.from_wire(parse_json(raw), "certificate")
                batch = certificate.batch
                if not self._admit(batch.epoch, batch.hash_struct(), open_epochs):
                    self._verify_stored(certificate)
                    out.append(None)  # verified: a duplicate
                    continue
                view = self.views.view(batch.epoch, rounds=(batch.round,))
                verify_certified_batch(certificate, view)
                out.append(PreparedCertificate.of(certificate))
            except DnanetError as exc:
                out.append(exc)
        return out

    def _snapshots(self, raws: Sequence[bytes]
                   ) -> tuple[list[Verdict | Literal[True]], dict[int, ViewSnapshot]]:
        """Process mode, on a thread: per certificate True (to verify in a worker), None (a
        stored batch) or the error; and a view snapshot per epoch the chunk names."""
        open_epochs: dict[int, str | None] = {}
        wanted: dict[int, tuple[list[int], set[int], set[str]]] = {}
        verdicts: list[Verdict | Literal[True]] = []
        for i, raw in enumerate(raws):
            scanned = scan_certificate(raw)
            if scanned is None:
                verdicts.append(True)  # the worker's strict parse names what is wrong
                continue
            epoch, round_, nodes, batch = scanned
            batch_hash = None
            with contextlib.suppress(DnanetError):
                batch_hash = ScoreBatch.from_wire(batch).hash_struct()
            try:
                if not self._admit(epoch, batch_hash, open_epochs):
                    try:
                        stored = QuorumCertificate.from_wire(parse_json(raw), "certificate")
                        self._verify_stored(stored)
                        verdicts.append(None)  # verified: a duplicate
                    except DnanetError as exc:
                        verdicts.append(exc)
                    continue
            except EpochClosed as exc:
                verdicts.append(exc)
                continue
            indices, rounds, named = wanted.setdefault(epoch, ([], set(), set()))
            indices.append(i)
            rounds.add(round_)
            named |= nodes
            verdicts.append(True)
        snapshots: dict[int, ViewSnapshot] = {}
        for epoch, (indices, rounds, named) in wanted.items():
            try:
                view = self.views.view(epoch, rounds=rounds)
            except DnanetError as exc:  # e.g. an epoch that has not started
                for i in indices:
                    verdicts[i] = RemoteError.of(exc).error()
                continue
            snapshots[epoch] = ViewSnapshot(
                view.domain, view.preset, epoch, dict(view.mixers),
                {r: {n: known[n] for n in named if n in known}
                 for r, known in view.round_nodes.items() if r in rounds},
                dict(view.round_seeds))
        return verdicts, snapshots

    async def _verify_chunk(self, raws: list[bytes], pool: ProcessPoolExecutor | None
                            ) -> list[Verdict]:
        if pool is None:
            return await asyncio.to_thread(self._verify_here, raws)
        screened, snapshots = await asyncio.to_thread(self._snapshots, raws)
        todo = [raw for raw, v in zip(raws, screened, strict=True) if v is True]
        verified: list[PreparedCertificate | RemoteError] = []
        if todo:
            loop = asyncio.get_running_loop()
            verified = await loop.run_in_executor(pool, _worker_prepare_chunk, todo, snapshots)
        results = iter(verified)
        verdicts: list[Verdict] = []
        for screen in screened:
            if screen is True:
                result = next(results)
                verdicts.append(result.error() if isinstance(result, RemoteError) else result)
            else:
                verdicts.append(screen)
        return verdicts

    async def _verify_loop(self) -> None:
        """Take what has arrived as a chunk; keep ``workers`` chunks in flight, one on a
        thread (a second verifying thread only fights the event loop for the GIL: measured
        ~10% more CPU per certificate)."""
        assert self._arrived is not None
        slots = asyncio.Semaphore(max(1, self.workers))
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                while self._arrivals:
                    await slots.acquire()
                    chunk = self._arrivals[:MAX_CHUNK]
                    del self._arrivals[:MAX_CHUNK]
                    task = asyncio.create_task(self._run_chunk(chunk))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _: slots.release())
        finally:
            # Stopping: verify what has arrived or is in flight, so every request is answered.
            if self._arrivals:
                running.add(asyncio.create_task(self._run_chunk(self._arrivals)))
                self._arrivals = []
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        """A worker process died, which breaks the whole pool: start a new one (once: chunks
        that were in the same broken pool find it replaced already)."""
        if self._pool is not broken:
            return
        broken.shutdown(wait=False, cancel_futures=True)
        log.warning("a verifier process died: starting %d new ones", self.workers)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs threads (uvicorn, the executor).
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def _run_chunk(self, chunk: list[_Arrival]) -> None:
        pool = self._pool
        try:
            verdicts = await self._verify_chunk([a.raw for a in chunk], pool)
        except Exception as exc:  # a bug or a dead worker: refuse the chunk, keep serving
            log.exception("verifying %d certificates failed", len(chunk))
            if isinstance(exc, BrokenProcessPool) and pool is not None:
                self._replace_pool(pool)
            _refuse([a.future for a in chunk],
                    f"could not verify the certificate ({type(exc).__name__}: {exc})")
            return
        for arrival, verdict in zip(chunk, verdicts, strict=True):
            if not arrival.future.done():
                arrival.future.set_result(verdict)

    # -- the request's path ---------------------------------------------------------------------
    async def submit(self, raw: bytes) -> IntakeResult:
        """Verify and durably store one certificate; raises DnanetError if it is refused
        (EpochClosed when its epoch no longer takes certificates)."""
        if self._queue is None or self._arrived is None:
            raise Unavailable("the validator is not running; retry later")
        loop = asyncio.get_running_loop()
        arrival = _Arrival(raw, loop.create_future())
        self._arrivals.append(arrival)
        self._arrived.set()
        verdict = await arrival.future
        if isinstance(verdict, EpochClosed):
            self.on_result("closed", 0)
            raise verdict
        if isinstance(verdict, DnanetError):
            self.on_result("rejected", 0)
            raise verdict
        if verdict is None:
            self.on_result("duplicate", 0)
            return IntakeResult(0, 0, True)
        future: asyncio.Future[IntakeResult | EpochClosed] = loop.create_future()
        await self._queue.put(_Pending(verdict, future))
        result = await future
        if isinstance(result, EpochClosed):
            self.on_result("closed", 0)
            raise result
        self.on_result("duplicate" if result.duplicate else "accepted", result.accepted)
        return result

    # -- storing --------------------------------------------------------------------------------
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
            _refuse([p.future for p in group], f"could not store the certificate: {exc}")
            return
        for pending, result in zip(group, results, strict=True):
            if isinstance(result, EpochClosed):
                self.mark_closed(pending.certificate.epoch)
            else:
                self._remember(pending.certificate.epoch, pending.certificate.batch_hash)
            if not pending.future.done():
                pending.future.set_result(result)


__all__ = [
    "CertificateIntake",
    "RemoteError",
    "ViewSnapshot",
    "prepare_certificate",
    "scan_certificate",
]
