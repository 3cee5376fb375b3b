"""The mixer's session driver (dnanet.mixer.session) against the node's ChallengeProver.

Honest, offline, slow, cheating and misbehaving nodes are LocalTransport subclasses or provers
with a custom compute; every outcome is asserted together with what the report may carry. The
timing is checked on a fake link with a known round trip, rate and compute time, on a clock of
its own (no test waits on real time).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from dnanet.crypto.eip712 import recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChallengeError, NodeUnreachable, ScheduleError, SignatureError
from dnanet.node.local import LocalTransport
from dnanet.node.prover import (
    MAX_OPEN_SESSIONS,
    MAX_SESSIONS_PER_MIXER,
    ChainView,
    ChallengeProver,
    MemorySeen,
    ProverSession,
)
from dnanet.params import MAINNET, TEST, ChallengeSizes
from dnanet.protocol.challenge_params import (
    SIZE_FIELDS,
    compute_challenge,
    compute_kind_seeds,
    compute_max_sessions_per_mixer,
    compute_round_claim,
)
from dnanet.protocol.challenges import (
    compute_seed_hash,
    derive_attempt_seeds,
    previous_attempt_seed,
)
from dnanet.protocol.challenges.bandwidth import iter_download_payload
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    RowOpening,
    commit_product,
    compute_product,
    derive_check_indices,
    open_rows,
    verify_openings,
)
from dnanet.protocol.challenges.latency import echo_nonces
from dnanet.protocol.evidence import (
    decode_fraud_evidence,
    encode_fraud_evidence,
    is_row_correct,
    verify_fraud_evidence,
)
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
from dnanet.protocol.schedule import compute_settlement_block
from dnanet.protocol.scoring import compute_challenge_score
from dnanet.protocol.validation import verify_score_report
from protocol_fixtures import (
    DOMAIN,
    Mixer,
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


# -- timing: a fake link with a known round trip, rate and compute time ---------------------

MIB = 1 << 20
TIMED = replace(TEST, hardware_classes=(ChallengeSizes(
    compute_n=32, compute_rows=64, compute_checks=8, download_bytes=MIB, upload_bytes=MIB,
    latency_echoes=16, compute_attempts=3),) * 2)
"""TEST with transfers of 1 MiB, so that a transfer is several frames, and three compute
attempts."""


class FakeLink(LocalTransport):
    """An honest node behind a link of known round trip and rates, timed on the link's own
    clock (``clock``): each call advances it by what it takes on such a link. Some echoes
    queue behind other traffic (``jitter_ns``); the node takes ``generate_ns`` to make the
    upload payload and ``compute_ns`` for the product, more in an attempt that shares its host
    with other work (``contended_ns``, by attempt)."""

    def __init__(self, prover: ChallengeProver, *, rtt_ns: int, down_bps: int, up_bps: int,
                 compute_ns: int, jitter_ns: int = 0, generate_ns: int = 5_000_000,
                 echo_extra_ns: int = 0, busy_ns: int = 0,
                 contended_ns: tuple[int, ...] = ()) -> None:
        super().__init__(prover)
        self.now = 1_000_000_000
        self.rtt_ns, self.down_bps, self.up_bps = rtt_ns, down_bps, up_bps
        self.compute_ns, self.jitter_ns, self.generate_ns = compute_ns, jitter_ns, generate_ns
        self.echo_extra_ns = echo_extra_ns
        self.contended_ns = contended_ns
        self.attempts = 0
        self.busy_ns = busy_ns
        """The mixer is busy this long when the upload's first frame arrives: it reads that
        frame, and those that arrived meanwhile, only then."""
        self.echoes = 0

    def clock(self) -> int:
        return self.now

    def _transfer_ns(self, nbytes: int, bps: int) -> int:
        return nbytes * 10**9 // bps

    async def start(self, signed: SignedChallenge) -> None:
        self.now += self.rtt_ns
        await super().start(signed)

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        self.echoes += 1
        self.now += self.rtt_ns + self.echo_extra_ns + (self.echoes % 4) * self.jitter_ns
        return await super().echo(challenge_id, nonce)

    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes:
        self.now += self.rtt_ns + self._transfer_ns(sum(map(len, frames)), self.down_bps)
        return await super().download(challenge_id, frames)

    async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        arrived = self.now + self.rtt_ns + self.generate_ns  # the seed there, the answer back
        read_from = 0
        async for frame in super().upload(challenge_id, upload_seed):
            arrived += self._transfer_ns(len(frame), self.up_bps)
            read_from = read_from or arrived + self.busy_ns
            self.now = max(arrived, read_from)
            yield frame

    async def compute(self, challenge_id: bytes, attempt_seed: bytes) -> bytes:
        contended = self.contended_ns[self.attempts] if self.attempts < len(
            self.contended_ns) else 0
        self.attempts += 1
        self.now += self.rtt_ns + self.compute_ns + contended
        return await super().compute(challenge_id, attempt_seed)


def timed_session(link: FakeLink) -> ScoreReport:
    return run_session(link, MIXER, 0, NODE.address, preset=TIMED, clock=link.clock)


@pytest.mark.parametrize(
    ("rtt_ns", "down_bps", "up_bps", "compute_ns"),
    [(100_000, 200_000_000, 150_000_000, 50_000_000),    # loopback
     (20_000_000, 2_000_000, 5_000_000, 50_000_000),     # a slow home line
     (200_000_000, 20_000_000, 10_000_000, 100_000_000)],  # far away, fast
    ids=["loopback", "slow-line", "far-away"])
def test_each_figure_measures_one_thing_on_a_known_link(
        rtt_ns: int, down_bps: int, up_bps: int, compute_ns: int) -> None:
    link = FakeLink(make_prover(NODE, MIXERS), rtt_ns=rtt_ns, down_bps=down_bps, up_bps=up_bps,
                    compute_ns=compute_ns, jitter_ns=rtt_ns // 2 + 1_000_000)
    report = timed_session(link)
    assert report.outcome == Outcome.OK, report.reason
    assert link.echoes == 16
    # The round trip: the fastest echo, not one that queued.
    assert abs(report.rtt_us * 1000 - rtt_ns) <= rtt_ns // 10
    # Each transfer's rate and the compute time, the round trip removed.
    down_rate = MIB * 1_000_000 // report.download_us
    up_rate = MIB * 1_000_000 // report.upload_us
    assert abs(down_rate - down_bps) <= down_bps * 15 // 100, (down_rate, down_bps)
    assert abs(up_rate - up_bps) <= up_bps * 15 // 100, (up_rate, up_bps)
    assert abs(report.compute_us * 1000 - compute_ns) <= compute_ns // 10
    assert report.score == compute_challenge_score(
        TIMED.hardware_classes[0], outcome=Outcome.OK, rtt_us=report.rtt_us,
        compute_us=report.compute_us, download_us=report.download_us,
        upload_us=report.upload_us, params=TIMED.scoring).total


@pytest.mark.parametrize("contended_ns", [(0, 0, 0), (90_000_000, 0, 40_000_000),
                                          (70_000_000, 30_000_000, 0)],
                         ids=["quiet", "slow-first", "slow-then-slower"])
def test_the_fastest_compute_attempt_counts(contended_ns: tuple[int, ...]) -> None:
    # Whatever else shares the node's host slows some attempts; the fastest shows the machine,
    # and the node signs (and opens) that attempt's product.
    link = FakeLink(make_prover(NODE, MIXERS), rtt_ns=20_000_000, down_bps=10**8,
                    up_bps=10**8, compute_ns=50_000_000, contended_ns=contended_ns)
    report = timed_session(link)
    assert report.outcome == Outcome.OK, report.reason
    assert link.attempts == 3
    assert abs(report.compute_us * 1000 - 50_000_000) <= 50_000_000 // 10
    seeds = compute_kind_seeds(prove_round(MIXER, 0)[1], NODE.address)
    counted = contended_ns.index(min(contended_ns))
    size = TIMED.hardware_classes[0]
    product = compute_product(derive_attempt_seeds(seeds.compute_seed, 3)[counted], ComputeSize(
        n=size.compute_n, rows=size.compute_rows, checks=size.compute_checks), "cpu")
    assert report.compute_root == product.root


class AnswersAnEarlierAttempt(FakeLink):
    """Computes the first attempt honestly and answers every later one with its product at
    once (the seeds are new each attempt; the product is not)."""

    root: bytes | None = None

    async def compute(self, challenge_id: bytes, attempt_seed: bytes) -> bytes:
        if self.root is None:
            self.root = await super().compute(challenge_id, attempt_seed)
            return self.root
        self.now += self.rtt_ns
        session = self._session(challenge_id)
        session.attempts.append(session.attempts[0])  # the node's own state, forged
        session.last_attempt_seed = attempt_seed
        return self.root


def test_an_earlier_attempts_product_answered_again_fails_but_is_no_fraud() -> None:
    # The replayed attempt is the fastest, so it counts and its rows are checked against its
    # own seed: they are the first attempt's, so the challenge fails; but each row is right
    # for an attempt of this challenge, so it is no evidence of fraud (a mixer could otherwise
    # pass one attempt's honest rows off as another's wrong ones).
    link = AnswersAnEarlierAttempt(make_prover(NODE, MIXERS), rtt_ns=1_000_000,
                                   down_bps=10**8, up_bps=10**8, compute_ns=50_000_000)
    report = timed_session(link)
    assert_failed(report, Outcome.BAD_RESPONSE, "openings")
    assert report.evidence == b""


def test_fraud_evidence_must_be_wrong_for_every_attempt() -> None:
    # The node's honest row of attempt 0, presented as attempt 1's: no fraud shown.
    beta = prove_round(MIXER, 0)[1]
    challenge = compute_challenge(beta=beta, epoch=0, round_=0, mixer=MIXER.address,
                                  node=NODE.address, hardware_class=0, preset=TIMED)
    compute_seed = compute_kind_seeds(beta, NODE.address).compute_seed
    first, second, third = derive_attempt_seeds(compute_seed, 3)
    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    honest = compute_product(first, size, "cpu")
    opening = open_rows(honest, [5])[0]
    report = replace(session(LocalTransport(_prover())), compute_root=honest.root,
                     evidence=encode_fraud_evidence(opening))
    with pytest.raises(ChallengeError, match="correct for an attempt"):
        verify_fraud_evidence(report, challenge, compute_seed)
    # A row right for none of them is.
    wrong = commit_product(size, honest.product + 1)
    report = replace(report, compute_root=wrong.root,
                     evidence=encode_fraud_evidence(open_rows(wrong, [5])[0]))
    verify_fraud_evidence(report, challenge, compute_seed)
    assert not any(is_row_correct(seed, size, open_rows(wrong, [5])[0])
                   for seed in (first, second, third))


def test_a_mixer_busy_as_the_upload_begins_still_measures_its_rate() -> None:
    # Busy for 20 ms when the first of 4 frames (13 ms each at 20 MB/s) arrives, so it reads
    # the first two at once: the span from the first frame is short, the slowest of the three
    # spans is not.
    link = FakeLink(make_prover(NODE, MIXERS), rtt_ns=100_000, down_bps=20_000_000,
                    up_bps=20_000_000, compute_ns=50_000_000, busy_ns=20_000_000)
    report = timed_session(link)
    up_rate = MIB * 1_000_000 // report.upload_us
    assert abs(up_rate - 20_000_000) <= 20_000_000 * 15 // 100, up_rate


def test_a_far_node_computes_and_transfers_as_fast_as_a_near_one() -> None:
    figures = {}
    for rtt_ns in (100_000, 50_000_000, 200_000_000):
        link = FakeLink(make_prover(NODE, MIXERS), rtt_ns=rtt_ns, down_bps=10**8, up_bps=10**8,
                        compute_ns=80_000_000)
        report = timed_session(link)
        figures[rtt_ns] = (report.compute_us, report.download_us, report.upload_us)
    assert len({compute for compute, _, _ in figures.values()}) == 1, figures
    # A transfer of 10 ms measures right under a 50 ms round trip; under 200 ms the floor
    # (1/8 of the raw step) holds it back: sizes are chosen for the links a preset expects.
    assert figures[50_000_000][1] == figures[100_000][1]
    assert figures[200_000_000][1] == (200_000_000 + MIB * 10**9 // 10**8) // 8 // 1000
    # The upload is timed where it arrives: no round trip in it at any distance.
    assert len({upload for _, _, upload in figures.values()}) == 1, figures


def test_padding_the_echoes_buys_at_most_the_floor() -> None:
    # A node that delays every echo by 1 s (but not its compute) would have its whole compute
    # step removed: the floor keeps 1/8 of the raw step, and the latency figure pays for it.
    honest = timed_session(FakeLink(make_prover(NODE, MIXERS), rtt_ns=100_000, down_bps=10**8,
                                    up_bps=10**8, compute_ns=80_000_000))
    padded = timed_session(FakeLink(make_prover(NODE, MIXERS), rtt_ns=100_000, down_bps=10**8,
                                    up_bps=10**8, compute_ns=80_000_000,
                                    echo_extra_ns=1_000_000_000))
    assert padded.rtt_us > 1_000_000 > honest.rtt_us
    assert padded.compute_us * 8 >= honest.compute_us
    assert padded.compute_us == (80_000_000 + 100_000) // 8 // 1000


def test_offline_node_is_unreachable() -> None:
    report = session(LocalTransport(make_prover(NODE, MIXERS), online=False))
    assert_failed(report, Outcome.UNREACHABLE, "start", "connection refused")


class DropsAfterDownload(LocalTransport):
    async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        raise NodeUnreachable("connection reset")
        yield b""  # an async generator, as the transport's


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
        seeds = compute_kind_seeds(prove_round(MIXER, round_)[1], node.address)
        roots = [cheat(seed, size).root
                 for seed in derive_attempt_seeds(seeds.compute_seed, SIZES.compute_attempts)]
        root = report.compute_root  # the counted attempt's: one of the node's
        assert root in roots
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

    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes:
        await super().download(challenge_id, frames)
        return hashlib.sha256(b"not the payload").digest()


class CorruptedDownload(LocalTransport):
    """Receives a corrupted payload, then digests and signs it consistently."""

    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes:
        first = bytes([frames[0][0] ^ 1]) + frames[0][1:]
        return await super().download(challenge_id, [first, *frames[1:]])


class WrongUpload(LocalTransport):
    async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        async for frame in super().upload(challenge_id, upload_seed):
            yield frame[:-1] + bytes([frame[-1] ^ 1])


class ResigningTransport(LocalTransport):
    """Rewrites fields of the signed response and signs it with ``signer``."""

    def __init__(self, prover: ChallengeProver, signer: Identity, **changes: bytes) -> None:
        super().__init__(prover)
        self.signer = signer
        self.changes: dict[str, Any] = changes

    async def finish(self, challenge_id: bytes, attempt: int) -> SignedChallengeResponse:
        signed = await super().finish(challenge_id, attempt)
        response: ChallengeResponse = replace(signed.response, **self.changes)
        return SignedChallengeResponse(
            response=response, signature=self.signer.sign_typed(DOMAIN, response.hash_struct())
        )


class BrokenSignature(LocalTransport):
    async def finish(self, challenge_id: bytes, attempt: int) -> SignedChallengeResponse:
        signed = await super().finish(challenge_id, attempt)
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
        async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
            raise ChallengeError("x" * 1000)
            yield b""

    report = session(Verbose(_prover()))
    assert_failed(report, Outcome.BAD_RESPONSE, "upload")
    assert len(report.reason.encode()) == MAX_REASON_BYTES
    assert report.reason.endswith("...")


def test_a_node_answering_non_ascii_text_fails_its_own_challenge_only() -> None:
    # Before: a 180-character reason of multi-byte characters broke the 200-byte field, and
    # ScoreReport raised inside the session instead of returning a failed report.
    class Unicode(LocalTransport):
        async def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
            raise ChallengeError("unknown field '" + "\u00e9\u4e2d" * 300 + "'")
            yield b""

    report = session(Unicode(_prover()))
    assert_failed(report, Outcome.BAD_RESPONSE, "upload")
    assert report.reason.isascii() and len(report.reason.encode()) <= MAX_REASON_BYTES
    assert ScoreReport.from_json(report.to_json()) == report


# -- the prover's refusals -------------------------------------------------------------------


def signed(challenge: Challenge, signer: Identity = MIXER.identity) -> SignedChallenge:
    return SignedChallenge(challenge=challenge,
                           signature=signer.sign_typed(DOMAIN, challenge.hash_struct()))


def _seeds(node: Identity = NODE, round_: int = 0) -> Any:
    return compute_kind_seeds(prove_round(MIXER, round_)[1], node.address)


def test_prover_runs_a_full_session_whose_openings_verify() -> None:
    challenge = challenge_for()
    seeds = _seeds()
    session = _prover().start(signed(challenge))
    for nonce in echo_nonces(seeds.latency_seed, challenge.latency_echoes):
        assert session.echo(nonce) == nonce
    digest = None
    for chunk in iter_download_payload(seeds.download_seed, challenge.download_bytes):
        digest = session.download_chunk(chunk)
    assert digest is not None
    session.upload(seeds.upload_seed)
    attempt_seeds = derive_attempt_seeds(seeds.compute_seed, challenge.compute_attempts)
    assert len(attempt_seeds) == challenge.compute_attempts == 2
    roots = [session.compute(seed) for seed in attempt_seeds]
    assert roots[0] != roots[1]  # each attempt is a product of its own
    response = session.finish(1)
    root = roots[1]
    assert response.response.compute_root == root
    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    indices = derive_check_indices(seeds.check_seed, root, size)
    verify_openings(attempt_seeds[1], seeds.check_seed, size, root, session.open_rows(indices))
    # Opening ends the session.
    with pytest.raises(ChallengeError) as exc:
        session.open_rows(indices)
    assert exc.value.field == "challengeId"


def test_the_signed_challenge_holds_no_seed_only_commitments() -> None:
    # Everything the node learns at start: the compute and upload seeds are not in it, and
    # nothing in it derives them (each is a SHA-256 preimage, revealed at its own step).
    challenge = challenge_for()
    seeds = _seeds()
    wire = signed(challenge).to_json()
    for secret in (seeds.compute_seed, seeds.upload_seed, seeds.download_seed,
                   seeds.latency_seed, seeds.check_seed):
        assert secret.hex() not in wire.decode()
    assert not hasattr(challenge, "compute_seed") and not hasattr(challenge, "upload_seed")
    first_attempt = derive_attempt_seeds(seeds.compute_seed, challenge.compute_attempts)[0]
    assert challenge.compute_seed_hash == compute_seed_hash(first_attempt)
    assert challenge.upload_seed_hash == compute_seed_hash(seeds.upload_seed)


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


def test_prover_refuses_a_replayed_challenge_even_after_the_session() -> None:
    members = {m.address: m.vrf_public_key for m in MIXERS}
    prover = ChallengeProver(NODE, DOMAIN, lambda: members, device="cpu", seen=MemorySeen())
    prover.start(signed(challenge_for())).close()
    with pytest.raises(ChallengeError, match="taken up before") as exc:
        prover.start(signed(challenge_for()))
    assert exc.value.field == "challengeId"


def test_prover_takes_one_challenge_of_a_mixers_round() -> None:
    # A current mixer signs a second challenge for a round it already challenged this node in
    # (another id: not its VRF's): refused, even after the first session ended. Another
    # mixer's challenge of that round, and the same mixer's of the next, are taken.
    members = {m.address: m.vrf_public_key for m in MIXERS}
    prover = ChallengeProver(NODE, DOMAIN, lambda: members, device="cpu", seen=MemorySeen())
    first = challenge_for()
    prover.start(signed(first)).close()
    again = replace(first, challenge_id=hashlib.sha256(b"not the VRF's").digest())
    with pytest.raises(ChallengeError, match="challenged this node in epoch 0 round 0") as exc:
        prover.start(signed(again))
    assert exc.value.field == "round"
    other = MIXERS[1]
    prover.start(signed(replace(first, mixer=other.address, challenge_id=bytes(32)),
                        other.identity)).close()
    prover.start(signed(challenge_for(round_=1))).close()
    assert compute_round_claim(first) != compute_round_claim(replace(first, round=1))


def test_without_a_memory_only_an_open_challenge_is_refused_again() -> None:
    prover = _prover()  # in-process harnesses replay a session on purpose
    session = prover.start(signed(challenge_for()))
    with pytest.raises(ChallengeError, match="taken up before"):
        prover.start(signed(challenge_for()))
    session.close()
    prover.start(signed(challenge_for())).close()


def test_the_memory_forgets_ids_of_closed_epochs_only() -> None:
    seen = MemorySeen()
    assert seen.claim(b"a" * 32, 0, 0) and seen.claim(b"b" * 32, 1, 0)
    assert not seen.claim(b"a" * 32, 0, 0)
    assert seen.claim(b"c" * 32, 2, 1)  # epoch 0 closed: its id may go
    assert not seen.claim(b"b" * 32, 1, 1) and seen.claim(b"a" * 32, 0, 1)


def _at(head_block: int) -> ChallengeProver:
    members = {m.address: m.vrf_public_key for m in MIXERS}
    return ChallengeProver(NODE, DOMAIN, lambda: members, device="cpu",
                           chain=ChainView(TEST, 0, lambda: head_block))


def _challenge_at(epoch: int, round_: int) -> SignedChallenge:
    return signed(compute_challenge(
        beta=hashlib.sha512(b"beta-%d-%d" % (epoch, round_)).digest(), epoch=epoch,
        round_=round_, mixer=MIXER.address, node=NODE.address, hardware_class=0, preset=TEST))


def test_prover_takes_challenges_only_in_their_round() -> None:
    epoch_blocks, round_blocks = TEST.epoch_blocks, TEST.round_blocks
    head = 2 * epoch_blocks + round_blocks  # epoch 2, round 1
    # Epoch 1 closed for reports at its settlement block, which is behind the head.
    assert compute_settlement_block(1, TEST) <= head
    for epoch, round_, taken in [(2, 0, True), (2, 1, True), (2, 2, True), (2, 3, False),
                                 (1, 3, False), (0, 0, False), (3, 0, False)]:
        prover = _at(head)
        if taken:
            prover.start(_challenge_at(epoch, round_)).close()
            continue
        with pytest.raises(ScheduleError) as exc:
            prover.start(_challenge_at(epoch, round_))
        assert exc.value.field == "round"


def test_a_daemons_prover_holds_a_mixer_to_the_rounds_in_a_timeout() -> None:
    # TEST: rounds of 80 ms, a 2 s timeout: 25 rounds' sessions may overlap, and two more.
    cap = compute_max_sessions_per_mixer(TEST)
    assert cap == 27 and compute_max_sessions_per_mixer(MAINNET) == 3
    head = 2 * TEST.epoch_blocks
    prover = _at(head)
    for i in range(cap):
        prover.start(signed(replace(_challenge_at(2, 0).challenge,
                                    challenge_id=bytes([i]) * 32)))
    with pytest.raises(ChallengeError, match=f"has {cap} sessions open") as exc:
        prover.start(_challenge_at(2, 0))
    assert exc.value.field == "mixer"


@pytest.mark.parametrize(("field", "value"), [
    ("compute_attempts", 255), ("compute_n", 4096), ("compute_rows", 1 << 20),
    ("compute_checks", 1), ("upload_bytes", 1 << 30), ("download_bytes", 1),
    ("latency_echoes", 1000), ("hardware_class", 7)])
def test_prover_refuses_a_challenge_asking_other_work_than_the_presets(
        field: str, value: int) -> None:
    # Signed by a current mixer, in its round, but asking more (or other) work than the
    # preset's for the class: refused before any work, naming the field.
    head = 2 * TEST.epoch_blocks
    honest = _challenge_at(2, 0).challenge
    asking = signed(replace(honest, **{field: value}))
    with pytest.raises(ChallengeError) as exc:
        _at(head).start(asking)
    wire_name = {"hardware_class": "hardwareClass"}.get(field) or next(
        name for attr, name in SIZE_FIELDS if attr == field)
    assert exc.value.field == wire_name
    _at(head).start(signed(honest)).close()  # the preset's own sizes are taken


def test_prover_takes_a_late_challenge_while_its_epoch_takes_reports() -> None:
    # In the grace period after epoch 0, a mixer may still challenge a round of epoch 0.
    head = TEST.epoch_blocks  # epoch 1's first block, before epoch 0's settlement block
    assert head < compute_settlement_block(0, TEST)
    _at(head).start(_challenge_at(0, 0)).close()
    with pytest.raises(ScheduleError, match="oldest round still open"):
        _at(compute_settlement_block(0, TEST)).start(_challenge_at(0, 3))


def test_prover_refuses_before_it_read_the_head() -> None:
    members = {m.address: m.vrf_public_key for m in MIXERS}
    prover = ChallengeProver(NODE, DOMAIN, lambda: members, device="cpu",
                             chain=ChainView(TEST, 0, lambda: None))
    with pytest.raises(ScheduleError, match="head"):
        prover.start(_challenge_at(0, 0))


def _echoed(session: ProverSession) -> ProverSession:
    for i in range(session.challenge.latency_echoes):
        session.echo(bytes([i]) * 16)
    return session


def _downloaded(session: ProverSession) -> ProverSession:
    _echoed(session)
    assert session.download_chunk(b"\0" * session.challenge.download_bytes) is not None
    return session


def _started() -> ProverSession:
    return _prover().start(signed(challenge_for()))


def _attempt_seeds() -> list[bytes]:
    return derive_attempt_seeds(_seeds().compute_seed, SIZES.compute_attempts)


def _computed(session: ProverSession) -> ProverSession:
    for seed in _attempt_seeds():
        session.compute(seed)
    return session


def test_each_step_runs_once_and_in_order() -> None:
    seeds = _seeds()
    first, second = _attempt_seeds()
    session = _downloaded(_started())
    with pytest.raises(ChallengeError, match="out of order"):  # compute before upload
        session.compute(first)
    session.upload(seeds.upload_seed)
    with pytest.raises(ChallengeError, match="out of order") as exc:  # a second upload
        session.upload(seeds.upload_seed)
    assert exc.value.field == "step"
    session.compute(first)
    with pytest.raises(ChallengeError, match="finish after 1 compute attempts of 2") as exc:
        session.finish(0)
    assert exc.value.field == "step"
    session.compute(second)
    for again in (lambda: session.compute(second),
                  lambda: session.upload(seeds.upload_seed),
                  lambda: session.download_chunk(b"\0"),
                  lambda: session.echo(b"\0" * 16)):
        with pytest.raises(ChallengeError, match=r"out of order|more compute attempts"):
            again()
    for attempt in (-1, 2):
        with pytest.raises(ChallengeError, match="outside") as exc:
            session.finish(attempt)
        assert exc.value.field == "attempt"
    session.finish(0)
    with pytest.raises(ChallengeError, match="out of order"):
        session.finish(0)


def test_a_seed_must_be_the_one_committed_to() -> None:
    seeds = _seeds()
    first, second = _attempt_seeds()
    session = _downloaded(_started())
    with pytest.raises(ChallengeError, match="commits to") as exc:
        session.upload(seeds.compute_seed)
    assert exc.value.field == "uploadSeed"
    session.upload(seeds.upload_seed)
    # The first attempt's seed is the one committed to: not the chain's end, not another.
    for wrong in (second, seeds.upload_seed, b"\1" * 32, b"\1" * 31):
        with pytest.raises(ChallengeError) as exc:
            session.compute(wrong)
        assert exc.value.field == "computeSeed"
    session.compute(first)
    # A later attempt's seed must hash to the one before: the first again, or any other, is
    # refused, and a refusal leaves the session where it was.
    for wrong in (first, b"\2" * 32):
        with pytest.raises(ChallengeError, match="attempt chain") as exc:
            session.compute(wrong)
        assert exc.value.field == "computeSeed"
    session.compute(second)
    assert session.stage == "compute" and len(session.attempts) == 2


def test_no_attempt_seed_gives_a_later_one() -> None:
    # The chain is revealed from its hashed end: each seed is the hash of the next, so the
    # node holding attempt a's seed cannot compute attempt a+1's (a SHA-256 preimage).
    seeds = derive_attempt_seeds(b"\7" * 32, 4)
    assert seeds[-1] == b"\7" * 32 and len(set(seeds)) == 4
    for earlier, later in itertools.pairwise(seeds):
        assert previous_attempt_seed(later) == earlier
    assert derive_attempt_seeds(b"\7" * 32, 1) == [b"\7" * 32]
    with pytest.raises(ChallengeError):
        derive_attempt_seeds(b"\7" * 32, 0)


def test_prover_refuses_open_before_finish() -> None:
    seeds = _seeds()
    session = _downloaded(_started())
    session.upload(seeds.upload_seed)
    _computed(session)
    with pytest.raises(ChallengeError, match="out of order"):
        session.open_rows(list(range(session.challenge.compute_checks)))


def _finished() -> ProverSession:
    seeds = _seeds()
    session = _downloaded(_started())
    session.upload(seeds.upload_seed)
    _computed(session)
    session.finish(0)
    return session


@pytest.mark.parametrize("delta", [-1, 1])
def test_prover_refuses_wrong_number_of_indices(delta: int) -> None:
    session = _finished()
    with pytest.raises(ChallengeError) as exc:
        session.open_rows(list(range(session.challenge.compute_checks + delta)))
    assert exc.value.field == "indices"


def test_prover_refuses_index_out_of_range() -> None:
    session = _finished()
    challenge = session.challenge
    indices = [*range(challenge.compute_checks - 1), challenge.compute_rows]
    with pytest.raises(ChallengeError) as exc:
        session.open_rows(indices)
    assert exc.value.field == f"indices[{challenge.compute_checks - 1}]"


def test_prover_refuses_bad_echoes_and_downloads() -> None:
    session = _started()
    with pytest.raises(ChallengeError) as exc:
        session.echo(b"\x00" * 15)
    assert exc.value.field == "nonce"
    with pytest.raises(ChallengeError, match="out of order"):
        session.download_chunk(b"\0")
    session.echo(b"\x01" * 16)
    with pytest.raises(ChallengeError, match="download after 1 echoes"):
        session.download_chunk(b"\0")
    for i in range(1, session.challenge.latency_echoes):
        session.echo(bytes([i]) * 16)
    with pytest.raises(ChallengeError) as exc:
        session.echo(b"\x00" * 16)
    assert exc.value.field == "nonce"
    with pytest.raises(ChallengeError) as exc:
        session.download_chunk(b"\0" * (session.challenge.download_bytes + 1))
    assert exc.value.field == "download"
    session.close()
    with pytest.raises(ChallengeError, match="ended"):
        session.download_chunk(b"\0")


def test_prover_keeps_a_bounded_number_of_sessions() -> None:
    mixers = make_mixers(MAX_OPEN_SESSIONS // MAX_SESSIONS_PER_MIXER + 1)
    prover = make_prover(NODE, mixers)

    def challenge(mixer: Mixer, i: int) -> SignedChallenge:
        return signed(compute_challenge(
            beta=hashlib.sha512(f"beta-{mixer.address}-{i}".encode()).digest(), epoch=0,
            round_=0, mixer=mixer.address, node=NODE.address, hardware_class=0, preset=TEST),
            mixer.identity)

    # One mixer holds at most its share of the node's sessions ...
    first, *others, last = mixers
    own = [prover.start(challenge(first, i)) for i in range(MAX_SESSIONS_PER_MIXER)]
    with pytest.raises(ChallengeError, match="sessions open with this node") as exc:
        prover.start(challenge(first, 99))
    assert exc.value.field == "mixer"
    # ... and the node as many as it runs at once, from every mixer together.
    for mixer in others:
        for i in range(MAX_SESSIONS_PER_MIXER):
            prover.start(challenge(mixer, i))
    assert prover.open_sessions == MAX_OPEN_SESSIONS
    with pytest.raises(ChallengeError, match="sessions already"):
        prover.start(challenge(last, 0))
    own[0].close()
    own[0].close()  # idempotent: one slot back
    prover.start(challenge(last, 0))
    assert prover.open_sessions == MAX_OPEN_SESSIONS
