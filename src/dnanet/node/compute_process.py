"""The node's challenge products, computed in a process of their own.

A node's compute step is timed by the mixer from the seed's arrival to the root's. Computed in
a thread of the node's own process, the product shares one interpreter lock with the event
loop that serves the node's other sessions and users' requests: every time the product's code
gives the lock up (each BLAS call, each row's hash) it waits for it again behind whatever the
loop is running, up to the interpreter's switch interval (5 ms) each time. Beside one busy
Python thread a local-preset product took 0.9-1.2 s instead of 27 ms (``bench/compute_process.py``;
figures in docs/shaping.md): a node busy with users' requests read as a slow one.

Here the product runs in a child process (``multiprocessing`` spawn: no lock, no state shared
with the node) that keeps each answer until its session ends: only the 32-byte root comes back
within the timed step, and the rows the mixer opens afterwards. One product at a time: a
second challenge's compute step waits for the first, as it would for the node's one device.
The thread that waits for the root still needs Python's lock back when it comes: ``node run``
shortens the interval at which the lock is handed over (``TIMING_SWITCH_INTERVAL_S``).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dnanet.errors import ChallengeError
from dnanet.protocol.challenges.compute import ComputeSize, RowOpening

WARM_UP_SIZE = ComputeSize(n=64, rows=64, checks=1)
"""A product run once at start-up, so the first challenge does not time BLAS's start."""


def _serve(conn: Connection, device: str, threads: int | None) -> None:
    """The child: compute, hold, open and release answers until the pipe closes."""
    from dnanet.protocol.challenges.compute import commit_product, compute_product, open_rows

    if threads is not None:
        from dnanet.node.hardware import limit_compute_threads

        limit_compute_threads(threads)
    held: dict[int, Any] = {}
    while True:
        try:
            op, key, args = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            if op == "compute":
                seed, size, wrong = args
                answer = compute_product(seed, size, device)
                if wrong:  # a devnet profile's one wrong product
                    answer = commit_product(size, answer.product + 1)
                held[key] = answer
                conn.send(("ok", answer.root))
            elif op == "open":
                kept = held.get(key)
                if kept is None:
                    raise ChallengeError("no product is held for this session", field="indices")
                conn.send(("ok", open_rows(kept, args)))
            elif op == "release":
                held.pop(key, None)
            elif op == "ping":
                compute_product(bytes(32), WARM_UP_SIZE, device)
                conn.send(("ok", len(held)))
            else:
                conn.send(("error", ("ValueError", f"unknown operation {op!r}", None)))
        except ChallengeError as exc:
            conn.send(("error", ("ChallengeError", exc.detail, exc.field)))
        except Exception as exc:  # reported to the caller; the child goes on
            conn.send(("error", (type(exc).__name__, str(exc), None)))


@dataclass(frozen=True)
class HeldAnswer:
    """A product the compute process holds for one session: its root, and its rows on
    request until ``release``."""

    root: bytes
    key: int
    process: ComputeProcess

    def open_rows(self, indices: list[int]) -> list[RowOpening]:
        result: list[RowOpening] = self.process.call("open", self.key, list(indices))
        return result

    def release(self) -> None:
        self.process.release(self.key)


class ComputeProcess:
    """A child process that computes the node's products (``device``: "cpu" or "cuda", on
    ``threads`` BLAS threads when given). Thread-safe; ``close`` ends it."""

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, device, threads),
                                        name="dnanet-compute", daemon=True)
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def call(self, op: str, key: int, args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise ChallengeError("the node's compute process is stopped", field="device")
            try:
                self._conn.send((op, key, args))
                status, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise ChallengeError(f"the node's compute process ended (exit code "
                                     f"{self._process.exitcode}): {exc}", field="device") from None
        if status == "ok":
            return value
        kind, message, field = value
        if kind == "ChallengeError":
            raise ChallengeError(message, field=field)
        raise ChallengeError(f"the compute process failed: {kind}: {message}", field="device")

    def wait_ready(self) -> None:
        """Block until the child has imported its libraries and run one small product."""
        self.call("ping", 0, None)

    def compute(self, seed: bytes, size: ComputeSize, *, wrong: bool = False) -> HeldAnswer:
        """The product of ``seed``, held in the child; ``wrong`` commits to a wrong one."""
        key = next(self._keys)
        root = self.call("compute", key, (seed, size, wrong))
        return HeldAnswer(root=root, key=key, process=self)

    def release(self, key: int) -> None:
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(OSError):  # the child is gone: nothing is held any more
                self._conn.send(("release", key, None))

    def close(self, timeout_s: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout_s)


__all__ = ["ComputeProcess", "HeldAnswer"]
