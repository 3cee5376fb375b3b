"""``dnanet node run``, ``mixer run``, ``validator run`` and ``node claim`` decrypt the keystore
once: the chain client and the daemon get the same identity (a keystore's password is asked
for once), and a mixer without a gateway API key fails before the password is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dnanet.keyfiles
import dnanet.mixer.daemon
import dnanet.node.daemon
import dnanet.roles_cli
import dnanet.service.gateway
import dnanet.validator.daemon
from dnanet.cli import main
from dnanet.crypto.keys import Identity

IDENTITY = Identity.from_entropy(b"\x01" * 32)


class Recorder:
    """Stands in for the keystore, the chain gateway and the daemons."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads: list[Path] = []
        self.gateways: list[Any] = []
        self.daemons: list[Any] = []
        monkeypatch.setattr(dnanet.keyfiles, "load_identity", self.load_identity)
        monkeypatch.setattr(dnanet.service.gateway, "open_gateway", self.open_gateway)
        for module, name in ((dnanet.node.daemon, "NodeDaemon"),
                             (dnanet.mixer.daemon, "MixerDaemon"),
                             (dnanet.validator.daemon, "ValidatorDaemon")):
            monkeypatch.setattr(module, name, self.daemon)
        monkeypatch.setattr(dnanet.roles_cli, "_serve_until_signal", lambda daemon: None)
        monkeypatch.setattr(dnanet.validator.daemon, "run_loop", lambda coro: coro.close())

    def load_identity(self, path: Path, password: str | None = None) -> Identity:
        self.loads.append(path)
        return IDENTITY

    def open_gateway(self, rpc: str, deployment: Path, identity: Identity | None) -> object:
        self.gateways.append(identity)
        return object()

    def daemon(self, *args: Any, **kwargs: Any) -> object:
        self.daemons.append(args)
        return object()


CHAIN = ["--rpc", "http://127.0.0.1:9", "--deployment", "d.json", "--keystore", "k.json"]


@pytest.mark.parametrize("command", [
    ["node", "run", *CHAIN, "--data-dir", "n", "--device", "cpu", "--backend", "none"],
    ["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v", "--no-gateway"],
    ["validator", "run", *CHAIN, "--data-dir", "v", "--workers", "0"],
])
def test_a_daemon_and_its_chain_client_share_one_decrypted_identity(
        command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    assert main(command) == 0
    assert recorder.loads == [Path("k.json")]
    assert recorder.gateways == [IDENTITY]
    (daemon_args,) = recorder.daemons
    if command[0] != "validator":  # the Validator signs through its chain client only
        assert daemon_args[0] is IDENTITY


def test_a_mixer_without_an_api_key_fails_before_the_password_prompt(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder(monkeypatch)
    monkeypatch.delenv("DNANET_GATEWAY_KEYS", raising=False)
    assert main(["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v"]) == 2
    assert "the gateway needs an API key" in capsys.readouterr().err
    assert recorder.loads == recorder.gateways == recorder.daemons == []


def test_node_claim_names_an_unreachable_validator_instead_of_failing_with_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    Recorder(monkeypatch)
    address = IDENTITY.address
    assert main(["node", "claim", *CHAIN, "--validator", "http://127.0.0.1:9",
                 "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Validator at http://127.0.0.1:9/v1/nodes/{address}" in err


_SERVE = """
import asyncio, sys
from dnanet.roles_cli import _serve_until_signal

class Daemon:
    address, url = "0xab", "http://127.0.0.1:1"

    async def start(self):
        print("starting", flush=True)
        if sys.argv[1] == "slow":  # loading a model, registering on chain...
            await asyncio.sleep(3600)
            print("registered", flush=True)

    async def stop(self):
        print("stopped", flush=True)

_serve_until_signal(Daemon())
"""


@pytest.mark.parametrize("start", ["slow", "quick"])
def test_a_signal_stops_a_daemon_also_while_it_starts(start: str) -> None:
    """SIGTERM while the daemon starts ends the start-up where it is (it neither registers
    nor serves) and stops it; once serving, SIGTERM stops it."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _SERVE, start], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    try:
        lines = [child.stdout.readline().strip()]
        if start == "quick":
            lines.append(child.stdout.readline().strip())  # the address and URL: serving
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()  # a daemon that did not stop must not outlive the test
        child.wait()
    lines += out.split("\n")
    assert child.returncode == 0
    assert "stopped" in lines and "registered" not in lines
    assert (lines[1] == '{"address": "0xab", "url": "http://127.0.0.1:1"}') == (start == "quick")
    assert ("stopped during start-up" in out) == (start == "slow")
