"""The QueryMixer daemon: its outbox (certificates and batches retried while it runs, stray
reports after a crash), co-signing of re-formed batches, its round log and status, logged
refusals, and the migration of an old store.

Mixers are real ``MixerDaemon``s on loopback HTTP against the fake chain of
``validator_helpers``; nodes are in-process provers (``LocalTransport`` in place of HTTP);
the Validator, where one is needed, is a real ``ValidatorDaemon``. Only the mixer under test
runs its loops (``start()``), and most tests drive its steps directly (``certify``,
``process_round``, ``outbox_pass``), so each outcome is fixed by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.keyfiles import derive_vrf_secret
from dnanet.mixer.daemon import MixerDaemon
from dnanet.mixer.session import run_challenge_session
from dnanet.mixer.sessions import TransportFactory
from dnanet.mixer.store import MixerStore
from dnanet.node.local import LocalTransport
from dnanet.params import TEST, Preset
from dnanet.protocol.messages import (
    BatchProposal,
    Outcome,
    QuorumCertificate,
    ScoreReport,
    SignedChallenge,
)
from dnanet.protocol.quorum import compute_backup_rank, compute_batch
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_target,
    compute_challenge_offset,
    compute_round_start_block,
    compute_vrf_alpha,
)
from dnanet.protocol.validation import BatchRejected
from dnanet.service.clock import ManualClock
from dnanet.service.store import Store
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import (
    Committee,
    FakeGateway,
    build_network,
    run,
    seeded_identity,
    settle_block,
)

LABEL = "mixer"
ROUND0 = RoundId(0, 0)
ROUND1 = RoundId(0, 1)
RETRY_S = (0.05, 0.2)
"""The outbox's waits in these tests (first, longest)."""
BACKUP_S = 1.0
"""How long after co-signing a batch its first backup forwarder looks, in these tests."""
DEADLINE_S = 60.0

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, vrf_proof BLOB NOT NULL,
    assigned INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (epoch, round)
);
CREATE TABLE IF NOT EXISTS own_batches (
    batch_hash BLOB PRIMARY KEY, epoch INTEGER NOT NULL, round INTEGER NOT NULL,
    proposal_json BLOB NOT NULL, certificate_json BLOB, forwarded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS own_reports (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, node TEXT NOT NULL,
    outcome INTEGER NOT NULL, score INTEGER NOT NULL, report_json BLOB NOT NULL,
    PRIMARY KEY (epoch, round, node)
);
CREATE TABLE IF NOT EXISTS cosigned (
    epoch INTEGER NOT NULL, round INTEGER NOT NULL, mixer TEXT NOT NULL, node TEXT NOT NULL,
    batch_hash BLOB NOT NULL,
    PRIMARY KEY (epoch, round, mixer, node)
);
CREATE TABLE IF NOT EXISTS verified_epochs (
    epoch INTEGER PRIMARY KEY, reports_json BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements_signed (
    epoch INTEGER PRIMARY KEY, settlement_hash BLOB NOT NULL
)
"""
"""The mixer store's schema before beta, assigned_nodes, batched, given_up, report_hash."""


# -- a network of mixer daemons ------------------------------------------------------------------


@dataclass
class MixerNet:
    """Four mixer daemons on the fake chain, each serving HTTP; nodes answer in-process."""

    gw: FakeGateway
    committee: Committee
    daemons: list[MixerDaemon]
    reports: dict[str, list[ScoreReport]]
    """Each mixer's reports of round (0, 0), made by the committee (not by the daemons)."""
    origin: int
    """The mixer with the most reports in round (0, 0) (at least two)."""
    transport: TransportFactory | None = None
    """Where the daemons' challenge sessions go (None: HTTP to the nodes' endpoints)."""
    clock: ManualClock | None = None
    """The daemons' clock when the test moves it itself (None: the system clock)."""

    @property
    def originator(self) -> MixerDaemon:
        return self.daemons[self.origin]

    @property
    def others(self) -> list[MixerDaemon]:
        return [d for i, d in enumerate(self.daemons) if i != self.origin]

    def own_reports(self) -> list[ScoreReport]:
        return sorted(self.reports[self.originator.address], key=lambda r: r.key)

    def point(self, daemon: MixerDaemon, url: str) -> None:
        """Make the chain list ``url`` as the mixer's endpoint (a dead one: an outage)."""
        self.gw.endpoints[daemon.address] = url

    def restore(self, daemon: MixerDaemon) -> None:
        self.gw.endpoints[daemon.address] = daemon.url

    def mixer(self, root: Path, index: int, validator_url: str) -> MixerDaemon:
        """A (new) daemon for mixer ``index`` on its data directory."""
        return MixerDaemon(self.gw.mixers[index], self.gw, root / f"mixer-{index}",
                           validator_url=validator_url, retry_s=RETRY_S, backup_s=BACKUP_S,
                           node_transport=self.transport, clock=self.clock)

    def backups(self, batch_hash: bytes) -> list[MixerDaemon]:
        """The originator's co-signers in the order they would forward ``batch_hash``."""
        members = [m.address for m in self.gw.mixers]
        return sorted(self.others, key=lambda d: compute_backup_rank(
            batch_hash, members, self.originator.address, d.address))


@contextlib.asynccontextmanager
async def mixer_net(root: Path, validator_url: str | None = None, *, label: str = LABEL,
                    run_origin: bool = False,
                    route: Callable[[Committee], TransportFactory] | None = None,
                    preset: Preset = TEST, clock: ManualClock | None = None
                    ) -> AsyncIterator[MixerNet]:
    """Every mixer serves HTTP; with ``run_origin`` the originator also runs its loops.
    Without ``validator_url`` the Validator refuses every connection; ``route`` (the
    ``local_nodes`` fixture) routes challenge sessions to the in-process nodes."""
    if validator_url is None:
        with refused_port() as (dead, _sock):
            async with mixer_net(root, dead, label=label, run_origin=run_origin,
                                 route=route, preset=preset, clock=clock) as net:
                yield net
        return
    gw, committee = build_network(mixers=4, nodes=5, label=label, preset=preset)
    transport = route(committee) if route is not None else None
    reports = await committee.round_reports(0, 0)
    origin = max(range(4), key=lambda i: (len(reports[gw.mixers[i].address]), -i))
    assert len(reports[gw.mixers[origin].address]) >= 2, "pick another label"
    net = MixerNet(gw, committee, [], reports, origin, transport, clock)
    net.daemons = [net.mixer(root, i, validator_url) for i in range(4)]
    try:
        for i, daemon in enumerate(net.daemons):
            if not (run_origin and i == origin):
                await daemon.server.start()
                net.restore(daemon)
        if run_origin:
            await net.originator.start()
            net.restore(net.originator)
        yield net
    finally:
        for daemon in net.daemons:
            await daemon.stop()


@pytest.fixture
def local_nodes() -> Callable[[Committee], TransportFactory]:
    """Route the mixers' challenge sessions to the committee's in-process nodes."""
    return routing(lambda transport: transport)


def routing(wrap: Callable[[LocalTransport], LocalTransport]
            ) -> Callable[[Committee], TransportFactory]:
    """A ``route`` for ``mixer_net``: each node's challenge sessions go to ``wrap`` of its
    in-process transport (the daemons' injected node transport)."""
    def route(committee: Committee) -> TransportFactory:
        by_endpoint = {n.endpoint: wrap(committee.transports[n.address])
                       for n in committee.gateway.nodes_list}
        return by_endpoint.__getitem__
    return route


class HeldRound(LocalTransport):
    """A node that takes up challenges of round ``held`` only once ``release`` is set (it
    answers others at once). Sessions run on the mixer's timing loop, in another thread:
    hence a thread-safe event, looked at every few milliseconds."""

    def __init__(self, transport: LocalTransport, held: RoundId, release: threading.Event):
        super().__init__(transport.prover)
        self.held = held
        self.release = release

    async def start(self, signed: SignedChallenge) -> None:
        if RoundId(signed.challenge.epoch, signed.challenge.round) == self.held:
            while not self.release.is_set():
                await asyncio.sleep(0.005)
        await super().start(signed)


@contextlib.contextmanager
def refused_port() -> Iterator[tuple[str, socket.socket]]:
    """A URL whose port is bound but not listening: every connection is refused, and no one
    else takes the port until the socket is closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def validator(gw: FakeGateway, data_dir: Path, port: int = 0
                    ) -> AsyncIterator[ValidatorDaemon]:
    daemon = ValidatorDaemon(gw, data_dir, port=port, run_settlement=False)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@contextlib.asynccontextmanager
async def with_validator_up(root: Path, clock: ManualClock | None = None
                            ) -> AsyncIterator[tuple[MixerNet, ValidatorDaemon, str]]:
    """A mixer net whose mixers all send to a running Validator, and a URL that refuses
    every connection (point a mixer or the Validator's address there for an outage)."""
    with refused_port() as (dead, _sock):
        async with mixer_net(root, dead, clock=clock) as net, \
                validator(net.gw, root / "validator") as up:
            for daemon in net.daemons:
                daemon.peers.validator_url = up.url
            yield net, up, dead


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {DEADLINE_S:g} s")
        await asyncio.sleep(0.01)


async def stored_certificates(daemon: ValidatorDaemon, epoch: int) -> list[QuorumCertificate]:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as http:
        response = await http.get(f"/v1/epochs/{epoch}/certificates")
    assert response.status_code == 200, response.text
    return [QuorumCertificate.from_wire(c) for c in response.json()]


def proposal_of(identity: Identity, gw: FakeGateway, reports: Sequence[ScoreReport],
                mixer: str | None = None) -> BatchProposal:
    """A batch of ``reports`` signed by ``identity`` (as from ``mixer``, default its own)."""
    ordered = sorted(reports, key=lambda r: r.key)
    batch = compute_batch(ordered[0].epoch, ordered[0].round, mixer or identity.address,
                          ordered)
    return BatchProposal(batch=batch, reports=tuple(ordered),
                         signature=identity.sign_typed(gw.domain, batch.hash_struct()))


def round_vrf(gw: FakeGateway, mixer: Identity, rid: RoundId) -> tuple[bytes, bytes]:
    seed = gw.block_hash(compute_round_start_block(rid, gw.preset))
    proof = vrf.prove(derive_vrf_secret(mixer),
                      compute_vrf_alpha(gw.domain.chain_id, rid.epoch, rid.round, seed))
    return proof, vrf.proof_to_hash(proof)


async def unreachable_report(net: MixerNet, report: ScoreReport) -> ScoreReport:
    """A different, equally valid report for ``report``'s key: the node did not answer."""
    mixer = next(m for m in net.gw.mixers if m.address == report.mixer)
    proof, beta = round_vrf(net.gw, mixer, RoundId(report.epoch, report.round))
    offline = LocalTransport(net.committee.transports[report.node].prover, online=False)
    other = await run_challenge_session(
        offline, identity=mixer, domain=net.gw.domain, preset=net.gw.preset, beta=beta,
        vrf_proof=proof, epoch=report.epoch, round_=report.round, node=report.node,
        hardware_class=report.hardware_class)
    assert other.outcome == Outcome.UNREACHABLE and other.key == report.key
    assert other.hash_struct() != report.hash_struct()
    return other


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """The mixer's log lines that contain ``text``."""
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("dnanet.mixer") and text in r.getMessage()]


# -- the outbox ---------------------------------------------------------------------------------


def test_certificate_reaches_the_validator_after_its_outage_without_a_restart(
        tmp_path: Path, local_nodes: Callable[[Committee], None],
        caplog: pytest.LogCaptureFixture) -> None:
    """The running mixer certifies round (0, 0) while the Validator refuses connections; its
    outbox keeps re-sending, and once the Validator is up the certificate is stored there."""
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> None:
        with refused_port() as (url, sock):
            async with mixer_net(tmp_path, url, run_origin=True, route=local_nodes) as net:
                origin = net.originator
                await until(lambda: origin.store.round_done(0, 0), "round (0, 0) done")
                assert origin.store.outbox_counts()["unforwarded"] == 1
                # Re-sent while it runs: two more attempts after the round's own.
                await until(lambda: len(messages(caplog, "validator unreachable")) >= 3,
                            "re-sent while the Validator is down")
                (certificate,) = origin.store.unforwarded()
                port = sock.getsockname()[1]
                sock.close()
                async with validator(net.gw, tmp_path / "validator", port) as up:
                    await until(lambda: origin.store.outbox_counts()["unforwarded"] == 0,
                                "forwarded once the Validator is up")
                    stored = await stored_certificates(up, 0)
        assert [c.batch for c in stored] == [certificate.batch]
        assert {r.node for r in certificate.reports} == {r.node for r in net.own_reports()}

    run(main())


def test_uncertified_batch_is_proposed_again_after_a_cosigner_outage(tmp_path: Path) -> None:
    """With two of three co-signers down the batch has no quorum; once they are back the
    outbox proposes the same batch again, and its certificate reaches the Validator."""
    async def main() -> None:
        async with with_validator_up(tmp_path) as (net, up, dead):
            origin = net.originator
            for peer in net.others[:2]:
                net.point(peer, dead)
            assert await origin.certifier.certify(net.own_reports()) is None
            (proposal,) = origin.store.uncertified()
            assert await origin.outbox.run_pass() == 1  # still down: still pending
            for peer in net.others[:2]:
                net.restore(peer)
            assert await origin.outbox.run_pass() == 0
            (stored,) = await stored_certificates(up, 0)
            assert stored.batch == proposal.batch
            assert origin.store.outbox_counts() == {
                "uncertified": 0, "unforwarded": 0, "given_up": 0, "unbatched_reports": 0}

    run(main())


def test_a_batch_its_originator_never_forwards_reaches_the_validator_through_a_cosigner(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The originator gathers its quorum but never forwards the certificate (the Validator is
    unreachable for it, then it is gone). One backup timeout after co-signing, every co-signer
    looks: the batch's first backup finds the Validator without it, gathers signatures again
    and forwards a certificate that carries the originator's signature first; a later backup
    that looked before it waits for its own turn, one that looks after finds it stored."""
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> None:
        clock = ManualClock()
        async with with_validator_up(tmp_path, clock) as (net, up, dead):
            origin = net.originator
            origin.peers.validator_url = dead
            certificate = await origin.certifier.certify(net.own_reports())
            assert certificate is not None
            batch_hash = certificate.batch.hash_struct()
            assert origin.store.outbox_counts()["unforwarded"] == 1
            await origin.stop()  # gone for good
            first, *later = net.backups(batch_hash)
            head = net.gw.block_number()
            # Before the timeout nobody looks.
            assert [await d.outbox.watch_pass(head) for d in net.others] == [0, 0, 0]
            assert await stored_certificates(up, 0) == []
            clock.advance(BACKUP_S)
            # The second backup looks first: not there, not its turn yet.
            assert await later[0].outbox.watch_pass(head) == 1
            assert await stored_certificates(up, 0) == []
            assert await first.outbox.watch_pass(head) == 0
            (stored,) = await stored_certificates(up, 0)
            assert first.store.watch_outcome(batch_hash) == "forwarded it for its originator"
            assert await later[1].outbox.watch_pass(head) == 0
            assert later[1].store.watch_outcome(batch_hash) == "the validator holds it"
            assert later[0].store.watch_outcome(batch_hash) is None
            clock.advance(BACKUP_S)  # the second backup's turn
            assert await later[0].outbox.watch_pass(head) == 0
            assert later[0].store.watch_outcome(batch_hash) == "the validator holds it"
            assert await stored_certificates(up, 0) == [stored]
            assert [d.metrics.backup._value.get() for d in (first, *later)] == [1, 0, 0]
            assert [d.store.watching() for d in net.others] == [0, 0, 0]
            return certificate, stored, first, net

    certificate, stored, first, net = run(main())
    assert (stored.batch, stored.reports) == (certificate.batch, certificate.reports)
    domain = net.gw.domain
    signers = [recover_typed(domain, stored.batch.hash_struct(), s) for s in stored.signatures]
    assert signers[0] == net.originator.address and first.address in signers
    assert len(signers) == len(set(signers)) == 3  # the threshold of 4
    (line,) = messages(caplog, "forwarding it for its originator")
    assert line.startswith(f"mixer {first.address[:10]}: the validator lacks batch")


def test_cosigners_stop_watching_a_batch_the_validator_holds_or_that_can_no_longer_settle(
        tmp_path: Path) -> None:
    """Delivered by its originator: each co-signer looks once, one backup timeout after
    co-signing, finds it stored, forwards nothing. While the Validator cannot be reached a watch
    waits another timeout; once the batch's epoch is closed it ends without asking, and ended
    watches of closed epochs are forgotten."""
    async def main() -> None:
        clock = ManualClock()
        async with with_validator_up(tmp_path, clock) as (net, up, dead):
            origin = net.originator
            delivered = await origin.certifier.certify(net.own_reports()[:1])
            assert delivered is not None
            for peer in net.others:
                peer.peers.validator_url = dead
            second = await origin.certifier.certify(net.own_reports()[1:2])
            assert second is not None
            delivered_hash = delivered.batch.hash_struct()
            second_hash = second.batch.hash_struct()
            clock.advance(BACKUP_S)  # every co-signer looks
            head = net.gw.block_number()
            # The Validator is unreachable: every due watch waits for another look.
            assert [await d.outbox.watch_pass(head) for d in net.others] == [2, 2, 2]
            for peer in net.others:
                peer.peers.validator_url = up.url
            clock.advance(BACKUP_S)
            assert [await d.outbox.watch_pass(head) for d in net.others] == [0, 0, 0]
            for peer in net.others:
                for batch_hash in (delivered_hash, second_hash):
                    assert peer.store.watch_outcome(batch_hash) == "the validator holds it"
                assert peer.metrics.backup._value.get() == 0
            assert len(await stored_certificates(up, 0)) == 2
            # A batch still watched when its epoch closes is given up without a look; then
            # every ended watch of the closed epoch is forgotten.
            third = await origin.certifier.certify(net.own_reports()[2:3])
            assert third is not None
            net.gw.advance_to(settle_block(net.gw, 0))
            clock.advance(BACKUP_S)
            for peer in net.others:
                peer.peers.validator_url = dead
                assert peer.store.watching() == 1
                assert await peer.outbox.watch_pass(net.gw.block_number()) == 0
                assert peer.store.watching() == 0
                assert peer.store.query("SELECT count(*) FROM watched") == [(0,)]

    run(main())


def test_outbox_gives_up_what_can_no_longer_be_certified_or_settled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A batch without a quorum when its epoch closes for new reports is given up, with a log
    line saying why; so is a certificate the Validator never acknowledged once the chain has
    settled its epoch."""
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> None:
        with refused_port() as (dead, _sock):
            async with mixer_net(tmp_path, dead) as net:
                origin = net.originator
                first, second = net.own_reports()[:2]
                # A certificate the Validator (down) never acknowledges, and a batch that
                # gets no quorum (every co-signer down).
                assert await origin.certifier.certify([first]) is not None
                for peer in net.others:
                    net.point(peer, dead)
                assert await origin.certifier.certify([second]) is None
                assert origin.store.outbox_counts()["unforwarded"] == 1
                assert origin.store.outbox_counts()["uncertified"] == 1
                net.gw.advance_to(settle_block(net.gw, 0) - 1)
                assert await origin.outbox.run_pass() == 2  # epoch 0 still takes reports
                net.gw.advance_to(settle_block(net.gw, 0))
                assert await origin.outbox.run_pass() == 1  # the batch is given up
                net.gw.next_epoch = 1  # epoch 0 settled on chain without the certificate
                assert await origin.outbox.run_pass() == 0
                assert origin.store.outbox_counts()["given_up"] == 2

    run(main())
    (batch_line,) = messages(caplog, "giving up batch")
    assert "epoch 0 closed for new reports" in batch_line
    (certificate_line,) = messages(caplog, "giving up certificate")
    assert "epoch 0 is settled on chain" in certificate_line


def test_reports_saved_before_a_crash_are_certified_once_their_round_passed(
        tmp_path: Path) -> None:
    """The mixer stopped between saving its reports and signing their batch; restarted after
    the round, its outbox batches and certifies them (once)."""
    async def main() -> None:
        async with mixer_net(tmp_path) as net, \
                validator(net.gw, tmp_path / "validator") as up:
            reports = net.own_reports()
            net.originator.store.save_reports(reports)
            await net.originator.stop()  # the crash: no proposal was saved
            restarted = net.mixer(tmp_path, net.origin, up.url)
            net.daemons[net.origin] = restarted
            # Still in round (0, 0): its reports are the round loop's, not the outbox's.
            assert await restarted.outbox.run_pass() == 0
            assert restarted.store.outbox_counts()["unbatched_reports"] == len(reports)
            net.gw.advance_to(compute_round_start_block(RoundId(0, 1), net.gw.preset))
            assert await restarted.outbox.run_pass() == 0
            assert await restarted.outbox.run_pass() == 0
            (stored,) = await stored_certificates(up, 0)
            assert list(stored.reports) == reports
            assert restarted.store.outbox_counts()["unbatched_reports"] == 0
            (count,), = restarted.store.query("SELECT count(*) FROM own_batches")
            assert count == 1

    run(main())


def test_stray_reports_of_a_closed_epoch_are_dropped(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            net.originator.store.save_reports(net.own_reports())
            net.gw.advance_to(settle_block(net.gw, 0))
            assert await net.originator.outbox.run_pass() == 0
            counts = net.originator.store.outbox_counts()
            assert counts["unbatched_reports"] == 0 and counts["uncertified"] == 0

    run(main())
    (line,) = messages(caplog, "are in no batch")
    assert "epoch 0 round 0" in line and "dropping them" in line


# -- co-signing -----------------------------------------------------------------------------------


def test_a_cosigner_signs_a_reformed_batch_but_never_a_different_report(
        tmp_path: Path) -> None:
    """Co-signer A signs [r1, r2], then the re-formed [r1] (the same report in a new batch),
    and refuses a batch with a different r1' for r1's key."""
    async def main() -> None:
        async with mixer_net(tmp_path) as net:
            r1, r2 = net.own_reports()[:2]
            other = await unreachable_report(net, r1)
            origin = net.gw.mixers[net.origin]
            a = net.others[0]
            a.cosigner.cosign(proposal_of(origin, net.gw, [r1, r2]))
            a.cosigner.cosign(proposal_of(origin, net.gw, [r1]))
            a.cosigner.cosign(proposal_of(origin, net.gw, [r1, r2]))  # the first one again
            with pytest.raises(BatchRejected) as refused:
                a.cosigner.cosign(proposal_of(origin, net.gw, [other]))
            assert refused.value.reasons == [
                (0, "a different report for this (epoch, round, mixer, node) was already "
                    "co-signed")]
            with pytest.raises(BatchRejected) as refused:
                a.cosigner.cosign(proposal_of(origin, net.gw, [other, r2]))
            assert [i for i, _ in refused.value.reasons] == [0]

    run(main())


def test_a_batch_reformed_without_a_refused_report_gets_its_quorum(tmp_path: Path) -> None:
    """B already co-signed a different r2' and refuses r2, C is down, A signs [r1, r2]: no
    quorum (2 of 3). The originator re-forms [r1]; A signs it again and so does B: quorum."""
    async def main() -> None:
        with refused_port() as (dead, _sock):
            async with mixer_net(tmp_path) as net:
                origin = net.originator
                r1, r2 = net.own_reports()[:2]
                a, b, c = net.others
                b.cosigner.cosign(proposal_of(net.gw.mixers[net.origin], net.gw,
                                     [await unreachable_report(net, r2)]))
                net.point(c, dead)
                certificate = await origin.certifier.certify([r1, r2])
                assert certificate is not None
                assert certificate.reports == (r1,)
                batch_hash = certificate.batch.hash_struct()
                domain = net.gw.domain
                signers = [recover_typed(domain, batch_hash, s) for s in certificate.signatures]
                assert signers[0] == origin.address
                assert set(signers[1:]) == {a.address, b.address}
                # The refused batch is given up, not retried; the re-formed one is certified.
                counts = origin.store.outbox_counts()
                assert counts["uncertified"] == 0 and counts["given_up"] == 1

    run(main())


def test_every_refused_batch_is_logged_with_its_reason(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> list[int]:
        async with mixer_net(tmp_path) as net:
            reports = net.own_reports()
            origin = net.gw.mixers[net.origin]
            peer = net.others[0]
            outsider = seeded_identity(f"{LABEL}/outsider")
            bodies = [
                b'{"batch": 1}',  # malformed
                # signed by another mixer than the one it names
                proposal_of(net.gw.mixers[(net.origin + 1) % 4], net.gw, reports,
                            mixer=origin.address).to_json(),
                # from a mixer outside the epoch's set
                proposal_of(outsider, net.gw, reports, mixer=outsider.address).to_json(),
            ]
            statuses = []
            async with httpx.AsyncClient(base_url=peer.url, timeout=30) as http:
                for body in bodies:
                    statuses.append((await http.post("/v1/batches", content=body)).status_code)
                net.gw.advance_to(settle_block(net.gw, 0))  # the epoch is closed
                body = proposal_of(origin, net.gw, reports).to_json()
                statuses.append((await http.post("/v1/batches", content=body)).status_code)
            return statuses

    statuses = run(main())
    assert statuses == [400, 422, 422, 422]
    lines = messages(caplog, "refused")
    assert len(lines) == 4
    assert "malformed batch" in lines[0]
    assert "SignatureError" in lines[1] and "not by its mixer" in lines[1]
    assert "ProtocolError" in lines[2] and "is not in epoch 0's set" in lines[2]
    assert "ScheduleError" in lines[3] and "epoch 0 is closed" in lines[3]


# -- rounds: log and status -----------------------------------------------------------------------


def test_round_log_and_status_show_the_vrf_output_and_the_assigned_nodes_once_done(
        tmp_path: Path, local_nodes: Callable[[Committee], None],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def main() -> tuple[MixerNet, dict[str, object]]:
        async with mixer_net(tmp_path, route=local_nodes) as net:
            await net.originator.rounds.process_round(ROUND0)
            async with httpx.AsyncClient(base_url=net.originator.url, timeout=30) as http:
                net.gw.advance_to(compute_round_start_block(ROUND1, net.gw.preset))
                await net.originator.rounds.process_round(ROUND1)
                brief = await http.get("/v1/status", params={"rounds": 1, "assigned": "false"})
                assert brief.status_code == 200
                # The newest round only, without its node list.
                assert [(r["round"], sorted(r)) for r in brief.json()["rounds"]] == [
                    (1, ["assigned_count", "beta", "done", "epoch", "round"])]
                for bad in ({"rounds": 0}, {"rounds": 33}, {"rounds": "x"}):
                    refused = await http.get("/v1/status", params=bad)
                    assert refused.status_code == 400
                    assert refused.json()["error"]["field"] == "rounds"
                return net, (await http.get("/v1/status")).json()

    net, status = run(main())
    gw = net.gw
    _, beta = round_vrf(gw, gw.mixers[net.origin], ROUND0)
    active = sorted(n.address for n in gw.nodes_list if n.active)
    assigned = compute_assigned_nodes(
        beta, active, compute_assignment_target(len(gw.mixers), gw.preset.challenges_per_round))
    assert assigned == [r.node for r in net.own_reports()]
    assert status["address"] == net.originator.address
    assert status["rounds"][1:] == [{"epoch": 0, "round": 0, "beta": "0x" + beta.hex(),
                                     "assigned": assigned, "assigned_count": len(assigned),
                                     "done": True}]
    assert set(status["outbox"]) == {  # type: ignore[arg-type]
        "uncertified", "unforwarded", "given_up", "unbatched_reports", "watching"}
    assert status["settlements"] == []
    line = messages(caplog, "active nodes assigned")[0]
    assert f"epoch 0 round 0: {len(assigned)} of {len(active)} active nodes assigned" in line
    assert all(f"{node[:10]}.." in line for node in assigned)
    assert beta.hex()[:16] not in line  # not before the round's challenges are over
    done = messages(caplog, "VRF output")[0]
    assert f"epoch 0 round 0 done: VRF output {beta.hex()[:16]}.., {len(assigned)} reports" in done


def round_start(net: MixerNet, rid: RoundId) -> int:
    return compute_round_start_block(rid, net.gw.preset)


def test_a_round_held_up_by_a_node_that_does_not_answer_does_not_delay_the_next(
        tmp_path: Path) -> None:
    """The nodes take up no challenge of round (0, 0) until released: meanwhile round (0, 1)
    begins and finishes; once released, round (0, 0) finishes too, every report answered."""
    release = threading.Event()

    route = routing(lambda transport: HeldRound(transport, ROUND0, release))

    async def main() -> None:
        # A timeout far longer than the test: only the release ends round (0, 0).
        preset = replace(TEST, challenge_timeout_ms=600_000)
        async with mixer_net(tmp_path, run_origin=True, route=route, preset=preset) as net:
            origin = net.originator
            await until(lambda: origin.store.newest_round() == (0, 0), "round (0, 0) begun")
            net.gw.advance_to(round_start(net, ROUND1))
            await until(lambda: origin.store.round_done(0, 1), "round (0, 1) done")
            assert not origin.store.round_done(0, 0)
            release.set()
            await until(lambda: origin.store.round_done(0, 0), "round (0, 0) done")
            reports = origin.store.own_reports(0, 0)
            assert [r.node for r in reports] == [r.node for r in net.own_reports()]
            assert {Outcome(r.outcome) for r in reports} == {Outcome.OK}
            assert origin.store.outbox_counts()["uncertified"] == 0

    run(main())


class RecordingTransport(LocalTransport):
    """A node that notes when each challenge session starts."""

    def __init__(self, transport: LocalTransport, starts: dict[str, float]) -> None:
        super().__init__(transport.prover)
        self.starts = starts

    async def start(self, signed: SignedChallenge) -> None:
        self.starts[signed.challenge.node] = time.monotonic()
        await super().start(signed)


def test_a_rounds_challenges_start_at_their_offsets_in_the_spread(
        tmp_path: Path) -> None:
    """No challenge starts before its offset into the spread, and they start in the order
    of their offsets."""
    starts: dict[str, float] = {}

    route = routing(lambda transport: RecordingTransport(transport, starts))

    async def main() -> tuple[MixerNet, float]:
        async with mixer_net(tmp_path, route=route) as net:
            net.originator.rounds.spread_s = 1.5
            began = time.monotonic()
            await net.originator.rounds.process_round(ROUND0)
            return net, began

    net, began = run(main())
    _, beta = round_vrf(net.gw, net.gw.mixers[net.origin], ROUND0)
    offsets = {r.node: compute_challenge_offset(beta, r.node) for r in net.own_reports()}
    assert set(starts) == set(offsets)
    for node, offset in offsets.items():
        assert starts[node] - began >= 1.5 * offset - 0.005  # timers may round by a ms
    assert sorted(starts, key=starts.__getitem__) == sorted(offsets, key=offsets.__getitem__)


def test_rounds_the_mixer_did_not_see_begin_are_challenged_late_while_their_epoch_is_open(
        tmp_path: Path, local_nodes: Callable[[Committee], None],
        caplog: pytest.LogCaptureFixture) -> None:
    """The chain moves two rounds while the mixer looks away, then the mixer is stopped for
    three rounds: it challenges every round it missed, late and oldest first; stopped past
    the close of an epoch, it gives up that epoch's missed rounds and says so."""
    caplog.set_level(logging.INFO, logger="dnanet.mixer")

    async def restart(net: MixerNet, at: int) -> MixerDaemon:
        await net.originator.stop()
        net.gw.advance_to(at)
        daemon = net.mixer(tmp_path, net.origin, net.originator.validator_url)
        net.daemons[net.origin] = daemon
        await daemon.start()
        net.restore(daemon)
        return daemon

    def done(daemon: MixerDaemon, *rounds: tuple[int, int]) -> Callable[[], bool]:
        return lambda: all(daemon.store.round_done(*rid) for rid in rounds)

    def late() -> list[str]:
        return [line.split(": ", 1)[1] for line in messages(caplog, "late (head")]

    async def main() -> None:
        async with mixer_net(tmp_path, run_origin=True, route=local_nodes) as net:
            origin = net.originator
            await until(done(origin, (0, 0)), "round (0, 0) done")
            net.gw.advance_to(round_start(net, RoundId(0, 2)))  # round (0, 1) passes unseen
            await until(done(origin, (0, 1), (0, 2)), "rounds (0, 1) and (0, 2) done")
            assert late() == ["challenging epoch 0 round 1 late (head 16)"]
            # Stopped through round (0, 3); back in epoch 1's first round, before epoch 0's
            # settlement block (34): round (0, 3) can still be certified.
            restarted = await restart(net, round_start(net, RoundId(1, 0)) + 1)
            await until(done(restarted, (0, 3), (1, 0)), "rounds (0, 3) and (1, 0) done")
            assert late()[1:] == ["challenging epoch 0 round 3 late (head 33)"]
            # Stopped through the rest of epoch 1 and past its settlement block.
            again = await restart(net, round_start(net, RoundId(2, 1)))
            await until(done(again, (2, 0), (2, 1)), "rounds (2, 0) and (2, 1) done")
            assert late()[2:] == ["challenging epoch 2 round 0 late (head 72)"]
            assert again.store.newest_round() == (2, 1)
            assert not any(again.store.round_done(1, r) for r in (1, 2, 3))
        (given_up,) = messages(caplog, "never challenged")
        assert given_up.endswith("3 round(s) from epoch 1 round 1 to epoch 1 round 3 were "
                                 "never challenged and their epochs are closed for new reports")

    run(main())


# -- the store ----------------------------------------------------------------------------------


def test_a_store_of_the_old_schema_is_migrated(tmp_path: Path) -> None:
    """A database written before beta, assigned_nodes, batched, given_up and report_hash:
    opened by this release, beta is filled from the proof, reports in no stored batch are
    found, and co-signed keys without a report hash keep the old rule (same batch only)."""
    gw, committee = build_network(mixers=4, nodes=5, label=LABEL)
    reports = run(committee.round_reports(0, 0))
    mixer = max(gw.mixers, key=lambda m: len(reports[m.address]))
    r1, r2 = sorted(reports[mixer.address], key=lambda r: r.key)[:2]
    proof, beta = round_vrf(gw, mixer, ROUND0)
    both = proposal_of(mixer, gw, [r1, r2])
    path = tmp_path / "mixer.db"
    old = Store(path, OLD_SCHEMA)
    with old.transaction() as db:
        db.execute("INSERT INTO rounds(epoch, round, vrf_proof, assigned, done)"
                   " VALUES (0, 0, ?, 2, 1)", (proof,))
        db.execute("INSERT INTO rounds(epoch, round, vrf_proof, assigned, done)"
                   " VALUES (0, 1, x'', 0, 1)")
        db.executemany("INSERT INTO own_reports VALUES (?, ?, ?, ?, ?, ?)",
                       [(r.epoch, r.round, r.node, r.outcome, r.score, r.to_json())
                        for r in (r1, r2)])
        only_first = proposal_of(mixer, gw, [r1])
        db.execute("INSERT INTO own_batches(batch_hash, epoch, round, proposal_json)"
                   " VALUES (?, 0, 0, ?)", (only_first.batch.hash_struct(),
                                            only_first.to_json()))
        db.execute("INSERT INTO cosigned VALUES (?, ?, ?, ?, ?)",
                   (*r1.key, both.batch.hash_struct()))
    old.close()

    for _reopen in range(2):  # migrating twice changes nothing
        store = MixerStore(path)
        for table, column in [("rounds", "beta"), ("rounds", "assigned_nodes"),
                              ("own_batches", "given_up"), ("own_reports", "batched"),
                              ("cosigned", "report_hash")]:
            assert column in {row[1] for row in store.query(f"PRAGMA table_info({table})")}
        assert store.recent_rounds(8) == [(0, 1, None, None, 0, True),
                                          (0, 0, beta, None, 2, True)]
        assert store.unbatched_rounds() == [(0, 0, 1)]
        assert store.unbatched_reports(0, 0) == [r2]
        assert [p.batch for p in store.uncertified()] == [only_first.batch]
        store.close()

    store = MixerStore(path)
    # r1 was co-signed in ``both`` before report hashes were kept: only that batch again.
    assert store.record_cosigned(proposal_of(mixer, gw, [r1])) == [0]
    assert store.record_cosigned(both) == []
    # r2 is now recorded with its report hash: any batch with that very report is fine.
    assert store.record_cosigned(proposal_of(mixer, gw, [r2])) == []
    store.close()


def test_new_store_rejects_a_different_report_for_a_cosigned_key(tmp_path: Path) -> None:
    gw, committee = build_network(mixers=4, nodes=5, label=LABEL)
    reports = run(committee.round_reports(0, 0))
    mixer = max(gw.mixers, key=lambda m: len(reports[m.address]))
    r1, r2 = sorted(reports[mixer.address], key=lambda r: r.key)[:2]
    store = MixerStore(tmp_path / "mixer.db")
    try:
        assert store.record_cosigned(proposal_of(mixer, gw, [r1, r2])) == []
        assert store.record_cosigned(proposal_of(mixer, gw, [r2])) == []
        changed = ScoreReport.from_wire({**r2.to_wire(), "score": r2.score + 1})
        assert store.record_cosigned(proposal_of(mixer, gw, [r1, changed])) == [1]
    finally:
        store.close()


def test_reopened_store_keeps_rounds(tmp_path: Path) -> None:
    path = tmp_path / "mixer.db"
    store = MixerStore(path)
    store.begin_round(3, 1, b"p" * 80, b"b" * 64, ["0x" + "11" * 20])
    store.finish_round(3, 1)
    store.close()
    store = MixerStore(path)
    try:
        assert store.recent_rounds(4) == [(3, 1, b"b" * 64, ["0x" + "11" * 20], 1, True)]
    finally:
        store.close()
