"""The node daemon as an operator runs it: the compute device resolved when it is built (a bad
``--device`` fails there) and the declared hardware class following that device, the AI
routes' own body limit, and the ``dnanet node`` commands (status, usage errors, defaults)."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from dnanet.cli import main
from dnanet.crypto.eip712 import Domain
from dnanet.errors import ConfigError
from dnanet.node.ai_api import MAX_AI_BODY_BYTES
from dnanet.node.daemon import NodeDaemon
from dnanet.node.hardware import CLASS_CPU, CLASS_GPU, Hardware
from dnanet.params import TEST, Preset
from dnanet.protocol.codec import MAX_MESSAGE_BYTES
from dnanet.service.network import NodeRecord
from protocol_fixtures import DOMAIN, make_nodes

NODE = make_nodes(1, "daemon-node")[0]
WITH_GPU = Hardware(cpu_model="test cpu", cpu_cores=2, memory_bytes=1 << 30,
                    gpu="NVIDIA H200 (seen by nvidia-smi)")
WITHOUT_GPU = Hardware(cpu_model="test cpu", cpu_cores=2, memory_bytes=1 << 30, gpu=None)


@dataclass
class RegistryStub:
    """The part of ``ChainGateway`` a node uses before it serves: its registry record."""

    record: NodeRecord | None = None
    registered: list[tuple[str, int, int]] = field(default_factory=list)
    preset: Preset = TEST
    domain: Domain = DOMAIN

    def node(self, address: str) -> NodeRecord | None:
        return self.record

    def register_node(self, endpoint: str, hardware_class: int, stake: int) -> str:
        self.registered.append((endpoint, hardware_class, stake))
        return "0x" + "11" * 32


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


def test_a_registration_with_another_class_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    fake_torch(monkeypatch, cuda=None)
    record = NodeRecord(NODE.address, "http://node.example", CLASS_GPU, TEST.min_stake,
                        False, True)
    gateway = RegistryStub(record=record)
    daemon = build(tmp_path, "auto", WITH_GPU, gateway)
    try:
        with caplog.at_level(logging.WARNING, logger="dnanet.node"):
            asyncio.run(daemon.ensure_registered())
        assert gateway.registered == []
        assert any("registered as class gpu but computes on cpu" in r.getMessage()
                   for r in caplog.records)
    finally:
        close(daemon)


# -- the AI routes' body limit --------------------------------------------------------------------


def test_ai_requests_take_the_gateways_limit_not_the_protocol_limit(tmp_path: Path) -> None:
    daemon = build(tmp_path, "cpu")

    async def post(size: int) -> httpx.Response:
        item = b'"' + b"x" * 60_000 + b'"'
        items = b",".join([item] * (size // len(item) + 1))
        body = b'{"model": "nope", "input": [' + items + b"]}"
        transport = httpx.ASGITransport(app=daemon.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post("/v1/embeddings", content=body)

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
