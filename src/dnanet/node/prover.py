"""The node's side of a challenge session, independent of the transport that carries it.

A session runs: ``start`` (a challenge signed by a current mixer) -> ``echo`` x k ->
``download`` -> ``upload`` -> ``compute`` (commit to the product) -> ``finish`` (sign the
ChallengeResponse over every digest) -> ``open_rows`` (reveal the rows the mixer asks for).
The node signs before it learns which rows will be checked, so a wrong committed row is
signed evidence of fraud.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import ChallengeError, SignatureError
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

ComputeFn = Callable[[bytes, ComputeSize], ComputeAnswer]


@dataclass
class _Session:
    challenge: Challenge
    nonces: list[bytes] = field(default_factory=list)
    download: PayloadDigest | None = None
    download_digest: bytes | None = None
    upload_digest: bytes | None = None
    answer: ComputeAnswer | None = None
    response: SignedChallengeResponse | None = None


class ChallengeProver:
    """Answers challenges for one node identity.

    ``mixers`` returns the current mixer set (address -> anything): a challenge from any other
    signer is refused. ``compute`` performs the product (GPU or CPU); tests may slow it down.
    """

    def __init__(
        self,
        identity: Identity,
        domain: Domain,
        mixers: Callable[[], Mapping[str, object]],
        *,
        compute: ComputeFn | None = None,
        device: str = "auto",
    ) -> None:
        self.identity = identity
        self.domain = domain
        self._mixers = mixers
        self._compute = compute or (lambda seed, size: compute_product(seed, size, device))
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()
        self._lock = threading.Lock()

    # -- session steps ------------------------------------------------------------------------
    def start(self, signed: SignedChallenge) -> None:
        """Accept a challenge signed by a current mixer and addressed to this node."""
        challenge = signed.challenge
        # Verify the challenge is for us and signed by the mixer it names, a current member.
        if challenge.node != self.identity.address:
            raise ChallengeError(f"challenge is for {challenge.node}, not this node", field="node")
        if challenge.mixer not in self._mixers():
            raise ChallengeError(f"{challenge.mixer} is not a current mixer", field="mixer")
        signer = recover_typed(self.domain, challenge.hash_struct(), signed.signature)
        if signer != challenge.mixer:
            raise SignatureError(f"challenge signed by {signer}, not its mixer", field="signature")
        with self._lock:
            if challenge.challenge_id in self._sessions:
                raise ChallengeError("challenge already started", field="challengeId")
            self._sessions[challenge.challenge_id] = _Session(challenge)
            while len(self._sessions) > MAX_OPEN_SESSIONS:
                self._sessions.popitem(last=False)

    def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        session = self._session(challenge_id)
        if len(nonce) != NONCE_BYTES:
            raise ChallengeError(f"a nonce is {NONCE_BYTES} bytes", field="nonce")
        if len(session.nonces) >= session.challenge.latency_echoes:
            raise ChallengeError("more echoes than the challenge asks for", field="nonce")
        session.nonces.append(nonce)
        return nonce

    def download_chunk(self, challenge_id: bytes, chunk: bytes) -> None:
        session = self._session(challenge_id)
        if session.download is None:
            session.download = PayloadDigest()
        session.download.update(chunk)

    def download_done(self, challenge_id: bytes) -> bytes:
        session = self._session(challenge_id)
        if session.download is None:
            session.download = PayloadDigest()
        session.download_digest = session.download.digest()
        return session.download_digest

    def upload(self, challenge_id: bytes) -> bytes:
        session = self._session(challenge_id)
        c = session.challenge
        data = upload_payload(c.upload_seed, c.upload_bytes)
        digest = PayloadDigest()
        digest.update(data)
        session.upload_digest = digest.digest()
        return data

    def compute(self, challenge_id: bytes) -> bytes:
        """Compute and commit to the product; returns the root."""
        session = self._session(challenge_id)
        c = session.challenge
        size = ComputeSize(n=c.compute_n, rows=c.compute_rows, checks=c.compute_checks)
        session.answer = self._compute(c.compute_seed, size)
        return session.answer.root

    def finish(self, challenge_id: bytes) -> SignedChallengeResponse:
        """Sign the ChallengeResponse over every digest of the session."""
        session = self._session(challenge_id)
        c = session.challenge
        if session.answer is None:
            raise ChallengeError("finish before compute", field="challengeId")
        if len(session.nonces) != c.latency_echoes:
            raise ChallengeError(
                f"{len(session.nonces)} echoes of {c.latency_echoes}", field="challengeId"
            )
        if session.download_digest is None or session.upload_digest is None:
            raise ChallengeError("finish before both transfers", field="challengeId")
        response = ChallengeResponse(
            epoch=c.epoch,
            round=c.round,
            mixer=c.mixer,
            node=c.node,
            challenge_digest=c.hash_struct(),
            echo_digest=echo_digest(session.nonces),
            compute_root=session.answer.root,
            download_digest=session.download_digest,
            upload_digest=session.upload_digest,
        )
        session.response = SignedChallengeResponse(
            response=response,
            signature=self.identity.sign_typed(self.domain, response.hash_struct()),
        )
        return session.response

    def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]:
        """Reveal rows of the committed product; the session ends here."""
        session = self._session(challenge_id)
        if session.answer is None or session.response is None:
            raise ChallengeError("open before the signed response", field="challengeId")
        if len(indices) != session.challenge.compute_checks:
            raise ChallengeError(
                f"asked {len(indices)} rows, the challenge checks "
                f"{session.challenge.compute_checks}",
                field="indices",
            )
        openings = open_rows(session.answer, indices)
        with self._lock:
            self._sessions.pop(challenge_id, None)
        return openings

    def _session(self, challenge_id: bytes) -> _Session:
        with self._lock:
            session = self._sessions.get(challenge_id)
        if session is None:
            raise ChallengeError("no such open challenge", field="challengeId")
        return session


__all__ = ["ChallengeProver"]
