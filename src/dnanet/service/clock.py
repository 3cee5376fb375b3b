"""The wall clock, injected: daemons ask a ``Clock`` for the time and to wait, never ``time``
directly, so tests can run them on a clock they move themselves."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (at least until the clock has moved that far)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to (``advance``); ``sleep`` returns once the clock
    has moved past its deadline. For tests."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._moved.set()

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + seconds
        while self._now < deadline:
            self._moved.clear()
            await self._moved.wait()


__all__ = ["Clock", "ManualClock", "SystemClock"]
