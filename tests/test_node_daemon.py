"""The node daemon as an operator runs it: the compute device resolved when it is built (a bad
``--device`` fails there) and the declared hardware class following that device, the AI
routes' own body limit, and the ``dnanet node`` commands (status, usage errors, defaults)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dnanet.cli import build_parser, main
from dnanet.crypto.eip712 import Domain
from dnanet.errors import ConfigError
from dnanet.mixer.node_client import HttpNodeTransport, open_node_session
from dnanet.node.ai_api import MAX_AI_BODY_BYTES
from dnanet.node.daemon import NodeDaemon
from dnanet.node.hardware import CLASS_CPU, CLASS_GPU, Hardware
from dnanet.node.status import format_dna
from dnanet.params import TEST, Preset
from dnanet.protocol.codec import MAX_MESSAGE_BYTES
from dnanet.service.network import NodeRecord
from dnanet.validator.daemon import ValidatorDaemon
from dnanet.validator.settle import Backoff
from protocol_fixtures import DOMAIN, make_nodes
from validator_helpers import (
    LocalSigner,
    build_network,
    post_all,
    settle_block,
)

NODE = make_nodes(1, "daemon-node")[0]
WITH_GPU = Hardware(cpu_model="test cpu", cpu_cores=2, memory_bytes=1 << 30,
                    gpu="NVIDIA H200 (seen by nvidia-smi)")
WITHOUT_GPU = Hardware(cpu_model="test cpu", cpu_cores=2, memory_bytes=1 << 30, gpu=None)


@dataclass
class RegistryStub:
    """The part of ``ChainGateway`` a node uses before it serves: its registry record."""

    record: NodeRecord | None = None
    registered: list[tuple[str, int, int]] = field(default_factory=list)
    updated: list[tuple[str, int]] = field(default_factory=list)
    preset: Preset = TEST
    domain: Domain = DOMAIN
    genesis_block: int = 0

    def node(self, address: str) -> NodeRecord | None:
        return self.record

    def register_node(self, endpoint: str, hardware_class: int, stake: int) -> str:
        self.registered.append((endpoint, hardware_class, stake))
        return "0x" + "11" * 32

    def update_node(self, endpoint: str, hardware_class: int) -> str:
        self.updated.append((endpoint, hardware_class))
        return "0x" + "22" * 32


def fake_torch(monkeypatch: pytest.MonkeyPatch, *, cuda: bool | None) -> None:
    """torch as the node would import it: absent (None), CPU-only, or with a CUDA device."""
    if cuda is None:
        monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    else:
        torch = types.ModuleType("torch")
        torch.cuda = types.SimpleNamespace(is_available=lambda: cuda)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torch", torch)


def build(tmp_path: Path, device: str, hardware: Hardware = WITHOUT_GPU,
          gateway: RegistryStub | None = None) -> NodeDaemon:
    return NodeDaemon(NODE, gateway or RegistryStub(), tmp_path / "node",  # type: ignore[arg-type]
                      hardware=hardware, device=device)


def close(daemon: NodeDaemon) -> None:
    asyncio.run(daemon.stop())


# -- compute device and declared class ------------------------------------------------------------


@pytest.mark.parametrize(("device", "cuda", "reason"), [
    ("tpu", False, "must be 'auto', 'cpu' or 'cuda', got 'tpu'"),
    ("cuda", None, "'cuda' needs torch with a CUDA device"),
    ("cuda", False, "'cuda' needs torch with a CUDA device"),
])
def test_a_bad_device_fails_when_the_daemon_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, cuda: bool | None,
        reason: str) -> None:
    fake_torch(monkeypatch, cuda=cuda)
    with pytest.raises(ConfigError) as failure:
        build(tmp_path, device, WITH_GPU)
    message = str(failure.value)
    assert message.startswith(f"--device {device!r}: ") and reason in message
    assert not (tmp_path / "node").exists()  # nothing opened: no store, no port


@pytest.mark.parametrize(("device", "cuda", "compute_on", "declared"), [
    ("cpu", True, "cpu", CLASS_CPU),     # a usable GPU, but the operator chose the CPU
    ("auto", None, "cpu", CLASS_CPU),    # nvidia-smi sees a GPU, torch is missing
    ("auto", False, "cpu", CLASS_CPU),   # a CPU-only torch
    ("auto", True, "cuda", CLASS_GPU),
    ("cuda", True, "cuda", CLASS_GPU),
])
def test_the_declared_class_follows_the_device_compute_runs_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        device: str, cuda: bool | None, compute_on: str, declared: int) -> None:
    fake_torch(monkeypatch, cuda=cuda)
    gateway = RegistryStub()
    with caplog.at_level(logging.WARNING, logger="dnanet.node"):
        daemon = build(tmp_path, device, WITH_GPU, gateway)
    try:
        assert (daemon.device, daemon.hardware_class) == (compute_on, declared)
        # The probe's GPU is still reported, but only a CUDA device makes the node GPU class.
        warned = any("declares the CPU class" in r.getMessage() for r in caplog.records)
        assert warned is (declared == CLASS_CPU)
        asyncio.run(daemon.ensure_registered())
        assert gateway.registered == [(daemon.url, declared, TEST.min_stake)]
        status = daemon._status()
        assert status["device"] == compute_on
        assert status["hardware_class"] == ("gpu" if declared == CLASS_GPU else "cpu")
    finally:
        close(daemon)


@pytest.mark.parametrize(("registered", "named"), [(CLASS_GPU, "gpu"), (7, "7")],
                         ids=["gpu", "a class this release does not name"])
def test_a_registration_with_another_class_is_updated_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, registered: int, named: str) -> None:
    fake_torch(monkeypatch, cuda=None)
    gateway = RegistryStub()
    daemon = build(tmp_path, "auto", WITH_GPU, gateway)
    gateway.record = NodeRecord(NODE.address, daemon.url, registered, TEST.min_stake,
                                False, True)
    try:
        with caplog.at_level(logging.WARNING, logger="dnanet.node"):
            asyncio.run(daemon.ensure_registered())
        assert gateway.registered == []
        assert gateway.updated == [(daemon.url, CLASS_CPU)]
        assert any(f"as class {named}; updated to" in r.getMessage()
                   and "as class cpu (computing on cpu)" in r.getMessage()
                   for r in caplog.records)
    finally:
        close(daemon)


def test_a_node_that_moved_updates_its_endpoint_and_one_in_place_sends_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch(monkeypatch, cuda=None)
    gateway = RegistryStub()
    daemon = build(tmp_path, "cpu", WITHOUT_GPU, gateway)
    try:
        gateway.record = NodeRecord(NODE.address, daemon.url, CLASS_CPU, TEST.min_stake,
                                    False, True)
        asyncio.run(daemon.ensure_registered())  # registered as it runs: no transaction
        assert gateway.registered == gateway.updated == []
        gateway.record = NodeRecord(NODE.address, "http://old-host.example:8701", CLASS_CPU,
                                    TEST.min_stake, False, True)
        asyncio.run(daemon.ensure_registered())
        assert gateway.updated == [(daemon.url, CLASS_CPU)] and gateway.registered == []
    finally:
        close(daemon)


# -- the AI routes' body limit --------------------------------------------------------------------


def test_ai_requests_take_the_gateways_limit_not_the_protocol_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNANET_NODE_API_KEY", "operator-key")
    daemon = build(tmp_path, "cpu")

    async def post(size: int) -> httpx.Response:
        item = b'"' + b"x" * 60_000 + b'"'
        items = b",".join([item] * (size // len(item) + 1))
        body = b'{"model": "nope", "input": [' + items + b"]}"
        transport = httpx.ASGITransport(app=daemon.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post("/v1/embeddings", content=body,
                                     headers={"authorization": "Bearer operator-key"})

    try:
        # Over the app-wide limit of protocol messages, within the gateway's: the backend
        # answers (no such model here), not the guard.
        within = asyncio.run(post(MAX_MESSAGE_BYTES + 1024))
        assert within.status_code == 404, within.text[:200]
        assert within.json()["error"]["code"] == "model_not_found"
        over = asyncio.run(post(MAX_AI_BODY_BYTES + 1))
        assert over.status_code == 413
        assert over.json()["error"]["code"] == "request_too_large"
        assert str(MAX_AI_BODY_BYTES) in over.json()["error"]["message"]
    finally:
        close(daemon)


# -- dnanet node run ------------------------------------------------------------------------------


def _run_args(tmp_path: Path, device: str) -> list[str]:
    return ["node", "run", "--rpc", "http://127.0.0.1:9", "--deployment",
            str(tmp_path / "missing.json"), "--keystore", str(tmp_path / "missing-key.json"),
            "--data-dir", str(tmp_path / "node"), "--device", device]


def test_node_run_refuses_an_unknown_device_as_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_run_args(tmp_path, "tpu"))
    assert exit_.value.code == 2
    assert "--device" in capsys.readouterr().err


def test_node_run_without_cuda_fails_on_the_device_before_the_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake_torch(monkeypatch, cuda=False)
    assert main(_run_args(tmp_path, "cuda")) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda': 'cuda' needs torch with a CUDA device" in err
    assert "missing.json" not in err  # the deployment was never opened


# -- dnanet node status ---------------------------------------------------------------------------


CLAIMED = 123 * 10**15


def test_node_status_shows_challenges_verdicts_epochs_and_claimable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    gateway, committee = build_network(mixers=4, nodes=3, offline=[2], label="status")
    node_address = gateway.nodes_list[0].address
    offline = gateway.nodes_list[2].address
    monkeypatch.setattr(gateway, "claimed", lambda account: CLAIMED)
    monkeypatch.setattr("dnanet.service.gateway.open_gateway",
                        lambda rpc, deployment, keystore: gateway)
    deployment = tmp_path / "deployment.json"
    outputs: dict[str, str] = {}

    def status(*extra: str) -> str:
        code = main(["node", "status", *extra])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    async def scenario() -> None:
        identity = committee.transports[node_address].prover.identity
        daemon = NodeDaemon(identity, gateway, tmp_path / "node",  # type: ignore[arg-type]
                            port=0, hardware=WITHOUT_GPU, device="cpu")
        await daemon.start(register=False)
        # The fake chain jumps a round at a time, faster than the node reads the head (every
        # half round of a real chain): the node learns each jump as it happens.
        advance = gateway.advance_to

        def advance_to(block: int) -> None:
            advance(block)
            daemon.head = gateway.block_number()

        monkeypatch.setattr(gateway, "advance_to", advance_to)
        validator = ValidatorDaemon(gateway, tmp_path / "validator", port=0,
                                    run_settlement=False)
        await validator.start()
        try:
            async with open_node_session(8, 10) as session, \
                    httpx.AsyncClient(base_url=validator.url, timeout=30) as client:
                committee.transports[node_address] = HttpNodeTransport(  # type: ignore[assignment]
                    session, daemon.url)
                for epoch in (0, 1):
                    await post_all(client, await committee.epoch_certificates(epoch))
            validator.loop.signer = LocalSigner(gateway, validator.store.certificates)
            validator.loop.backoff = Backoff(base_s=0.0)
            gateway.advance_to(settle_block(gateway, 0))
            await validator.loop.step()
            assert gateway.next_epoch == 1  # epoch 0 settled, epoch 1 still collecting
            common = ["--validator", validator.url]
            outputs["json"] = await asyncio.to_thread(
                status, *common, "--address", node_address, "--node", daemon.url,
                "--rpc", "http://127.0.0.1:9", "--deployment", str(deployment), "--json")
            outputs["text"] = await asyncio.to_thread(
                status, *common, "--address", node_address, "--node", daemon.url,
                "--rpc", "http://127.0.0.1:9", "--deployment", str(deployment))
            outputs["offline"] = await asyncio.to_thread(
                status, *common, "--address", offline)
        finally:
            await validator.stop()
            await daemon.stop()

    asyncio.run(scenario())

    report = json.loads(outputs["json"])
    rewards = report["rewards"]
    assert rewards["settled_epoch"] == 0 and rewards["in_tree"] and rewards["proof_verifies"]
    assert rewards["cumulative"] > CLAIMED
    assert rewards["claimed"] == CLAIMED
    assert rewards["claimable"] == rewards["cumulative"] - CLAIMED
    assert report["chain"]["current_epoch"] == 1
    # Per epoch, newest first: the open epoch is marked not final, the settled one has a reward.
    epochs = {e["epoch"]: e for e in report["epochs"]}
    assert [e["epoch"] for e in report["epochs"]] == [1, 0]
    assert epochs[1]["final"] is False and epochs[1]["status"] == "collecting"
    assert epochs[0]["final"] is True and epochs[0]["reward"] > 0
    assert epochs[0]["epoch_score"] > 0 and epochs[1]["challenges"] > 0
    for entry in epochs[0]["reports"]:
        assert entry["outcome"] == "OK" and entry["score"] > 0 and entry["flops_per_s"] > 0
    # The node's own challenges, each matched with the mixer's certified verdict.
    challenges = report["recent_challenges"]
    assert {c["epoch"] for c in challenges} == {0, 1}
    assert len(challenges) == epochs[0]["challenges"] + epochs[1]["challenges"]
    for c in challenges:
        assert c["completed"] and c["stage"] == "open" and c["error"] is None
        assert c["node_metrics"]["download_bytes"] == TEST.hardware_classes[0].download_bytes
        assert c["node_metrics"]["compute_us"] > 0 and c["node_metrics"]["echoes"] > 0
        verdict = c["verdict"]["report"]
        assert verdict is not None, c["verdict"]["note"]
        assert (verdict["round"], verdict["mixer"], verdict["outcome"]) == (
            c["round"], c["mixer"], "OK")
    assert report["node"]["device"] == "cpu" and report["node"]["hardware_class"] == "cpu"

    text = outputs["text"]
    assert f"claimable   {format_dna(rewards['claimable'])}" in text
    assert "epoch 1: collecting, not published yet" in text
    assert "epoch 0: settled" in text
    assert "mixer's verdict: OK, score" in text and "node measured: compute" in text

    # An offline node, without the chain: failure reasons per epoch, claimable unknown.
    text = outputs["offline"]
    assert "claimable   unknown (pass --rpc URL --deployment FILE" in text
    assert "UNREACHABLE, score 0; reason: start: connection refused" in text
    assert "strike" in text


@pytest.mark.parametrize(("args", "message"), [
    ([], "one of the arguments --keystore --address is required"),
    (["--address", "0x" + "ab" * 20, "--rpc", "http://127.0.0.1:9"],
     "--rpc and --deployment go together"),
    (["--address", "0x1234"], "--address: "),
])
def test_node_status_usage_errors_exit_2_naming_the_options(
        capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    argv = ["node", "status", "--validator", "http://127.0.0.1:9", *args]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_node_and_validator_default_to_different_ports() -> None:
    parser = build_parser()
    common = ["--rpc", "http://x", "--deployment", "d.json", "--keystore", "k.json",
              "--data-dir", "d"]
    node = parser.parse_args(["node", "run", *common])
    validator = parser.parse_args(["validator", "run", *common])
    assert node.port == 8701 and validator.port == 8700

