"""The event loop every daemon runs on: uvloop where it is installed (Linux and macOS, a
dependency there), else asyncio's own.

uvloop runs the same asyncio code with its transports, timers and callbacks in C: on the
loopback benchmarks of this project a mixer's challenge sessions and the Validator's intake
cost ~10% less CPU. Code never depends on which loop it got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

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


__all__ = ["new_event_loop", "run"]
