"""A fake chain and an in-process committee that produce real certificates, for the Validator
and audit tests.

``FakeGateway`` implements ``ChainGateway`` in memory: a block clock the test advances, the
mixer set, the node registry, and a distributor that checks every settlement's quorum with
``verify_quorum`` and refuses a second settlement of an epoch. ``Committee`` runs real
challenge sessions (VRF, ``run_challenge_session`` over ``LocalTransport``) like
``dnanet.demo`` and certifies the reports with the signatures of every mixer.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI, Request, Response

from dnanet.crypto import vrf
from dnanet.crypto.eip712 import Domain
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, ProtocolError
from dnanet.keyfiles import derive_vrf_public_key, derive_vrf_secret
from dnanet.mixer.session import run_challenge_session
from dnanet.node.local import LocalTransport
from dnanet.node.prover import ChallengeProver
from dnanet.params import TEST, Preset
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_product,
)
from dnanet.protocol.codec import canonical_json, parse_json
from dnanet.protocol.messages import (
    CoSignature,
    EpochSettlement,
    Punishment,
    QuorumCertificate,
    ScoreReport,
)
from dnanet.protocol.quorum import compute_batch, verify_quorum
from dnanet.protocol.schedule import (
    RoundId,
    compute_assigned_nodes,
    compute_assignment_target,
    compute_round_start_block,
    compute_settlement_block,
    compute_vrf_alpha,
)
from dnanet.service.http import Server, create_app, read_body
from dnanet.service.network import MixerRecord, NodeRecord, SettledEpoch
from dnanet.validator.daemon import ValidatorDaemon

DOMAIN = Domain(chain_id=31337, verifying_contract="0x" + "d7" * 20)


def seeded_identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-test/{label}".encode()).digest())


def block_hash(number: int) -> bytes:
    return hashlib.sha256(f"fake-block-{number}".encode()).digest()


@dataclass
class Submission:
    kind: str
    message: EpochSettlement | Punishment
    signers: tuple[str, ...]
    tx_hash: str


@dataclass
class FakeGateway:
    """An in-memory chain for one network (genesis block 0)."""

    mixers: list[Identity]
    nodes_list: list[NodeRecord]
    preset: Preset = TEST
    domain: Domain = DOMAIN
    genesis_block: int = 0
    head: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)
    next_epoch: int = 0
    settled: dict[int, SettledEpoch] = field(default_factory=dict)
    submissions: list[Submission] = field(default_factory=list)
    fail_submit: int = 0
    """Make this many next submit_settlement calls raise ChainError (sending nothing)."""
    history: list[tuple[int, list[NodeRecord]]] = field(default_factory=list)
    """(head at the change, the registry before it), oldest first."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def block_number(self) -> int:
        return self.head

    def advance_to(self, block: int) -> None:
        self.head = max(self.head, block)

    def block_hash(self, number: int) -> bytes:
        if not 0 <= number <= self.head:
            raise ChainError(f"block {number} does not exist (head {self.head})")
        return block_hash(number)

    def mixer_set(self, epoch: int) -> list[MixerRecord]:
        return [
            MixerRecord(m.address, derive_vrf_public_key(m),
                        self.endpoints.get(m.address, "http://127.0.0.1:9"))
            for m in self.mixers
        ]

    def nodes(self, *, block: int | None = None) -> list[NodeRecord]:
        """The registry now, or as of ``block`` (changes apply from the head they were made
        at, as a transaction mined in that block)."""
        if block is None:
            return list(self.nodes_list)
        snapshot = list(self.nodes_list)
        for at, before in reversed(self.history):
            if block < at:
                snapshot = before
        return list(snapshot)

    def registry_changed_at(self, *, block: int | None = None) -> int:
        at = self.head if block is None else block
        return max((b for b, _ in self.history if b <= at), default=0)

    def set_nodes(self, records: list[NodeRecord]) -> None:
        """Change the registry from the current head on."""
        self.history.append((self.head, list(self.nodes_list)))
        self.nodes_list = list(records)

    def node(self, address: str) -> NodeRecord | None:
        return next((n for n in self.nodes_list if n.address == address), None)

    def next_epoch_to_settle(self) -> int:
        return self.next_epoch

    def settled_epoch(self, epoch: int) -> SettledEpoch | None:
        return self.settled.get(epoch)

    def submit_settlement(self, settlement: EpochSettlement, signatures: Sequence[bytes]) -> str:
        with self._lock:
            if self.fail_submit:
                self.fail_submit -= 1
                raise ChainError("the RPC endpoint timed out (injected)")
            if settlement.epoch < self.next_epoch:
                raise ChainError(f"replayed: epoch {settlement.epoch} is already settled")
            if settlement.epoch != self.next_epoch:
                raise ChainError("out of order")
            if self.head < compute_settlement_block(settlement.epoch, self.preset):
                raise ChainError("early")
            signers = verify_quorum(self.domain, settlement.hash_struct(), signatures,
                                    [m.address for m in self.mixers])
            tx = "0x" + hashlib.sha256(b"tx" + settlement.hash_struct()).hexdigest()
            self.submissions.append(Submission("settlement", settlement, signers, tx))
            self.settled[settlement.epoch] = SettledEpoch(
                settlement.epoch, settlement.rewards_root, settlement.total, tx)
            self.next_epoch += 1
            return tx

    def submit_punishment(self, punishment: Punishment, signatures: Sequence[bytes]) -> str:
        with self._lock:
            signers = verify_quorum(self.domain, punishment.hash_struct(), signatures,
                                    [m.address for m in self.mixers])
            if any(s.kind == "punishment" and s.message == punishment for s in self.submissions):
                raise ChainError("already punished")
            tx = "0x" + hashlib.sha256(b"tx" + punishment.hash_struct()).hexdigest()
            self.submissions.append(Submission("punishment", punishment, signers, tx))
            self.set_nodes([
                NodeRecord(n.address, n.endpoint, n.hardware_class, n.stake, True, False)
                if n.address == punishment.node else n for n in self.nodes_list
            ])
            return tx

    def claimed(self, account: str) -> int:
        return 0

    def claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> str:
        raise ChainError("claims are not part of the fake chain")

    def settlement_submissions(self) -> list[Submission]:
        return [s for s in self.submissions if s.kind == "settlement"]


def _cheating_compute(seed: bytes, size: ComputeSize) -> ComputeAnswer:
    """Computes only half of the rows and fills the rest with zeros (signed fraud)."""
    product = compute_product(seed, size, "cpu").product.copy()
    product[size.rows // 2 :] = 0
    return commit_product(size, product)


@dataclass
class Committee:
    """Mixers and nodes that produce certified reports for the fake chain's rounds."""

    gateway: FakeGateway
    transports: dict[str, LocalTransport]

    @property
    def mixers(self) -> list[Identity]:
        return self.gateway.mixers

    async def round_reports(self, epoch: int, round_: int) -> dict[str, list[ScoreReport]]:
        """Every mixer's reports of one round (the round's start block must exist)."""
        gw = self.gateway
        seed = gw.block_hash(compute_round_start_block(RoundId(epoch, round_), gw.preset))
        alpha = compute_vrf_alpha(gw.domain.chain_id, epoch, round_, seed)
        active = sorted(n.address for n in gw.nodes_list if n.active)
        target = compute_assignment_target(len(gw.mixers), gw.preset.challenges_per_round)
        sessions = []
        for mixer in gw.mixers:
            proof = vrf.prove(derive_vrf_secret(mixer), alpha)
            beta = vrf.proof_to_hash(proof)
            for node in compute_assigned_nodes(beta, active, target):
                sessions.append((mixer.address, run_challenge_session(
                    self.transports[node], identity=mixer, domain=gw.domain, preset=gw.preset,
                    beta=beta, vrf_proof=proof, epoch=epoch, round_=round_, node=node,
                    hardware_class=0)))
        reports = await asyncio.gather(*(s for _, s in sessions))
        out: dict[str, list[ScoreReport]] = {m.address: [] for m in gw.mixers}
        for (mixer, _), report in zip(sessions, reports, strict=True):
            out[mixer].append(report)
        return out

    def certify(self, reports: Sequence[ScoreReport], signers: int | None = None
                ) -> QuorumCertificate:
        """A certificate over ``reports`` (one mixer, epoch and round), signed by its mixer
        first and then by the others (``signers`` in all, default every mixer)."""
        first = reports[0]
        batch = compute_batch(first.epoch, first.round, first.mixer, list(reports))
        by_address = {m.address: m for m in self.mixers}
        order = [by_address[first.mixer]] + [m for m in self.mixers if m.address != first.mixer]
        count = len(order) if signers is None else signers
        sigs = tuple(m.sign_typed(self.gateway.domain, batch.hash_struct()) for m in order[:count])
        return QuorumCertificate(batch=batch, reports=tuple(reports), signatures=sigs)

    async def epoch_certificates(self, epoch: int, *, single: bool = False
                                 ) -> list[QuorumCertificate]:
        """Certificates for every round of ``epoch`` (advancing the clock to each round):
        one per mixer and round, or one per report with ``single``."""
        gw = self.gateway
        out: list[QuorumCertificate] = []
        for round_ in range(gw.preset.rounds_per_epoch):
            gw.advance_to(compute_round_start_block(RoundId(epoch, round_), gw.preset))
            for reports in (await self.round_reports(epoch, round_)).values():
                if not reports:
                    continue
                if single:
                    out.extend(self.certify([r]) for r in sorted(reports, key=lambda r: r.key))
                else:
                    out.append(self.certify(sorted(reports, key=lambda r: r.key)))
        return out


def build_network(
    *, mixers: int = 4, nodes: int = 5, cheaters: Sequence[int] = (), offline: Sequence[int] = (),
    preset: Preset = TEST, label: str = "net",
) -> tuple[FakeGateway, Committee]:
    """A fake chain with ``mixers`` mixers and ``nodes`` nodes; nodes whose index is in
    ``cheaters`` sign wrong products, those in ``offline`` refuse every connection."""
    committee = [seeded_identity(f"{label}/mixer-{i}") for i in range(mixers)]
    vrf_keys: dict[str, object] = {m.address: derive_vrf_public_key(m) for m in committee}
    records: list[NodeRecord] = []
    transports: dict[str, LocalTransport] = {}
    for i in range(nodes):
        identity = seeded_identity(f"{label}/node-{i}")
        compute: Callable[[bytes, ComputeSize], ComputeAnswer] | None = (
            _cheating_compute if i in cheaters else None)
        prover = ChallengeProver(identity, DOMAIN, lambda: vrf_keys, compute=compute,
                                 device="cpu")
        transports[identity.address] = LocalTransport(prover, online=i not in offline)
        records.append(NodeRecord(identity.address, f"http://node-{i}.invalid", 0,
                                  preset.min_stake, False, True))
    gateway = FakeGateway(mixers=committee, nodes_list=records, preset=preset)
    return gateway, Committee(gateway, transports)


# -- mixers that sign settlements --------------------------------------------------------------


class LocalSigner:
    """A ``SettlementSigner`` without HTTP: each mixer recomputes the epoch from the
    certificates ``fetch`` returns (re-verified, replayed) and signs only a match.
    ``down`` lists mixers that fail as if unreachable; ``calls`` counts requests."""

    def __init__(self, gateway: FakeGateway,
                 fetch: Callable[[int], list[QuorumCertificate]]) -> None:
        self.gateway = gateway
        self.fetch = fetch
        self.down: set[str] = set()
        self.calls = 0
        self._cache: dict[int, tuple[EpochSettlement, tuple[Punishment, ...]]] = {}

    async def recompute(self, epoch: int) -> tuple[EpochSettlement, tuple[Punishment, ...]]:
        from dnanet.audit import replay_certificates

        if epoch not in self._cache:
            rollups, verified = await replay_certificates(self.gateway, self.fetch, epoch)
            assert not any(v.invalid for v in verified)
            self._cache[epoch] = (rollups[-1].settlement, rollups[-1].punishments)
        return self._cache[epoch]

    async def sign(self, mixer: MixerRecord, settlement: EpochSettlement,
                   punishments: Sequence[Punishment]
                   ) -> tuple[CoSignature, tuple[CoSignature, ...]]:
        self.calls += 1
        if mixer.address in self.down:
            raise ProtocolError(f"mixer {mixer.address} is unreachable (test)")
        expected = await self.recompute(settlement.epoch)
        if expected != (settlement, tuple(punishments)):
            raise ProtocolError("the settlement differs from the recomputed one",
                                field="settlement")
        return sign_settlement(self.gateway, mixer.address, settlement, punishments)


def sign_settlement(gateway: FakeGateway, address: str, settlement: EpochSettlement,
                    punishments: Sequence[Punishment]
                    ) -> tuple[CoSignature, tuple[CoSignature, ...]]:
    identity = next(m for m in gateway.mixers if m.address == address)
    sign = identity.sign_typed
    return (CoSignature(signer=address, signature=sign(gateway.domain, settlement.hash_struct())),
            tuple(CoSignature(signer=address, signature=sign(gateway.domain, p.hash_struct()))
                  for p in punishments))


def fake_mixer_app(gateway: FakeGateway, address: str, validator_url: str,
                   client: httpx.AsyncClient) -> FastAPI:
    """A mixer's ``POST /v1/settlements`` over real HTTP: fetch the Validator's certificates,
    re-verify and replay them, sign only an identical settlement and punishments."""
    from dnanet.audit import ValidatorClient, replay_certificates

    app = create_app(f"fake mixer {address[:8]}")

    @app.post("/v1/settlements")
    async def settlements(request: Request) -> Response:
        data = parse_json(await read_body(request))
        settlement = EpochSettlement.from_wire(data["settlement"], "settlement")
        punishments = tuple(Punishment.from_wire(p, f"punishments[{i}]")
                            for i, p in enumerate(data["punishments"]))
        remote = ValidatorClient(validator_url, client)
        rollups, _ = await replay_certificates(gateway, remote.certificates, settlement.epoch)
        if (rollups[-1].settlement, rollups[-1].punishments) != (settlement, punishments):
            raise ProtocolError("the settlement differs from the recomputed one",
                                field="settlement")
        cosig, psigs = sign_settlement(gateway, address, settlement, punishments)
        return Response(canonical_json({"settlement": cosig.to_wire(),
                                        "punishments": [p.to_wire() for p in psigs]}),
                        media_type="application/json")

    return app


def server_url(server: Server) -> str:
    """The URL of a started server, with the port it bound (it may have been asked for 0)."""
    port = server.server.servers[0].sockets[0].getsockname()[1]
    return f"http://{server.host}:{port}"


# -- corpora and a running Validator -------------------------------------------------------------

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class Corpus:
    """Certificates of a few epochs (one per mixer and round)."""

    certificates: dict[int, list[QuorumCertificate]]

    def reports(self, epoch: int) -> list[ScoreReport]:
        return [r for c in self.certificates[epoch] for r in c.reports]


def make_corpus(committee: Committee, epochs: int) -> Corpus:
    async def make() -> dict[int, list[QuorumCertificate]]:
        return {e: await committee.epoch_certificates(e) for e in range(epochs)}

    return Corpus(run(make()))


def last_round_start(gw: FakeGateway, epoch: int) -> int:
    """The block from which every round of ``epoch`` has its seed."""
    return compute_round_start_block(RoundId(epoch, gw.preset.rounds_per_epoch - 1), gw.preset)


def settle_block(gw: FakeGateway, epoch: int) -> int:
    return compute_settlement_block(epoch, gw.preset, gw.genesis_block)


async def with_validator(
    gw: FakeGateway, data_dir: Path,
    body: Callable[[ValidatorDaemon, httpx.AsyncClient], Awaitable[T]], **kwargs: Any,
) -> T:
    """Run ``body`` against a started Validator (its settlement loop driven by the test
    unless ``run_settlement=True``)."""
    kwargs.setdefault("run_settlement", False)
    daemon = ValidatorDaemon(gw, data_dir, port=0, **kwargs)
    await daemon.start()
    try:
        async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
            return await body(daemon, client)
    finally:
        await daemon.stop()


async def post_all(client: httpx.AsyncClient, certificates: list[QuorumCertificate]
                   ) -> list[dict[str, Any]]:
    out = []
    for certificate in certificates:
        response = await client.post("/v1/certificates", content=certificate.to_json())
        assert response.status_code == 200, response.text
        out.append(response.json())
    return out
