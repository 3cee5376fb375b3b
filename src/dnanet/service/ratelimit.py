"""Per-peer token buckets, for routes where a request costs the server more than it carries.

A peer (its IP address) may make ``burst`` requests at once and ``rate`` per second after;
``take`` says whether it may make one now, and if not, after how many seconds it may. The
table of peers is bounded: the least recently seen are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class PeerLimiter:
    def __init__(self, rate: float, burst: float, *, max_peers: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be positive and burst at least 1, not {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, peer: str) -> float:
        """0.0 if ``peer`` may make a request now (one token is taken), else the seconds
        until it may."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(peer, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if wait == 0.0:
                tokens -= 1
            self._buckets[peer] = (tokens, now)
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
            return wait


__all__ = ["PeerLimiter"]
