"""The mixer's side of one challenge session: drive it, time it, verify it, score it.

The transport (in-process for tests and demos, HTTP for the daemons) is injected; this module
decides the outcome and builds the ScoreReport. Timing is the mixer's own clock: the node can
only make itself look slower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from dnanet.crypto.eip712 import Domain, recover_typed
from dnanet.crypto.keys import Identity
from dnanet.errors import DnanetError, NodeUnreachable, SignatureError
from dnanet.params import Preset
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
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
from dnanet.protocol.challenges.latency import echo_digest, echo_nonces, median_rtt_us
from dnanet.protocol.evidence import encode_fraud_evidence, is_row_correct
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


class NodeTransport(Protocol):
    """How a mixer talks to one node during a session (see ``dnanet.node.prover``)."""

    async def start(self, signed: SignedChallenge) -> None: ...
    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes: ...
    async def download(self, challenge_id: bytes, chunks: list[bytes]) -> bytes: ...
    async def upload(self, challenge_id: bytes) -> bytes: ...
    async def compute(self, challenge_id: bytes) -> bytes: ...
    async def finish(self, challenge_id: bytes) -> SignedChallengeResponse: ...
    async def open_rows(self, challenge_id: bytes, indices: list[int]) -> list[RowOpening]: ...


class _Failed(Exception):
    def __init__(self, outcome: Outcome, reason: str) -> None:
        self.outcome = outcome
        self.reason = reason


def _us(ns: int) -> int:
    return max(1, ns // 1000)


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
) -> ScoreReport:
    """Challenge ``node`` once and return the mixer-signed-to-be ScoreReport (never raises for
    the node's faults: they become the report's outcome and reason)."""
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
    try:
        result = await asyncio.wait_for(
            _drive(transport, challenge, identity, domain, beta, clock), timeout
        )
    except TimeoutError:
        return compute_failed_report(base, Outcome.TIMEOUT, f"no answer within {timeout:g} s")
    except _Failed as failed:
        return compute_failed_report(base, failed.outcome, failed.reason)
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


async def _call(what: str, coro: Awaitable[T]) -> T:
    """Await a transport call, mapping the node's faults to a failed outcome."""
    try:
        return await coro
    except NodeUnreachable as exc:
        raise _Failed(Outcome.UNREACHABLE, f"{what}: {exc}") from None
    except DnanetError as exc:
        raise _Failed(Outcome.BAD_RESPONSE, f"{what}: {exc}") from None


async def _drive(
    transport: NodeTransport,
    challenge: Challenge,
    identity: Identity,
    domain: Domain,
    beta: bytes,
    clock: Clock,
) -> tuple[SignedChallengeResponse, tuple[int, int, int, int], bytes]:
    seeds = compute_kind_seeds(beta, challenge.node)
    cid = challenge.challenge_id
    signed_challenge = SignedChallenge(
        challenge=challenge, signature=identity.sign_typed(domain, challenge.hash_struct())
    )
    await _call("start", transport.start(signed_challenge))

    # Latency: echo nonces the node cannot predict; the median round trip counts.
    nonces = echo_nonces(seeds.latency_seed, challenge.latency_echoes)
    samples = []
    for nonce in nonces:
        t0 = clock()
        echoed: bytes = await _call("echo", transport.echo(cid, nonce))
        samples.append(_us(clock() - t0))
        if echoed != nonce:
            raise _Failed(Outcome.BAD_RESPONSE, "echo returned another nonce")
    rtt_us = median_rtt_us(samples)

    # Bandwidth down: a payload only the mixer can generate; the node returns its digest.
    chunks = list(iter_download_payload(seeds.download_seed, challenge.download_bytes))
    t0 = clock()
    down_digest: bytes = await _call("download", transport.download(cid, chunks))
    download_us = _us(clock() - t0)
    # Bandwidth up: the node sends the payload of the upload seed.
    t0 = clock()
    uploaded: bytes = await _call("upload", transport.upload(cid))
    upload_us = _us(clock() - t0)

    # Compute: the node commits to the product; the commitment time is its compute time.
    t0 = clock()
    root: bytes = await _call("compute", transport.compute(cid))
    compute_us = _us(clock() - t0)

    signed: SignedChallengeResponse = await _call("finish", transport.finish(cid))
    _verify_response(signed, challenge, domain, nonces, payload_digest(b"".join(chunks)), root,
                     down_digest)
    if uploaded != upload_payload(challenge.upload_seed, challenge.upload_bytes):
        raise _Failed(Outcome.BAD_RESPONSE, "uploaded payload differs from the upload seed's")
    if signed.response.upload_digest != payload_digest(uploaded):
        raise _Failed(Outcome.BAD_RESPONSE, "signed upload digest differs from the payload")

    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    indices = derive_check_indices(seeds.check_seed, root, size)
    openings: list[RowOpening] = await _call("open", transport.open_rows(cid, indices))
    evidence = _check_openings(challenge, seeds.compute_seed, seeds.check_seed, size, root,
                               openings)
    return signed, (rtt_us, compute_us, download_us, upload_us), evidence


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
    check_seed: bytes,
    size: ComputeSize,
    root: bytes,
    openings: list[RowOpening],
) -> bytes:
    """Empty bytes if the openings verify; fraud evidence if a committed row is wrong."""
    try:
        verify_openings(compute_seed, check_seed, size, root, openings)
        return b""
    except DnanetError as exc:
        # A wrong row under the signed root is fraud; anything else is a bad response.
        for opening in openings:
            if not isinstance(opening.row, bytes) or len(opening.row) != 4 * size.n:
                continue
            try:
                leaf = compute_row_leaf(opening.index, opening.row)
                under_root = compute_root_from_proof(
                    leaf, opening.index, size.rows, opening.proof) == root
            except DnanetError:
                continue
            if under_root and not is_row_correct(compute_seed, size, opening):
                return encode_fraud_evidence(opening)
        raise _Failed(Outcome.BAD_RESPONSE, f"openings: {exc}") from None


__all__ = ["NodeTransport", "run_challenge_session"]
