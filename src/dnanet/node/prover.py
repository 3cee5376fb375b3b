"""The node's side of a challenge session, independent of the transport that carries it.

``ChallengeProver.start`` takes a signed challenge only if it is for this node, signed by the
current mixer it names, asking the preset's work for its class (``verify_challenge_sizes``),
for a round still open (``verify_challenge_timeliness``, against the head block the node last
read from the chain), never taken up before, and the first of its mixer's round
(``SeenChallenges``, ``compute_round_claim``: the daemon's memory survives a restart). It
returns the session's ``ProverSession``; whoever holds that object
drives the session, and the transport hands it to the one connection that presented the
challenge (``dnanet.node.session_server``), so nobody else can address it. Its steps run once
each, in this order:

    echo x k -> download -> upload (seed revealed) -> compute (seed revealed) x attempts
    -> finish (sign the ChallengeResponse over every digest, with the root of the attempt the
       mixer counts) -> open (reveal that attempt's rows asked)

Each revealed seed is checked against the commitment in the signed challenge before any work
(a later attempt's seed against the one before it: ``verify_attempt_seed``). The node signs
before it learns which rows will be checked, so a wrong committed row is signed evidence of
fraud.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChallengeError, ScheduleError, SignatureError
from dnanet.node.compute_process import HeldAnswer
from dnanet.params import Preset
from dnanet.protocol.challenge_params import (
    compute_challenge_window,
    compute_max_sessions_per_mixer,
    compute_round_claim,
    verify_challenge_sizes,
    verify_challenge_timeliness,
)
from dnanet.protocol.challenges import verify_attempt_seed, verify_seed_reveal
from dnanet.protocol.challenges.bandwidth import PayloadDigest, upload_payload
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    RowOpening,
    compute_product,
    open_rows,
)
from dnanet.protocol.challenges.latency import NONCE_BYTES, echo_digest
from dnanet.protocol.messages import (
    Challenge,
    ChallengeResponse,
    SignedChallenge,
    SignedChallengeResponse,
)

MAX_OPEN_SESSIONS = 64
"""Sessions in flight at once; a challenge beyond them is refused (only current mixers can
open one, and each holds up to ``computeAttempts`` products in memory until it signs)."""
MAX_SESSIONS_PER_MIXER = 8
"""Sessions one mixer may have in flight at once where the prover knows no chain (in-process
tests, the demo); a daemon's prover takes ``compute_max_sessions_per_mixer`` of its preset.
One mixer cannot take every slot, nor hold the memory of every session's products (64 on the
mainnet CPU class: 12 GiB)."""

STAGES = ("start", "echo", "download", "upload", "compute", "finish", "open")
"""A session's steps in order; a session's ``stage`` is the last one it completed."""

ComputeFn = Callable[[bytes, ComputeSize], ComputeAnswer | HeldAnswer]

COMPUTING_ATTEMPT: ContextVar[tuple[bytes, int] | None] = ContextVar("computing_attempt",
                                                                      default=None)
"""While a ComputeFn runs: the challenge id and the attempt index of the product it computes
(a ComputeFn that must treat a session's attempts alike reads it: the devnet's cheat)."""


class HeldProduct(Protocol):
    """A committed product as a session holds it: its root, its rows on request, and its
    memory given back at the end (in the compute process, or in place)."""

    @property
    def root(self) -> bytes: ...
    def open_rows(self, indices: list[int]) -> list[RowOpening]: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class InPlaceProduct:
    """A product computed in this process (tests, adversaries, ``--compute-in-thread``)."""

    answer: ComputeAnswer

    @property
    def root(self) -> bytes:
        return self.answer.root

    def open_rows(self, indices: list[int]) -> list[RowOpening]:
        return open_rows(self.answer, indices)

    def release(self) -> None:
        """Nothing to give back: the answer goes with the session."""


def hold_product(answer: ComputeAnswer | HeldAnswer) -> HeldProduct:
    return answer if isinstance(answer, HeldAnswer) else InPlaceProduct(answer)


@dataclass(frozen=True)
class ChainView:
    """What the node knows of the chain's clock: the head block as it last read it (None
    before the first read), and where epochs start."""

    preset: Preset
    genesis_block: int
    head: Callable[[], int | None]


class SeenChallenges(Protocol):
    """Challenge ids taken up so far (a replay is refused), and the (mixer, round) each was
    for (``compute_round_claim``: a second challenge of one mixer's round is refused)."""

    def claim(self, challenge_id: bytes, epoch: int, oldest_epoch: int) -> bool:
        """Record ``challenge_id``; False if it was recorded before. Ids of epochs before
        ``oldest_epoch`` may be forgotten: a challenge for them is refused as stale anyway."""
        ...


class MemorySeen:
    """``SeenChallenges`` in memory (in-process nodes of tests and the demo)."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def claim(self, challenge_id: bytes, epoch: int, oldest_epoch: int) -> bool:
        with self._lock:
            if challenge_id in self._ids:
                return False
            if any(e < oldest_epoch for e in self._ids.values()):
                self._ids = {k: e for k, e in self._ids.items() if e >= oldest_epoch}
            self._ids[challenge_id] = epoch
            return True


class ChallengeProver:
    """Answers challenges for one node identity.

    ``mixers`` returns the current mixer set (address -> anything): a challenge from any other
    signer is refused. ``chain`` is the node's view of the chain's head and ``seen`` its memory
    of challenges taken up; the daemon passes both. Without ``chain`` (in-process tests, the
    demo) the round is not checked; without ``seen`` only a challenge whose session is still
    open is refused again (in-process harnesses replay sessions on purpose). ``compute``
    performs the product (GPU or CPU); tests may slow it down or make it cheat.
    """

    def __init__(
        self,
        identity: Identity,
        domain: Domain,
        mixers: Callable[[], Mapping[str, object]],
        *,
        compute: ComputeFn | None = None,
        device: str = "auto",
        chain: ChainView | None = None,
        seen: SeenChallenges | None = None,
    ) -> None:
        self.identity = identity
        self.domain = domain
        self._mixers = mixers
        self._compute = compute or (lambda seed, size: compute_product(seed, size, device))
        self.chain = chain
        self.seen = seen
        self._open: dict[bytes, str] = {}
        """The open sessions' challenge ids, and the mixer of each."""
        self._lock = threading.Lock()

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    def start(self, signed: SignedChallenge) -> ProverSession:
        """Take up a challenge (see the module docstring); raises naming what is wrong."""
        challenge = signed.challenge
        # Verify the challenge is for us and signed by the mixer it names, a current member.
        if challenge.node != self.identity.address:
            raise ChallengeError(f"challenge is for {challenge.node}, not this node", field="node")
        if challenge.mixer not in self._mixers():
            raise ChallengeError(f"{challenge.mixer} is not a current mixer", field="mixer")
        try:
            signer = recover_typed(self.domain, challenge.hash_struct(), signed.signature)
        except SignatureError as exc:
            raise SignatureError(exc.detail, field="signature") from None
        if signer != challenge.mixer:
            raise SignatureError(f"challenge signed by {signer}, not its mixer", field="signature")
        # Verify the work asked is the preset's, the round is still open, and take up the
        # challenge at most once.
        oldest_epoch = 0
        if self.chain is not None:
            verify_challenge_sizes(challenge, self.chain.preset)
            head = self.chain.head()
            if head is None:
                raise ScheduleError("the node has not read the chain's head yet", field="round")
            verify_challenge_timeliness(challenge, head, self.chain.preset,
                                        self.chain.genesis_block)
            oldest_epoch = compute_challenge_window(head, self.chain.preset,
                                                    self.chain.genesis_block)[0].epoch
        cid = challenge.challenge_id
        with self._lock:
            if len(self._open) >= MAX_OPEN_SESSIONS:
                raise ChallengeError(f"the node runs {MAX_OPEN_SESSIONS} sessions already",
                                     field="challengeId")
            per_mixer = (compute_max_sessions_per_mixer(self.chain.preset)
                         if self.chain is not None else MAX_SESSIONS_PER_MIXER)
            if sum(1 for m in self._open.values() if m == challenge.mixer) >= per_mixer:
                raise ChallengeError(f"mixer {challenge.mixer} has {per_mixer} sessions open "
                                     "with this node already", field="mixer")
            if cid in self._open or (self.seen is not None and not self.seen.claim(
                    cid, challenge.epoch, oldest_epoch)):
                raise ChallengeError(f"challenge 0x{cid.hex()} was taken up before: a "
                                     "challenge runs once", field="challengeId")
            if self.seen is not None and not self.seen.claim(
                    compute_round_claim(challenge), challenge.epoch, oldest_epoch):
                raise ChallengeError(
                    f"mixer {challenge.mixer} challenged this node in epoch {challenge.epoch} "
                    f"round {challenge.round} already: its VRF output gives one challenge a "
                    "round", field="round")
            self._open[cid] = challenge.mixer
        return ProverSession(self, challenge)

    def _release(self, challenge_id: bytes) -> None:
        with self._lock:
            self._open.pop(challenge_id, None)


class ProverSession:
    """One challenge session on the node: its steps, once each and in order (``STAGES``)."""

    def __init__(self, prover: ChallengeProver, challenge: Challenge) -> None:
        self._prover = prover
        self.challenge = challenge
        self.stage = "start"
        self.nonces: list[bytes] = []
        self.download = PayloadDigest()
        self.download_digest: bytes | None = None
        self.upload_digest: bytes | None = None
        self.attempts: list[HeldProduct] = []
        """The compute step's attempts so far, in order."""
        self.last_attempt_seed: bytes | None = None
        """The seed revealed for the latest attempt (the next one must hash to it)."""
        self.answer: HeldProduct | None = None
        """The attempt the mixer counts, from ``finish`` on."""
        self.response: SignedChallengeResponse | None = None
        self.closed = False

    def _step(self, name: str, after: tuple[str, ...]) -> None:
        # Verify the session is open and at the step before this one.
        if self.closed:
            raise ChallengeError("the session has ended", field="challengeId")
        if self.stage not in after:
            raise ChallengeError(f"{name} out of order: the session is at {self.stage!r} "
                                 "(each step runs once, in order)", field="step")

    def echo(self, nonce: bytes) -> bytes:
        self._step("echo", ("start", "echo"))
        if len(nonce) != NONCE_BYTES:
            raise ChallengeError(f"a nonce is {NONCE_BYTES} bytes", field="nonce")
        if len(self.nonces) >= self.challenge.latency_echoes:
            raise ChallengeError("more echoes than the challenge asks for", field="nonce")
        self.nonces.append(nonce)
        self.stage = "echo"
        return nonce

    def download_chunk(self, chunk: bytes) -> bytes | None:
        """Take the next bytes of the download; its digest once all have arrived."""
        self._step("download", ("echo",))
        if len(self.nonces) != self.challenge.latency_echoes:
            raise ChallengeError(f"download after {len(self.nonces)} echoes of "
                                 f"{self.challenge.latency_echoes}", field="step")
        if self.download.nbytes + len(chunk) > self.challenge.download_bytes:
            raise ChallengeError(f"more than the challenge's {self.challenge.download_bytes} "
                                 "bytes of download", field="download")
        self.download.update(chunk)
        if self.download.nbytes < self.challenge.download_bytes:
            return None
        self.download_digest = self.download.digest()
        self.stage = "download"
        return self.download_digest

    def upload(self, upload_seed: bytes) -> bytes:
        """The payload of the revealed upload seed (checked against its commitment)."""
        self._step("upload", ("download",))
        c = self.challenge
        verify_seed_reveal(upload_seed, c.upload_seed_hash, "uploadSeed")
        data = upload_payload(upload_seed, c.upload_bytes)
        digest = PayloadDigest()
        digest.update(data)
        self.upload_digest = digest.digest()
        self.stage = "upload"
        return data

    def compute(self, attempt_seed: bytes) -> bytes:
        """Compute and commit to the product of the next attempt's revealed seed; returns
        its root."""
        self._step("compute", ("upload", "compute"))
        c = self.challenge
        if len(self.attempts) >= c.compute_attempts:
            raise ChallengeError(f"more compute attempts than the challenge's "
                                 f"{c.compute_attempts}", field="step")
        verify_attempt_seed(attempt_seed, self.last_attempt_seed, c.compute_seed_hash)
        self.stage = "computing"  # no other step while it runs, nor after it failed
        size = ComputeSize(n=c.compute_n, rows=c.compute_rows, checks=c.compute_checks)
        token = COMPUTING_ATTEMPT.set((c.challenge_id, len(self.attempts)))
        try:
            self.attempts.append(hold_product(self._prover._compute(attempt_seed, size)))
        finally:
            COMPUTING_ATTEMPT.reset(token)
        self.last_attempt_seed = attempt_seed
        self.stage = "compute"
        return self.attempts[-1].root

    def finish(self, attempt: int) -> SignedChallengeResponse:
        """Sign the ChallengeResponse over every digest of the session, with the root of
        ``attempt`` (the one the mixer counts); the other attempts' products are released."""
        self._step("finish", ("compute",))
        c = self.challenge
        if len(self.attempts) != c.compute_attempts:
            raise ChallengeError(f"finish after {len(self.attempts)} compute attempts of "
                                 f"{c.compute_attempts}", field="step")
        if not 0 <= attempt < c.compute_attempts:
            raise ChallengeError(f"attempt {attempt} is outside [0, {c.compute_attempts})",
                                 field="attempt")
        assert self.download_digest is not None and self.upload_digest is not None
        self.answer = self.attempts[attempt]
        for other in self.attempts:
            if other is not self.answer:
                other.release()
        self.attempts = [self.answer]
        response = ChallengeResponse(
            epoch=c.epoch, round=c.round, mixer=c.mixer, node=c.node,
            challenge_digest=c.hash_struct(), echo_digest=echo_digest(self.nonces),
            compute_root=self.answer.root, download_digest=self.download_digest,
            upload_digest=self.upload_digest,
        )
        identity = self._prover.identity
        self.response = SignedChallengeResponse(
            response=response,
            signature=identity.sign_typed(self._prover.domain, response.hash_struct()))
        self.stage = "finish"
        return self.response

    def open_rows(self, indices: list[int]) -> list[RowOpening]:
        """Reveal rows of the committed product; the session ends here."""
        self._step("open", ("finish",))
        assert self.answer is not None
        if len(indices) != self.challenge.compute_checks:
            raise ChallengeError(f"asked {len(indices)} rows, the challenge checks "
                                 f"{self.challenge.compute_checks}", field="indices")
        openings = self.answer.open_rows(indices)
        self.stage = "open"
        self.close()
        return openings

    def close(self) -> None:
        """End the session (idempotent): its slot and its products are released."""
        if not self.closed:
            self.closed = True
            for attempt in self.attempts:
                attempt.release()
            self.attempts = []
            self.answer = None
            self._prover._release(self.challenge.challenge_id)


__all__ = ["COMPUTING_ATTEMPT", "MAX_OPEN_SESSIONS", "MAX_SESSIONS_PER_MIXER", "STAGES",
           "ChainView", "ChallengeProver", "MemorySeen", "ProverSession", "SeenChallenges"]
