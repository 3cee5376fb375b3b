"""The Validator: certificate intake, publication, settlement and the node endpoints.

Certificates are real: mixers of a fake chain challenge in-process nodes (VRF assignment,
challenge sessions, node signatures) and co-sign each batch (see ``validator_helpers``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnanet.errors import ChainError, ProtocolError, ScheduleError
from dnanet.protocol.codec import MAX_MESSAGE_BYTES
from dnanet.protocol.epoch import process_epochs
from dnanet.protocol.messages import Outcome, QuorumCertificate, ScoreReport
from dnanet.protocol.quorum import compute_batch
from dnanet.protocol.rollup import verify_proof
from dnanet.protocol.schedule import (
    RoundId,
    compute_assignment_target,
    compute_round_start_block,
    compute_vrf_alpha,
    is_assigned,
)
from dnanet.protocol.scoring import compute_report_score
from dnanet.protocol.validation import verify_certified_batch
from dnanet.service.http import serving
from dnanet.service.network import SettledEpoch
from dnanet.service.views import ViewCache, compute_node_infos
from dnanet.validator.daemon import ValidatorDaemon, add_validator_commands
from dnanet.validator.settle import Backoff, SettlementLoop
from dnanet.validator.store import DIVERGED, SETTLED, ValidatorStore
from validator_helpers import (
    Committee,
    Corpus,
    FakeGateway,
    LocalSigner,
    build_network,
    fake_mixer_app,
    last_round_start,
    make_corpus,
    post_all,
    run,
    seeded_identity,
    server_url,
    settle_block,
    with_validator,
)

LABEL = "validator"
EPOCHS = 3
CHEATER, OFFLINE = 4, 5


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus(_network()[1], EPOCHS)


def _network() -> tuple[FakeGateway, Committee]:
    return build_network(mixers=4, nodes=6, cheaters=[CHEATER], offline=[OFFLINE], label=LABEL)


@pytest.fixture
def gateway() -> FakeGateway:
    gw, _ = _network()
    gw.advance_to(last_round_start(gw, 0))
    return gw


@pytest.fixture
def committee() -> Committee:
    return _network()[1]


def local_signer(gw: FakeGateway, daemon: ValidatorDaemon) -> LocalSigner:
    return LocalSigner(gw, daemon.store.certificates)


def use_signer(daemon: ValidatorDaemon, signer: Any) -> None:
    daemon.loop.signer = signer
    daemon.loop.backoff = Backoff(base_s=0.0)


# -- intake --------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1], ids=["threads", "processes"])
def test_intake_accepts_persists_and_deduplicates(gateway: FakeGateway, corpus: Corpus,
                                                  committee: Committee, tmp_path: Path,
                                                  workers: int) -> None:
    certificates = corpus.certificates[0]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        answers = await post_all(client, certificates)
        assert [a["accepted"] for a in answers] == [len(c.reports) for c in certificates]
        assert not any(a["duplicate"] for a in answers)
        # The very same batch again: acknowledged as a duplicate, nothing new stored.
        again = await client.post("/v1/certificates", content=certificates[0].to_json())
        assert again.status_code == 200
        assert again.json() == {"accepted": 0, "skipped": 0, "duplicate": True}
        # The same batch with a forged co-signature is refused, not called a duplicate: the
        # certificate is verified before the answer.
        outsider = seeded_identity("forger").sign_typed(
            gateway.domain, certificates[0].batch.hash_struct())
        forged = dataclasses.replace(certificates[0], signatures=(
            *certificates[0].signatures[:-1], outsider))
        refused = await client.post("/v1/certificates", content=forged.to_json())
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["field"].startswith("signatures")
        # Another batch with an already stored report: stored, the report skipped.
        single = committee.certify([certificates[0].reports[0]])
        other = await client.post("/v1/certificates", content=single.to_json())
        assert other.json() == {"accepted": 0, "skipped": 1, "duplicate": False}
        # A co-signer asks whether a batch is stored before forwarding it itself.
        batch_hash = certificates[0].batch.hash_struct()
        held = await client.get(f"/v1/batches/0x{batch_hash.hex().upper()}")
        assert held.status_code == 200
        assert held.json() == {"batch_hash": "0x" + batch_hash.hex(), "epoch": 0,
                               "round": certificates[0].batch.round,
                               "mixer": certificates[0].batch.mixer,
                               "reports": len(certificates[0].reports),
                               "accepted": len(certificates[0].reports)}
        for path, status in [("/v1/batches/0x" + "ab" * 32, 404), ("/v1/batches/0x12", 400),
                             ("/v1/batches/" + "ab" * 32, 400)]:
            response = await client.get(path)
            assert response.status_code == status, path
            assert response.json()["error"]["field"] == "batch_hash", path
        metrics = (await client.get("/metrics")).text
        assert f'dnanet_validator_certificates_total{{result="accepted"}} ' \
               f'{len(certificates) + 1}.0' in metrics
        assert 'dnanet_validator_certificates_total{result="duplicate"} 1.0' in metrics

    run(with_validator(gateway, tmp_path, body, workers=workers))
    # Everything acknowledged is on disk: reopen the database.
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        assert store.certificate_count(0) == len(certificates) + 1
        assert sorted(r.hash_struct() for r in store.reports(0)) == sorted(
            r.hash_struct() for r in corpus.reports(0))
    finally:
        store.close()


def _resign(committee: Committee, certificate: QuorumCertificate,
            reports: list[ScoreReport]) -> QuorumCertificate:
    first = reports[0]
    batch = compute_batch(first.epoch, first.round, first.mixer, reports)
    sigs = tuple(m.sign_typed(committee.gateway.domain, batch.hash_struct())
                 for m in [next(m for m in committee.mixers if m.address == first.mixer)]
                 + [m for m in committee.mixers if m.address != first.mixer])
    return QuorumCertificate(batch=batch, reports=tuple(reports), signatures=sigs)


def _unassigned_node(gw: FakeGateway, report: ScoreReport) -> str:
    from dnanet.crypto import vrf

    seed = gw.block_hash(compute_round_start_block(RoundId(report.epoch, report.round),
                                                   gw.preset))
    key = next(m.vrf_public_key for m in gw.mixer_set(report.epoch) if m.address == report.mixer)
    beta = vrf.verify(key, report.vrf_proof,
                      compute_vrf_alpha(gw.domain.chain_id, report.epoch, report.round, seed))
    target = compute_assignment_target(len(gw.mixers), gw.preset.challenges_per_round)
    return next(n.address for n in gw.nodes_list if not is_assigned(beta, n.address, target))


@pytest.mark.parametrize("workers", [0, 1], ids=["threads", "processes"])
def test_concurrent_copies_store_once_and_a_restart_still_knows_them(
        gateway: FakeGateway, corpus: Corpus, tmp_path: Path, workers: int) -> None:
    certificates = corpus.certificates[0]
    first, rest = certificates[0], certificates[1:]
    bad = dataclasses.replace(rest[0], signatures=rest[0].signatures[:1])

    async def burst(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> list[Any]:
        # Arrive together, so they are verified in the same chunks: five copies of one
        # batch, the others once, and an invalid one that must not spoil its chunk.
        bodies = [first.to_json()] * 5 + [c.to_json() for c in rest] + [bad.to_json()]
        responses = await asyncio.gather(*(client.post("/v1/certificates", content=b)
                                           for b in bodies))
        return [(r.status_code, r.json()) for r in responses]

    answers = run(with_validator(gateway, tmp_path, burst, workers=workers))
    copies, others, invalid = answers[:5], answers[5:-1], answers[-1]
    assert all(status == 200 for status, _ in copies + others)
    # Each copy is either the one stored or acknowledged as a duplicate: stored once.
    assert sum(not answer["duplicate"] for _, answer in copies) == 1
    assert sum(answer["accepted"] for _, answer in copies) == len(first.reports)
    assert [a["accepted"] for _, a in others] == [len(c.reports) for c in rest]
    assert invalid[0] == 422 and invalid[1]["error"]["field"] == "signatures"

    async def again(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> list[Any]:
        # A new process remembers nothing: the store still answers duplicate.
        return await post_all(client, [first, rest[-1]])

    assert run(with_validator(gateway, tmp_path, again, workers=workers)) == [
        {"accepted": 0, "skipped": 0, "duplicate": True}] * 2
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        assert store.certificate_count(0) == len(certificates)
    finally:
        store.close()


def test_an_epoch_closed_while_found_open_is_refused_at_commit(
        gateway: FakeGateway, corpus: Corpus, tmp_path: Path) -> None:
    first, second, third = corpus.certificates[0][:3]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> list[int]:
        statuses = [(await client.post("/v1/certificates", content=first.to_json())).status_code]
        # The rollup closes the epoch in the database; the intake found it open a moment ago
        # and does not read again yet: the writer's transaction refuses the certificate.
        daemon.store.close_epoch(0)
        late = await client.post("/v1/certificates", content=second.to_json())
        statuses.append(late.status_code)
        assert "closed" in late.json()["error"]["message"]
        # From then on the intake knows, and refuses before verifying.
        refused = await client.post("/v1/certificates", content=third.to_json())
        statuses.append(refused.status_code)
        assert refused.json()["error"] == {
            "type": "EpochClosed", "field": "epoch",
            "message": "epoch 0 is closed: its rollup is computed and published"}
        assert 0 in daemon.intake._closed_epochs
        return statuses

    assert run(with_validator(gateway, tmp_path, body)) == [200, 409, 409]
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        assert store.certificate_count(0) == 1
    finally:
        store.close()


def test_stopping_answers_every_certificate_that_arrived(gateway: FakeGateway, corpus: Corpus,
                                                         tmp_path: Path) -> None:
    certificates = corpus.certificates[0]

    async def body() -> list[Any]:
        daemon = ValidatorDaemon(gateway, tmp_path, port=0, run_settlement=False)
        await daemon.start()
        try:
            submitted = [asyncio.create_task(daemon.intake.submit(c.to_json()))
                         for c in certificates]
            await asyncio.sleep(0)  # all have arrived; none is verified yet
            await daemon.intake.stop()
            return await asyncio.gather(*submitted, return_exceptions=True)
        finally:
            await daemon.stop()

    results = run(body())
    assert [r.accepted for r in results] == [len(c.reports) for c in certificates]
    store = ValidatorStore(tmp_path / "validator.db")
    try:
        assert store.certificate_count(0) == len(certificates)
    finally:
        store.close()


@pytest.mark.parametrize("workers", [0, 1], ids=["threads", "processes"])
def test_intake_rejects_bad_certificates_naming_the_field(
        gateway: FakeGateway, corpus: Corpus, committee: Committee, tmp_path: Path,
        workers: int) -> None:
    good = next(c for c in corpus.certificates[0]
                if any(r.outcome == Outcome.OK for r in c.reports))
    wire = good.to_wire()
    outsider = seeded_identity("outsider")
    ok_report = next(r for r in good.reports if r.outcome == Outcome.OK)
    cases: list[tuple[str, bytes, int, str | None]] = []

    def case(name: str, body: bytes | dict[str, Any] | QuorumCertificate, status: int,
             field: str | None) -> None:
        raw = (body.to_json() if isinstance(body, QuorumCertificate)
               else body if isinstance(body, bytes) else json.dumps(body).encode())
        cases.append((name, raw, status, field))

    case("not json", b"{not json", 400, None)
    case("float", b'{"batch": 1.5}', 400, None)
    case("unknown field", dict(wire, extra=1), 400, "certificate")
    case("missing field", {k: v for k, v in wire.items() if k != "signatures"}, 400,
         "certificate.signatures")
    case("bad address", dict(wire, batch=dict(wire["batch"], mixer="0x12")), 400,
         "certificate.batch.mixer")
    bad_sig = bytearray(good.signatures[1])
    bad_sig[5] ^= 0xFF
    case("bad signature", dataclasses.replace(
        good, signatures=(good.signatures[0], bytes(bad_sig), *good.signatures[2:])),
        422, "signatures[1]")
    case("below quorum", dataclasses.replace(good, signatures=good.signatures[:2]),
         422, "signatures")
    case("non-member", dataclasses.replace(good, signatures=(
        *good.signatures[:3], outsider.sign_typed(gateway.domain, good.batch.hash_struct()))),
        422, "signatures[3]")
    case("duplicate signer", dataclasses.replace(
        good, signatures=(*good.signatures[:3], good.signatures[0])), 422, "signatures[3]")
    case("reports differ from the root", dataclasses.replace(
        good, reports=(dataclasses.replace(ok_report, reason="edited"),
                       *[r for r in good.reports if r is not ok_report])), 422, "reportsRoot")
    index = good.reports.index(ok_report)
    tampered = list(good.reports)
    tampered[index] = dataclasses.replace(ok_report, score=ok_report.score + 1)
    case("wrong score", _resign(committee, good, tampered), 422, f"reports[{index}]")
    moved = list(good.reports)
    moved[index] = dataclasses.replace(ok_report, node=_unassigned_node(gateway, ok_report))
    case("unassigned node", _resign(committee, good, sorted(moved, key=lambda r: r.key)),
         422, None)
    stranger = list(good.reports)
    stranger[index] = dataclasses.replace(ok_report, node=outsider.address)
    case("unregistered node", _resign(committee, good, sorted(stranger, key=lambda r: r.key)),
         422, None)
    future = [dataclasses.replace(r, epoch=EPOCHS + 5) for r in good.reports]
    case("epoch not started", _resign(committee, good, future), 422, "epoch")

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        for name, raw, status, field in cases:
            response = await client.post("/v1/certificates", content=raw)
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            if field is not None:
                assert error["field"] == field, (name, error)
            elif status == 422:
                assert error["field"] and error["field"].startswith("reports["), (name, error)
            assert error["message"], name
        huge = await client.post("/v1/certificates", content=b" " * (MAX_MESSAGE_BYTES + 1))
        assert huge.status_code == 413
        metrics = (await client.get("/metrics")).text
        assert f'dnanet_validator_certificates_total{{result="rejected"}} {len(cases)}.0' \
            in metrics
        assert daemon.store.certificate_count(0) == 0
        # The good certificate itself passes the same path.
        assert (await client.post("/v1/certificates", content=good.to_json())).status_code == 200

    run(with_validator(gateway, tmp_path, body, workers=workers))


def test_certificates_for_closed_epochs_are_refused(gateway: FakeGateway, corpus: Corpus,
                                                   tmp_path: Path) -> None:
    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0][:1])
        gateway.advance_to(settle_block(gateway, 0))
        await daemon.loop.publish(0)
        late = await client.post("/v1/certificates", content=corpus.certificates[0][1].to_json())
        assert late.status_code == 409
        assert late.json()["error"]["field"] == "epoch"
        assert "closed" in late.json()["error"]["message"]
        # A duplicate of a stored batch is still acknowledged (a mixer re-sending).
        again = await client.post("/v1/certificates", content=corpus.certificates[0][0].to_json())
        assert again.json()["duplicate"] is True
        gateway.next_epoch = 1  # the chain settled it (by another validator)
        daemon.loop.chain_next = 1
        daemon.intake._closed_epochs.clear()
        settled = await client.post("/v1/certificates",
                                    content=corpus.certificates[0][2].to_json())
        assert settled.status_code == 409
        assert "settled on chain" in settled.json()["error"]["message"]

    run(with_validator(gateway, tmp_path, body))


# -- settlement ----------------------------------------------------------------------------------


def test_settles_once_with_quorum_and_punishes(gateway: FakeGateway, corpus: Corpus,
                                               tmp_path: Path) -> None:
    replay = process_epochs([corpus.reports(e) for e in range(2)], gateway.preset)

    async def first(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0])
        use_signer(daemon, local_signer(gateway, daemon))
        gateway.advance_to(settle_block(gateway, 0) - 1)
        await daemon.loop.step()
        assert gateway.submissions == []  # not before the grace period ends
        gateway.advance_to(last_round_start(gateway, 1))
        await post_all(client, corpus.certificates[1])
        await daemon.loop.step()
        await daemon.loop.step()  # runs again: nothing more to submit
        settlements = gateway.settlement_submissions()
        assert [s.message for s in settlements] == [replay[0].settlement]
        assert len(settlements[0].signers) == 3  # the threshold of 4
        record = daemon.store.epoch_record(0)
        assert record is not None and record.status == SETTLED
        assert record.settle_tx == settlements[0].tx_hash
        # The cheater's fraud: a quorum-signed punishment, submitted once, after settlement.
        punishments = [s for s in gateway.submissions if s.kind == "punishment"]
        assert [p.message for p in punishments] == list(replay[0].punishments)
        assert replay[0].punishments and all(p.message.jail for p in punishments)
        assert [p.status for p in daemon.store.punishments(0)] == ["submitted"]
        summary = (await client.get("/v1/epochs/0")).json()
        assert summary["status"] == "settled" and summary["settle_tx"] == settlements[0].tx_hash
        assert summary["settlement"] == replay[0].settlement.to_wire()
        assert summary["punishments"][0]["status"] == "submitted"

    run(with_validator(gateway, tmp_path, first))

    async def restarted(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        use_signer(daemon, local_signer(gateway, daemon))
        await daemon.loop.step()
        assert len(gateway.settlement_submissions()) == 1
        gateway.advance_to(settle_block(gateway, 1))
        await daemon.loop.step()
        await daemon.loop.step()
        assert [s.message for s in gateway.settlement_submissions()] == [
            replay[0].settlement, replay[1].settlement]
        listing = (await client.get("/v1/epochs")).json()
        assert [(e["epoch"], e["status"]) for e in listing] == [(1, "settled"), (0, "settled")]

    run(with_validator(gateway, tmp_path, restarted))


def test_incremental_rollup_equals_replay(corpus: Corpus) -> None:
    """Epoch by epoch from stored totals and strikes == process_epochs over everything; the
    kept report per key is the smaller struct hash whatever the arrival order."""
    gw, committee = _network()
    conflicts = {}
    for epoch in range(EPOCHS):
        cert = corpus.certificates[epoch][0]
        variant = [dataclasses.replace(r, reason=r.reason + " (variant)") for r in cert.reports]
        conflicts[epoch] = _resign(committee, cert, variant)

    @settings(max_examples=12, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        chosen: dict[int, list[QuorumCertificate]] = {}
        for epoch in range(EPOCHS):
            pool = [*corpus.certificates[epoch], conflicts[epoch]]
            subset = data.draw(st.lists(st.sampled_from(pool), unique_by=id), label=f"e{epoch}")
            chosen[epoch] = subset
        with tempfile.TemporaryDirectory() as tmp:
            store = ValidatorStore(Path(tmp) / "v.db")
            try:
                for epoch in range(EPOCHS):
                    store.save_certificates(chosen[epoch])
                loop = SettlementLoop(store, gw, LocalSigner(gw, store.certificates))
                for epoch in range(EPOCHS):
                    loop._publish_one(epoch)
                expected = process_epochs(
                    [[r for c in chosen[e] for r in c.reports] for e in range(EPOCHS)], gw.preset)
                for epoch in range(EPOCHS):
                    assert store.settlement(epoch) == expected[epoch].settlement
                    assert [p.punishment for p in store.punishments(epoch)] == list(
                        expected[epoch].punishments)
                    assert store.tree_entries(epoch) == sorted(
                        (a, v) for a, v in expected[epoch].cumulative.items() if v > 0)
            finally:
                store.close()

    check()


def test_epoch_without_reports_settles_with_zero_root(gateway: FakeGateway,
                                                       tmp_path: Path) -> None:
    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        use_signer(daemon, local_signer(gateway, daemon))
        gateway.advance_to(settle_block(gateway, 0))
        await daemon.loop.step()
        (submission,) = gateway.settlement_submissions()
        assert submission.message.total == 0
        assert submission.message.rewards_root == b"\x00" * 32
        node = (await client.get(f"/v1/nodes/{gateway.nodes_list[0].address}")).json()
        assert node["epoch"] == 0 and node["cumulative"] == 0 and node["proof"] == []

    run(with_validator(gateway, tmp_path, body))


def test_mixer_failures_and_chain_errors_are_retried(gateway: FakeGateway, corpus: Corpus,
                                                     tmp_path: Path) -> None:
    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0])
        signer = local_signer(gateway, daemon)
        use_signer(daemon, signer)
        signer.down = {m.address for m in gateway.mixers[:2]}  # 2 of 4 down: no quorum
        gateway.advance_to(settle_block(gateway, 0))
        await daemon.loop.step()
        assert gateway.submissions == []
        assert len(daemon.store.signatures(0, daemon.store.settlement(0).hash_struct())) == 2
        # Which mixers refused and why: in /v1/status and /metrics.
        status = (await client.get("/v1/status")).json()["settlement"]
        down = sorted(m.address for m in gateway.mixers[:2])
        assert (status["epoch"], status["signatures"], status["threshold"]) == (0, 2, 3)
        assert sorted(status["refusals"]) == down
        assert all("unreachable (test)" in why for why in status["refusals"].values())
        metrics = (await client.get("/metrics")).text
        assert all(f'dnanet_validator_settlement_refusals_total{{mixer="{m}"}} 1.0' in metrics
                   for m in down)
        signer.down = {gateway.mixers[0].address}  # one of four down still settles
        gateway.fail_submit = 1  # and the first submission fails in the RPC
        await daemon.loop.step()
        assert gateway.settlement_submissions() == []
        await daemon.loop.step()
        (submission,) = gateway.settlement_submissions()
        assert gateway.mixers[0].address not in submission.signers
        asked = signer.calls
        await daemon.loop.step()
        assert signer.calls == asked  # settled mixers are not asked again
        assert len(gateway.settlement_submissions()) == 1

    run(with_validator(gateway, tmp_path, body))


def test_adopts_a_settlement_it_did_not_record(gateway: FakeGateway, corpus: Corpus,
                                               tmp_path: Path) -> None:
    """A restart between the transaction and its record: the chain is asked, not resubmitted."""
    replay = process_epochs([corpus.reports(0)], gateway.preset)[0]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0])
        use_signer(daemon, local_signer(gateway, daemon))
        gateway.advance_to(settle_block(gateway, 0))
        gateway.settled[0] = SettledEpoch(0, replay.settlement.rewards_root,
                                          replay.settlement.total, "0xabc")
        gateway.next_epoch = 1
        await daemon.loop.step()
        assert gateway.settlement_submissions() == []
        # Its punishments still go out, with signatures gathered for them.
        assert [s.message for s in gateway.submissions] == list(replay.punishments)
        record = daemon.store.epoch_record(0)
        assert record is not None and (record.status, record.settle_tx) == (SETTLED, "0xabc")

    run(with_validator(gateway, tmp_path, body))


def test_a_chain_root_it_did_not_compute_stops_settlement(gateway: FakeGateway, corpus: Corpus,
                                                          tmp_path: Path) -> None:
    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0])
        use_signer(daemon, local_signer(gateway, daemon))
        gateway.advance_to(settle_block(gateway, 1))
        gateway.settled[0] = SettledEpoch(0, b"\x01" * 32, 5, "0xabc")
        gateway.next_epoch = 1
        await daemon.loop.step()
        await daemon.loop.step()
        record = daemon.store.epoch_record(0)
        assert record is not None and record.status == DIVERGED and record.note
        assert gateway.submissions == []  # epoch 1 is not settled on a diverged history
        status = (await client.get("/v1/status")).json()
        assert status["diverged"] == [0]

    run(with_validator(gateway, tmp_path, body))


def test_settles_over_http_with_one_mixer_down(gateway: FakeGateway, corpus: Corpus,
                                               tmp_path: Path) -> None:
    """Real HTTP both ways: mixers fetch the published certificates, re-verify, replay, sign."""
    replay = process_epochs([corpus.reports(0)], gateway.preset)[0]

    async def scenario() -> None:
        daemon = ValidatorDaemon(gateway, tmp_path, port=0, poll_s=0.05,
                                 backoff=Backoff(base_s=0.05, max_s=0.2))
        await daemon.start()
        http = httpx.AsyncClient(timeout=30)
        try:
            async with daemon_client(daemon) as client:
                await post_all(client, corpus.certificates[0])
            apps = [fake_mixer_app(gateway, m.address, daemon.url, http)
                    for m in gateway.mixers[1:]]
            async with serving(apps[0], "127.0.0.1", 0) as s1, \
                    serving(apps[1], "127.0.0.1", 0) as s2, \
                    serving(apps[2], "127.0.0.1", 0) as s3:
                for mixer, server in zip(gateway.mixers[1:], (s1, s2, s3), strict=True):
                    gateway.endpoints[mixer.address] = server_url(server)
                gateway.endpoints[gateway.mixers[0].address] = "http://127.0.0.1:9"  # down
                gateway.advance_to(settle_block(gateway, 0))
                for _ in range(400):
                    if daemon.store.punishments(0, status="submitted"):
                        break
                    await asyncio.sleep(0.05)
        finally:
            await http.aclose()
            await daemon.stop()
        (submission,) = gateway.settlement_submissions()
        assert submission.message == replay.settlement
        assert set(submission.signers) <= {m.address for m in gateway.mixers[1:]}
        assert [s.message for s in gateway.submissions if s.kind == "punishment"] == list(
            replay.punishments)

    run(scenario())


def daemon_client(daemon: ValidatorDaemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=daemon.url, timeout=30)


# -- publication ---------------------------------------------------------------------------------


def test_node_proofs_breakdowns_and_listings(gateway: FakeGateway, corpus: Corpus,
                                             tmp_path: Path) -> None:
    replay = process_epochs([corpus.reports(e) for e in range(2)], gateway.preset)

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        await post_all(client, corpus.certificates[0])
        gateway.advance_to(last_round_start(gateway, 1))
        await post_all(client, corpus.certificates[1])
        collecting = corpus.certificates[1][0].reports[0].node
        pending = (await client.get(f"/v1/nodes/{collecting}/epochs/1")).json()
        assert pending["final"] is False and pending["challenges"] > 0
        assert (pending["root"], pending["proof"], pending["in_tree"]) == (None, [], False)
        use_signer(daemon, local_signer(gateway, daemon))
        gateway.advance_to(settle_block(gateway, 1))
        await daemon.loop.step()  # epoch 0
        await daemon.loop.step()  # epoch 1
        assert gateway.next_epoch == 2
        root = gateway.settled[1].rewards_root
        earners = [a for a, v in replay[1].cumulative.items() if v > 0]
        assert earners
        for address in earners:
            node = (await client.get(f"/v1/nodes/{address.upper().replace('0X', '0x')}")).json()
            assert node["epoch"] == 1 and node["root"] == "0x" + root.hex()
            assert node["cumulative"] == replay[1].cumulative[address]
            proof = [bytes.fromhex(p[2:]) for p in node["proof"]]
            assert verify_proof(root, address, node["cumulative"], proof)
            rows = {r["epoch"]: r for r in node["epochs"]}
            assert rows[1]["reward"] == replay[1].rewards.get(address, 0)
            assert rows[1]["cumulative"] == node["cumulative"]
        cheater = gateway.nodes_list[CHEATER].address
        assert (await client.get(f"/v1/nodes/{cheater}")).json()["epochs"][0]["fraud"] is True

        address = earners[0]
        detail = (await client.get(f"/v1/nodes/{address}/epochs/1")).json()
        mine = [r for r in replay[1].reports if r.node == address]
        assert detail["challenges"] == len(mine) == len(detail["reports"])
        assert detail["epoch_score"] == replay[1].epoch_scores[address]
        assert detail["reward"] == replay[1].rewards[address]
        assert detail["final"] is True and detail["status"] == "settled"
        for entry, report in zip(detail["reports"], mine, strict=True):
            score = compute_report_score(report, gateway.preset)
            assert (entry["round"], entry["mixer"], entry["outcome"], entry["reason"]) == (
                report.round, report.mixer, Outcome(report.outcome).name, report.reason)
            assert (entry["rtt_us"], entry["compute_us"], entry["download_us"],
                    entry["upload_us"]) == (report.rtt_us, report.compute_us,
                                            report.download_us, report.upload_us)
            assert (entry["latency"], entry["compute"], entry["bandwidth"], entry["score"]) == (
                score.latency, score.compute, score.bandwidth, report.score)
        # Each settled epoch's breakdown carries the node's proof against that epoch's root.
        for epoch in (0, 1):
            epoch_root = gateway.settled[epoch].rewards_root
            for earner in earners:
                row = (await client.get(f"/v1/nodes/{earner}/epochs/{epoch}")).json()
                assert row["root"] == "0x" + epoch_root.hex()
                amount = replay[epoch].cumulative.get(earner, 0)
                assert row["in_tree"] is (amount > 0) and row["cumulative"] == amount
                proof = [bytes.fromhex(p[2:]) for p in row["proof"]]
                assert not amount or verify_proof(epoch_root, earner, amount, proof)
        offline = gateway.nodes_list[OFFLINE].address
        failed = (await client.get(f"/v1/nodes/{offline}/epochs/0")).json()
        assert {r["outcome"] for r in failed["reports"]} == {"UNREACHABLE"}
        assert failed["strike"] is True and failed["epoch_score"] == 0

        certificates = (await client.get("/v1/epochs/1/certificates")).json()
        assert [QuorumCertificate.from_wire(c) for c in certificates] == corpus.certificates[1]
        page = (await client.get("/v1/epochs/1/certificates?offset=1&limit=2")).json()
        assert page == certificates[1:3]
        reports = (await client.get("/v1/epochs/1/reports")).json()
        assert sorted(ScoreReport.from_wire(r).hash_struct() for r in reports) == sorted(
            r.hash_struct() for r in replay[1].reports)
        collecting = (await client.get("/v1/epochs/2")).json()
        assert collecting["status"] == "collecting" and collecting["settlement"] is None

        for path, status, field in [
            ("/v1/nodes/0x1234", 400, "address"),
            ("/v1/nodes/0x" + "zz" * 20, 400, "address"),
            (f"/v1/nodes/{address}/epochs/-1", 400, "epoch"),
            (f"/v1/nodes/{address}/epochs/abc", 400, "epoch"),
            ("/v1/epochs/99999999999999999999", 400, "epoch"),
            ("/v1/epochs/1/certificates?limit=x", 400, "limit"),
            ("/v1/epochs?limit=100000", 400, "limit"),
            ("/v1/epochs/1000", 404, "epoch"),
        ]:
            response = await client.get(path)
            assert response.status_code == status, (path, response.text)
            assert response.json()["error"]["field"] == field, path

    run(with_validator(gateway, tmp_path, body))


def test_store_refuses_another_network(tmp_path: Path) -> None:
    store = ValidatorStore(tmp_path / "v.db")
    try:
        store.bind_network(1, "0x" + "aa" * 20)
        store.bind_network(1, "0x" + "AA" * 20)
        with pytest.raises(Exception, match="another --data-dir"):
            store.bind_network(2, "0x" + "aa" * 20)
    finally:
        store.close()


def test_unreachable_chain_is_a_503_not_a_500(gateway: FakeGateway, corpus: Corpus,
                                              tmp_path: Path) -> None:
    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        def down(*_: Any) -> Any:
            raise ChainError("connection refused")

        gateway.mixer_set = down  # type: ignore[method-assign]
        gateway.advance_to(last_round_start(gateway, 1))
        response = await client.post("/v1/certificates", content=corpus.certificates[1][0]
                                     .to_json())
        assert response.status_code == 503
        assert "connection refused" in response.json()["error"]["message"]

    run(with_validator(gateway, tmp_path, body))


def test_views_read_each_rounds_registry_as_of_its_first_block_once_per_change(
        gateway: FakeGateway) -> None:
    blocks: list[int | None] = []
    real_nodes = gateway.nodes

    def counted(*, block: int | None = None) -> Any:
        blocks.append(block)
        return real_nodes(block=block)

    gateway.nodes = counted  # type: ignore[method-assign]
    # A node registers while the network runs: at the start of epoch 0's round 2.
    joined_at = compute_round_start_block(RoundId(0, 2), gateway.preset)
    head = gateway.head
    gateway.head = joined_at
    newcomer = seeded_identity("newcomer").address
    gateway.set_nodes([*gateway.nodes_list, dataclasses.replace(gateway.nodes_list[0],
                                                                address=newcomer)])
    gateway.head = head
    views = ViewCache(gateway)
    assert gateway.head >= compute_round_start_block(RoundId(0, 3), gateway.preset)
    view = views.view(0, rounds=range(gateway.preset.rounds_per_epoch))
    assert [newcomer in view.round_nodes[r] for r in range(4)] == [False, False, True, True]
    # Listed once at round 0's first block, again only once it changed (round 2's): rounds
    # 1 and 3 reuse the read before them, as the registry's last_change allows.
    assert blocks == [compute_round_start_block(RoundId(0, r), gateway.preset) for r in (0, 2)]
    views.view(0, rounds=range(4))
    assert len(blocks) == 2  # never read again: a past block's registry does not change
    with pytest.raises(ScheduleError, match="has not started"):
        views.view(EPOCHS + 3)


def test_a_later_jail_does_not_void_a_certified_batch(gateway: FakeGateway, corpus: Corpus,
                                                      tmp_path: Path) -> None:
    cheater = gateway.nodes_list[CHEATER].address
    certificate = next(c for c in corpus.certificates[0]
                       if any(r.node == cheater for r in c.reports) and len(c.reports) > 1)
    # Jailed now, long after the certificate's round began: its round's registry still
    # shows the node active, so every verifier, at any time, accepts the certificate.
    gateway.set_nodes([dataclasses.replace(n, jailed=True, active=False)
                       if n.address == cheater else n for n in gateway.nodes_list])
    view = ViewCache(gateway).view(0, rounds=(certificate.batch.round,))
    verify_certified_batch(certificate, view)
    # A view of a round that starts after the jail sees it.
    later = dataclasses.replace(view, round_nodes={
        certificate.batch.round: compute_node_infos(gateway.nodes())})
    with pytest.raises(ProtocolError, match="jailed"):
        verify_certified_batch(certificate, later)

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        answer = await client.post("/v1/certificates", content=certificate.to_json())
        assert answer.status_code == 200
        assert answer.json()["accepted"] == len(certificate.reports)

    run(with_validator(gateway, tmp_path, body))


def test_validator_command_line_parses() -> None:
    parser = argparse.ArgumentParser(prog="dnanet")
    add_validator_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["validator", "run", "--data-dir", "d", "--deployment", "n.json",
                              "--keystore", "v.json", "--port", "9000", "--workers", "0"])
    assert (args.data_dir, args.deployment, args.keystore, args.port, args.workers) == (
        "d", "n.json", "v.json", 9000, 0)
    assert callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["validator", "run", "--data-dir", "d", "--keystore", "v.json"])
    with pytest.raises(SystemExit):  # settlements cannot be sent without an identity
        parser.parse_args(["validator", "run", "--data-dir", "d", "--deployment", "n.json"])


# -- the Validator's own faults ------------------------------------------------------------------


def test_a_failed_commit_is_a_503_to_retry_and_acknowledges_nothing(
        gateway: FakeGateway, corpus: Corpus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fails at commit: every certificate of the group is answered 503 with
    Retry-After (its mixer sends it again; a 4xx would make it give up), none is stored, and
    the next commit works."""
    first, second = corpus.certificates[0][:2]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        save = daemon.store.save_certificates
        calls = []

        def failing(items: Any) -> Any:
            calls.append(len(items))
            if len(calls) == 1:
                raise OSError("disk I/O error")
            return save(items)

        monkeypatch.setattr(daemon.store, "save_certificates", failing)
        refused = await client.post("/v1/certificates", content=first.to_json())
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "Unavailable"
        assert "could not store the certificate: disk I/O error" in error["message"]
        assert daemon.store.certificate_count(0) == 0
        for certificate in (first, second):
            again = await client.post("/v1/certificates", content=certificate.to_json())
            assert again.status_code == 200 and not again.json()["duplicate"]
        assert daemon.store.certificate_count(0) == 2

    run(with_validator(gateway, tmp_path, body))


def test_a_dead_verifier_process_is_replaced(gateway: FakeGateway, corpus: Corpus,
                                             tmp_path: Path) -> None:
    """A verifier process killed breaks its pool: the certificate then in hand is answered
    503 (sent again by its mixer), a new pool starts, and the next certificates are taken."""
    import os
    import signal

    first, second = corpus.certificates[0][:2]

    async def body(daemon: ValidatorDaemon, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/certificates", content=first.to_json())).status_code == 200
        pool = daemon.intake._pool
        assert pool is not None
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # the pool notices its dead process
        refused = await client.post("/v1/certificates", content=second.to_json())
        assert refused.status_code == 503, refused.text
        assert "BrokenProcessPool" in refused.json()["error"]["message"]
        assert daemon.intake._pool is not pool
        taken = await client.post("/v1/certificates", content=second.to_json())
        assert taken.status_code == 200, taken.text
        assert daemon.store.certificate_count(0) == 2

    run(with_validator(gateway, tmp_path, body, workers=1))
