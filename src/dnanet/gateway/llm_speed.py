"""Generation speed as a measured capacity: what this mixer's streamed LLM canaries timed.

Each verified streamed canary gives one sample per node: the time to its first token (the
request sent to the first answer text received: the node's prefill plus one decode step plus
the network's round trip), its prefill speed (prompt tokens over that time less the node's
measured RTT) and its decode speed (answer tokens after the first over the time from the first
to the last). A node's speed is the median of its latest :data:`WINDOW` samples. Only verified
answers count: a node cannot claim speed it did not show on tokens the mixer checked.

The scheduler weighs LLM requests by it (docs/scheduling.md): an interactive request by
``min ttft / ttft``, a long or batch one by ``decode / max decode``; a node not measured yet
takes the median of the others', as for every other figure.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

WINDOW = 8
LONG_ANSWER_TOKENS = 256
"""A request for more answer tokens than this is *long*: weighed by decode speed, not TTFT."""


@dataclass(frozen=True)
class SpeedSample:
    ttft_s: float
    prompt_tokens: int
    answer_tokens: int
    decode_s: float
    rtt_s: float = 0.0


@dataclass(frozen=True)
class GenerationSpeed:
    """A node's measured generation speed (medians of its recent samples)."""

    ttft_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    samples: int


def compute_speed(samples: Sequence[SpeedSample]) -> GenerationSpeed | None:
    """Medians over ``samples`` (None without any). A sample with one answer token times no
    decoding and counts for TTFT and prefill only."""
    if not samples:
        return None
    prefill = [s.prompt_tokens / max(s.ttft_s - s.rtt_s, 1e-6) for s in samples]
    decode = [(s.answer_tokens - 1) / s.decode_s for s in samples
              if s.answer_tokens > 1 and s.decode_s > 0]
    return GenerationSpeed(
        ttft_s=float(statistics.median(s.ttft_s for s in samples)),
        prefill_tokens_per_s=float(statistics.median(prefill)),
        decode_tokens_per_s=float(statistics.median(decode)) if decode else 0.0,
        samples=len(samples))


def compute_speed_factors(speeds: Sequence[GenerationSpeed | None], *,
                          long: bool) -> list[float]:
    """Each node's weight factor for an LLM request (1.0 for all when nobody is measured):
    ``min ttft / ttft`` (interactive) or ``decode / max decode`` (``long``); an unmeasured
    node takes the median of the measured ones."""
    if long:
        values = [s.decode_tokens_per_s if s is not None and s.decode_tokens_per_s > 0 else None
                  for s in speeds]
    else:
        values = [s.ttft_s if s is not None and s.ttft_s > 0 else None for s in speeds]
    known = [v for v in values if v is not None]
    if not known:
        return [1.0] * len(speeds)
    middle = float(statistics.median(known))
    filled = [middle if v is None else v for v in values]
    if long:
        top = max(filled)
        return [v / top for v in filled]
    low = min(filled)
    return [low / v for v in filled]


def is_long_request(max_tokens: int | None, *, interactive: bool) -> bool:
    """Whether an LLM request is weighed by decode speed (long or not interactive) rather
    than by time to first token."""
    return not interactive or (max_tokens or 0) > LONG_ANSWER_TOKENS


class SpeedBook:
    """The latest samples per node (thread-safe: canaries record from the serving loop, the
    scheduler reads there too, tests and metrics from anywhere)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[SpeedSample]] = {}
        self._lock = threading.Lock()

    def record(self, node: str, sample: SpeedSample) -> None:
        with self._lock:
            self._samples.setdefault(node.lower(), deque(maxlen=self.window)).append(sample)

    def speed(self, node: str) -> GenerationSpeed | None:
        with self._lock:
            samples = list(self._samples.get(node.lower(), ()))
        return compute_speed(samples)

    def speeds(self) -> dict[str, GenerationSpeed]:
        with self._lock:
            nodes = list(self._samples)
        return {n: s for n in nodes if (s := self.speed(n)) is not None}


__all__ = ["LONG_ANSWER_TOKENS", "WINDOW", "GenerationSpeed", "SpeedBook", "SpeedSample",
           "compute_speed", "compute_speed_factors", "is_long_request"]
