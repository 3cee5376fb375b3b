"""The chain client against anvil (npm `@foundry-rs/anvil`) over JSON-RPC.

The pinned package is installed into tests/the npm cache (dnanet.chain.anvil.ensure_anvil) with `npm ci --ignore-scripts` on first
use: npm takes the prebuilt binary from the platform's optional dependency
(`@foundry-rs/anvil-linux-amd64`, ...), so no install script and no download beyond the npm
registry is needed. The tests skip when node or npm is missing, or when the package has no
binary that runs on this machine (the skip reason says which); a failing `npm ci` fails them.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnanet.chain.anvil import ANVIL_PACKAGE, AnvilProcess, ensure_anvil, start_anvil
from dnanet.chain.backends import connect_rpc, fund, mine_blocks
from dnanet.chain.cli import _deploy, _show
from dnanet.chain.client import ChainClient, ChainUnavailable, ReorgDetected, TransactionReverted
from dnanet.chain.deployment import Deployment
from dnanet.chain.transactions import TransactionSender, check_still_canonical
from dnanet.crypto.keys import encrypt_keystore
from dnanet.errors import ConfigError
from dnanet.keyfiles import PASSWORD_ENV
from dnanet.params import MAINNET, WEI_PER_DNA
from dnanet.protocol.messages import Punishment
from test_chain_client import (
    FAST,
    Net,
    contracts_cli,
    identity,
    make_net,
    run_full_flow,
    settle_epoch_zero,
)

pytestmark = [pytest.mark.npm, pytest.mark.slow]

@pytest.fixture(scope="module")
def anvil_binary() -> Path:
    """The anvil executable from the pinned npm package (``ensure_anvil`` installs it once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the anvil integration test needs node and npm on PATH")
    try:
        binary = ensure_anvil()
    except ConfigError as exc:
        if "npm ci" in str(exc):
            pytest.fail(str(exc))
        pytest.skip(f"{ANVIL_PACKAGE} gives no usable anvil here: {exc}")
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                           timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{binary} does not run on this machine (exit {probe.returncode}): "
                    f"{probe.stderr.strip() or probe.stdout.strip()}")
    return binary


@pytest.fixture
def anvil(anvil_binary: Path) -> Iterator[AnvilProcess]:
    with start_anvil(anvil_binary) as process:
        yield process


def anvil_net(process: AnvilProcess) -> Net:
    w3 = connect_rpc(process.url)
    return make_net(w3, lambda n: mine_blocks(w3, n), lambda a, wei: fund(w3, a, wei))


def test_full_flow_on_anvil(anvil: AnvilProcess) -> None:
    net = anvil_net(anvil)
    assert net.deployment.chain_id == anvil.chain_id
    run_full_flow(net)


def test_revert_reason_over_json_rpc(anvil: AnvilProcess) -> None:
    net = anvil_net(anvil)
    n0 = net.nodes[0]
    settlement, tree = settle_epoch_zero(net, {n0.address: 1})
    client = net.client(n0)
    client.submit_epoch(settlement, net.sign(settlement.hash_struct()))
    with pytest.raises(TransactionReverted) as err:
        client.claim(n0.address, tree.amount(n0.address) + 1, tree.proof(n0.address))
    assert err.value.reason == "bad proof"
    with pytest.raises(TransactionReverted, match="unknown node"):
        client.punish(
            Punishment(node=n0.address, epoch=0, jail=True, slash_bps=0,
                       evidence_digest=b"\x01" * 32),
            net.sign(b"\x02" * 32)[:1],
        )


def test_reorg_on_anvil_is_detected(anvil: AnvilProcess) -> None:
    net = anvil_net(anvil)
    snapshot = net.w3.provider.make_request("evm_snapshot", [])["result"]
    sender = TransactionSender(net.w3, net.nodes[0], FAST)
    receipt = sender.send(to=net.nodes[1].address, data=b"", value=1, action="transfer")
    assert receipt is not None
    check_still_canonical(net.w3, receipt, "transfer")
    assert net.w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    mine_blocks(net.w3, 3)
    with pytest.raises(ReorgDetected):
        check_still_canonical(net.w3, receipt, "transfer")


def test_stopped_anvil_is_chain_unavailable(anvil_binary: Path) -> None:
    with start_anvil(anvil_binary) as process:
        net = anvil_net(process)
        client = ChainClient(net.w3, net.deployment, identity("node0"), policy=FAST)
        assert client.block_number() > 0
    with pytest.raises(ChainUnavailable, match="after 4 tries"):
        client.block_number()
    with pytest.raises(ChainUnavailable):
        client.transfer(net.nodes[1].address, 1)
    assert process.process.poll() is not None


def test_contracts_deploy_and_show_commands(
    anvil: AnvilProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer = identity("cli deployer")
    keystore = tmp_path / "deployer.json"
    keystore.write_text(json.dumps(encrypt_keystore(deployer, "pw", light=True)))
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    w3 = connect_rpc(anvil.url)
    fund(w3, deployer.address, 10**18)
    mixer = identity("cli mixer")
    holder = identity("cli holder")
    out = tmp_path / "deployment.json"
    args = contracts_cli([
        "deploy", "--rpc", anvil.url, "--keystore", str(keystore), "--out", str(out),
        "--mixer", f"{mixer.address}:{'cd' * 32}:http://mixer:8700",
        "--allocate", f"{holder.address}=1500", "--genesis-supply", "5",
    ])
    printed = io.StringIO()
    assert _deploy(args, printed) == 0
    deployment = Deployment.load(out)
    assert json.loads(printed.getvalue()) == deployment.to_json()
    assert deployment.preset == "mainnet" and deployment.chain_id == anvil.chain_id
    client = ChainClient(w3, deployment)
    assert client.balance_of(holder.address) == 1500 * WEI_PER_DNA
    assert client.balance_of(deployer.address) == 5 * WEI_PER_DNA
    assert client.min_stake() == MAINNET.min_stake

    shown = io.StringIO()
    assert _show(contracts_cli(["show", "--deployment", str(out), "--rpc", anvil.url]),
                 shown) == 0
    state = json.loads(shown.getvalue())
    assert state["deployment"] == deployment.to_json()
    assert state["mixers"]["threshold"] == 1
    assert state["mixers"]["members"] == [
        {"address": mixer.address, "vrf_pk": "0x" + "cd" * 32, "endpoint": "http://mixer:8700"}
    ]
    assert state["rewards"]["last_settled_epoch"] is None
    assert state["token"]["total_supply"] == str(1505 * WEI_PER_DNA)

    # a second deploy refuses to overwrite the file
    with pytest.raises(ConfigError, match="already exists"):
        _deploy(args, io.StringIO())
