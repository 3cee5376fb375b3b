"""The scheduling rule of docs/scheduling.md: shares of routed requests follow the nodes'
measured scores, bandwidth (large payloads) and latency (interactive requests)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.gateway.scheduler import (
    NodeState,
    NodeStats,
    Scheduler,
    SchedulingPolicy,
    stats_from_reports,
)
from dnanet.params import get_preset
from dnanet.protocol.messages import ZERO32, Outcome, ScoreReport
from dnanet.protocol.scoring import compute_rate, compute_report_score

MODEL = "m"
# Known, differing measured scores: (score, bandwidth B/s, rtt us)
MEASURED = {
    "0xa": (300, 10e6, 400),
    "0xb": (200, 200e6, 800),
    "0xc": (100, 50e6, 200),
}


def make(policy: SchedulingPolicy | None = None, seed: int = 1) -> Scheduler:
    scheduler = Scheduler(policy, rng=random.Random(seed), clock=lambda: 1000.0)
    scheduler.update([NodeState(a, f"http://{a}", frozenset({MODEL}),
                                NodeStats(score=s, bandwidth_bps=bw, bandwidth_reports=3,
                                          rtt_us=rtt))
                      for a, (s, bw, rtt) in MEASURED.items()])
    return scheduler


LARGE = 1 << 20


def expected(kind: str) -> dict[str, float]:
    """The documented rule, computed independently of the scheduler."""
    low_rtt = min(rtt for _, _, rtt in MEASURED.values())
    weights = {}
    for a, (score, bw, rtt) in MEASURED.items():
        w = float(score)
        if kind in ("large", "both"):
            w *= 0.02 / (0.02 + LARGE / bw)  # request_overhead_s / (it + transfer time)
        if kind in ("interactive", "both"):
            w *= low_rtt / rtt
        weights[a] = w
    total = sum(weights.values())
    return {a: w / total for a, w in weights.items()}


@pytest.mark.parametrize("kind", ["small", "large", "interactive", "both"])
def test_routed_shares_follow_the_rule(kind: str) -> None:
    scheduler = make()
    payload = LARGE if kind in ("large", "both") else 100
    interactive = kind in ("interactive", "both")
    n = 20_000
    picks = Counter(scheduler.pick(MODEL, payload_bytes=payload, interactive=interactive).address
                    for _ in range(n))  # type: ignore[union-attr]
    want = expected(kind)
    for address, share in want.items():
        assert picks[address] / n == pytest.approx(share, abs=0.015), (kind, address)
    assert scheduler.shares(MODEL, payload_bytes=payload, interactive=interactive) == \
        pytest.approx(want)


def test_large_payloads_go_to_high_bandwidth_nodes() -> None:
    scheduler = make()
    n = 5000
    small = Counter(scheduler.pick(MODEL, payload_bytes=10).address for _ in range(n))  # type: ignore[union-attr]
    large = Counter(scheduler.pick(MODEL, payload_bytes=10 << 20).address  # type: ignore[union-attr]
                    for _ in range(n))
    # 0xb has the highest bandwidth, 0xa the highest score but the lowest bandwidth.
    assert large.most_common(1)[0][0] == "0xb"
    assert small.most_common(1)[0][0] == "0xa"
    assert large["0xb"] > 2 * small["0xb"]
    assert large["0xa"] < small["0xa"] / 4


def test_interactive_requests_prefer_low_latency() -> None:
    scheduler = make()
    n = 5000
    batch = Counter(scheduler.pick(MODEL).address for _ in range(n))  # type: ignore[union-attr]
    chat = Counter(scheduler.pick(MODEL, interactive=True).address  # type: ignore[union-attr]
                   for _ in range(n))
    assert chat["0xc"] > 1.5 * batch["0xc"]
    assert chat["0xb"] < batch["0xb"]


def test_concurrency_limit_failures_and_canaries_exclude_nodes() -> None:
    scheduler = make(SchedulingPolicy(max_concurrency=2, failure_threshold=2, cooldown_s=10))
    a = scheduler.nodes["0xa"]
    first = scheduler.acquire(a)
    scheduler.acquire(a)
    assert "0xa" not in {n.address for n in scheduler.eligible(MODEL)}
    scheduler.release(first, ok=True)
    assert "0xa" in {n.address for n in scheduler.eligible(MODEL)}

    b = scheduler.nodes["0xb"]
    for _ in range(2):
        scheduler.release(scheduler.acquire(b), ok=False)
    assert "0xb" not in {n.address for n in scheduler.eligible(MODEL)}  # cooling down
    scheduler.clock = lambda: 1011.0
    assert "0xb" in {n.address for n in scheduler.eligible(MODEL)}

    scheduler.mark_canary("0xc", passed=False)
    assert "0xc" not in {n.address for n in scheduler.eligible(MODEL)}
    scheduler.mark_canary("0xc", passed=True)
    assert "0xc" in {n.address for n in scheduler.eligible(MODEL)}

    scheduler.apply_stats({"0xa": NodeStats(score=10, failing=True)})
    eligible = {n.address for n in scheduler.eligible(MODEL)}
    assert "0xa" not in eligible
    assert scheduler.pick("other-model") is None


def test_unknown_measurements_take_the_median() -> None:
    scheduler = Scheduler(rng=random.Random(3))
    scheduler.update([NodeState("0x1", "u", frozenset({MODEL}), NodeStats(score=100)),
                      NodeState("0x2", "u", frozenset({MODEL}), NodeStats(score=300)),
                      NodeState("0x3", "u", frozenset({MODEL}), NodeStats())])
    shares = scheduler.shares(MODEL, payload_bytes=0, interactive=False)
    assert shares["0x3"] == pytest.approx(200 / 600)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=6),
       st.booleans(), st.booleans())
def test_shares_sum_to_one_and_grow_with_score(scores: list[int], large: bool,
                                               interactive: bool) -> None:
    scheduler = Scheduler(rng=random.Random(0))
    scheduler.update([NodeState(f"0x{i}", "u", frozenset({MODEL}),
                                NodeStats(score=s, bandwidth_bps=1e6, rtt_us=500))
                      for i, s in enumerate(scores)])
    shares = scheduler.shares(MODEL, payload_bytes=1 << 30 if large else 0,
                              interactive=interactive)
    assert sum(shares.values()) == pytest.approx(1.0)
    for i, si in enumerate(scores):
        for j, sj in enumerate(scores):
            if si > sj:
                assert shares[f"0x{i}"] > shares[f"0x{j}"]


def _report(node: str, round_: int, outcome: Outcome, score: int, rtt: int,
            down: int, up: int = 0) -> ScoreReport:
    return ScoreReport(epoch=0, round=round_, mixer="0x" + "11" * 20, node=node,
                       hardware_class=0, vrf_proof=b"\x00" * 80, challenge_digest=ZERO32,
                       echo_digest=ZERO32, compute_root=ZERO32, download_digest=ZERO32,
                       upload_digest=ZERO32, response_signature=b"", rtt_us=rtt,
                       compute_us=0, download_us=down, upload_us=up, outcome=outcome,
                       reason="", evidence=b"", score=score)


def test_stats_from_reports() -> None:
    """Bandwidth is the slower direction's throughput as the score computes it, its median
    over the OK reports, with their count."""
    preset = get_preset("local")
    node = "0x" + "22" * 20
    sizes = preset.sizes_for_class(0)
    reports = [_report(node, 0, Outcome.OK, 100, 300, 1_000_000, 4_000_000),
               _report(node, 1, Outcome.OK, 300, 500, 2_000_000, 500_000),
               _report(node, 2, Outcome.TIMEOUT, 0, 0, 0)]
    stats = stats_from_reports(reports, preset)[node]
    assert stats.score == 200
    assert stats.rtt_us == 400
    slower = [compute_rate(sizes.upload_bytes, 4_000_000), compute_rate(sizes.download_bytes,
                                                                        2_000_000)]
    for report, rate in zip(reports, slower, strict=False):
        figures = compute_report_score(report, preset)
        assert min(figures.download_bps, figures.upload_bps) == rate
    assert stats.bandwidth_bps == pytest.approx(sum(slower) / 2)
    assert stats.bandwidth_reports == 2
    assert stats.failing
    assert not stats_from_reports(reports[:2], preset)[node].failing


def test_bandwidth_steers_large_payloads_only_after_enough_reports() -> None:
    """A node measured fast once is not trusted with large payloads: until
    ``min_bandwidth_reports`` reports measured it, it takes the median of the trusted ones,
    or its own figure where that is lower (a node measured slow twice is not routed as an
    average one)."""
    policy = SchedulingPolicy(min_bandwidth_reports=3)
    scheduler = Scheduler(policy, rng=random.Random(5))
    scheduler.update([
        NodeState("0x1", "u", frozenset({MODEL}),
                  NodeStats(score=100, bandwidth_bps=10e6, bandwidth_reports=5)),
        NodeState("0x2", "u", frozenset({MODEL}),
                  NodeStats(score=100, bandwidth_bps=20e6, bandwidth_reports=3)),
        NodeState("0x3", "u", frozenset({MODEL}),
                  NodeStats(score=100, bandwidth_bps=1e9, bandwidth_reports=2))])
    def factor(bandwidth: float) -> float:
        return 0.02 / (0.02 + LARGE / bandwidth)

    shares = scheduler.shares(MODEL, payload_bytes=LARGE, interactive=False)
    # 0x3 counts as the median of 10 and 20 MB/s (15), not as 1 GB/s.
    weights = {"0x1": factor(10e6), "0x2": factor(20e6), "0x3": factor(15e6)}
    assert shares == pytest.approx({a: w / sum(weights.values()) for a, w in weights.items()})
    scheduler.nodes["0x3"].stats = NodeStats(score=100, bandwidth_bps=1e9, bandwidth_reports=3)
    shares = scheduler.shares(MODEL, payload_bytes=LARGE, interactive=False)
    weights["0x3"] = factor(1e9)
    assert shares["0x3"] == pytest.approx(weights["0x3"] / sum(weights.values()))
    # Measured slow, not yet trusted: its own 2 MB/s, not the median's 15.
    scheduler.nodes["0x3"].stats = NodeStats(score=100, bandwidth_bps=2e6, bandwidth_reports=2)
    shares = scheduler.shares(MODEL, payload_bytes=LARGE, interactive=False)
    weights["0x3"] = factor(2e6)
    assert shares["0x3"] == pytest.approx(weights["0x3"] / sum(weights.values()))


def test_bandwidth_counts_the_more_the_larger_the_payload() -> None:
    """A node at 2 MB/s against one at 200 MB/s (equal scores): about even for a payload
    just over the threshold, nearly nothing for 10 MiB."""
    scheduler = Scheduler(rng=random.Random(2))
    scheduler.update([
        NodeState("0xslow", "u", frozenset({MODEL}),
                  NodeStats(score=100, bandwidth_bps=2e6, bandwidth_reports=3)),
        NodeState("0xfast", "u", frozenset({MODEL}),
                  NodeStats(score=100, bandwidth_bps=200e6, bandwidth_reports=3))])
    slow = [scheduler.shares(MODEL, payload_bytes=size, interactive=False)["0xslow"]
            for size in (100, 65 * 1024, 1 << 20, 10 << 20)]
    assert slow[0] == pytest.approx(0.5)  # a small request: bandwidth does not count
    assert 0.2 < slow[1] < 0.4
    assert slow[1] > slow[2] > slow[3] and slow[3] < 0.02


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=2, max_size=8), st.integers(1, 400),
       st.integers(0, 2**32 - 1))
def test_dealt_requests_stay_within_two_of_each_nodes_due(scores: list[int], n: int,
                                                          seed: int) -> None:
    """Smooth weighted round robin: after any number of requests of one kind, each node has
    been dealt its shares' sum to within two requests (a random draw strays by about the
    square root of the count)."""
    scheduler = Scheduler(rng=random.Random(seed))
    scheduler.update([NodeState(f"0x{i}", "u", frozenset({MODEL}), NodeStats(score=s))
                      for i, s in enumerate(scores)])
    shares = scheduler.shares(MODEL, payload_bytes=0, interactive=False)
    dealt: Counter[str] = Counter()
    for k in range(1, n + 1):
        node = scheduler.pick(MODEL)
        assert node is not None
        dealt[node.address] += 1
        for address, share in shares.items():
            assert abs(dealt[address] - k * share) < 2, (k, address)


def test_each_kind_of_request_is_dealt_by_its_own_shares() -> None:
    """Large requests follow the large-payload shares however many small ones come between,
    and a node that left takes no credit with it."""
    scheduler = make()
    want = scheduler.shares(MODEL, payload_bytes=LARGE, interactive=False)
    dealt: Counter[str] = Counter()
    for k in range(300):
        for _ in range(k % 3):
            scheduler.pick(MODEL, payload_bytes=100)
        node = scheduler.pick(MODEL, payload_bytes=LARGE)
        assert node is not None
        dealt[node.address] += 1
    for address, share in want.items():
        assert abs(dealt[address] - 300 * share) < 2
    scheduler.update([n for a, n in scheduler.nodes.items() if a != "0xb"])
    assert all("0xb" not in credit for credit in scheduler._credit.values())


def test_canaries_are_drawn_at_random_by_the_same_weights() -> None:
    scheduler = make(seed=4)
    n = 20_000
    drawn = Counter(scheduler.draw(MODEL).address for _ in range(n))  # type: ignore[union-attr]
    for address, share in expected("small").items():
        assert drawn[address] / n == pytest.approx(share, abs=0.015)
    # Drawn, not dealt: the first 12 draws are not the round robin's 6-2-... pattern.
    firsts = [make(seed=s).draw(MODEL).address for s in range(12)]  # type: ignore[union-attr]
    assert len(set(firsts)) > 1
