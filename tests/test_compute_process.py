"""The node's products computed in a child process (``dnanet.node.compute_process``): the same
root and openings as a product computed in place, a wrong product caught as one, every misuse
a ChallengeError naming it, and a whole challenge session over a WebSocket answered from it.
How much it spares a timed product from the node's own work is measured in
bench/compute_process.py, not asserted here."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnanet.errors import ChallengeError
from dnanet.mixer.node_client import HttpNodeTransport, open_node_session
from dnanet.mixer.session import run_challenge_session
from dnanet.node.compute_process import ComputeProcess, HeldAnswer
from dnanet.node.prover import ChallengeProver
from dnanet.node.server import NODE_SCHEMA, StoreSeen, build_node_app
from dnanet.params import TEST
from dnanet.protocol.challenges.compute import (
    ComputeSize,
    compute_product,
    derive_check_indices,
    open_rows,
    verify_openings,
)
from dnanet.protocol.messages import Outcome
from dnanet.protocol.validation import verify_score_report
from dnanet.service.http import Server
from dnanet.service.store import Store
from protocol_fixtures import DOMAIN, EPOCH, make_mixers, make_nodes, make_view, prove_round

SIZE = ComputeSize(n=128, rows=96, checks=8)
SEED = bytes(range(32))
CHECK_SEED = bytes(range(32, 64))
MIXERS = make_mixers(1, "process-mixer")
NODE = make_nodes(1, "process-node")[0]


@pytest.fixture(scope="module")
def process() -> Iterator[ComputeProcess]:
    worker = ComputeProcess("cpu", threads=1)
    worker.wait_ready()
    yield worker
    worker.close()


def test_a_held_product_has_the_roots_and_rows_of_one_computed_in_place(
        process: ComputeProcess) -> None:
    here = compute_product(SEED, SIZE, "cpu")
    held = process.compute(SEED, SIZE)
    assert isinstance(held, HeldAnswer) and held.root == here.root
    indices = derive_check_indices(CHECK_SEED, held.root, SIZE)
    openings = held.open_rows(indices)
    assert openings == open_rows(here, indices)
    verify_openings(SEED, CHECK_SEED, SIZE, held.root, openings)
    held.release()


def test_a_wrong_product_is_committed_and_fails_its_openings(process: ComputeProcess) -> None:
    held = process.compute(SEED, SIZE, wrong=True)
    assert held.root != compute_product(SEED, SIZE, "cpu").root
    openings = held.open_rows(derive_check_indices(CHECK_SEED, held.root, SIZE))
    with pytest.raises(ChallengeError, match="differs from"):
        verify_openings(SEED, CHECK_SEED, SIZE, held.root, openings)
    held.release()


def test_misuse_is_an_error_naming_it_and_the_process_goes_on(process: ComputeProcess) -> None:
    held = process.compute(SEED, SIZE)
    with pytest.raises(ChallengeError, match="outside") as outside:
        held.open_rows([SIZE.rows])
    assert outside.value.field == "indices[0]"
    held.release()
    with pytest.raises(ChallengeError, match="no product is held"):
        held.open_rows([0])
    with pytest.raises(ChallengeError, match="compute_seed"):
        process.compute(b"short", SIZE)
    assert process.compute(SEED, SIZE).root == held.root  # still serving


def test_a_stopped_or_dead_process_is_a_challenge_error() -> None:
    worker = ComputeProcess("cpu", threads=1)
    worker.wait_ready()
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(ChallengeError, match="compute process ended") as ended:
        worker.compute(SEED, SIZE)
    assert ended.value.field == "device"
    worker.close()
    with pytest.raises(ChallengeError, match="stopped"):
        worker.compute(SEED, SIZE)
    worker.close()  # idempotent


@pytest.mark.parametrize("wrong", [False, True], ids=["honest", "wrong-product"])
def test_a_session_is_answered_from_the_compute_process(
        tmp_path: Path, process: ComputeProcess, wrong: bool) -> None:
    asyncio.run(_session(tmp_path, process, wrong))


async def _session(tmp_path: Path, process: ComputeProcess, wrong: bool) -> None:
    members = {m.address: m.vrf_public_key for m in MIXERS}
    store = Store(tmp_path / "node.db", NODE_SCHEMA)
    prover = ChallengeProver(NODE, DOMAIN, lambda: members, seen=StoreSeen(store),
                             compute=lambda seed, size: process.compute(seed, size, wrong=wrong))
    server = Server(build_node_app(prover, store), "127.0.0.1", 0)
    await server.start()
    try:
        proof, beta = prove_round(MIXERS[0], 0)
        async with open_node_session(8, 10) as session:
            report = await run_challenge_session(
                HttpNodeTransport(session, server.url), identity=MIXERS[0].identity,
                domain=DOMAIN, preset=TEST, beta=beta, vrf_proof=proof, epoch=EPOCH,
                round_=0, node=NODE.address, hardware_class=0)
    finally:
        await server.stop()
        store.close()
    if wrong:
        assert report.outcome == Outcome.WRONG_ANSWER, report.reason
    else:
        assert report.outcome == Outcome.OK, report.reason
        assert verify_score_report(report, make_view(MIXERS, [NODE])).total == report.score
    assert prover.open_sessions == 0  # the session ended: its product was released
