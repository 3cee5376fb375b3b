"""The mixer's session driver (dnanet.mixer.session) against the node's ChallengeProver.

Honest, offline, slow, cheating and misbehaving nodes are LocalTransport subclasses or provers
with a custom compute; every outcome is asserted together with what the report may carry.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChallengeError, NodeUnreachable, SignatureError
from dnanet.node.local import LocalTransport
from dnanet.node.prover import MAX_OPEN_SESSIONS, ChallengeProver
from dnanet.params import TEST
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.challenges.bandwidth import iter_download_payload
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    RowOpening,
    compute_product,
    derive_check_indices,
    verify_openings,
)
from dnanet.protocol.challenges.latency import echo_nonces
from dnanet.protocol.evidence import decode_fraud_evidence, verify_fraud_evidence
from dnanet.protocol.messages import (
    MAX_REASON_BYTES,
    ZERO32,
    Challenge,
    ChallengeResponse,
    Outcome,
    ScoreReport,
    SignedChallenge,
    SignedChallengeResponse,
)
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.protocol.validation import verify_score_report
from protocol_fixtures import (
    DOMAIN,
    cheating_compute,
    find_pairs,
    make_mixers,
    make_nodes,
    make_prover,
    make_view,
    prove_round,
    run_session,
)

MIXERS = make_mixers(4)
NODES = make_nodes(4)
MIXER = MIXERS[0]
NODE = NODES[0]
STRANGER = Identity.from_entropy(hashlib.sha256(b"dnanet-tests/stranger").digest())
SIZES = TEST.hardware_classes[0]


def honest_transport(node: Identity = NODE) -> LocalTransport:
    return LocalTransport(make_prover(node, MIXERS))


def session(transport: LocalTransport, round_: int = 0, node: Identity = NODE) -> ScoreReport:
    return run_session(transport, MIXER, round_, node.address)


def challenge_for(node: Identity = NODE, round_: int = 0) -> Challenge:
    return compute_challenge(
        beta=prove_round(MIXER, round_)[1], epoch=0, round_=round_, mixer=MIXER.address,
        node=node.address, hardware_class=0, preset=TEST,
    )


def assert_failed(report: ScoreReport, outcome: Outcome, *reason_parts: str) -> None:
    """A failed report carries nothing the node did not sign, and scores 0."""
    assert report.outcome == outcome, report.reason
    for part in reason_parts:
        assert part in report.reason
    assert (report.echo_digest, report.compute_root, report.download_digest,
            report.upload_digest) == (ZERO32,) * 4
    assert report.response_signature == b""
    assert (report.rtt_us, report.compute_us, report.download_us, report.upload_us) == (0,) * 4
    assert report.evidence == b""
    assert report.score == 0


# -- outcomes ------------------------------------------------------------------------------


def test_honest_node_scores_ok_with_positive_measurements() -> None:
    report = session(honest_transport())
    assert report.outcome == Outcome.OK, report.reason
    assert report.reason == "" and report.evidence == b""
    assert min(report.rtt_us, report.compute_us, report.download_us, report.upload_us) >= 1
    assert report.score > 0
    assert report.challenge_digest == challenge_for().hash_struct()
    assert recover_typed(DOMAIN, report.response().hash_struct(),
                         report.response_signature) == NODE.address


def test_honest_report_passes_validation() -> None:
    mixer, round_, node = find_pairs(MIXERS, NODES, assigned=True)[0]
    report = run_session(LocalTransport(make_prover(node, MIXERS)), mixer, round_, node.address)
    assert verify_score_report(report, make_view(MIXERS, NODES)).total == report.score > 0


def test_measurements_come_from_the_mixers_clock() -> None:
    step_ns = 2_500_000
    ticks = itertools.count(0, step_ns)
    report = run_session(honest_transport(), MIXER, 0, NODE.address, clock=lambda: next(ticks))
    assert report.outcome == Outcome.OK
    step_us = step_ns // 1000
    assert (report.rtt_us, report.compute_us, report.download_us, report.upload_us) == (
        step_us, step_us, step_us, step_us
    )
    expected = compute_challenge_score(
        SIZES, outcome=Outcome.OK, rtt_us=step_us, compute_us=step_us, download_us=step_us,
        upload_us=step_us, params=TEST.scoring,
    )
    assert report.score == expected.total


def test_offline_node_is_unreachable() -> None:
    report = session(LocalTransport(make_prover(NODE, MIXERS), online=False))
    assert_failed(report, Outcome.UNREACHABLE, "start", "connection refused")


class DropsAfterDownload(LocalTransport):
    async def upload(self, challenge_id: bytes) -> bytes:
        raise NodeUnreachable("connection reset")


def test_node_dropping_mid_session_is_unreachable() -> None:
    report = session(DropsAfterDownload(make_prover(NODE, MIXERS)))
    assert_failed(report, Outcome.UNREACHABLE, "upload", "connection reset")


def test_slow_node_times_out() -> None:
    # The compute blocks until the session has ended, so the test never waits on the thread.
    release = threading.Event()

    def blocked(seed: bytes, size: ComputeSize) -> ComputeAnswer:
        release.wait(10)
        return compute_product(seed, size, "cpu")

    preset = replace(TEST, challenge_timeout_ms=300)
    transport = LocalTransport(make_prover(NODE, MIXERS, compute=blocked))
    t0 = time.monotonic()
    report = run_session(transport, MIXER, 0, NODE.address, preset=preset, after=release.set)
    assert time.monotonic() - t0 < 5
    assert_failed(report, Outcome.TIMEOUT, "0.3 s")
    # A failed report is still a valid report: co-signers certify it, and it scores 0.
    mixer, round_, node = find_pairs(MIXERS, NODES, assigned=True)[0]
    release.clear()
    transport = LocalTransport(make_prover(node, MIXERS, compute=blocked))
    report = run_session(transport, mixer, round_, node.address, preset=preset, after=release.set)
    assert report.outcome == Outcome.TIMEOUT
    assert verify_score_report(report, make_view(MIXERS, NODES, preset=preset)).total == 0


def test_cheating_node_signs_fraud_evidence() -> None:
    mixer, round_, node = find_pairs(MIXERS, NODES, assigned=True)[0]
    prover = make_prover(node, MIXERS, compute=cheating_compute(1.0))
    report = run_session(LocalTransport(prover), mixer, round_, node.address)
    assert report.outcome == Outcome.WRONG_ANSWER, report.reason
    assert "wrong row" in report.reason
    assert report.score == 0
    assert (report.rtt_us, report.compute_us, report.download_us, report.upload_us) == (0,) * 4
    # The node's signature stays: it is what makes the wrong row evidence.
    assert recover_typed(DOMAIN, report.response().hash_struct(),
                         report.response_signature) == node.address
    beta = prove_round(mixer, round_)[1]
    challenge = compute_challenge(beta=beta, epoch=0, round_=round_, mixer=mixer.address,
                                  node=node.address, hardware_class=0, preset=TEST)
    verify_fraud_evidence(report, challenge, compute_kind_seeds(beta, node.address).compute_seed)
    assert verify_score_report(report, make_view(MIXERS, NODES)).total == 0


def test_half_cheating_node_is_caught_every_time() -> None:
    # Half the rows wrong, 8 distinct checks of 64 rows: escape probability C(32,8)/C(64,8)
    # is about 0.24% per session; the seeds are fixed, so this is deterministic.
    rows = SIZES.compute_rows
    for round_, node in itertools.product(range(TEST.rounds_per_epoch), NODES[:2]):
        prover = make_prover(node, MIXERS, compute=cheating_compute(0.5))
        report = run_session(LocalTransport(prover), MIXER, round_, node.address)
        assert report.outcome == Outcome.WRONG_ANSWER, report.reason
        size = ComputeSize(n=SIZES.compute_n, rows=rows, checks=SIZES.compute_checks)
        assert decode_fraud_evidence(report.evidence, size).index >= rows // 2


def test_spot_checks_catch_exactly_the_sessions_that_open_a_wrong_row() -> None:
    # The last 8 of 64 rows wrong: a session is WRONG_ANSWER iff its check indices, drawn
    # from the check seed and the committed root, hit one of them; otherwise it passes as OK.
    cheat = cheating_compute(0.125)
    size = ComputeSize(n=SIZES.compute_n, rows=SIZES.compute_rows, checks=SIZES.compute_checks)
    wrong = set(range(size.rows - size.rows // 8, size.rows))
    outcomes = []
    for round_, node in itertools.product(range(TEST.rounds_per_epoch), NODES):
        report = run_session(LocalTransport(make_prover(node, MIXERS, compute=cheat)),
                             MIXER, round_, node.address)
        challenge = challenge_for(node, round_)
        seeds = compute_kind_seeds(prove_round(MIXER, round_)[1], node.address)
        root = cheat(challenge.compute_seed, size).root
        caught = bool(wrong & set(derive_check_indices(seeds.check_seed, root, size)))
        assert report.outcome == (Outcome.WRONG_ANSWER if caught else Outcome.OK), report.reason
        outcomes.append(report.outcome)
    assert set(outcomes) == {Outcome.OK, Outcome.WRONG_ANSWER}  # both branches exercised


# -- BAD_RESPONSE ----------------------------------------------------------------------------


class WrongNonce(LocalTransport):
    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        echoed = await super().echo(challenge_id, nonce)
        return bytes([echoed[0] ^ 1]) + echoed[1:]


class WrongDownloadDigest(LocalTransport):
    """Returns a digest other than the one it signs."""

    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes:
        await super().download(challenge_id, chunks)
        return hashlib.sha256(b"not the payload").digest()


class CorruptedDownload(LocalTransport):
    """Receives a corrupted payload, then digests and signs it consistently."""

    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes:
        first = bytes([chunks[0][0] ^ 1]) + chunks[0][1:]
        return await super().download(challenge_id, [first, *chunks[1:]])


class WrongUpload(LocalTransport):
    async def upload(self, challenge_id: bytes) -> bytes:
        data = await super().upload(challenge_id)
        return data[:-1] + bytes([data[-1] ^ 1])


class ResigningTransport(LocalTransport):
    """Rewrites fields of the signed response and signs it with ``signer``."""

    def __init__(self, prover: ChallengeProver, signer: Identity, **changes: bytes) -> None:
        super().__init__(prover)
        self.signer = signer
        self.changes: dict[str, Any] = changes

    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        signed = await super().finish(challenge_id)
        response: ChallengeResponse = replace(signed.response, **self.changes)
        return SignedChallengeResponse(
            response=response, signature=self.signer.sign_typed(DOMAIN, response.hash_struct())
        )


class BrokenSignature(LocalTransport):
    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        signed = await super().finish(challenge_id)
        return replace(signed, signature=signed.signature[:64] + b"\x00")


class BadOpenings(LocalTransport):
    """Opens the right rows of an honest product with broken proofs."""

    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        openings = await super().open_rows(challenge_id, indices)
        return [replace(o, proof=(bytes(32), *o.proof[1:])) for o in openings]


class FewerOpenings(LocalTransport):
    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        return (await super().open_rows(challenge_id, indices))[:-1]


def _prover() -> ChallengeProver:
    return make_prover(NODE, MIXERS)


@pytest.mark.parametrize(
    ("make_transport", "reason"),
    [
        (lambda: WrongNonce(_prover()), "echo returned another nonce"),
        (lambda: WrongDownloadDigest(_prover()), "signed response differs from the session"),
        (lambda: CorruptedDownload(_prover()), "download digest is not the payload's"),
        (lambda: WrongUpload(_prover()), "uploaded payload differs"),
        (lambda: ResigningTransport(_prover(), STRANGER), f"signed by {STRANGER.address}"),
        (lambda: ResigningTransport(_prover(), NODE, upload_digest=bytes(32)),
         "signed upload digest differs"),
        (lambda: ResigningTransport(_prover(), NODE, echo_digest=bytes(32)),
         "signed response differs from the session"),
        (lambda: ResigningTransport(_prover(), NODE, challenge_digest=bytes(32)),
         "signed response differs from the session"),
        (lambda: BrokenSignature(_prover()), "response signature"),
        (lambda: BadOpenings(_prover()), "openings"),
        (lambda: FewerOpenings(_prover()), "openings"),
    ],
    ids=[
        "wrong-nonce", "returned-digest-differs", "corrupted-download", "wrong-upload",
        "other-key", "upload-digest", "echo-digest", "challenge-digest", "broken-signature",
        "bad-proofs", "fewer-openings",
    ],
)
def test_misbehaving_node_gives_bad_response(
    make_transport: Callable[[], LocalTransport], reason: str
) -> None:
    report = session(make_transport())
    assert_failed(report, Outcome.BAD_RESPONSE, reason)


def test_node_refusing_the_challenge_gives_bad_response() -> None:
    # The node's prover does not know this mixer: it refuses at start.
    prover = make_prover(NODE, MIXERS[1:])
    assert_failed(session(LocalTransport(prover)), Outcome.BAD_RESPONSE, "start",
                  "not a current mixer")


def test_reason_is_bounded() -> None:
    class Verbose(LocalTransport):
        async def upload(self, challenge_id: bytes) -> bytes:
            raise ChallengeError("x" * 1000)

    report = session(Verbose(_prover()))
    assert_failed(report, Outcome.BAD_RESPONSE, "upload")
    assert len(report.reason.encode()) == MAX_REASON_BYTES
    assert report.reason.endswith("...")


def test_a_node_answering_non_ascii_text_fails_its_own_challenge_only() -> None:
    # Before: a 180-character reason of multi-byte characters broke the 200-byte field, and
    # ScoreReport raised inside the session instead of returning a failed report.
    class Unicode(LocalTransport):
        async def upload(self, challenge_id: bytes) -> bytes:
            raise ChallengeError("unknown field '" + "\u00e9\u4e2d" * 300 + "'")

    report = session(Unicode(_prover()))
    assert_failed(report, Outcome.BAD_RESPONSE, "upload")
    assert report.reason.isascii() and len(report.reason.encode()) <= MAX_REASON_BYTES
    assert ScoreReport.from_json(report.to_json()) == report


# -- the prover's refusals -------------------------------------------------------------------


def signed(challenge: Challenge, signer: Identity = MIXER.identity) -> SignedChallenge:
    return SignedChallenge(challenge=challenge,
                           signature=signer.sign_typed(DOMAIN, challenge.hash_struct()))


def test_prover_runs_a_full_session_whose_openings_verify() -> None:
    prover = _prover()
    challenge = challenge_for()
    seeds = compute_kind_seeds(prove_round(MIXER, 0)[1], NODE.address)
    cid = challenge.challenge_id
    prover.start(signed(challenge))
    for nonce in echo_nonces(seeds.latency_seed, challenge.latency_echoes):
        assert prover.echo(cid, nonce) == nonce
    for chunk in iter_download_payload(seeds.download_seed, challenge.download_bytes):
        prover.download_chunk(cid, chunk)
    prover.download_done(cid)
    prover.upload(cid)
    root = prover.compute(cid)
    response = prover.finish(cid)
    assert response.response.compute_root == root
    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    indices = derive_check_indices(seeds.check_seed, root, size)
    verify_openings(challenge.compute_seed, seeds.check_seed, size, root,
                    prover.open_rows(cid, indices))
    # Opening ends the session.
    with pytest.raises(ChallengeError) as exc:
        prover.open_rows(cid, indices)
    assert exc.value.field == "challengeId"


def test_prover_refuses_challenge_from_non_mixer() -> None:
    challenge = replace(challenge_for(), mixer=STRANGER.address)
    with pytest.raises(ChallengeError) as exc:
        _prover().start(signed(challenge, STRANGER))
    assert exc.value.field == "mixer"


def test_prover_refuses_challenge_signed_by_another_key() -> None:
    with pytest.raises(SignatureError) as exc:
        _prover().start(signed(challenge_for(), MIXERS[1].identity))
    assert exc.value.field == "signature"


def test_prover_refuses_challenge_for_another_node() -> None:
    with pytest.raises(ChallengeError) as exc:
        _prover().start(signed(challenge_for(NODES[1])))
    assert exc.value.field == "node"


def test_prover_refuses_duplicate_start() -> None:
    prover = _prover()
    prover.start(signed(challenge_for()))
    with pytest.raises(ChallengeError) as exc:
        prover.start(signed(challenge_for()))
    assert exc.value.field == "challengeId"


def _started(prover: ChallengeProver) -> Challenge:
    challenge = challenge_for()
    prover.start(signed(challenge))
    return challenge


def test_prover_refuses_open_before_finish() -> None:
    prover = _prover()
    challenge = _started(prover)
    prover.compute(challenge.challenge_id)
    with pytest.raises(ChallengeError) as exc:
        prover.open_rows(challenge.challenge_id, list(range(challenge.compute_checks)))
    assert exc.value.field == "challengeId"


def _finished(prover: ChallengeProver) -> Challenge:
    challenge = _started(prover)
    cid = challenge.challenge_id
    for i in range(challenge.latency_echoes):
        prover.echo(cid, bytes([i]) * 16)
    prover.download_done(cid)
    prover.upload(cid)
    prover.compute(cid)
    prover.finish(cid)
    return challenge


@pytest.mark.parametrize("delta", [-1, 1])
def test_prover_refuses_wrong_number_of_indices(delta: int) -> None:
    prover = _prover()
    challenge = _finished(prover)
    with pytest.raises(ChallengeError) as exc:
        prover.open_rows(challenge.challenge_id, list(range(challenge.compute_checks + delta)))
    assert exc.value.field == "indices"


def test_prover_refuses_index_out_of_range() -> None:
    prover = _prover()
    challenge = _finished(prover)
    indices = [*range(challenge.compute_checks - 1), challenge.compute_rows]
    with pytest.raises(ChallengeError) as exc:
        prover.open_rows(challenge.challenge_id, indices)
    assert exc.value.field == f"indices[{challenge.compute_checks - 1}]"


def test_prover_refuses_finish_before_every_step() -> None:
    prover = _prover()
    challenge = _started(prover)
    cid = challenge.challenge_id
    with pytest.raises(ChallengeError, match="before compute"):
        prover.finish(cid)
    prover.compute(cid)
    with pytest.raises(ChallengeError, match="echoes"):
        prover.finish(cid)
    for i in range(challenge.latency_echoes):
        prover.echo(cid, bytes([i]) * 16)
    with pytest.raises(ChallengeError, match="transfers"):
        prover.finish(cid)
    prover.download_done(cid)
    with pytest.raises(ChallengeError, match="transfers"):
        prover.finish(cid)
    prover.upload(cid)
    assert prover.finish(cid).response.node == NODE.address


def test_prover_refuses_bad_echoes_and_unknown_sessions() -> None:
    prover = _prover()
    challenge = _started(prover)
    cid = challenge.challenge_id
    with pytest.raises(ChallengeError) as exc:
        prover.echo(cid, b"\x00" * 15)
    assert exc.value.field == "nonce"
    for i in range(challenge.latency_echoes):
        prover.echo(cid, bytes([i]) * 16)
    with pytest.raises(ChallengeError) as exc:
        prover.echo(cid, b"\x00" * 16)
    assert exc.value.field == "nonce"
    for call in (prover.upload, prover.compute, prover.finish, prover.download_done):
        with pytest.raises(ChallengeError) as exc:
            call(b"\x01" * 32)
        assert exc.value.field == "challengeId"


def test_prover_keeps_a_bounded_number_of_sessions() -> None:
    prover = _prover()
    challenges = [
        compute_challenge(beta=hashlib.sha512(b"beta-%d" % i).digest(), epoch=0, round_=0,
                          mixer=MIXER.address, node=NODE.address, hardware_class=0, preset=TEST)
        for i in range(MAX_OPEN_SESSIONS + 1)
    ]
    for challenge in challenges:
        prover.start(signed(challenge))
    with pytest.raises(ChallengeError):  # the oldest was evicted
        prover.upload(challenges[0].challenge_id)
    assert len(prover.upload(challenges[1].challenge_id)) == challenges[1].upload_bytes
