"""docs/operations.md's runbook, run as written on anvil: keys, funds, deployment, a mixer
added before genesis, config files, the Validator, a mixer and a node as their own processes,
an epoch settled and a reward claimed, a top-up, an unbond, a withdrawal refused before its
epoch and made after, and an unjail refused (the node is not jailed).

Each block the docs mark ``<!-- runbook: NAME -->`` runs in one bash (``set -euo pipefail``)
in one directory, the variables it exports carried to the next block as an operator's shell
carries them. Only the settings block is replaced: by the same variables pointed at this
test's anvil, the ``test`` preset, free ports and the ``trivial`` model backend. Between
blocks the test plays the chain's clock (mining a block every 50 ms once the roles are up,
holding a round's end until the mixer finished it, as ``tests/e2e_helpers.LockstepClock``
does) and checks each step's effect on chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dnanet.chain.anvil import AnvilProcess, ensure_anvil, free_port, start_anvil
from dnanet.chain.backends import connect_rpc, mine_blocks
from dnanet.chain.client import ChainClient
from dnanet.chain.deployment import Deployment
from dnanet.errors import ConfigError
from dnanet.params import TEST, WEI_PER_DNA
from dnanet.protocol.schedule import compute_round

pytestmark = [pytest.mark.npm, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs" / "operations.md"
STEPS = ["settings", "keys", "funds", "deploy", "config", "start", "claim", "stake", "unbond",
         "withdraw", "unjail"]
BLOCK_INTERVAL_S = 0.05
WAIT_S = 300.0


def runbook_blocks(text: str) -> dict[str, str]:
    """The ``sh`` blocks marked ``<!-- runbook: NAME -->``, by name, in order."""
    found = re.findall(r"<!-- runbook: ([a-z-]+) -->\n```sh\n(.*?)```", text, re.S)
    return dict(found)


def exported_names(block: str) -> set[str]:
    names: set[str] = set()
    for line in block.splitlines():
        if line.startswith("export "):
            names |= {m.group(1) for m in re.finditer(r"([A-Z_]+)=", line.split("#")[0])}
    return names


def test_the_runbook_marks_every_step_and_the_settings_it_uses() -> None:
    blocks = runbook_blocks(DOCS.read_text())
    assert list(blocks) == STEPS
    assert exported_names(blocks["settings"]) == {"RPC", "PRESET", "GENESIS", "VALIDATOR_PORT",
                                                  "MIXER_PORT", "NODE_PORT", "NODE_BACKEND"}


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the runbook runs on anvil, which needs node and npm on PATH")
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the runbook's commands use {tool}, which is not installed here")
    try:
        binary = ensure_anvil()
    except ConfigError as exc:
        pytest.skip(f"no usable anvil here: {exc}")
    with start_anvil(binary) as process:
        yield process


@dataclass
class Shell:
    """One directory and the exported variables of an operator's shell, block after block."""

    cwd: Path
    env: dict[str, str]
    state: Path
    groups: list[int] = field(default_factory=list)

    def run(self, name: str, block: str, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
        script = self.cwd / f".runbook-{name}.sh"
        script.write_text("set -euo pipefail\n"
                          f"[ -f {self.state} ] && source {self.state}\n"
                          f"{block}\nexport -p > {self.state}\n")
        process = subprocess.Popen(["bash", str(script)], cwd=self.cwd, env=self.env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.groups.append(process.pid)  # the roles started in the background live in it
        t0 = time.monotonic()
        out, err = process.communicate(timeout=WAIT_S)
        print(f"step {name}: {time.monotonic() - t0:.1f} s", flush=True)
        result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        if ok:
            assert result.returncode == 0, f"runbook step {name} failed:\n{out}\n{err}"
        return result

    def variable(self, name: str) -> str:
        match = re.search(rf'^declare -x {name}="(.*)"$', self.state.read_text(), re.M)
        assert match is not None, name
        return match.group(1)

    def stop(self) -> None:
        """SIGTERM every process the blocks started (each block's own process group), then
        SIGKILL what is left."""
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 30
        for group in self.groups:
            while time.monotonic() < deadline:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)


class Clock:
    """Mines a block every ``BLOCK_INTERVAL_S`` while running, holding the end of each round
    until the mixer reports it done (at most 30 s), so a busy machine cannot leave rounds
    unchallenged."""

    def __init__(self, w3: Any, genesis: int, mixer_url: str) -> None:
        self.w3, self.genesis, self.mixer_url = w3, genesis, mixer_url
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _round_done(self, http: httpx.Client, head: int) -> bool:
        rid = compute_round(head, TEST, self.genesis)
        try:
            rounds = http.get(f"{self.mixer_url}/v1/status",
                              params={"rounds": 4, "assigned": False}).json()["rounds"]
        except (httpx.HTTPError, ValueError, KeyError):
            return True
        return any(r["epoch"] == rid.epoch and r["round"] == rid.round and r["done"]
                   for r in rounds)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stopped.is_set():
                if not self.running.wait(0.1):
                    continue
                head = int(self.w3.eth.block_number)
                following = head + 1
                if following > self.genesis and \
                        (following - self.genesis) % TEST.round_blocks == 0:
                    deadline = time.monotonic() + 30
                    while not self._round_done(http, head) and time.monotonic() < deadline:
                        time.sleep(0.05)
                mine_blocks(self.w3, 1)
                time.sleep(BLOCK_INTERVAL_S)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def wait_for(what: str, check: Any, logs: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def last_json(output: str) -> dict[str, Any]:
    line = [text for text in output.splitlines() if text.startswith("{")][-1]
    record: dict[str, Any] = json.loads(line)
    return record


def test_the_runbook_takes_a_node_from_zero_to_a_claimed_reward_and_out(
        anvil: AnvilProcess, tmp_path: Path) -> None:
    blocks = runbook_blocks(DOCS.read_text())
    w3 = connect_rpc(anvil.url)
    genesis = int(w3.eth.block_number) + 60  # the set-up mines about 15 blocks
    ports = {name: free_port() for name in ("VALIDATOR_PORT", "MIXER_PORT", "NODE_PORT")}
    settings = (f"export RPC={anvil.url}\nexport PRESET=test\nexport GENESIS={genesis}\n"
                + "".join(f"export {k}={v}\n" for k, v in ports.items())
                + "export NODE_BACKEND=trivial\n")
    assert exported_names(settings) == exported_names(blocks["settings"])
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DNANET_KEYSTORE_PASSWORD")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    shell = Shell(tmp_path, env, tmp_path / ".runbook-state")
    validator_url = f"http://127.0.0.1:{ports['VALIDATOR_PORT']}"
    mixer_url = f"http://127.0.0.1:{ports['MIXER_PORT']}"
    node_url = f"http://127.0.0.1:{ports['NODE_PORT']}"
    clock = Clock(w3, genesis, mixer_url)
    try:
        shell.run("settings", settings)
        shell.run("keys", blocks["keys"])
        assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "keys").iterdir()} == \
            {"0o600"}
        node = shell.variable("NODE")
        shell.run("funds", blocks["funds"])
        assert w3.eth.get_balance(w3.to_checksum_address(node)) == 10 * 10**18

        shown = shell.run("deploy", blocks["deploy"])
        deployment = Deployment.load(tmp_path / "deployment.json")
        chain = ChainClient(w3, deployment)
        assert deployment.genesis_block == genesis and deployment.preset == "test"
        assert chain.mixer_set(0).addresses == (shell.variable("MIXER"),)
        assert "joins the mixer set from epoch 0" in shown.stderr
        assert chain.balance_of(node) == 1100 * WEI_PER_DNA

        shell.run("config", blocks["config"])
        shell.run("start", blocks["start"])
        for url in (validator_url, mixer_url, node_url):
            wait_for(f"{url} to answer", lambda url=url: healthy(url), tmp_path)
        wait_for("the node to register", lambda: chain.node_info(node).registered, tmp_path)
        assert chain.node_info(node).stake == 1000 * WEI_PER_DNA  # node.toml's stake
        head = int(w3.eth.block_number)
        assert head < genesis - 1, "the set-up used the blocks before genesis"
        mine_blocks(w3, genesis - 1 - head)
        clock.running.set()

        def rewarded() -> bool:
            reply = httpx.get(f"{validator_url}/v1/nodes/{node}", timeout=5).json()
            return reply.get("root") is not None and int(reply.get("cumulative", 0)) > 0

        t0 = time.monotonic()
        wait_for("a settled epoch that pays the node", rewarded, tmp_path)
        print(f"settled after {time.monotonic() - t0:.1f} s, head {w3.eth.block_number}", flush=True)
        clock.running.clear()  # a claim proves against the latest root: hold it still
        balance = chain.balance_of(node)
        claimed = shell.run("claim", blocks["claim"])
        assert "claimable" in claimed.stdout
        assert f"registry   stake 1000 DNA, active, at {node_url}" in claimed.stdout
        paid = int(last_json(claimed.stdout)["paid"])
        assert paid > 0 and chain.balance_of(node) == balance + paid
        assert chain.claimed(node) == paid

        shell.run("stake", blocks["stake"])
        assert chain.node_info(node).stake == 1050 * WEI_PER_DNA
        unbonded = shell.run("unbond", blocks["unbond"])
        withdraw_epoch = last_json(unbonded.stdout)["withdraw_epoch"]
        assert not chain.node_info(node).active
        early = shell.run("withdraw-early", blocks["withdraw"], ok=False)
        assert early.returncode != 0 and "unlocks at epoch" in early.stderr
        head = int(w3.eth.block_number)
        mine_blocks(w3, max(0, deployment.epoch_start(withdraw_epoch) - head))
        balance = chain.balance_of(node)
        shell.run("withdraw", blocks["withdraw"])
        assert chain.balance_of(node) == balance + 1050 * WEI_PER_DNA
        assert not chain.node_info(node).registered

        refused = shell.run("unjail", blocks["unjail"], ok=False)
        assert refused.returncode == 2 and f"{node} is not jailed" in refused.stderr
    finally:
        clock.close()
        shell.stop()
