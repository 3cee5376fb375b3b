"""Which node answers a request (the rule is in docs/scheduling.md).

A node is *eligible* for a request when it is registered, active and not jailed on chain,
advertises the model, is not failing (its latest report from this mixer failed, it failed a
canary, or it failed ``failure_threshold`` requests in a row and is cooling down), and has
fewer than ``max_concurrency`` requests in flight. Among eligible nodes one is drawn at random
with weight

    score                                  (the node's verified score)
    x bandwidth / max bandwidth            (payload above ``large_payload_bytes``)
    x min rtt / rtt                        (interactive requests)

where a node without a measurement takes the median of the others'.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dnanet.params import Preset
from dnanet.protocol.messages import Outcome, ScoreReport


@dataclass(frozen=True)
class NodeStats:
    """What this mixer measured of a node recently."""

    score: int | None = None
    """Mean score of the recent OK reports (None: not measured yet)."""
    rtt_us: int | None = None
    bandwidth_bps: float | None = None
    failing: bool = False
    """The latest report failed."""


@dataclass
class NodeState:
    address: str
    endpoint: str
    models: frozenset[str]
    stats: NodeStats = field(default_factory=NodeStats)
    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    canary_failed: bool = False


@dataclass(frozen=True)
class SchedulingPolicy:
    large_payload_bytes: int = 64 * 1024
    max_concurrency: int = 32
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    max_attempts: int = 3


def stats_from_reports(reports: Iterable[ScoreReport], preset: Preset, *,
                       window: int = 8) -> dict[str, NodeStats]:
    """Per node, from its ``window`` latest reports: mean OK score, median rtt and download
    bandwidth of the OK ones, and whether the latest one failed."""
    by_node: dict[str, list[ScoreReport]] = {}
    for report in reports:
        by_node.setdefault(report.node, []).append(report)
    out: dict[str, NodeStats] = {}
    for node, items in by_node.items():
        items.sort(key=lambda r: (r.epoch, r.round), reverse=True)
        recent = items[:window]
        ok = [r for r in recent if r.outcome == Outcome.OK]
        bandwidths = []
        for r in ok:
            if r.download_us > 0:
                size = preset.sizes_for_class(r.hardware_class).download_bytes
                bandwidths.append(size / (r.download_us / 1e6))
        out[node] = NodeStats(
            score=sum(r.score for r in ok) // len(ok) if ok else None,
            rtt_us=int(statistics.median(r.rtt_us for r in ok)) if ok else None,
            bandwidth_bps=statistics.median(bandwidths) if bandwidths else None,
            failing=recent[0].outcome != Outcome.OK,
        )
    return out


def _median(values: Sequence[float], default: float) -> float:
    return float(statistics.median(values)) if values else default


class Scheduler:
    """Picks nodes, tracks in-flight requests and failures. Not thread-safe: use it from one
    event loop."""

    def __init__(self, policy: SchedulingPolicy | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or SchedulingPolicy()
        self.rng = rng or random.Random()
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}

    def update(self, states: Iterable[NodeState]) -> None:
        """Replace the node set, keeping each remaining node's counters."""
        fresh: dict[str, NodeState] = {}
        for state in states:
            old = self.nodes.get(state.address)
            if old is not None:
                state.in_flight = old.in_flight
                state.consecutive_failures = old.consecutive_failures
                state.cooldown_until = old.cooldown_until
                state.canary_failed = state.canary_failed or old.canary_failed
            fresh[state.address] = state
        self.nodes = fresh

    def models(self) -> list[str]:
        return sorted({m for n in self.nodes.values() for m in n.models})

    def serving(self, model: str) -> list[NodeState]:
        return [n for n in self.nodes.values() if model in n.models]

    def healthy(self, node: NodeState) -> bool:
        return not (node.stats.failing or node.canary_failed
                    or node.cooldown_until > self.clock())

    def eligible(self, model: str, exclude: Iterable[str] = ()) -> list[NodeState]:
        skip = set(exclude)
        return [n for n in self.serving(model)
                if n.address not in skip and self.healthy(n)
                and n.in_flight < self.policy.max_concurrency]

    def weights(self, nodes: Sequence[NodeState], *, payload_bytes: int,
                interactive: bool) -> list[float]:
        """Each node's weight under the rule of the module docstring."""
        if not nodes:
            return []
        scores = [float(n.stats.score) for n in nodes if n.stats.score is not None]
        default_score = _median(scores, 1.0)
        out = [float(n.stats.score) if n.stats.score is not None else default_score
               for n in nodes]
        if payload_bytes > self.policy.large_payload_bytes:
            bws = [n.stats.bandwidth_bps for n in nodes if n.stats.bandwidth_bps]
            default_bw = _median([float(b) for b in bws], 1.0)
            values = [float(n.stats.bandwidth_bps or default_bw) for n in nodes]
            top = max(values)
            out = [w * v / top for w, v in zip(out, values, strict=True)]
        if interactive:
            rtts = [float(n.stats.rtt_us) for n in nodes if n.stats.rtt_us]
            default_rtt = _median(rtts, 1.0)
            values = [float(n.stats.rtt_us or default_rtt) for n in nodes]
            low = min(values)
            out = [w * low / v for w, v in zip(out, values, strict=True)]
        return out

    def shares(self, model: str, *, payload_bytes: int, interactive: bool) -> dict[str, float]:
        """The share of requests each eligible node is expected to receive."""
        nodes = self.eligible(model)
        weights = self.weights(nodes, payload_bytes=payload_bytes, interactive=interactive)
        total = sum(weights)
        if total <= 0:
            return {n.address: 1 / len(nodes) for n in nodes}
        return {n.address: w / total for n, w in zip(nodes, weights, strict=True)}

    def pick(self, model: str, *, payload_bytes: int = 0, interactive: bool = False,
             exclude: Iterable[str] = ()) -> NodeState | None:
        """Draw an eligible node (None if there is none)."""
        nodes = self.eligible(model, exclude)
        if not nodes:
            return None
        weights = self.weights(nodes, payload_bytes=payload_bytes, interactive=interactive)
        if sum(weights) <= 0:
            return self.rng.choice(nodes)
        return self.rng.choices(nodes, weights=weights, k=1)[0]

    def acquire(self, node: NodeState) -> None:
        node.in_flight += 1

    def release(self, node: NodeState, *, ok: bool) -> None:
        node.in_flight = max(0, node.in_flight - 1)
        if ok:
            node.consecutive_failures = 0
            return
        node.consecutive_failures += 1
        if node.consecutive_failures >= self.policy.failure_threshold:
            node.cooldown_until = self.clock() + self.policy.cooldown_s
            node.consecutive_failures = 0

    def mark_canary(self, address: str, *, passed: bool) -> None:
        node = self.nodes.get(address)
        if node is not None:
            node.canary_failed = not passed

    def apply_stats(self, stats: Mapping[str, NodeStats]) -> None:
        for address, node in self.nodes.items():
            node.stats = stats.get(address, NodeStats())


__all__ = ["NodeState", "NodeStats", "Scheduler", "SchedulingPolicy", "stats_from_reports"]
