"""The node's challenge API over real HTTP: a full session driven by the mixer's HTTP transport,
and every kind of bad input answered with a 4xx naming the field, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from dnanet.mixer.node_client import HttpNodeTransport, open_node_session
from dnanet.mixer.session import run_challenge_session
from dnanet.node.hardware import CLASS_GPU
from dnanet.node.server import MAX_DOWNLOAD_BYTES, NODE_SCHEMA, build_node_app, download_path
from dnanet.params import MAINNET, PRESETS, TEST, Preset
from dnanet.protocol.challenge_params import compute_challenge
from dnanet.protocol.challenges.bandwidth import download_payload, payload_digest
from dnanet.protocol.codec import MAX_MESSAGE_BYTES
from dnanet.protocol.messages import Outcome, SignedChallenge
from dnanet.protocol.validation import verify_score_report
from dnanet.service.http import Server
from dnanet.service.store import Store
from protocol_fixtures import (
    DOMAIN,
    EPOCH,
    make_mixers,
    make_nodes,
    make_prover,
    make_view,
    prove_round,
)

MIXERS = make_mixers(1, "http-mixer")
NODE = make_nodes(1, "http-node")[0]


@contextlib.asynccontextmanager
async def serving_node(tmp_path: Path) -> AsyncIterator[tuple[str, Store]]:
    async with serving_node_app(tmp_path) as (url, store, _):
        yield url, store


@contextlib.asynccontextmanager
async def serving_node_app(tmp_path: Path) -> AsyncIterator[tuple[str, Store, FastAPI]]:
    store = Store(tmp_path / "node.db", NODE_SCHEMA)
    app = build_node_app(make_prover(NODE, MIXERS), store)
    server = Server(app, "127.0.0.1", _free_port())
    await server.start()
    try:
        yield server.url, store, app
    finally:
        await server.stop()
        store.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_session_over_http_is_scored_and_verifies(tmp_path: Path) -> None:
    asyncio.run(_session_over_http(tmp_path))


async def _session_over_http(tmp_path: Path) -> None:
    async with serving_node_app(tmp_path) as (url, store, app):
        mixer = MIXERS[0]
        proof, beta = prove_round(mixer, 0)
        async with open_node_session(8, 10) as session:
            report = await run_challenge_session(
                HttpNodeTransport(session, url),
                identity=mixer.identity,
                domain=DOMAIN,
                preset=TEST,
                beta=beta,
                vrf_proof=proof,
                epoch=EPOCH,
                round_=0,
                node=NODE.address,
                hardware_class=0,
            )
        assert report.outcome == Outcome.OK, report.reason
        assert report.rtt_us > 0 and report.compute_us > 0 and report.download_us > 0
        view = make_view(MIXERS, [NODE])
        assert verify_score_report(report, view).total == report.score
        # The signed challenge and the node's signed response were stored before it answered.
        rows = store.query("SELECT challenge_json, response_json FROM challenges")
        assert len(rows) == 1 and rows[0][0] and rows[0][1]
        assert SignedChallenge.from_json(rows[0][0]).challenge.node == NODE.address
        # The ended session is "open" at once in the status; on disk it still says "finish"
        # (written with the signed response) until the next transaction, or the daemon's stop.
        async with httpx.AsyncClient(timeout=10) as client:
            (entry,) = (await client.get(url + "/v1/status")).json()["recent_challenges"]
        assert entry["completed"] and entry["stage"] == "open"
        assert store.query("SELECT stage FROM challenge_progress") == [("finish",)]
        app.state.flush_progress()
        assert store.query("SELECT stage FROM challenge_progress") == [("open",)]


def test_an_unreachable_node_is_reported_unreachable() -> None:
    asyncio.run(_unreachable())


async def _unreachable() -> None:
    mixer = MIXERS[0]
    proof, beta = prove_round(mixer, 0)
    async with open_node_session(8, 2) as session:
        report = await run_challenge_session(
            HttpNodeTransport(session, f"http://127.0.0.1:{_free_port()}"),
            identity=mixer.identity,
            domain=DOMAIN,
            preset=TEST,
            beta=beta,
            vrf_proof=proof,
            epoch=EPOCH,
            round_=0,
            node=NODE.address,
            hardware_class=0,
        )
    assert report.outcome == Outcome.UNREACHABLE and report.score == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("POST", "/v1/challenges", b"not json", 400, "body"),
        ("POST", "/v1/challenges", b"[]", 400, "SignedChallenge"),
        (
            "POST",
            "/v1/challenges",
            b'{"challenge": 1, "signature": "0x"}',
            400,
            "SignedChallenge.challenge",
        ),
        ("POST", "/v1/challenges", b'{"x": 1}', 400, "SignedChallenge"),
        (
            "POST",
            "/v1/challenges/0x12/echo",
            b'{"nonce": "0x' + b"00" * 16 + b'"}',
            400,
            "challengeId",
        ),
        (
            "POST",
            "/v1/challenges/0x" + b"ab".decode() * 32 + "/echo",
            b'{"nonce": "0x' + b"00" * 16 + b'"}',
            422,
            "challengeId",
        ),
        (
            "POST",
            "/v1/challenges/0x" + "ab" * 32 + "/echo",
            b'{"nonce": "0x00"}',
            400,
            "EchoMessage.nonce",
        ),
        (
            "POST",
            "/v1/challenges/0x" + "ab" * 32 + "/open",
            b'{"indices": [-1]}',
            400,
            "OpenRequest.indices[0]",
        ),
        ("GET", "/v1/challenges/0x" + "ab" * 32 + "/upload", b"", 422, "challengeId"),
        ("POST", "/v1/challenges/0x" + "ab" * 32 + "/finish", b"", 422, "challengeId"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    tmp_path: Path,
    method: str,
    path: str,
    body: bytes,
    status: int,
    field: str | None,
) -> None:
    async def call() -> httpx.Response:
        async with serving_node(tmp_path) as (url, _), httpx.AsyncClient(timeout=5) as client:
            return await client.request(method, url + path, content=body)

    response = asyncio.run(call())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["field"] == field


def test_oversized_body_is_413(tmp_path: Path) -> None:
    async def call() -> httpx.Response:
        async with serving_node(tmp_path) as (url, _), httpx.AsyncClient(timeout=10) as client:
            return await client.post(url + "/v1/challenges", content=b" " * (9 * 1024 * 1024))

    response = asyncio.run(call())
    assert response.status_code == 413


def test_a_challenge_from_a_non_mixer_is_refused(tmp_path: Path) -> None:
    asyncio.run(_non_mixer(tmp_path))


async def _non_mixer(tmp_path: Path) -> None:
    async with serving_node(tmp_path) as (url, store):
        outsider = make_mixers(1, "outsider")[0]
        _, beta = prove_round(outsider, 0)
        from dnanet.protocol.challenge_params import compute_challenge

        challenge = compute_challenge(
            beta=beta,
            epoch=EPOCH,
            round_=0,
            mixer=outsider.address,
            node=NODE.address,
            hardware_class=0,
            preset=TEST,
        )
        signed = SignedChallenge(
            challenge=challenge,
            signature=outsider.identity.sign_typed(DOMAIN, challenge.hash_struct()),
        )
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.post(url + "/v1/challenges", content=signed.to_json())
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "mixer"
        assert store.query("SELECT count(*) FROM challenges") == [(0,)]


def _signed_challenge(round_: int, hardware_class: int, preset: Preset) -> SignedChallenge:
    mixer = MIXERS[0]
    _, beta = prove_round(mixer, round_)
    challenge = compute_challenge(beta=beta, epoch=EPOCH, round_=round_, mixer=mixer.address,
                                  node=NODE.address, hardware_class=hardware_class,
                                  preset=preset)
    return SignedChallenge(challenge=challenge,
                           signature=mixer.identity.sign_typed(DOMAIN, challenge.hash_struct()))


def test_the_download_limit_covers_every_preset_and_class() -> None:
    largest = max(s.download_bytes for p in PRESETS.values() for s in p.hardware_classes)
    assert largest == MAINNET.sizes_for_class(CLASS_GPU).download_bytes == 16 * 1024 * 1024
    # Above the app-wide limit, which must not answer for a challenge's download.
    assert MAX_MESSAGE_BYTES < largest < MAX_DOWNLOAD_BYTES <= largest + 1024 * 1024


def test_a_mainnet_gpu_download_of_16_mib_is_received_over_http(tmp_path: Path) -> None:
    asyncio.run(_gpu_download(tmp_path))


async def _gpu_download(tmp_path: Path) -> None:
    signed = _signed_challenge(0, CLASS_GPU, MAINNET)
    challenge = signed.challenge
    assert challenge.download_bytes == 16 * 1024 * 1024
    payload = download_payload(b"\x07" * 32, challenge.download_bytes)
    async with serving_node_app(tmp_path) as (url, _, app):
        # Through the mixer's own HTTP transport, as a challenge session sends it.
        async with open_node_session(8, 30) as session:
            transport = HttpNodeTransport(session, url)
            await transport.start(signed)
            assert download_path(challenge.challenge_id) in app.state.own_body_limit
            digest = await transport.download(challenge.challenge_id, [payload])
        assert digest == payload_digest(payload)
        # One download per session: afterwards the app-wide limit applies to the path again.
        assert download_path(challenge.challenge_id) not in app.state.own_body_limit
        async with httpx.AsyncClient(timeout=30) as client:
            status = (await client.get(url + "/v1/status")).json()
        entry = status["recent_challenges"][0]
        assert entry["stage"] == "download" and entry["error"] is None
        assert entry["node_metrics"]["download_bytes"] == challenge.download_bytes
        assert entry["node_metrics"]["download_us"] > 0


def test_a_download_over_its_limit_is_413_naming_the_limit(tmp_path: Path) -> None:
    asyncio.run(_download_over_limit(tmp_path))


async def _download_over_limit(tmp_path: Path) -> None:
    over = b"\0" * (MAX_DOWNLOAD_BYTES + 1)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(over), 1 << 20):
            yield over[start:start + (1 << 20)]

    async with serving_node_app(tmp_path) as (url, store, app), \
            httpx.AsyncClient(timeout=30) as client:
        for round_, content in ((1, over), (2, chunked())):
            signed = _signed_challenge(round_, CLASS_GPU, MAINNET)
            key = signed.challenge.challenge_id
            started = await client.post(url + "/v1/challenges", content=signed.to_json())
            assert started.status_code == 200, started.text
            response = await client.post(url + download_path(key), content=content)
            assert response.status_code == 413, response.text
            error = response.json()["error"]
            assert error["type"] == "TooLarge" and error["field"] == "body"
            assert str(MAX_DOWNLOAD_BYTES) in error["message"]
            assert download_path(key) not in app.state.own_body_limit
            status = (await client.get(url + "/v1/status")).json()
            assert status["recent_challenges"][0]["error"].startswith("download: ")
        # A challenge the node never accepted keeps the app-wide limit.
        unknown = download_path(b"\xab" * 32)
        response = await client.post(url + unknown, content=b"\0" * (MAX_MESSAGE_BYTES + 1))
        assert response.status_code == 413
        assert str(MAX_MESSAGE_BYTES) in response.json()["error"]["message"]
        assert store.query("SELECT count(*) FROM challenges") == [(2,)]
