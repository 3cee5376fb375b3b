"""Cheating nodes (``dnanet.adversary.nodes``) against the real mixer's session and gateway.

Each cheat is a real node daemon serving HTTP on loopback over the fake chain of
``validator_helpers``; a mixer challenges it with ``run_challenge_session`` over its WebSocket
(``HttpNodeTransport``), or sends it canaries through a real ``Gateway``. Where the design has a
defence, the test shows the cheat caught (and what it costs the cheater); where it has none,
the test shows what the cheat gets, and the open gap is an ``xfail(strict=True)`` test of the
property the design lacks (it fails loudly once a defence makes it pass).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dnanet.adversary.nodes import (
    CONTROL_PROFILE,
    EchoFastNode,
    HardwareLiarNode,
    RelayFront,
    RelayHost,
    build_node,
    compute_lazy_product,
    is_canary_text,
)
from dnanet.ai.backends import TRIVIAL_EMBED_MODEL, BackendSet, TrivialBackend
from dnanet.crypto import vrf
from dnanet.crypto.keys import Identity
from dnanet.gateway.app import Gateway, GatewayConfig, StaticDirectory
from dnanet.gateway.canary import CanaryBook, canary_texts
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.node_client import HttpNodeTransport, NodeCredentials, open_node_session
from dnanet.mixer.session import run_challenge_session
from dnanet.node.daemon import NodeDaemon, NodeProfile
from dnanet.node.hardware import CLASS_CPU, CLASS_GPU, Hardware
from dnanet.params import LOCAL, MAINNET, TEST, Preset
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.challenges.compute import ComputeSize, compute_product, verified_flops
from dnanet.protocol.epoch import EpochState, process_epoch
from dnanet.protocol.evidence import verify_fraud_evidence
from dnanet.protocol.messages import Outcome, ScoreReport
from dnanet.protocol.schedule import RoundId, compute_round_start_block, compute_vrf_alpha
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.service.network import NodeRecord
from validator_helpers import FakeGateway, seeded_identity

HARDWARE = Hardware(cpu_model="test cpu", cpu_cores=2, memory_bytes=1 << 30, gpu=None)
MIXERS = [seeded_identity(f"adversary-nodes/mixer-{i}") for i in range(4)]
MIXER = MIXERS[0]


class Chain(FakeGateway):
    """The fake chain, taking registrations (what a hardware liar declares)."""

    registered: list[tuple[str, int, int]]

    def register_node(self, endpoint: str, hardware_class: int, stake: int) -> str:
        self.registered.append((endpoint, hardware_class, stake))
        return "0x" + "11" * 32

    def update_node(self, endpoint: str, hardware_class: int) -> str:
        raise AssertionError("these tests register nodes afresh")


def chain_of(*nodes: Identity) -> Chain:
    chain = Chain(mixers=MIXERS, nodes_list=[
        NodeRecord(n.address, f"http://{n.address[2:10]}.invalid", CLASS_CPU, TEST.min_stake,
                   False, True) for n in nodes])
    chain.registered = []
    return chain


def node(tmp_path: Path, label: str, role: str | None = None, **options: Any) -> NodeDaemon:
    identity = seeded_identity(f"adversary-nodes/{label}")
    options.setdefault("backends", BackendSet([TrivialBackend()]))
    gateway: Chain = options.pop("gateway", None) or chain_of(identity)
    common = dict(port=0, hardware=HARDWARE, device="cpu", **options)
    if role is None:
        return NodeDaemon(identity, gateway, tmp_path / label, **common)
    return build_node(role, identity, gateway, tmp_path / label, **common)


@contextlib.asynccontextmanager
async def serving(*daemons: NodeDaemon) -> AsyncIterator[None]:
    started = []
    try:
        for daemon in daemons:
            await daemon.start(register=False)
            started.append(daemon)
        yield
    finally:
        for daemon in reversed(started):
            await daemon.stop()


FIRST_ROUND = RoundId(0, 0)


async def challenge(daemon: NodeDaemon, rid: RoundId = FIRST_ROUND, *,
                    hardware_class: int = CLASS_CPU) -> ScoreReport:
    """One challenge session of ``MIXER`` with ``daemon`` (the chain moved to ``rid``)."""
    chain = daemon.gateway
    assert isinstance(chain, FakeGateway)
    start = compute_round_start_block(rid, chain.preset)
    chain.advance_to(start)
    daemon.head = chain.block_number()
    seed = chain.block_hash(start)
    proof = vrf.prove(derive_vrf_secret(MIXER),
                      compute_vrf_alpha(chain.domain.chain_id, rid.epoch, rid.round, seed))
    async with open_node_session(8, 10) as session:
        return await run_challenge_session(
            HttpNodeTransport(session, daemon.url), identity=MIXER, domain=chain.domain,
            preset=chain.preset, beta=vrf.proof_to_hash(proof), vrf_proof=proof,
            epoch=rid.epoch, round_=rid.round, node=daemon.address,
            hardware_class=hardware_class)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- lazy: caught by the spot checks, punished as fraud ------------------------------------------


def test_a_lazy_node_signs_a_wrong_product_and_is_punished_for_fraud(tmp_path: Path) -> None:
    lazy, honest = node(tmp_path, "lazy", "lazy"), node(tmp_path, "honest")

    async def main() -> tuple[ScoreReport, ScoreReport]:
        async with serving(lazy, honest):
            return await challenge(lazy), await challenge(honest)

    report, control = run(main())
    assert control.outcome == Outcome.OK and control.score > 0
    assert report.outcome == Outcome.WRONG_ANSWER and report.score == 0
    # The evidence is a row under the root the node signed: anyone can check it.
    chain = lazy.gateway
    assert isinstance(chain, FakeGateway)
    proof = vrf.prove(derive_vrf_secret(MIXER), compute_vrf_alpha(
        chain.domain.chain_id, 0, 0, chain.block_hash(0)))
    beta = vrf.proof_to_hash(proof)
    lazy_challenge = compute_challenge(beta=beta, epoch=0, round_=0, mixer=MIXER.address,
                                       node=lazy.address, hardware_class=CLASS_CPU,
                                       preset=TEST)
    verify_fraud_evidence(report, lazy_challenge, compute_kind_seeds(beta, lazy.address)
                          .compute_seed)
    rollup = process_epoch(0, [report, control], state=EpochState(), preset=TEST)
    (punishment,) = rollup.punishments
    assert punishment.node == lazy.address.lower() and punishment.jail
    assert punishment.slash_bps == TEST.fraud_slash_bps
    assert lazy.address.lower() not in dict(rollup.rewards) or \
        dict(rollup.rewards)[lazy.address.lower()] == 0


def test_a_lazy_product_is_right_only_in_the_rows_it_computed() -> None:
    size = ComputeSize(n=32, rows=64, checks=8)
    seed = bytes(range(32))
    whole = compute_product(seed, size, "cpu").product
    lazy = compute_lazy_product(seed, size, 0.5).product
    assert (lazy[:32] == whole[:32]).all() and (lazy[32:] == 0).all()
    assert (whole[32:] != 0).any()  # the rows it skipped are not all zero


# -- replayer: its old product is wrong for the new seed -----------------------------------------


def test_a_replayer_passes_its_first_challenge_and_is_caught_at_the_next(
        tmp_path: Path) -> None:
    replayer = node(tmp_path, "replayer", "replayer")

    async def main() -> list[ScoreReport]:
        async with serving(replayer):
            return [await challenge(replayer, RoundId(0, r)) for r in range(3)]

    first, *later = run(main())
    assert first.outcome == Outcome.OK
    assert [r.outcome for r in later] == [Outcome.WRONG_ANSWER] * 2
    # Each later challenge's every attempt answered with one of the first challenge's products.
    attempts = TEST.hardware_classes[0].compute_attempts
    assert replayer.replayed == 2 * attempts  # type: ignore[attr-defined]


# -- hardware liar: the declared class only sizes the work ---------------------------------------


def test_a_hardware_liar_declares_gpu_and_answers_gpu_sized_challenges(tmp_path: Path) -> None:
    liar = node(tmp_path, "gpu-liar", "gpu-liar", gateway=chain_of())  # not registered yet
    assert isinstance(liar, HardwareLiarNode) and liar.device == "cpu"

    async def main() -> ScoreReport:
        async with serving(liar):
            await liar.ensure_registered()
            return await challenge(liar, hardware_class=CLASS_GPU)

    report = run(main())
    chain = liar.gateway
    assert isinstance(chain, Chain)
    assert [c for _, c, _ in chain.registered] == [CLASS_GPU]
    assert report.outcome == Outcome.OK and report.hardware_class == CLASS_GPU


@pytest.mark.parametrize("preset", [TEST, LOCAL, MAINNET], ids=lambda p: p.name)
@pytest.mark.parametrize("gflops", [2, 50, 500])
def test_declaring_the_gpu_class_scores_a_node_as_its_measured_rate(preset: Preset,
                                                                     gflops: int) -> None:
    """At the rate it really computes and transfers, a node scores the same whichever class it
    declares: the class sizes the work, the score is the measured rate (rounding aside)."""
    rate, bandwidth = gflops * 10**9, 50 * 10**6
    scores = []
    for hardware_class in (CLASS_CPU, CLASS_GPU):
        sizes = preset.sizes_for_class(hardware_class)
        flops = verified_flops(ComputeSize(sizes.compute_n, sizes.compute_rows,
                                           sizes.compute_checks))
        scores.append(compute_challenge_score(
            sizes, outcome=Outcome.OK, rtt_us=5_000, compute_us=flops * 10**6 // rate,
            download_us=sizes.download_bytes * 10**6 // bandwidth,
            upload_us=sizes.upload_bytes * 10**6 // bandwidth, params=preset.scoring).total)
    assert abs(scores[1] - scores[0]) <= 2  # fixed-point units of 1e-6


# -- relay: two identities, one machine (open: undetectable) -------------------------------------


def test_a_relay_answers_for_two_identities_from_one_machine(tmp_path: Path) -> None:
    """The open gap: both identities pass and are paid; nothing in a session tells them
    apart from two machines (docs/protocol.md, threat model)."""
    host = node(tmp_path, "relay-host", "relay")
    assert isinstance(host, RelayHost)
    front = node(tmp_path, "relay-front", "relay", relay_host=host)
    assert isinstance(front, RelayFront)

    async def main() -> list[ScoreReport]:
        async with serving(host, front):
            assert front.backends.backend(TRIVIAL_EMBED_MODEL) is \
                host.backends.backend(TRIVIAL_EMBED_MODEL)
            return list(await asyncio.gather(challenge(host), challenge(front)))

    reports = run(main())
    assert [r.outcome for r in reports] == [Outcome.OK, Outcome.OK]
    assert all(r.score > 0 for r in reports)


# -- swapper and selective node: canaries --------------------------------------------------------


def mixer_gateway(daemon: NodeDaemon, **config: Any) -> Gateway:
    """``MIXER``'s gateway in front of ``daemon`` alone (open: no API key)."""
    chain = daemon.gateway
    assert isinstance(chain, FakeGateway)
    daemon.head = chain.block_number()
    settings = GatewayConfig(**{"canary_rate": 0, "canary_interval_s": 0, "seed": 7,
                                "node_credential": NodeCredentials(MIXER, chain.domain,
                                                                   chain.block_number),
                                **config})
    record = NodeRecord(daemon.address, daemon.url, CLASS_CPU, TEST.min_stake, False, True)
    return Gateway(settings, StaticDirectory([record]))


async def canary(daemon: NodeDaemon) -> tuple[bool | None, CanaryBook]:
    """One canary of ``MIXER``'s gateway to ``daemon`` for the trivial embedding model."""
    gateway = mixer_gateway(daemon)
    try:
        await gateway.refresh()
        state = gateway.scheduler.nodes[daemon.address.lower()]
        return await gateway.run_canary(state, TRIVIAL_EMBED_MODEL), gateway.canaries
    finally:
        await gateway.stop()


def test_a_model_swapper_fails_its_canaries_and_its_next_report_fails(tmp_path: Path) -> None:
    swapper, honest = node(tmp_path, "swapper", "swapper"), node(tmp_path, "honest")

    async def main() -> tuple[Any, Any, ScoreReport]:
        async with serving(swapper, honest):
            caught, control = await canary(swapper), await canary(honest)
            return caught, control, await challenge(swapper)

    (verdict, book), (control, _), report = run(main())
    assert control is True
    assert verdict is False
    (reason,) = book.pending(swapper.address)
    assert "cosine" in reason
    assert report.outcome == Outcome.OK  # its challenges alone pass...
    (failed,) = book.apply([report])  # ...but the mixer's next report of it fails
    assert failed.outcome == Outcome.CANARY_FAILED and failed.score == 0
    assert "canary" in failed.reason


def test_a_selective_node_degrades_users_requests_and_answers_canaries(tmp_path: Path) -> None:
    """What the selective node does (the attack works): a user's text gets a cheap stand-in's
    vector, a canary's the real model's."""
    selective = node(tmp_path, "selective", "selective")
    reference = TrivialBackend()
    user = ["the quarterly report is due on friday"]
    probe = canary_texts(__import__("random").Random(3), 2)
    assert all(is_canary_text(t) for t in probe) and not is_canary_text(user[0])

    async def main() -> tuple[Any, Any]:
        async with serving(selective):
            backend = selective.backends.backend(TRIVIAL_EMBED_MODEL)
            assert backend is not None
            return (await backend.embeddings(TRIVIAL_EMBED_MODEL, user),
                    await backend.embeddings(TRIVIAL_EMBED_MODEL, probe))

    degraded, honest = run(main())
    assert degraded != run(reference.embeddings(TRIVIAL_EMBED_MODEL, user))
    assert honest == run(reference.embeddings(TRIVIAL_EMBED_MODEL, probe))


@pytest.mark.xfail(strict=True, reason="canary texts are template sentences over a fixed word "
                   "list (dnanet.gateway.canary), so a node tells them from users' requests "
                   "and answers only them right; audits of users' answers catch it instead "
                   "(test_a_selective_node_fails_the_audit_of_a_users_request)")
def test_a_selective_node_fails_a_canary(tmp_path: Path) -> None:
    selective = node(tmp_path, "selective", "selective")

    async def main() -> bool | None:
        async with serving(selective):
            verdict, _ = await canary(selective)
            return verdict

    assert run(main()) is False


def test_a_selective_node_fails_the_audit_of_a_users_request(tmp_path: Path) -> None:
    """What no canary can do, an audit does: the gateway checks a user's own answer afterwards
    against its reference (``audit_rate``, here every answer), and the selective node's
    stand-in vector for a user's text fails it, as a failed canary; an honest node's passes.
    The user still gets the answer, at once."""
    import httpx

    from dnanet.gateway.app import create_gateway_app

    async def audit(daemon: NodeDaemon) -> tuple[list[str], int]:
        async with serving(daemon):
            gateway = mixer_gateway(daemon, audit_rate=1.0)
            transport = httpx.ASGITransport(app=create_gateway_app(gateway))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as h:
                    answer = await h.post("/v1/embeddings", json={
                        "model": TRIVIAL_EMBED_MODEL,
                        "input": ["the quarterly report is due on friday"]})
                assert answer.status_code == 200, answer.text
                while gateway._tasks:
                    await asyncio.gather(*list(gateway._tasks))
                return gateway.canaries.pending(daemon.address), gateway.audited
            finally:
                await gateway.stop()

    pending, audited = run(audit(node(tmp_path, "selective", "selective")))
    assert audited == 1 and len(pending) == 1
    assert "audit of a user's answer: vector 0 cosine" in pending[0], pending
    assert run(audit(node(tmp_path, "honest"))) == ([], 1)


# -- echo-fast: the echoes' path is not the compute's (open: bounded) ----------------------------


def test_an_echo_fast_node_shows_its_hidden_delay_in_its_timed_steps(tmp_path: Path) -> None:
    """A node delaying every answer by 50 ms but its echoes: its round trip looks like a fast
    one; the delay it hid is inside its compute and transfer steps instead (the bound of the
    gain: the latency sub-score, a quarter of the score)."""
    delay = 0.05
    profile = NodeProfile("slow", compute_slowdown=CONTROL_PROFILE.compute_slowdown,
                          added_delay_s=delay)
    fast = node(tmp_path, "echo-fast", "echo-fast")
    assert isinstance(fast, EchoFastNode)
    fast.profile = profile
    twin = node(tmp_path, "control", profile=profile)

    async def main() -> tuple[ScoreReport, ScoreReport]:
        async with serving(fast, twin):
            return await challenge(fast), await challenge(twin, RoundId(0, 1))

    cheat, control = run(main())
    assert cheat.outcome == control.outcome == Outcome.OK
    hidden_us = int(delay * 1e6)
    assert control.rtt_us >= hidden_us  # an honest slow link shows in its round trip
    assert cheat.rtt_us < hidden_us  # the echo responder's does not...
    assert cheat.compute_us >= hidden_us - cheat.rtt_us  # ...the steps carry it instead
    assert cheat.download_us >= hidden_us - cheat.rtt_us
