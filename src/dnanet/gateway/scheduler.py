"""Which node answers a request (the rule is in docs/scheduling.md).

A node is *eligible* for a request when it is registered, active and not jailed on chain,
advertises the model, is not failing (its latest report from this mixer failed, it failed a
canary, or it failed ``failure_threshold`` requests in a row and is cooling down), and has
fewer than ``max_concurrency`` requests in flight. Among eligible nodes each takes a share of
the requests in proportion to its weight

    score                                  (the node's verified score)
    x t0 / (t0 + payload / bandwidth)      (payload above ``large_payload_bytes``)
    x min rtt / rtt                        (interactive requests)

where ``t0`` is ``request_overhead_s``: the bandwidth factor is the share of a request's
expected time that is not spent moving its body, so bandwidth counts the more the larger the
payload (for payloads that take long to move, weights go as the bandwidth). A node without a
measurement takes the median of the others', and a bandwidth counts only once
``min_bandwidth_reports`` reports measured it (before, the node takes the lesser of that
median and its own figure: one lucky transfer cannot lift it, an unlucky one is corrected by
the next). Bandwidth is the slower direction's throughput
as ``dnanet.protocol.scoring`` computes it for the score, so routing and rewards read the same
figures.

Requests are dealt by smooth weighted round robin (as nginx deals them to its upstreams), per
kind of request (model, large or not, interactive or not, LLM length): each eligible node is
credited its share of every request and the one furthest ahead in credit takes it, so after
any number of requests each node has had its shares' sum to within a request or two, where a
random draw strays by the square root of the count (over 200 requests, a node due 8 gets
3 to 13). Canaries are drawn at random by the same weights (:meth:`Scheduler.draw`), apart
from users' requests.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dnanet.gateway.llm_speed import SpeedBook, compute_speed_factors
from dnanet.params import Preset
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.scoring import compute_report_score


@dataclass(frozen=True)
class NodeStats:
    """What this mixer measured of a node recently."""

    score: int | None = None
    """Mean score of the recent OK reports (None: not measured yet)."""
    rtt_us: int | None = None
    bandwidth_bps: float | None = None
    """Median over the OK reports of the slower direction's throughput (bytes/s)."""
    bandwidth_reports: int = 0
    """How many reports ``bandwidth_bps`` comes from."""
    failing: bool = False
    """The latest report failed."""


@dataclass
class NodeLoad:
    """This gateway's running counters for one node address. One object per address, shared
    by every :class:`NodeState` the refreshes build for it, so a request that started before a
    refresh releases the very counter it took."""

    in_flight: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    canary_failed: bool = False

    def is_idle(self, now: float) -> bool:
        """Nothing to remember: no request in flight, no failure streak, cool-down or
        canary failure."""
        return not (self.in_flight or self.consecutive_failures or self.canary_failed
                    or self.cooldown_until > now)


@dataclass
class NodeState:
    """One node as the latest refresh saw it; its counters live in ``load``."""

    address: str
    endpoint: str
    models: frozenset[str]
    stats: NodeStats = field(default_factory=NodeStats)
    load: NodeLoad = field(default_factory=NodeLoad)

    @property
    def in_flight(self) -> int:
        return self.load.in_flight

    @property
    def consecutive_failures(self) -> int:
        return self.load.consecutive_failures

    @property
    def cooldown_until(self) -> float:
        return self.load.cooldown_until

    @property
    def canary_failed(self) -> bool:
        return self.load.canary_failed


class Lease:
    """One request in flight on one node, from :meth:`Scheduler.acquire`; releasing it more
    than once does nothing, so the node's count drops exactly once per request."""

    __slots__ = ("load", "node", "released")

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.load = node.load
        self.released = False

    @property
    def address(self) -> str:
        return self.node.address


@dataclass(frozen=True)
class SchedulingPolicy:
    large_payload_bytes: int = 64 * 1024
    max_concurrency: int = 32
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    max_attempts: int = 3
    request_overhead_s: float = 0.02
    """A request's time besides moving its body (the model's work, round trips): a payload
    that takes as long as this to move halves a node's weight."""
    min_bandwidth_reports: int = 3
    """A node's measured bandwidth steers large payloads only once this many reports measured
    it (one lucky transfer is not a node's bandwidth); before, it takes the median of the
    trusted ones, like a node not measured at all, or its own figure where that is lower."""


def stats_from_reports(reports: Iterable[ScoreReport], preset: Preset, *,
                       window: int = 8) -> dict[str, NodeStats]:
    """Per node, from its ``window`` latest reports: mean OK score, median rtt and bandwidth
    (the slower direction, as scored) of the OK ones and how many there were, and whether the
    latest one failed."""
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
            figures = compute_report_score(r, preset)
            bandwidths.append(min(figures.download_bps, figures.upload_bps))
        out[node] = NodeStats(
            score=sum(r.score for r in ok) // len(ok) if ok else None,
            rtt_us=int(statistics.median(r.rtt_us for r in ok)) if ok else None,
            bandwidth_bps=float(statistics.median(bandwidths)) if bandwidths else None,
            bandwidth_reports=len(bandwidths),
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
        self._loads: dict[str, NodeLoad] = {}
        self.speeds: SpeedBook | None = None
        """Measured generation speeds (the gateway's LLM canaries), for LLM requests."""
        self._credit: dict[tuple[str, bool, bool, bool | None], dict[str, float]] = {}
        """Per kind of request, each node's requests due minus requests dealt (see the module
        docstring)."""

    def update(self, states: Iterable[NodeState]) -> None:
        """Replace the node set. Each state is given its address's one :class:`NodeLoad`
        (in flight, failures, cool-down, canary), kept across refreshes; a node that left
        keeps its load only while there is something to remember (a request still in flight
        releases into it)."""
        fresh: dict[str, NodeState] = {}
        for state in states:
            load = self._loads.get(state.address)
            if load is None:
                load = self._loads[state.address] = state.load
            elif state.load is not load:
                load.canary_failed = load.canary_failed or state.load.canary_failed
                state.load = load
            fresh[state.address] = state
        self.nodes = fresh
        for credit in self._credit.values():
            for address in [a for a in credit if a not in fresh]:
                del credit[address]
        now = self.clock()
        self._loads = {a: load for a, load in self._loads.items()
                       if a in fresh or not load.is_idle(now)}

    def in_flight(self) -> int:
        """Requests in flight over every node this scheduler tracks (0 when idle)."""
        return sum(load.in_flight for load in self._loads.values())

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
                interactive: bool, long: bool | None = None) -> list[float]:
        """Each node's weight under the rule of the module docstring; for an LLM request
        (``long`` not None) also by its measured generation speed (``speeds``: time to first
        token, or decode speed when ``long``; see dnanet.gateway.llm_speed)."""
        if not nodes:
            return []
        scores = [float(n.stats.score) for n in nodes if n.stats.score is not None]
        default_score = _median(scores, 1.0)
        out = [float(n.stats.score) if n.stats.score is not None else default_score
               for n in nodes]
        if payload_bytes > self.policy.large_payload_bytes:
            trusted = [self._trusted_bandwidth(n) for n in nodes]
            default_bw = _median([b for b in trusted if b is not None], 1.0)
            values = [b if b is not None else min(default_bw, n.stats.bandwidth_bps or default_bw)
                      for b, n in zip(trusted, nodes, strict=True)]
            t0 = self.policy.request_overhead_s
            out = [w * t0 / (t0 + payload_bytes / v) for w, v in zip(out, values, strict=True)]
        if interactive:
            rtts = [float(n.stats.rtt_us) for n in nodes if n.stats.rtt_us]
            default_rtt = _median(rtts, 1.0)
            values = [float(n.stats.rtt_us or default_rtt) for n in nodes]
            low = min(values)
            out = [w * low / v for w, v in zip(out, values, strict=True)]
        if long is not None and self.speeds is not None:
            factors = compute_speed_factors([self.speeds.speed(n.address) for n in nodes],
                                            long=long)
            out = [w * f for w, f in zip(out, factors, strict=True)]
        return out

    def _trusted_bandwidth(self, node: NodeState) -> float | None:
        """The node's bandwidth if enough reports measured it (None: not trusted yet)."""
        stats = node.stats
        if not stats.bandwidth_bps or stats.bandwidth_reports < self.policy.min_bandwidth_reports:
            return None
        return float(stats.bandwidth_bps)

    def shares(self, model: str, *, payload_bytes: int, interactive: bool,
               long: bool | None = None) -> dict[str, float]:
        """The share of requests each eligible node is expected to receive."""
        nodes = self.eligible(model)
        shares = self._shares_of(nodes, payload_bytes=payload_bytes, interactive=interactive,
                                 long=long)
        return {n.address: s for n, s in zip(nodes, shares, strict=True)}

    def pick(self, model: str, *, payload_bytes: int = 0, interactive: bool = False,
             exclude: Iterable[str] = (), long: bool | None = None) -> NodeState | None:
        """Deal a user's request to an eligible node (None if there is none): every eligible
        node is credited its share of it, and the one furthest ahead takes it (ties drawn at
        random)."""
        nodes = self.eligible(model, exclude)
        if not nodes:
            return None
        shares = self._shares_of(nodes, payload_bytes=payload_bytes, interactive=interactive,
                                 long=long)
        kind = (model, payload_bytes > self.policy.large_payload_bytes, interactive, long)
        credit = self._credit.setdefault(kind, {})
        for node, share in zip(nodes, shares, strict=True):
            credit[node.address] = credit.get(node.address, 0.0) + share
        ahead = max(credit[n.address] for n in nodes)
        leaders = [n for n in nodes if credit[n.address] >= ahead - 1e-9]
        chosen = leaders[0] if len(leaders) == 1 else self.rng.choice(leaders)
        credit[chosen.address] -= 1.0
        return chosen

    def draw(self, model: str, *, payload_bytes: int = 0, interactive: bool = False,
             exclude: Iterable[str] = (), long: bool | None = None) -> NodeState | None:
        """Draw an eligible node at random by the same weights (canaries: independent of the
        order users' requests are dealt in); None if there is none."""
        nodes = self.eligible(model, exclude)
        if not nodes:
            return None
        shares = self._shares_of(nodes, payload_bytes=payload_bytes, interactive=interactive,
                                 long=long)
        return self.rng.choices(nodes, weights=shares, k=1)[0]

    def _shares_of(self, nodes: Sequence[NodeState], *, payload_bytes: int,
                   interactive: bool, long: bool | None) -> list[float]:
        weights = self.weights(nodes, payload_bytes=payload_bytes, interactive=interactive,
                               long=long)
        total = sum(weights)
        if total <= 0:
            return [1 / len(nodes)] * len(nodes)
        return [w / total for w in weights]

    def acquire(self, node: NodeState) -> Lease:
        """Count one request in flight on ``node``; the caller releases the lease."""
        node.load.in_flight += 1
        return Lease(node)

    def release(self, lease: Lease, *, ok: bool) -> None:
        """End the leased request: the node's in-flight count drops (once, however often
        this is called) and ``ok`` resets or extends its failure streak."""
        if lease.released:
            return
        lease.released = True
        load = lease.load
        load.in_flight -= 1
        if ok:
            load.consecutive_failures = 0
            return
        load.consecutive_failures += 1
        if load.consecutive_failures >= self.policy.failure_threshold:
            load.cooldown_until = self.clock() + self.policy.cooldown_s
            load.consecutive_failures = 0

    def mark_canary(self, address: str, *, passed: bool) -> None:
        node = self.nodes.get(address)
        if node is not None:
            node.load.canary_failed = not passed

    def apply_stats(self, stats: Mapping[str, NodeStats]) -> None:
        for address, node in self.nodes.items():
            node.stats = stats.get(address, NodeStats())


__all__ = ["Lease", "NodeLoad", "NodeState", "NodeStats", "Scheduler", "SchedulingPolicy",
           "stats_from_reports"]
