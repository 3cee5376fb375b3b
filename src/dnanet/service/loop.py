"""The event loop every daemon runs on: uvloop where it is installed (Linux and macOS, a
dependency there), else asyncio's own.

uvloop runs the same asyncio code with its transports, timers and callbacks in C: on the
loopback benchmarks of this project a mixer's challenge sessions and the Validator's intake
cost ~10% less CPU. Code never depends on which loop it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


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


__all__ = ["in_daemon_thread", "new_event_loop", "run"]
