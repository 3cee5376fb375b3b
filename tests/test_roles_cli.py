"""``dnanet node run``, ``mixer run``, ``validator run`` and ``node claim``: the keystore is
decrypted once (the chain client and the daemon share the identity); everything that can be
checked without it is checked first (the port, the gateway's API keys, a new node's stake);
every option says what it is for; a closed pipe ends a command quietly."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dnanet.keyfiles
import dnanet.mixer.daemon
import dnanet.node.daemon
import dnanet.roles_cli
import dnanet.service.gateway
import dnanet.validator.daemon
from dnanet.chain.client import NodeInfo
from dnanet.cli import BROKEN_PIPE_STATUS, build_parser, main
from dnanet.crypto.keys import Identity, encrypt_keystore
from dnanet.params import TEST, WEI_PER_DNA

IDENTITY = Identity.from_entropy(b"\x01" * 32)


class FakeChain:
    """The reads a node's start-up checks make: a registered node, or a new one with
    ``dna`` DNA and ``eth`` wei of ETH."""

    def __init__(self, *, registered: bool = True, dna: int = 0, eth: int = 0) -> None:
        self.registered, self.dna, self.eth = registered, dna, eth
        self.deployment = argparse.Namespace(registry="0x" + "22" * 20)

    def node_info(self, address: str) -> NodeInfo:
        return NodeInfo(address=address, endpoint="http://n", hw_class=0,
                        stake=100 * WEI_PER_DNA if self.registered else 0, jailed=False,
                        unbonding=False, unbond_epoch=0, registered=self.registered,
                        active=self.registered)

    def eth_balance(self, address: str) -> int:
        return self.eth

    def balance_of(self, address: str) -> int:
        return self.dna

    def allowance(self, owner: str, spender: str) -> int:
        return 0

    def min_stake(self) -> int:
        return 100 * WEI_PER_DNA

    def unbond_epochs(self) -> int:
        return 1

    def current_epoch(self) -> int:
        return 0

    def fee_cap(self) -> int:
        return 10**9


class Recorder:
    """Stands in for the keystore's decryption, the chain gateway and the daemons."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, chain: FakeChain | None = None) -> None:
        self.loads: list[Path] = []
        self.gateways: list[Any] = []
        self.daemons: list[Any] = []
        self.chain = chain or FakeChain()
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
        return argparse.Namespace(client=self.chain, preset=TEST, domain=None,
                                  block_number=lambda: 0)

    def daemon(self, *args: Any, **kwargs: Any) -> object:
        self.daemons.append(args)
        return object()


@pytest.fixture
def keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``k.json`` in the working directory: IDENTITY's keystore (its address is read
    without a password)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "k.json"
    import json

    path.write_text(json.dumps(encrypt_keystore(IDENTITY, "pw", light=True)))
    return path


CHAIN = ["--rpc", "http://127.0.0.1:9", "--deployment", "d.json", "--keystore", "k.json"]
NODE_RUN = ["node", "run", *CHAIN, "--data-dir", "n", "--device", "cpu", "--backend", "none",
            "--port", "0"]


@pytest.mark.parametrize("command", [
    NODE_RUN,
    ["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v", "--no-gateway",
     "--port", "0"],
    ["validator", "run", *CHAIN, "--data-dir", "v", "--workers", "0", "--port", "0"],
])
def test_a_daemon_and_its_chain_client_share_one_decrypted_identity(
        command: list[str], monkeypatch: pytest.MonkeyPatch, keystore: Path) -> None:
    recorder = Recorder(monkeypatch)
    assert main(command) == 0
    assert recorder.loads == [Path("k.json")]
    assert [g for g in recorder.gateways if g is not None] == [IDENTITY]
    (daemon_args,) = recorder.daemons
    if command[0] != "validator":  # the Validator signs through its chain client only
        assert daemon_args[0] is IDENTITY


def test_a_mixer_without_an_api_key_fails_before_the_password_prompt(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder(monkeypatch)
    monkeypatch.delenv("DNANET_GATEWAY_KEYS", raising=False)
    assert main(["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v",
                 "--port", "0"]) == 2
    assert "the gateway needs an API key" in capsys.readouterr().err
    assert recorder.loads == recorder.gateways == recorder.daemons == []


def test_a_gateway_key_is_never_taken_on_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["mixer", "run", *CHAIN, "--data-dir", "m", "--validator",
                                   "http://v", "--gateway-key", "dn-secret"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --gateway-key: an API key on the command line is visible" in err
    assert "DNANET_GATEWAY_KEYS" in err and "--gateway-key-file" in err


def test_a_gateway_key_file_must_be_private_and_gives_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# gateway keys\ndn-one\n\n  dn-two  \n")
    path.chmod(0o644)
    with pytest.raises(dnanet.keyfiles.KeystoreError, match=r"may be read by other users "
                       r"\(mode 0644\): chmod 600"):
        dnanet.roles_cli.read_gateway_keys(str(path))
    path.chmod(0o600)
    assert dnanet.roles_cli.read_gateway_keys(str(path)) == ["dn-one", "dn-two"]
    assert dnanet.roles_cli.read_gateway_keys(None) == []
    with pytest.raises(dnanet.keyfiles.KeystoreError, match="does not exist"):
        dnanet.roles_cli.read_gateway_keys(str(tmp_path / "missing"))


def test_a_mixer_reads_its_gateway_keys_from_the_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keystore: Path) -> None:
    recorder = Recorder(monkeypatch)
    configs: list[Any] = []
    monkeypatch.setattr(dnanet.mixer.daemon, "MixerDaemon",
                        lambda *a, **kw: configs.append(kw["gateway_config"]))
    monkeypatch.delenv("DNANET_GATEWAY_KEYS", raising=False)
    key_file = tmp_path / "gateway-keys"
    key_file.write_text("dn-" + "a" * 32 + "\n")
    key_file.chmod(0o600)
    assert main(["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v",
                 "--port", "0", "--gateway-key-file", str(key_file)]) == 0
    assert recorder.loads == [Path("k.json")]
    assert configs[0].api_keys == frozenset({"dn-" + "a" * 32})


def test_node_claim_names_an_unreachable_validator_instead_of_failing_with_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        keystore: Path) -> None:
    recorder = Recorder(monkeypatch)
    address = IDENTITY.address
    assert main(["node", "claim", *CHAIN, "--validator", "http://127.0.0.1:9",
                 "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Validator at http://127.0.0.1:9/v1/nodes/{address}" in err
    assert recorder.loads == []  # nothing decrypted for a claim that cannot be made


@pytest.mark.parametrize(("stake", "dna", "eth", "message"), [
    ("50", 500, 10**18, "stake 50 DNA is below the minimum 100 DNA"),
    ("150", 120, 10**18, "stake 150 DNA exceeds the DNA balance 120 DNA of"),
    ("100", 500, 0, "holds 0 ETH; approve + register may cost up to 0.00057 ETH "
                    "(570000 gas at 1000000000 wei per gas): send it ETH for gas first"),
])
def test_a_new_node_whose_stake_would_fail_is_refused_before_its_keystore_is_opened(
        stake: str, dna: int, eth: int, message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], keystore: Path) -> None:
    recorder = Recorder(monkeypatch, FakeChain(registered=False, dna=dna * WEI_PER_DNA,
                                               eth=eth))
    assert main([*NODE_RUN, "--stake", stake]) == 2
    assert message in capsys.readouterr().err
    assert recorder.loads == recorder.daemons == []
    assert recorder.gateways == [None]  # read only: no approve, no register was sent


def test_a_new_node_with_what_it_needs_registers(monkeypatch: pytest.MonkeyPatch,
                                                 keystore: Path) -> None:
    recorder = Recorder(monkeypatch, FakeChain(registered=False, dna=100 * WEI_PER_DNA,
                                               eth=10**18))
    assert main(NODE_RUN) == 0
    assert recorder.loads == [Path("k.json")] and len(recorder.daemons) == 1


@pytest.mark.parametrize("role", [
    ["node", "run", *CHAIN, "--data-dir", "n", "--device", "cpu", "--backend", "none"],
    ["mixer", "run", *CHAIN, "--data-dir", "m", "--validator", "http://v", "--no-gateway"],
    ["validator", "run", *CHAIN, "--data-dir", "v", "--workers", "0"],
])
def test_a_busy_port_is_one_line_naming_it_before_the_keystore_is_opened(
        role: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], keystore: Path) -> None:
    recorder = Recorder(monkeypatch)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([*role, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (f"dnanet: error: port {port} on 127.0.0.1 is in use by another process "
                   "(another dnanet daemon?): stop it or choose another --port\n")
    assert recorder.loads == recorder.gateways == recorder.daemons == []


def test_a_host_that_is_not_this_machines_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    from dnanet.cliargs import verify_port_free
    from dnanet.errors import ConfigError

    with pytest.raises(ConfigError, match="no interface of this machine has that --host"):
        verify_port_free("192.0.2.1", 8701)  # TEST-NET-1: never a local address
    with pytest.raises(ConfigError, match=r"--host 'no such host\.invalid' is not an address"):
        verify_port_free("no such host.invalid", 8701)
    verify_port_free("127.0.0.1", 0)  # any free port: nothing to check


def _options(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, Any]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, [*path, name])
        elif action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            out.append((" ".join(path) + " " + "/".join(action.option_strings or
                                                          [action.dest]), action))
    return out


def test_every_option_of_every_command_has_help_text() -> None:
    options = _options(build_parser(), ["dnanet"])
    assert len(options) > 100
    missing = [name for name, action in options if not (action.help or "").strip()]
    assert missing == []


def test_a_closed_pipe_ends_a_command_quietly(keystore: Path) -> None:
    """``dnanet node config init | head -0``, ``dnanet keys show k.json | head -0`` and
    ``dnanet node status --help | head -0``: the reader is gone before anything is written;
    no BrokenPipeError traceback, and the status SIGPIPE would give (argparse's help, which
    ignores a failed write itself, ends with 0)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for argv, status in ((["node", "config", "init"], BROKEN_PIPE_STATUS),
                         (["keys", "show", str(keystore)], BROKEN_PIPE_STATUS),
                         (["node", "status", "--help"], 0)):
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "wb") as closed:
            result = subprocess.run([sys.executable, "-m", "dnanet.cli", *argv], stdout=closed,
                                    stderr=subprocess.PIPE, env=env, timeout=60, check=False)
        assert (result.stderr, result.returncode) == (b"", status)


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
