"""The mixer's side of one challenge session: drive it, time it, verify it, score it.

The transport (in-process for tests and demos, a WebSocket for the daemons) is injected; this
module decides the outcome and builds the ScoreReport. Timing is the mixer's own clock, and
each figure measures one thing (``dnanet.protocol.challenges.timing``): latency is the minimum
of the echoes' round trips; the download and the compute step have that round trip removed; the
upload is timed where the mixer receives it, from its first frame to its last. The compute step
is several timed attempts, each of a seed revealed at its start, and the fastest counts (as the
fastest echo does): whatever else the node's host ran during one attempt only slows that one.
The node signs the counted attempt's root, and that attempt's rows are checked. Everything the
mixer computes (payloads, their digests, the row checks) is done in a worker thread, before a
clock starts or after it stopped, so that the loop timing this session and others only times.
The node can only make itself look slower, except by adding to its echoes' round trip, which
the floor of ``compute_step_us`` bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import DnanetError, NodeUnreachable, SignatureError
from dnanet.node.api import FRAME_BYTES
from dnanet.params import Preset
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.challenges import KindSeeds, derive_attempt_seeds
from dnanet.protocol.challenges.bandwidth import (
    iter_download_payload,
    payload_digest,
    upload_payload,
)
from dnanet.protocol.challenges.compute import (
    ComputeSize,
    RowOpening,
    compute_root_from_proof,
    compute_row_leaf,
    derive_check_indices,
    verify_openings,
)
from dnanet.protocol.challenges.latency import echo_digest, echo_nonces
from dnanet.protocol.challenges.timing import (
    compute_counted_attempt,
    compute_rtt_us,
    compute_step_us,
    compute_upload_us,
)
from dnanet.protocol.evidence import encode_fraud_evidence, find_row_of_no_attempt
from dnanet.protocol.messages import (
    Challenge,
    Outcome,
    ScoreReport,
    SignedChallenge,
    SignedChallengeResponse,
    compute_failed_report,
)
from dnanet.protocol.scoring import compute_challenge_score

T = TypeVar("T")
Clock = Callable[[], int]
"""Monotonic nanoseconds."""
StepGate = Callable[[], AbstractAsyncContextManager[object]]
"""Entered around a timed step: held, nothing else it guards runs (``HostStepLock``)."""


class NodeTransport(Protocol):
    """How a mixer talks to one node during a session (see ``dnanet.node.prover``). A session
    is named by its challenge id from ``start`` until ``close``."""

    async def start(self, signed: SignedChallenge) -> None: ...
    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes: ...
    async def download(self, challenge_id: bytes, frames: list[bytes]) -> bytes: ...
    def upload(self, challenge_id: bytes, upload_seed: bytes) -> AsyncIterator[bytes]:
        """The upload payload's frames, each as soon as it has arrived."""
        ...
    async def compute(self, challenge_id: bytes, attempt_seed: bytes) -> bytes:
        """One attempt of the compute step: the root of the product of ``attempt_seed``."""
        ...
    async def finish(self, challenge_id: bytes, attempt: int) -> SignedChallengeResponse:
        """The node's signed response, with the root of the counted ``attempt``."""
        ...
    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]: ...
    async def close(self, challenge_id: bytes) -> None: ...


class _Failed(Exception):
    def __init__(self, outcome: Outcome, reason: str) -> None:
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class _Prepared:
    """What the mixer computes before the session: nothing of it is timed."""

    download_frames: list[bytes]
    download_digest: bytes
    upload: bytes
    upload_digest: bytes


def _prepare(seeds: KindSeeds, challenge: Challenge) -> _Prepared:
    payload = b"".join(iter_download_payload(seeds.download_seed, challenge.download_bytes))
    frames = [payload[i:i + FRAME_BYTES] for i in range(0, len(payload), FRAME_BYTES)]
    upload = upload_payload(seeds.upload_seed, challenge.upload_bytes)
    return _Prepared(frames, payload_digest(payload), upload, payload_digest(upload))


async def run_challenge_session(
    transport: NodeTransport,
    *,
    identity: Identity,
    domain: Domain,
    preset: Preset,
    beta: bytes,
    vrf_proof: bytes,
    epoch: int,
    round_: int,
    node: str,
    hardware_class: int,
    clock: Clock = time.perf_counter_ns,
    compute_gate: StepGate | None = None,
) -> ScoreReport:
    """Challenge ``node`` once and return the mixer-signed-to-be ScoreReport (never raises for
    the node's faults: they become the report's outcome and reason). ``compute_gate`` is held
    around the timed compute step (devnets on one host: see ``HostStepLock``)."""
    challenge = compute_challenge(
        beta=beta, epoch=epoch, round_=round_, mixer=identity.address, node=node,
        hardware_class=hardware_class, preset=preset,
    )
    base = dict(
        epoch=epoch, round=round_, mixer=identity.address, node=node.lower(),
        hardware_class=hardware_class, vrf_proof=vrf_proof,
        challenge_digest=challenge.hash_struct(),
    )
    timeout = preset.challenge_timeout_ms / 1000
    seeds = compute_kind_seeds(beta, challenge.node)
    prepared = await asyncio.to_thread(_prepare, seeds, challenge)
    try:
        result = await asyncio.wait_for(
            _drive(transport, challenge, identity, domain, seeds, prepared, clock,
                   compute_gate), timeout
        )
    except TimeoutError:
        return compute_failed_report(base, Outcome.TIMEOUT, f"no answer within {timeout:g} s")
    except _Failed as failed:
        return compute_failed_report(base, failed.outcome, failed.reason)
    finally:
        with contextlib.suppress(Exception):
            await transport.close(challenge.challenge_id)
    signed, measured, evidence = result
    response = signed.response
    outcome = Outcome.WRONG_ANSWER if evidence else Outcome.OK
    rtt_us, compute_us, down_us, up_us = measured if outcome == Outcome.OK else (0, 0, 0, 0)
    score = compute_challenge_score(
        preset.sizes_for_class(hardware_class), outcome=outcome, rtt_us=rtt_us,
        compute_us=compute_us, download_us=down_us, upload_us=up_us, params=preset.scoring,
    )
    return ScoreReport(
        **base,  # type: ignore[arg-type]
        echo_digest=response.echo_digest,
        compute_root=response.compute_root,
        download_digest=response.download_digest,
        upload_digest=response.upload_digest,
        response_signature=signed.signature,
        rtt_us=rtt_us, compute_us=compute_us, download_us=down_us, upload_us=up_us,
        outcome=outcome,
        reason="signed a wrong row of the product" if evidence else "",
        evidence=evidence,
        score=score.total,
    )


def _fault(what: str, exc: DnanetError) -> _Failed:
    """The node's fault during ``what`` as a failed outcome."""
    if isinstance(exc, NodeUnreachable):
        return _Failed(Outcome.UNREACHABLE, f"{what}: {exc}")
    return _Failed(Outcome.BAD_RESPONSE, f"{what}: {exc}")


async def _call(what: str, coro: Awaitable[T]) -> T:
    """Await a transport call, mapping the node's faults to a failed outcome."""
    try:
        return await coro
    except DnanetError as exc:
        raise _fault(what, exc) from None


async def _drive(
    transport: NodeTransport,
    challenge: Challenge,
    identity: Identity,
    domain: Domain,
    seeds: KindSeeds,
    prepared: _Prepared,
    clock: Clock,
    compute_gate: StepGate | None = None,
) -> tuple[SignedChallengeResponse, tuple[int, int, int, int], bytes]:
    cid = challenge.challenge_id
    signed_challenge = SignedChallenge(
        challenge=challenge, signature=identity.sign_typed(domain, challenge.hash_struct())
    )
    await _call("start", transport.start(signed_challenge))

    # Latency: echo nonces the node cannot predict; the fastest round trip counts.
    nonces = echo_nonces(seeds.latency_seed, challenge.latency_echoes)
    samples = []
    for nonce in nonces:
        t0 = clock()
        echoed: bytes = await _call("echo", transport.echo(cid, nonce))
        samples.append(clock() - t0)
        if echoed != nonce:
            raise _Failed(Outcome.BAD_RESPONSE, "echo returned another nonce")
    rtt_ns = min(samples)

    # Bandwidth down: a payload only the mixer can generate, its frames ready before the clock
    # starts; the node answers its digest after the last byte. The round trip is removed.
    t0 = clock()
    down_digest: bytes = await _call("download", transport.download(cid,
                                                                    prepared.download_frames))
    download_us = compute_step_us(clock() - t0, rtt_ns)
    # Bandwidth up: the mixer reveals the upload seed; timed where it receives the payload.
    uploaded, upload_us = await _receive_upload(transport, challenge, seeds.upload_seed,
                                                rtt_ns, clock)

    # Compute: each attempt's seed is revealed at its start, so the node cannot start before
    # it; its commitment to the product ends it. The round trip is removed and the fastest
    # attempt counts. Where nodes share one host (a devnet), the host's mixers take turns at
    # each attempt (``compute_gate``).
    attempt_seeds = derive_attempt_seeds(seeds.compute_seed, challenge.compute_attempts)
    roots: list[bytes] = []
    attempt_ns: list[int] = []
    for attempt_seed in attempt_seeds:
        async with compute_gate() if compute_gate is not None else contextlib.nullcontext():
            t0 = clock()
            roots.append(await _call("compute", transport.compute(cid, attempt_seed)))
            attempt_ns.append(clock() - t0)
    counted = compute_counted_attempt(attempt_ns)
    root = roots[counted]
    compute_us = compute_step_us(attempt_ns[counted], rtt_ns)

    signed: SignedChallengeResponse = await _call("finish", transport.finish(cid, counted))
    _verify_response(signed, challenge, domain, nonces, prepared.download_digest, root,
                     down_digest)
    if not await asyncio.to_thread(_is_payload, uploaded, prepared.upload):
        raise _Failed(Outcome.BAD_RESPONSE, "uploaded payload differs from the upload seed's")
    if signed.response.upload_digest != prepared.upload_digest:
        raise _Failed(Outcome.BAD_RESPONSE, "signed upload digest differs from the payload")

    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    indices = derive_check_indices(seeds.check_seed, root, size)
    openings: list[RowOpening] = await _call("open", transport.open_rows(cid, indices))
    evidence = await asyncio.to_thread(_check_openings, challenge, seeds.compute_seed,
                                       attempt_seeds[counted], seeds.check_seed, size, root,
                                       openings)
    return signed, (compute_rtt_us(samples), compute_us, download_us, upload_us), evidence


async def _receive_upload(transport: NodeTransport, challenge: Challenge, upload_seed: bytes,
                          rtt_ns: int, clock: Clock) -> tuple[list[bytes], int]:
    """The upload's frames and its time where the mixer receives it (``compute_upload_us``);
    for a payload of one frame, request to answer less the round trip."""
    nbytes = challenge.upload_bytes
    frames: list[bytes] = []
    arrivals: list[tuple[int, int]] = []
    received = 0
    t_request = clock()
    try:
        async for frame in transport.upload(challenge.challenge_id, upload_seed):
            received += len(frame)
            arrivals.append((received, clock()))
            frames.append(frame)
            if received > nbytes:
                raise _Failed(Outcome.BAD_RESPONSE, f"upload: more than {nbytes} bytes")
    except DnanetError as exc:
        raise _fault("upload", exc) from None
    if received != nbytes:
        raise _Failed(Outcome.BAD_RESPONSE, f"upload: {received} bytes of {nbytes}")
    if arrivals[0][0] < nbytes:
        return frames, compute_upload_us(arrivals)
    return frames, compute_step_us(arrivals[-1][1] - t_request, rtt_ns)


def _is_payload(frames: list[bytes], expected: bytes) -> bool:
    return b"".join(frames) == expected


def _verify_response(
    signed: SignedChallengeResponse,
    challenge: Challenge,
    domain: Domain,
    nonces: list[bytes],
    want_down: bytes,
    root: bytes,
    down_digest: bytes,
) -> None:
    r = signed.response
    try:
        signer = recover_typed(domain, r.hash_struct(), signed.signature)
    except SignatureError as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"response signature: {exc}") from None
    if signer != challenge.node:
        raise _Failed(Outcome.BAD_RESPONSE, f"response signed by {signer}, not the node")
    expected = (challenge.epoch, challenge.round, challenge.mixer, challenge.node,
                challenge.hash_struct(), echo_digest(nonces), root, down_digest)
    got = (r.epoch, r.round, r.mixer, r.node, r.challenge_digest, r.echo_digest,
           r.compute_root, r.download_digest)
    if got != expected:
        raise _Failed(Outcome.BAD_RESPONSE, "signed response differs from the session")
    if r.download_digest != want_down:
        raise _Failed(Outcome.BAD_RESPONSE, "download digest is not the payload's")


def _check_openings(
    challenge: Challenge,
    compute_seed: bytes,
    attempt_seed: bytes,
    check_seed: bytes,
    size: ComputeSize,
    root: bytes,
    openings: list[RowOpening],
) -> bytes:
    """Empty bytes if the counted attempt's openings verify against its seed; fraud evidence
    if a committed row is wrong for every attempt's seed (``dnanet.protocol.evidence``)."""
    try:
        verify_openings(attempt_seed, check_seed, size, root, openings)
        return b""
    except DnanetError as exc:
        # A row under the signed root that no attempt's seed gives is fraud; anything else
        # (one attempt's rows answered for another's) is a bad response.
        committed = []
        for opening in openings:
            if not isinstance(opening.row, bytes) or len(opening.row) != 4 * size.n:
                continue
            try:
                leaf = compute_row_leaf(opening.index, opening.row)
                under_root = compute_root_from_proof(
                    leaf, opening.index, size.rows, opening.proof) == root
            except DnanetError:
                continue
            if under_root:
                committed.append(opening)
        fraud = find_row_of_no_attempt(compute_seed, challenge, committed)
        if fraud is not None:
            return encode_fraud_evidence(fraud)
        raise _Failed(Outcome.BAD_RESPONSE, f"openings: {exc}") from None


__all__ = ["NodeTransport", "run_challenge_session"]
