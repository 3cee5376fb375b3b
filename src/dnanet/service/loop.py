"""The event loop every daemon runs on: uvloop where it is installed (Linux and macOS, a
dependency there), else asyncio's own.

uvloop runs the same asyncio code with its transports, timers and callbacks in C: on the
loopback benchmarks of this project a mixer's challenge sessions and the Validator's intake
cost ~10% less CPU. Code never depends on which loop it got.

Also how a daemon stops: ``cancel_once`` for its signal handlers, ``wait_or_kill`` for the
processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger("dnanet.service")


TIMING_SWITCH_INTERVAL_S = 0.001
"""How often Python hands its lock to a waiting thread in the processes that time or are timed
(``node run``, ``mixer run``; Python's default is 5 ms): a thread woken by a reply (the
compute process's root at a node, a node's answer at a mixer's timing loop) gets the lock back
within this, where another thread's work would otherwise hold it up to 5 ms into the timed
step. Measured in bench/compute_process.py."""


def shorten_switch_interval() -> None:
    """Set ``TIMING_SWITCH_INTERVAL_S`` for this process."""
    sys.setswitchinterval(TIMING_SWITCH_INTERVAL_S)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the daemons' kind."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows, or a trimmed install
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a loop of the daemons' kind."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


async def in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a thread of its own, awaited. Unlike ``asyncio.to_thread``, whose executor a
    process waits for when it exits, a process that stops meanwhile (a signal during start-up)
    does not wait for ``fn`` to finish: for steps that take long and leave nothing to clean
    up, such as loading a model."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def work() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


def cancel_once(task: asyncio.Task[Any] | None) -> Callable[[], None]:
    """A signal handler that cancels ``task`` on the first signal and ignores the later ones:
    Ctrl-C reaches a whole process group and a supervisor's SIGTERM may follow it (or the
    user presses Ctrl-C twice), and a second cancellation would interrupt the stopping the
    first one began, leaving child processes or uncommitted work behind."""
    signalled: list[int] = []

    def on_signal() -> None:
        if task is not None and not signalled:
            signalled.append(1)
            task.cancel()

    return on_signal


async def wait_or_kill(processes: Sequence[tuple[str, subprocess.Popen[bytes]]],
                       timeout_s: float, *, poll_s: float = 0.05) -> None:
    """Wait until the named ``processes`` (already told to stop) have exited, all together
    within ``timeout_s``; kill and reap those still running then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.poll() is None for _, p in processes):
        await asyncio.sleep(poll_s)
    for name, process in processes:
        if process.poll() is None:
            log.warning("%s did not stop within %g s: killing it", name, timeout_s)
            process.kill()
            await asyncio.to_thread(process.wait)


__all__ = ["cancel_once", "in_daemon_thread", "new_event_loop", "run", "wait_or_kill"]
