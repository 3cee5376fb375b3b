"""A node's life from the command line on the embedded EVM: ``node stake add``, ``unbond``,
``withdraw``, ``unjail``, ``claim``, and ``contracts add-mixer`` / ``remove-mixer``.

Each refusal is checked to send nothing (the account's nonce is unchanged) and, where the
chain alone decides it, to refuse before the keystore is decrypted. The gas figures the ETH
check assumes are checked against the gas limits of transactions really sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dnanet.chain.backends
import dnanet.keyfiles
import dnanet.node.status
from dnanet.chain.backends import EmbeddedChain, connect_embedded
from dnanet.chain.client import ChainClient, TransactionReverted
from dnanet.chain.staking import GAS_LIMITS
from dnanet.cli import main
from dnanet.crypto.hashing import keccak256
from dnanet.crypto.keys import Identity, encrypt_keystore
from dnanet.keyfiles import PASSWORD_ENV
from dnanet.params import TEST, WEI_PER_DNA
from dnanet.protocol.messages import Punishment
from dnanet.protocol.rollup import RewardTree
from test_chain_client import Net, identity, make_net, settle_epoch_zero

DNA = WEI_PER_DNA


@dataclass
class _Base:
    chain: EmbeddedChain
    net: Net
    snapshot: int


@pytest.fixture(scope="module")
def _base() -> _Base:
    chain = connect_embedded()
    net = make_net(chain.w3, chain.mine_blocks, chain.fund)
    return _Base(chain, net, chain.snapshot())


@dataclass
class Cli:
    """The ``dnanet`` command against the embedded chain, with keystores on disk."""

    net: Net
    tmp: Path
    capsys: pytest.CaptureFixture[str]
    decrypted: list[Path]

    def keystore(self, who: Identity) -> Path:
        path = self.tmp / f"{who.address}.json"
        if not path.exists():
            path.write_text(json.dumps(encrypt_keystore(who, "pw", light=True)))
        return path

    def chain_args(self, who: Identity) -> list[str]:
        return ["--rpc", "http://embedded", "--deployment", str(self.tmp / "deployment.json"),
                "--keystore", str(self.keystore(who))]

    def run(self, *argv: str) -> tuple[int, Any, str]:
        """Exit status, the JSON printed (None if none) and stderr."""
        self.capsys.readouterr()
        status = main(list(argv))
        out, err = self.capsys.readouterr()
        return status, json.loads(out) if out.strip() else None, err

    def nonce(self, who: Identity) -> int:
        return int(self.net.w3.eth.get_transaction_count(
            self.net.w3.to_checksum_address(who.address)))

    def refused(self, who: Identity, *argv: str) -> str:
        """Run a command that must be refused: it sends nothing and decrypts nothing."""
        before, decrypted = self.nonce(who), len(self.decrypted)
        status, out, err = self.run(*argv)
        assert (status, out) == (2, None), err
        assert self.nonce(who) == before
        assert len(self.decrypted) == decrypted, err
        return err

    def reader(self) -> ChainClient:
        return self.net.client()


@pytest.fixture
def cli(_base: _Base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    net = _base.net
    net.deployment.save(tmp_path / "deployment.json")
    monkeypatch.setattr(dnanet.chain.backends, "connect_rpc", lambda url, **kw: net.w3)
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    decrypted: list[Path] = []
    load = dnanet.keyfiles.load_identity

    def counting_load(path: Path, password: str | None = None) -> Identity:
        decrypted.append(path)
        return load(path, password)

    monkeypatch.setattr(dnanet.keyfiles, "load_identity", counting_load)
    yield Cli(net, tmp_path, capsys, decrypted)
    _base.chain.intercept = None
    _base.chain.revert(_base.snapshot)


def register(net: Net, who: Identity, stake: int = TEST.min_stake) -> None:
    net.client(who).register_node(f"http://{who.address[2:10]}:8701", 0, stake)


# ---------------------------------------------------------------- stake add


def test_stake_add_approves_only_what_the_allowance_lacks(cli: Cli) -> None:
    node = cli.net.nodes[0]
    register(cli.net, node)
    before = cli.nonce(node)
    status, out, err = cli.run("node", "stake", "add", "5", *cli.chain_args(node))
    assert status == 0, err
    assert out["stake"] == str(TEST.min_stake + 5 * DNA) and out["active"] is True
    assert "approve then top_up" in err and "minimum 10 DNA" in err
    assert cli.nonce(node) == before + 2  # approve, top up
    cli.net.client(node).approve(cli.net.deployment.registry, 3 * DNA)
    before = cli.nonce(node)
    status, out, err = cli.run("node", "stake", "add", "2.5", *cli.chain_args(node))
    assert status == 0 and "top_up" in err and "approve" not in err
    assert cli.nonce(node) == before + 1  # the allowance in place covered it
    assert cli.reader().node_info(node.address).stake == TEST.min_stake + 7.5 * DNA


def test_stake_add_refusals_say_the_numbers_and_send_nothing(cli: Cli) -> None:
    node = cli.net.nodes[0]
    err = cli.refused(node, "node", "stake", "add", "5", *cli.chain_args(node))
    assert f"{node.address} is not registered: `dnanet node run` registers it" in err
    register(cli.net, node)
    err = cli.refused(node, "node", "stake", "add", "500", *cli.chain_args(node))
    assert f"adding 500 DNA exceeds the DNA balance 90 DNA of {node.address}" in err
    cli.net.client(node).unbond()
    err = cli.refused(node, "node", "stake", "add", "5", *cli.chain_args(node))
    assert f"{node.address} is unbonding (since epoch 0): withdraw from epoch 1 on" in err


def test_a_node_without_eth_for_gas_is_told_how_much_it_needs(cli: Cli) -> None:
    node = cli.net.nodes[0]
    register(cli.net, node)
    sink = identity("sink")
    w3 = cli.net.w3
    balance = w3.eth.get_balance(w3.to_checksum_address(node.address))
    cli.net.client(node)  # drain the account's ETH but a little
    from dnanet.chain.transactions import TransactionSender

    TransactionSender(w3, node).send(to=sink.address, data=b"", value=balance - 10**14,
                                     action="drain")
    err = cli.refused(node, "node", "stake", "add", "5", *cli.chain_args(node))
    assert "may cost up to" in err and "send it ETH for gas first" in err
    assert "(160000 gas at" in err  # approve + top_up


# ---------------------------------------------------------------- unbond and withdraw


def test_unbond_then_withdraw_after_the_delay(cli: Cli) -> None:
    node = cli.net.nodes[1]
    err = cli.refused(node, "node", "unbond", *cli.chain_args(node))
    assert f"{node.address} is not registered: nothing to unbond" in err
    err = cli.refused(node, "node", "withdraw", *cli.chain_args(node))
    assert f"{node.address} is not registered and not unbonding: `dnanet node unbond`" in err
    register(cli.net, node)
    err = cli.refused(node, "node", "withdraw", *cli.chain_args(node))
    assert f"{node.address} is registered and not unbonding" in err
    status, out, err = cli.run("node", "unbond", *cli.chain_args(node))
    assert status == 0, err
    assert (out["unbond_epoch"], out["withdraw_epoch"]) == (0, TEST.unbond_epochs)
    assert "stays slashable until `dnanet node withdraw` returns it, from epoch 1 on" in err
    assert not cli.reader().node_info(node.address).active
    err = cli.refused(node, "node", "unbond", *cli.chain_args(node))
    assert "is unbonding already (since epoch 0); `dnanet node withdraw` from epoch 1 on " \
           "(now epoch 0)" in err
    err = cli.refused(node, "node", "withdraw", *cli.chain_args(node))
    assert f"the stake of {node.address} unlocks at epoch 1 (1 epochs after unbonding in " \
           "epoch 0); now epoch 0" in err
    cli.net.mine_to(cli.net.deployment.epoch_start(1))
    balance = cli.reader().balance_of(node.address)
    status, out, err = cli.run("node", "withdraw", *cli.chain_args(node))
    assert status == 0, err
    assert out["withdrawn"] == str(TEST.min_stake)
    assert cli.reader().balance_of(node.address) == balance + TEST.min_stake
    assert not cli.reader().node_info(node.address).registered


# ---------------------------------------------------------------- unjail


def jail(net: Net, node: Identity) -> None:
    epoch = net.client().current_epoch()
    punishment = Punishment(node=node.address, epoch=epoch, jail=True, slash_bps=500,
                            evidence_digest=keccak256(b"wrong answer"))
    net.client(net.nodes[2]).punish(punishment, net.sign(punishment.hash_struct()))


def test_unjail_is_owner_only_and_needs_a_jailed_node(cli: Cli) -> None:
    node, owner = cli.net.nodes[0], cli.net.deployer
    register(cli.net, node)
    err = cli.refused(owner, "node", "unjail", "--address", node.address,
                      *cli.chain_args(owner))
    assert f"{node.address} is not jailed" in err
    jail(cli.net, node)
    assert cli.reader().node_info(node.address).jailed
    err = cli.refused(node, "node", "unjail", "--address", node.address,
                      *cli.chain_args(node))
    assert (f"unjail is owner-only: the NodeRegistry's owner is {owner.address}, not "
            f"{node.address}") in err
    status, out, err = cli.run("node", "unjail", "--address", node.address,
                               *cli.chain_args(owner))
    assert status == 0, err
    assert out["unjailed"] is True
    info = cli.reader().node_info(node.address)
    assert not info.jailed and not info.active  # 5% slashed: 9.5 DNA is below the 10
    assert info.stake == TEST.min_stake * 95 // 100
    # the slashed node tops up to the minimum again
    status, out, _ = cli.run("node", "stake", "add", "0.5", *cli.chain_args(node))
    assert status == 0 and out["active"] is True


def test_the_unjail_help_says_it_is_owner_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["node", "--help"])
    assert "unjail    lift a node's jail: owner-only" in capsys.readouterr().out


# ---------------------------------------------------------------- gas figures


def test_gas_figures_cover_the_limits_really_sent(cli: Cli) -> None:
    """Each transaction's gas limit (estimate plus margin) is at most what the ETH check
    assumes; register with the longest endpoint (256 bytes), the costliest case."""
    net, w3 = cli.net, cli.net.w3
    node, other = net.nodes[0], net.nodes[1]
    sent: dict[str, int] = {}

    def limit(tx_hash: str) -> int:
        return int(w3.eth.get_transaction(tx_hash)["gas"])

    client = net.client(node)
    sent["approve"] = limit(client.approve(net.deployment.registry, TEST.min_stake).tx_hash)
    sent["register"] = limit(client._send(client.registry, "register",
                                          ["h" * 256, 1, TEST.min_stake],
                                          action="register").tx_hash)
    client.approve(net.deployment.registry, DNA)
    sent["top_up"] = limit(client.stake_more(DNA).tx_hash)
    sent["unbond"] = limit(client.unbond().tx_hash)
    net.mine_to(net.deployment.epoch_start(1))
    sent["withdraw"] = limit(client.withdraw().tx_hash)
    register(net, other)
    jail(net, other)
    sent["unjail"] = limit(net.client(net.deployer).unjail(other.address).tx_hash)
    assert set(sent) == set(GAS_LIMITS)
    assert {a: sent[a] <= GAS_LIMITS[a] for a in sent} == {a: True for a in sent}, sent


# ---------------------------------------------------------------- claim


@pytest.fixture
def settled(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> RewardTree:
    """Epoch 0 settled on chain, the Validator (stood in for) serving its proofs."""
    net = cli.net
    n0, n1 = net.nodes[0], net.nodes[1]
    for node in (n0, n1):
        register(net, node)
    settlement, tree = settle_epoch_zero(net, {n0.address: 3, n1.address: 1})
    net.client(net.nodes[2]).submit_epoch(settlement, net.sign(settlement.hash_struct()))
    served = {"tree": tree}

    def validator(client: Any, url: str, what: str) -> dict[str, Any]:
        address = url.rsplit("/", 1)[1]
        tree = served["tree"]
        return {"address": address, "epoch": 0, "root": "0x" + tree.root.hex(),
                "cumulative": str(tree.amount(address)),
                "proof": ["0x" + p.hex() for p in tree.proof(address)]}

    monkeypatch.setattr(dnanet.node.status, "get_json", validator)
    return tree


def test_claim_pays_once_then_sends_nothing(cli: Cli, settled: RewardTree) -> None:
    node = cli.net.nodes[0]
    owed = settled.amount(node.address)
    balance = cli.reader().balance_of(node.address)
    argv = ["node", "claim", *cli.chain_args(node), "--validator", "http://validator"]
    status, out, err = cli.run(*argv)
    assert status == 0, err
    assert out["paid"] == str(owed) and out["tx"]
    assert cli.reader().balance_of(node.address) == balance + owed
    before = cli.nonce(node)
    status, out, _ = cli.run(*argv)
    assert (status, out["paid"], out["tx"]) == (0, "0", None)
    assert cli.nonce(node) == before and len(cli.decrypted) == 1


def test_claim_for_another_account_pays_that_account(cli: Cli, settled: RewardTree) -> None:
    payer, node = cli.net.nodes[2], cli.net.nodes[1]
    balance = cli.reader().balance_of(node.address)
    status, _out, err = cli.run("node", "claim", *cli.chain_args(payer), "--validator",
                               "http://validator", "--address", node.address)
    assert status == 0, err
    assert cli.reader().balance_of(node.address) == balance + settled.amount(node.address)


def test_claim_refuses_a_proof_for_a_root_the_chain_does_not_hold(
        cli: Cli, settled: RewardTree, monkeypatch: pytest.MonkeyPatch) -> None:
    node = cli.net.nodes[0]
    stale = RewardTree.build(sorted({node.address: 7, cli.net.nodes[1].address: 1}.items()))
    served = dnanet.node.status.get_json

    def stale_validator(client: Any, url: str, what: str) -> dict[str, Any]:
        reply = served(client, url, what)
        return {**reply, "root": "0x" + stale.root.hex(), "cumulative": "7",
                "proof": ["0x" + p.hex() for p in stale.proof(node.address)]}

    monkeypatch.setattr(dnanet.node.status, "get_json", stale_validator)
    err = cli.refused(node, "node", "claim", *cli.chain_args(node), "--validator",
                      "http://validator")
    assert ("the Validator's proof is for epoch 0 (root 0x" + stale.root.hex()[:16]) in err
    assert (f"but the chain's root is 0x{settled.root.hex()[:16]}.. (latest settled epoch 0):"
            " the Validator has not published that epoch's proofs yet") in err


def test_claim_simulates_first_and_says_why_it_would_revert(
        cli: Cli, settled: RewardTree, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain's root is read as the Validator's (a settlement lands right after), but the
    claim itself would revert: the simulation says why, and nothing is sent."""
    node = cli.net.nodes[0]
    forged = RewardTree.build(sorted({node.address: 10**30, cli.net.nodes[1].address: 1}
                                     .items()))
    monkeypatch.setattr(ChainClient, "merkle_root", lambda self: forged.root)

    def forged_validator(client: Any, url: str, what: str) -> dict[str, Any]:
        return {"address": node.address, "epoch": 0, "root": "0x" + forged.root.hex(),
                "cumulative": str(10**30),
                "proof": ["0x" + p.hex() for p in forged.proof(node.address)]}

    monkeypatch.setattr(dnanet.node.status, "get_json", forged_validator)
    err = cli.refused(node, "node", "claim", *cli.chain_args(node), "--validator",
                      "http://validator")
    assert "the claim would revert (bad proof); nothing was sent" in err


def test_claim_without_eth_for_gas_is_refused(cli: Cli, settled: RewardTree) -> None:
    broke = identity("broke")  # never funded
    node = cli.net.nodes[0]
    err = cli.refused(broke, "node", "claim", *cli.chain_args(broke), "--validator",
                      "http://validator", "--address", node.address)
    assert f"{broke.address} holds 0 ETH and cannot pay the gas of the claim: send it ETH" in err


def test_claim_again_when_an_epoch_settles_while_claiming(
        cli: Cli, settled: RewardTree, monkeypatch: pytest.MonkeyPatch) -> None:
    node = cli.net.nodes[0]
    real_claim = ChainClient.claim
    reverted: list[int] = []

    def claim_after_a_settlement(self: ChainClient, *args: Any) -> Any:
        if not reverted:  # the root moved between the simulation and the claim's block
            reverted.append(1)
            raise TransactionReverted("bad proof", action="claim", tx_hash="0x" + "ab" * 32)
        return real_claim(self, *args)

    monkeypatch.setattr(ChainClient, "claim", claim_after_a_settlement)
    status, out, err = cli.run("node", "claim", *cli.chain_args(node), "--validator",
                               "http://validator")
    assert status == 0, err
    assert "an epoch settled while claiming (the chain's root moved); claiming again" in err
    assert out["paid"] == str(settled.amount(node.address)) and len(cli.decrypted) == 1


# ---------------------------------------------------------------- the mixer set


def test_the_owner_adds_and_removes_mixers_from_the_next_epoch(cli: Cli) -> None:
    net, owner = cli.net, cli.net.deployer
    net.mine_to(net.deployment.epoch_start(1) + 3)  # in epoch 1: changes apply from 2
    newcomer = identity("mixer-new")
    spec = f"{newcomer.address}:{'07' * 32}:http://mixer-new:8800"
    status, out, err = cli.run("contracts", "add-mixer", "--mixer", spec,
                               *cli.chain_args(owner))
    assert status == 0, err
    assert (out["change"], out["effective_epoch"], out["threshold"]) == ("added", 2, 4)
    assert newcomer.address in out["members"] and len(out["members"]) == 5
    assert f"{newcomer.address} joins the mixer set from epoch 2 (block " \
           f"{net.deployment.epoch_start(2)}; now block" in err
    reader = cli.reader()
    assert not reader.is_mixer(1, newcomer.address) and reader.is_mixer(2, newcomer.address)
    gone = net.mixers[0].address
    status, out, err = cli.run("contracts", "remove-mixer", "--address", gone,
                               *cli.chain_args(owner))
    assert status == 0, err
    assert (out["change"], out["effective_epoch"], len(out["members"])) == ("removed", 2, 4)
    assert reader.is_mixer(1, gone) and not reader.is_mixer(2, gone)
    assert f"{gone} leaves the mixer set from epoch 2" in err


def test_mixer_set_changes_are_refused_with_reasons(cli: Cli) -> None:
    net, owner, stranger = cli.net, cli.net.deployer, cli.net.nodes[0]
    member = net.mixers[1].address
    spec = f"{member}:{'07' * 32}:http://mixer1:8800"
    err = cli.refused(owner, "contracts", "add-mixer", "--mixer", spec, *cli.chain_args(owner))
    assert f"{member} is in the set already" in err
    newcomer = identity("mixer-new").address
    err = cli.refused(stranger, "contracts", "add-mixer", "--mixer",
                      f"{newcomer}:{'07' * 32}:http://x", *cli.chain_args(stranger))
    assert (f"adding a mixer is owner-only: the MixerSet's owner is {owner.address}, not "
            f"{stranger.address}") in err
    err = cli.refused(owner, "contracts", "remove-mixer", "--address", newcomer,
                      *cli.chain_args(owner))
    assert f"{newcomer} is not in the set (members: " in err
    err = cli.refused(owner, "contracts", "add-mixer", "--mixer", f"{newcomer}:07:http://x",
                      *cli.chain_args(owner))
    assert "a VRF public key is 32 bytes" in err


def test_the_last_mixer_cannot_be_removed() -> None:
    from dnanet.chain.cli import compute_change_epoch, verify_mixer_change
    from dnanet.errors import ChainError

    owner, only = "0x" + "11" * 20, "0x" + "22" * 20
    with pytest.raises(ChainError, match="is the set's only member"):
        verify_mixer_change(sender=owner, owner=owner, members=[only], mixer=only,
                            adding=False)
    with pytest.raises(ChainError, match="the set has 32 members, the most it may have"):
        verify_mixer_change(sender=owner, owner=owner, adding=True, mixer=only,
                            members=[f"0x{i:040x}" for i in range(32)])
    # before genesis a change applies to epoch 0; from genesis on, to the next epoch
    assert [compute_change_epoch(h, 100, 32) for h in (0, 99, 100, 131, 132)] == \
        [0, 0, 1, 1, 2]
