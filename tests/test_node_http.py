"""The node's challenge session over a real WebSocket: a full session driven by the mixer's
transport, every attack on a session refused (a stranger's frames, a replay, a repeated step),
and every kind of bad input answered with an error frame naming the field, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

import dnanet.node.session_server as session_server
from dnanet.mixer.node_client import HttpNodeTransport, open_node_session, session_url
from dnanet.mixer.session import run_challenge_session
from dnanet.node.api import (
    ACCEPTED,
    COMPUTE,
    DOWNLOAD,
    ECHO,
    ERROR,
    FINISH,
    MAX_FRAME_BYTES,
    START,
    UPLOAD,
)
from dnanet.node.hardware import CLASS_GPU
from dnanet.node.prover import ChallengeProver
from dnanet.node.server import NODE_SCHEMA, StoreSeen, build_node_app
from dnanet.params import MAINNET, TEST, Preset
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.challenges import derive_attempt_seeds
from dnanet.protocol.challenges.bandwidth import download_payload, payload_digest
from dnanet.protocol.challenges.latency import echo_nonces
from dnanet.protocol.messages import Outcome, ScoreReport, SignedChallenge
from dnanet.protocol.validation import verify_score_report
from dnanet.service.http import Server
from dnanet.service.store import Store
from protocol_fixtures import (
    DOMAIN,
    EPOCH,
    make_mixers,
    make_nodes,
    make_view,
    prove_round,
)

MIXERS = make_mixers(1, "http-mixer")
MIXER = MIXERS[0]
NODE = make_nodes(1, "http-node")[0]
STRANGER = make_mixers(1, "outsider")[0]


def make_prover(store: Store) -> ChallengeProver:
    members = {m.address: m.vrf_public_key for m in MIXERS}
    return ChallengeProver(NODE, DOMAIN, lambda: members, device="cpu", seen=StoreSeen(store))


@contextlib.asynccontextmanager
async def serving_node(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[str, Store, FastAPI]]:
    """A node's app on loopback; its database survives the context (a restart reopens it)."""
    store = Store(tmp_path / "node.db", NODE_SCHEMA)
    app = build_node_app(make_prover(store), store, **options)
    server = Server(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield server.url, store, app
    finally:
        await server.stop()
        store.close()


def signed_challenge(round_: int = 0, *, mixer: Any = MIXER, hardware_class: int = 0,
                     preset: Preset = TEST) -> SignedChallenge:
    _, beta = prove_round(mixer, round_)
    challenge = compute_challenge(beta=beta, epoch=EPOCH, round_=round_, mixer=mixer.address,
                                  node=NODE.address, hardware_class=hardware_class,
                                  preset=preset)
    return SignedChallenge(challenge=challenge,
                           signature=mixer.identity.sign_typed(DOMAIN, challenge.hash_struct()))


async def challenge_node(url: str, round_: int = 0, *, transport: Any = None,
                         preset: Preset = TEST) -> ScoreReport:
    proof, beta = prove_round(MIXER, round_)
    async with open_node_session(8, 10) as session:
        return await run_challenge_session(
            transport(session, url) if transport else HttpNodeTransport(session, url),
            identity=MIXER.identity, domain=DOMAIN, preset=preset, beta=beta, vrf_proof=proof,
            epoch=EPOCH, round_=round_, node=NODE.address, hardware_class=0)


@contextlib.asynccontextmanager
async def raw_socket(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(session_url(url), proxy=None, compression=None, max_size=None,
                       ping_interval=None) as socket:
        yield socket


async def refusal(socket: ClientConnection) -> dict[str, Any]:
    """The node's error frame, after which it closes the connection."""
    import json

    frame = await asyncio.wait_for(socket.recv(decode=False), 10)
    assert isinstance(frame, bytes) and frame[:1] == ERROR, frame[:80]
    await asyncio.wait_for(socket.wait_closed(), 10)
    error: dict[str, Any] = json.loads(frame[1:])["error"]
    assert error["message"] and error["type"]
    return error


async def started(socket: ClientConnection, signed: SignedChallenge) -> None:
    await socket.send(START + signed.to_json())
    assert await socket.recv(decode=False) == ACCEPTED


# -- a session, end to end ---------------------------------------------------------------------


def test_a_session_over_a_websocket_is_scored_and_verifies(tmp_path: Path) -> None:
    asyncio.run(_session_over_websocket(tmp_path))


async def _session_over_websocket(tmp_path: Path) -> None:
    async with serving_node(tmp_path) as (url, store, app):
        report = await challenge_node(url)
        assert report.outcome == Outcome.OK, report.reason
        assert report.rtt_us > 0 and report.compute_us > 0 and report.download_us > 0
        assert verify_score_report(report, make_view(MIXERS, [NODE])).total == report.score
        # The signed challenge and the node's signed response were stored before it answered.
        rows = store.query("SELECT challenge_json, response_json FROM challenges")
        assert len(rows) == 1 and rows[0][0] and rows[0][1]
        assert SignedChallenge.from_json(rows[0][0]).challenge.node == NODE.address
        # The ended session is "open" at once in the status; on disk it still says "finish"
        # (written with the signed response) until the next transaction, or the daemon's stop.
        async with httpx.AsyncClient(timeout=10) as client:
            (entry,) = (await client.get(url + "/v1/status")).json()["recent_challenges"]
            metrics = (await client.get(url + "/metrics")).text
        assert entry["completed"] and entry["stage"] == "open"
        assert entry["node_metrics"]["echoes"] == TEST.hardware_classes[0].latency_echoes
        assert store.query("SELECT stage FROM challenge_progress") == [("finish",)]
        app.state.flush_progress()
        assert store.query("SELECT stage FROM challenge_progress") == [("open",)]
        assert 'dnanet_node_challenges_total{reason="",result="answered"} 1.0' in metrics


def test_an_unreachable_node_is_reported_unreachable(tmp_path: Path) -> None:
    async def run() -> ScoreReport:
        async with serving_node(tmp_path) as (url, _, _):
            pass  # the port is free again once the node has stopped
        return await challenge_node(url)

    report = asyncio.run(run())
    assert report.outcome == Outcome.UNREACHABLE and report.score == 0


def test_an_offline_node_is_unreachable(tmp_path: Path) -> None:
    async def run() -> ScoreReport:
        async with serving_node(tmp_path, online=lambda: False) as (url, _, _):
            return await challenge_node(url)

    report = asyncio.run(run())
    assert report.outcome == Outcome.UNREACHABLE and "503" in report.reason


def test_plain_http_to_the_session_path_is_told_to_upgrade(tmp_path: Path) -> None:
    async def run() -> httpx.Response:
        async with serving_node(tmp_path) as (url, _, _), httpx.AsyncClient() as client:
            return await client.post(url + "/v1/challenges", content=b"{}")

    response = asyncio.run(run())
    assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
    assert response.json()["error"]["field"] == "path"


# -- attacks on a session ----------------------------------------------------------------------


class StrangerInterferes(HttpNodeTransport):
    """The honest mixer's transport; before its first echo, a stranger who knows the
    challenge id sends junk echoes for it, on a connection of its own and over plain HTTP."""

    answers: ClassVar[list[Any]] = []

    async def echo(self, challenge_id: bytes, nonce: bytes) -> bytes:
        if not self.answers:
            base = self.url.replace("ws://", "http://")
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.post(f"{base}/0x{challenge_id.hex()}/echo",
                                             json={"nonce": "0x" + "00" * 16})
                self.answers.append(response.status_code)
            async with connect(self.url, proxy=None) as socket:
                await socket.send(ECHO + bytes(16))
                self.answers.append(await refusal(socket))
        return await super().echo(challenge_id, nonce)


def test_a_strangers_junk_echo_is_refused_and_the_honest_session_passes(tmp_path: Path) -> None:
    async def run() -> ScoreReport:
        async with serving_node(tmp_path) as (url, _, _):
            return await challenge_node(url, transport=StrangerInterferes)

    report = asyncio.run(run())
    assert report.outcome == Outcome.OK, report.reason
    http_status, frame_error = StrangerInterferes.answers
    assert http_status in (404, 405)  # a session has no address of its own
    assert frame_error["field"] == "step"  # a connection starts with a signed challenge


def test_a_replayed_challenge_is_refused_also_after_a_restart(tmp_path: Path) -> None:
    async def run() -> list[dict[str, Any]]:
        errors = []
        signed = signed_challenge()
        async with serving_node(tmp_path) as (url, _, _):
            assert (await challenge_node(url)).outcome == Outcome.OK
            async with raw_socket(url) as socket:  # the signed challenge, captured and replayed
                await socket.send(START + signed.to_json())
                errors.append(await refusal(socket))
        async with serving_node(tmp_path) as (url, _, _):  # the same database, a new process
            async with raw_socket(url) as socket:
                await socket.send(START + signed.to_json())
                errors.append(await refusal(socket))
            report = await challenge_node(url)  # the mixer's own retry is refused as well
            assert report.outcome == Outcome.BAD_RESPONSE and "taken up before" in report.reason
            assert (await challenge_node(url, 1)).outcome == Outcome.OK  # a new round: served
        return errors

    for error in asyncio.run(run()):
        assert error["field"] == "challengeId" and "taken up before" in error["message"]


@pytest.mark.parametrize("again", [UPLOAD, COMPUTE], ids=["upload", "compute"])
def test_a_step_repeated_on_a_session_is_refused(tmp_path: Path, again: bytes) -> None:
    async def run() -> tuple[int, dict[str, Any]]:
        signed = signed_challenge()
        challenge = signed.challenge
        seeds = compute_kind_seeds(prove_round(MIXER, 0)[1], NODE.address)
        async with serving_node(tmp_path) as (url, _, _), raw_socket(url) as socket:
            await started(socket, signed)
            for nonce in echo_nonces(seeds.latency_seed, challenge.latency_echoes):
                await socket.send(ECHO + nonce)
                assert await socket.recv(decode=False) == ECHO + nonce
            await socket.send(DOWNLOAD + download_payload(seeds.download_seed,
                                                          challenge.download_bytes))
            assert (await socket.recv(decode=False))[:1] == DOWNLOAD
            await socket.send(UPLOAD + seeds.upload_seed)
            uploaded = await socket.recv(decode=False)
            attempt_seeds = derive_attempt_seeds(seeds.compute_seed, challenge.compute_attempts)
            if again == COMPUTE:  # every attempt, then one more
                for seed in attempt_seeds:
                    await socket.send(COMPUTE + seed)
                    assert len(await socket.recv(decode=False)) == 33
            await socket.send(again + (attempt_seeds[-1] if again == COMPUTE
                                       else seeds.upload_seed))
            return len(uploaded) - 1, await refusal(socket)

    uploaded, error = asyncio.run(run())
    assert uploaded == TEST.hardware_classes[0].upload_bytes
    assert error["field"] == "step"
    assert ("out of order" if again == UPLOAD else "more compute attempts") in error["message"]


def test_the_node_sees_no_compute_seed_before_the_compute_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every byte the node receives before each compute frame, in a whole honest session: that
    attempt's seed is not among them (the signed challenge holds only the first's commitment,
    and each attempt's seed is the hash of the next)."""
    received: list[bytes] = []

    class Recording(session_server._AsgiChannel):
        async def receive(self) -> bytes:
            frame = await super().receive()
            received.append(frame)
            return frame

    monkeypatch.setattr(session_server, "_AsgiChannel", Recording)

    async def run() -> ScoreReport:
        async with serving_node(tmp_path) as (url, _, _):
            return await challenge_node(url)

    assert asyncio.run(run()).outcome == Outcome.OK
    seeds = compute_kind_seeds(prove_round(MIXER, 0)[1], NODE.address)
    attempt_seeds = derive_attempt_seeds(seeds.compute_seed, TEST.hardware_classes[0].
                                         compute_attempts)
    computes = [i for i, frame in enumerate(received) if frame[:1] == COMPUTE]
    assert len(computes) == len(attempt_seeds) == 2
    for compute_at, seed in zip(computes, attempt_seeds, strict=True):
        before = b"".join(received[:compute_at])
        assert seed not in before and seed.hex().encode() not in before
        assert received[compute_at] == COMPUTE + seed
    assert seeds.upload_seed not in b"".join(
        f for f in received if f[:1] != UPLOAD)  # revealed only in the upload frame


# -- bad input ---------------------------------------------------------------------------------


def _bad_frames() -> list[tuple[list[bytes], str, str]]:
    signed = signed_challenge()
    other = replace(signed.challenge, node=MIXER.address)
    return [
        ([b"E" + bytes(16)], "step", "start"),
        ([b""], "step", "start"),
        ([START + b"not json"], "SignedChallenge", "start"),
        ([START + b"[]"], "SignedChallenge", "start"),
        ([START + b'{"challenge": 1, "signature": "0x"}'], "SignedChallenge.challenge",
         "start"),
        ([START + signed_challenge(mixer=STRANGER).to_json()], "mixer", "start"),
        ([START + SignedChallenge(challenge=other, signature=signed.signature).to_json()],
         "node", "start"),
        ([START + replace(signed, signature=bytes(65)).to_json()], "signature", "start"),
        ([START + signed.to_json(), ECHO + bytes(15)], "nonce", "echo"),
        ([START + signed.to_json(), b"Z"], "step", "unknown"),
        ([START + signed.to_json(), COMPUTE + bytes(32)], "step", "compute"),
        ([START + signed.to_json(), FINISH], "attempt", "finish"),
        ([START + signed.to_json(), DOWNLOAD + bytes(MAX_FRAME_BYTES)], "frame", "download"),
    ]


@pytest.mark.parametrize(("frames", "field", "step"), _bad_frames(),
                         ids=["echo-first", "empty", "not-json", "not-object", "bad-field",
                              "stranger", "other-node", "bad-signature", "short-nonce",
                              "unknown-step", "compute-first", "finish-naming-no-attempt",
                              "oversized"])
def test_bad_input_is_an_error_frame_naming_the_field(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, frames: list[bytes], field: str,
        step: str) -> None:
    async def run() -> tuple[dict[str, Any], str]:
        async with serving_node(tmp_path) as (url, store, _):
            async with raw_socket(url) as socket:
                for frame in frames[:-1]:
                    await socket.send(frame)
                    assert (await socket.recv(decode=False))[:1] == ACCEPTED
                await socket.send(frames[-1])
                error = await refusal(socket)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(url + "/metrics")).text
            assert store.query("SELECT count(*) FROM challenges") == [(len(frames) - 1,)]
            return error, metrics

    with caplog.at_level(logging.DEBUG, logger="dnanet.node.challenges"):
        error, metrics = asyncio.run(run())
    assert error["field"] == field, error
    # Counted, and one log line saying how the session ended, as the node saw it: INFO for a
    # challenge, DEBUG for a connection that never presented one (a line per stranger's try
    # would let anyone fill the log).
    label = f"{step}/{field}"
    assert f'dnanet_node_challenges_total{{reason="{label}",result="failed"}} 1.0' in metrics
    (record,) = [r for r in caplog.records if r.name == "dnanet.node.challenges"]
    assert "failed" in record.getMessage() or "refused" in record.getMessage()
    parsed = frames[0][:1] == START and field not in ("SignedChallenge",
                                                       "SignedChallenge.challenge")
    assert record.levelno == (logging.INFO if parsed else logging.DEBUG)


def test_a_download_beyond_the_challenges_bytes_is_refused(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        signed = signed_challenge()
        seeds = compute_kind_seeds(prove_round(MIXER, 0)[1], NODE.address)
        async with serving_node(tmp_path) as (url, _, _), raw_socket(url) as socket:
            await started(socket, signed)
            for nonce in echo_nonces(seeds.latency_seed, signed.challenge.latency_echoes):
                await socket.send(ECHO + nonce)
                await socket.recv()
            await socket.send(DOWNLOAD + bytes(signed.challenge.download_bytes + 1))
            return await refusal(socket)

    error = asyncio.run(run())
    assert error["field"] == "download"


def test_a_mainnet_gpu_download_of_32_mib_is_received(tmp_path: Path) -> None:
    asyncio.run(_gpu_download(tmp_path))


async def _gpu_download(tmp_path: Path) -> None:
    signed = signed_challenge(hardware_class=CLASS_GPU, preset=MAINNET)
    challenge = signed.challenge
    assert challenge.download_bytes == 32 * 1024 * 1024
    payload = download_payload(b"\x07" * 32, challenge.download_bytes)
    async with serving_node(tmp_path) as (url, _, _):
        # Through the mixer's own transport, as a challenge session sends it.
        async with open_node_session(8, 30) as session:
            transport = HttpNodeTransport(session, url)
            await transport.start(signed)
            for i in range(challenge.latency_echoes):
                await transport.echo(challenge.challenge_id, bytes([i]) * 16)
            frames = [payload[i:i + (1 << 18)] for i in range(0, len(payload), 1 << 18)]
            digest = await transport.download(challenge.challenge_id, frames)
            await transport.close(challenge.challenge_id)
        assert digest == payload_digest(payload)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(100):  # the node records the session once it has seen it close
                status = (await client.get(url + "/v1/status")).json()
                entry = status["recent_challenges"][0]
                if entry["error"] is not None:
                    break
                await asyncio.sleep(0.02)
        assert entry["stage"] == "download" and entry["error"].startswith("download: ")
        assert entry["node_metrics"]["download_bytes"] == challenge.download_bytes
        assert entry["node_metrics"]["download_us"] > 0
