"""More processes serving one Validator: ``dnanet validator run --processes N``.

One process takes in about 900 single-report certificates a second on one core: each costs four
signature recoveries, parsing, hashing, HTTP and a share of a commit, about a millisecond of
CPU, and a Python process runs on one core at a time (``--workers`` moves only the verification
to other processes). To use more cores, a Validator runs as N processes that serve one
port and one database:

- The first process (the command's own) listens on the port, runs the settlement loop, and
  starts the others as ``dnanet validator serve``, which listen on the same port
  (``SO_REUSEPORT``; ``dnanet.service.http.listen``).
- The kernel spreads new connections evenly over the processes; a process answers every route
  on its connections. Certificates it verifies and stores itself:
  SQLite serializes the processes' commits, and each commit checks that the certificate's epoch
  still takes certificates, so none is stored after the first process closed its epoch for the
  rollup. Everything else is read from the database.
- The others follow the chain's position instead of settling (``ValidatorDaemon._follow``).
- Metrics are shared (``dnanet.service.http.share_metrics``): the ``/metrics`` and the
  dashboard of any process show the sums over all of them.
- The first process restarts one that exits, after ``restart_s`` (doubling, up to
  ``max_restart_s``, while it keeps exiting within a minute of its start); one whose first
  process is gone stops itself. Connections a process held when it died are closed; clients
  (mixers) send again.

It needs a chain that every process can reach over JSON-RPC (the embedded chain lives in one
process). Rate limits are counted per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dnanet.service.loop import wait_or_kill

log = logging.getLogger("dnanet.validator.processes")

STABLE_S = 60.0
"""A process that ran this long before it exited is restarted after ``restart_s`` again."""


@dataclass
class _Serving:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = 0.0
    due: float = 0.0
    restarts: int = 0


class ServingProcesses:
    """Start ``count`` processes with ``argv``, restart those that exit, and stop them all."""

    def __init__(self, argv: Sequence[str], count: int, *, restart_s: float = 1.0,
                 max_restart_s: float = 60.0, poll_s: float = 0.25,
                 on_restart: Callable[[], None] | None = None) -> None:
        self.argv = list(argv)
        self.restart_s = restart_s
        self.max_restart_s = max_restart_s
        self.poll_s = poll_s
        self.on_restart = on_restart or (lambda: None)
        self.serving = [_Serving(i) for i in range(count)]
        self._watch: asyncio.Task[None] | None = None

    def pids(self) -> list[int]:
        """The process ids of those running now."""
        return [s.process.pid for s in self.serving
                if s.process is not None and s.process.poll() is None]

    def _spawn(self, serving: _Serving) -> None:
        serving.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        serving.started = time.monotonic()
        log.info("validator process %d started (pid %d)", serving.index + 1,
                 serving.process.pid)

    async def start(self) -> None:
        for serving in self.serving:
            self._spawn(serving)
        self._watch = asyncio.create_task(self._watch_loop(), name="validator-processes")

    def check(self) -> None:
        """One pass: note the processes that exited and start again those whose wait is over."""
        now = time.monotonic()
        for serving in self.serving:
            process = serving.process
            if process is not None and process.poll() is not None:
                ran = now - serving.started
                serving.delay = (self.restart_s if ran >= STABLE_S or not serving.delay
                                 else min(self.max_restart_s, serving.delay * 2))
                serving.due = now + serving.delay
                serving.process = None
                log.error("validator process %d (pid %d) exited with %s after %.0f s; starting "
                          "it again in %.0f s", serving.index + 1, process.pid,
                          process.returncode, ran, serving.delay)
            if serving.process is None and now >= serving.due:
                self._spawn(serving)
                serving.restarts += 1
                self.on_restart()

    async def _watch_loop(self) -> None:
        while True:
            try:
                self.check()
            except OSError as exc:  # cannot start a process now (no memory, no pids): retry
                log.error("cannot start a validator process: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def terminate(self) -> None:
        """Stop watching and ask every process to finish (SIGTERM: each answers what it has
        taken in, then exits)."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        for serving in self.serving:
            if serving.process is not None and serving.process.poll() is None:
                serving.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout_s: float = 10.0) -> None:
        """Wait for the processes to exit; kill those still running after ``timeout_s``."""
        await wait_or_kill([(f"validator process {s.index + 1} (pid {s.process.pid})", s.process)
                            for s in self.serving if s.process is not None], timeout_s)
        for serving in self.serving:
            serving.process = None

    async def stop(self, timeout_s: float = 10.0) -> None:
        """``terminate`` and ``wait``."""
        await self.terminate()
        await self.wait(timeout_s)


__all__ = ["STABLE_S", "ServingProcesses"]
