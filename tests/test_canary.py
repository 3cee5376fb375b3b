"""Canaries: a node that quietly serves a different, cheaper model is caught by the gateway's
canaries, its next report becomes CANARY_FAILED (which co-signers accept), and it earns less."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from dnanet.ai.backends import TRIVIAL_CHAT_MODEL, TRIVIAL_EMBED_MODEL, TrivialBackend
from dnanet.errors import DnanetError
from dnanet.gateway.app import GatewayConfig
from dnanet.gateway.canary import (
    CanaryBook,
    ReferenceModels,
    canary_failed_report,
    canary_texts,
    compare_embeddings,
    make_canary,
)
from dnanet.params import TEST
from dnanet.protocol.epoch import EpochState, process_epoch
from dnanet.protocol.messages import ZERO32, Outcome
from dnanet.protocol.validation import verify_batch_proposal
from dnanet.service.store import Store
from gateway_helpers import network
from protocol_fixtures import (
    find_pairs,
    make_mixers,
    make_nodes,
    make_proposal,
    make_view,
    run_honest_session,
)

HONEST = f"0x{1:040x}"
CHEAT = f"0x{2:040x}"


def test_compare_embeddings_within_tolerance() -> None:
    ref = TrivialBackend()
    want = [ref.embed_one("a"), ref.embed_one("b")]
    assert compare_embeddings(want, want, 0.99) is None
    nudged = [[x + 1e-4 for x in v] for v in want]
    assert compare_embeddings(nudged, want, 0.99) is None
    cheap = TrivialBackend(salt=b"cheap")
    why = compare_embeddings([cheap.embed_one("a"), cheap.embed_one("b")], want, 0.99)
    assert why is not None and "cosine" in why
    assert "dimensions" in (compare_embeddings([want[0][:5], want[1]], want, 0.99) or "")
    assert "vectors" in (compare_embeddings(want[:1], want, 0.99) or "")


def test_canary_texts_are_fresh() -> None:
    rng = random.Random(1)
    texts = [t for _ in range(50) for t in canary_texts(rng, 2)]
    assert len(set(texts)) > 90


def test_canary_requests_look_like_user_requests() -> None:
    """The node sees the same body shape for a canary as for a user's request."""
    async def go() -> None:
        refs = ReferenceModels({TRIVIAL_EMBED_MODEL: TrivialBackend(),
                                TRIVIAL_CHAT_MODEL: TrivialBackend()})
        rng = random.Random(5)
        embed = await make_canary(refs, TRIVIAL_EMBED_MODEL, rng)
        chat = await make_canary(refs, TRIVIAL_CHAT_MODEL, rng)
        assert embed is not None and chat is not None
        assert list(embed.body) == ["model", "input", "encoding_format"]
        assert chat.body["temperature"] == 0 and chat.body["stream"] is False
        assert await make_canary(refs, "unknown-model", rng) is None

    asyncio.run(go())


def test_a_node_serving_a_cheaper_model_is_caught_and_earns_less(tmp_path: Path) -> None:
    store = Store(tmp_path / "mixer.db", "")
    book = CanaryBook(store)
    config = GatewayConfig(seed=11, canary_rate=1.0, canary_interval_s=0)

    async def go() -> None:
        cheap = TrivialBackend(salt=b"cheaper-model")  # answers under the same model names
        async with network([[TrivialBackend()], [cheap]], config=config) as net:
            gw = net.gateway
            gw.canaries = book
            gw.references = ReferenceModels({TRIVIAL_EMBED_MODEL: TrivialBackend(),
                                             TRIVIAL_CHAT_MODEL: TrivialBackend()})
            await gw.refresh()
            assert await gw.run_canary(gw.scheduler.nodes[HONEST], TRIVIAL_EMBED_MODEL) is True
            assert await gw.run_canary(gw.scheduler.nodes[CHEAT], TRIVIAL_CHAT_MODEL) is False
            await gw.canary_sweep()
            # The cheater no longer gets user traffic; the honest node does.
            assert [n.address for n in gw.scheduler.eligible(TRIVIAL_EMBED_MODEL)] == [HONEST]

    asyncio.run(go())
    assert book.pending(HONEST) == []
    reasons = book.pending(CHEAT)
    assert len(reasons) == 2 and all(r.startswith("canary ") for r in reasons)
    assert "chat answer differs" in reasons[0]

    # Restarted, the mixer still knows the pending failures (its SQLite store).
    store.close()
    store = Store(tmp_path / "mixer.db", "")
    book = CanaryBook(store)
    assert book.pending(CHEAT) == reasons

    # The mixer's next round: honest sessions for both nodes, then the canary verdicts.
    mixers = make_mixers(3)
    nodes = make_nodes(2, "canary")
    honest_node, cheat_node = nodes
    pairs = find_pairs(mixers, nodes, assigned=True)
    by_node = {}
    for mixer, round_, node in pairs:
        by_node.setdefault(node.address, (mixer, round_, node))
    assert len(by_node) == 2
    reports = []
    for _address, (mixer, round_, node) in sorted(by_node.items()):
        report = run_honest_session(mixers, mixer, round_, node)
        assert report.outcome == Outcome.OK and report.score > 0
        reports.append(report)
    # The cheater's failures are recorded under its real address.
    book.record(cheat_node.address, TRIVIAL_EMBED_MODEL, reasons[0])
    applied = book.apply(reports)
    failed = next(r for r in applied if r.node == cheat_node.address)
    kept = next(r for r in applied if r.node == honest_node.address)
    assert kept in reports
    assert failed.outcome == Outcome.CANARY_FAILED
    assert failed.score == 0 and failed.response_signature == b""
    assert (failed.rtt_us, failed.compute_us, failed.download_us, failed.upload_us) == (0,) * 4
    assert failed.echo_digest == failed.compute_root == ZERO32
    assert failed.reason.startswith("canary ")
    assert book.take(cheat_node.address) is None  # consumed once

    # Co-signers accept CANARY_FAILED reports like TIMEOUT ones (batch by round).
    view = make_view(mixers, nodes)
    for r in applied:
        verify_batch_proposal(make_proposal(by_node[r.node][0], [r]), view)
    rollup = process_epoch(0, applied, state=EpochState(epoch=0), preset=TEST)
    assert rollup.rewards.get(cheat_node.address, 0) < rollup.rewards[honest_node.address]
    store.close()


def test_a_forged_canary_report_is_still_checked() -> None:
    """A CANARY_FAILED report that keeps a node signature is refused by co-signers."""
    mixers = make_mixers(3)
    nodes = make_nodes(1, "canary-forged")
    mixer, round_, node = find_pairs(mixers, nodes, assigned=True)[0]
    report = run_honest_session(mixers, mixer, round_, node)
    failed = canary_failed_report(report, "canary x: wrong")
    forged = type(failed)(**{**failed.__dict__, "response_signature": report.response_signature})
    view = make_view(mixers, nodes)
    with pytest.raises(DnanetError):
        verify_batch_proposal(make_proposal(mixer, [forged]), view)


def test_canary_reason_fits_the_report() -> None:
    book = CanaryBook()
    book.record("0xAB", "m", "x" * 1000)
    reason = book.take("0xab")
    assert reason is not None and len(reason.encode()) <= 200
    json.dumps(reason)
