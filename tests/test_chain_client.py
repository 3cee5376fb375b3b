"""dnanet.chain on the embedded EVM: deploy, registry, settlement, claims, punishment, faults.

`run_full_flow` is also run against anvil over JSON-RPC by tests/test_chain_anvil.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.chain.backends import EmbeddedChain, connect_embedded, connect_rpc
from dnanet.chain.client import (
    ChainClient,
    ChainUnavailable,
    NonceConflict,
    ReorgDetected,
    SendPolicy,
    SettlementConflict,
    TransactionRejected,
    TransactionReverted,
    Underpriced,
    pack_signatures,
)
from dnanet.chain.deploy import MixerSpec, deploy
from dnanet.chain.deployment import Deployment
from dnanet.chain.faults import Fault, classify, revert_reason
from dnanet.chain.transactions import TransactionSender, check_still_canonical
from dnanet.crypto.hashing import keccak256
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, ConfigError
from dnanet.params import TEST, WEI_PER_DNA
from dnanet.protocol.messages import EpochSettlement, Punishment
from dnanet.protocol.rollup import RewardTree, compute_cumulative, compute_epoch_rewards
from dnanet.service.gateway import ClientGateway

FAST = SendPolicy(attempts=4, backoff_s=0.0, max_backoff_s=0.0, receipt_timeout_s=5.0,
                  poll_interval_s=0.001)
ETH = 10**18


def identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(b"dnanet-test/" + label.encode()).digest())


@dataclass
class Net:
    """A deployed test network and the identities acting on it."""

    w3: Any
    mine: Callable[[int], None]
    deployment: Deployment
    deployer: Identity
    mixers: list[Identity]
    nodes: list[Identity]

    def client(self, who: Identity | None = None, policy: SendPolicy = FAST) -> ChainClient:
        return ChainClient(self.w3, self.deployment, who, policy=policy)

    def mine_to(self, block: int) -> None:
        head = int(self.w3.eth.block_number)
        if block > head:
            self.mine(block - head)

    def sign(self, struct_hash: bytes, signers: list[Identity] | None = None) -> list[bytes]:
        domain = self.client().domain()
        return [m.sign_typed(domain, struct_hash) for m in (signers or self.mixers[:3])]


def make_net(w3: Any, mine: Callable[[int], None], fund: Callable[[str, int], None]) -> Net:
    deployer = identity("deployer")
    mixers = [identity(f"mixer{i}") for i in range(4)]
    nodes = [identity(f"node{i}") for i in range(3)]
    for who in (deployer, *mixers, *nodes):
        fund(who.address, 10 * ETH)
    deployment = deploy(
        w3,
        deployer,
        TEST,
        mixers=[
            MixerSpec(m.address, keccak256(b"vrf" + m.address.encode()), f"http://mixer{i}:8700")
            for i, m in enumerate(mixers)
        ],
        allocations={n.address: 100 * WEI_PER_DNA for n in nodes},
        policy=FAST,
    )
    return Net(w3, mine, deployment, deployer, mixers, nodes)


@dataclass
class _Base:
    chain: EmbeddedChain
    net: Net
    snapshot: int


@pytest.fixture(scope="module")
def _base() -> _Base:
    """One deployed network per module; every test starts from its snapshot."""
    chain = connect_embedded()
    net = make_net(chain.w3, chain.mine_blocks, chain.fund)
    return _Base(chain, net, chain.snapshot())


@pytest.fixture
def chain(_base: _Base) -> Iterator[EmbeddedChain]:
    yield _base.chain
    _base.chain.intercept = None
    _base.chain.revert(_base.snapshot)


@pytest.fixture
def net(_base: _Base, chain: EmbeddedChain) -> Net:
    return _base.net


def settle_epoch_zero(net: Net, scores: dict[str, int]) -> tuple[EpochSettlement, RewardTree]:
    """Mine past epoch 0's settle block and build its (unsigned) settlement."""
    client = net.client()
    net.mine_to(client.settle_block(0))
    rewards = compute_epoch_rewards(scores, client.emission(0))
    tree = RewardTree.build(sorted(compute_cumulative({}, rewards).items()))
    settlement = EpochSettlement(
        epoch=0, rewards_root=tree.root, total=sum(rewards.values()),
        reports_digest=keccak256(b"reports of epoch 0"),
    )
    return settlement, tree


def nonce(net: Net, who: Identity) -> int:
    return int(net.w3.eth.get_transaction_count(net.w3.to_checksum_address(who.address)))


def run_full_flow(net: Net) -> None:
    """Register, settle, claim (twice), unbond, punish, and mixer changes; asserts each step."""
    n0, n1, n2 = net.nodes
    admin = net.client(net.deployer)
    reader = net.client()
    assert reader.chain_id() == net.deployment.chain_id
    view = reader.mixer_set(0)
    assert view.addresses == tuple(m.address for m in net.mixers)
    assert view.threshold == 3
    assert all(m.vrf_pk == keccak256(b"vrf" + m.address.encode()) for m in view.members)
    assert view.members[1].endpoint == "http://mixer1:8700"

    # nodes stake and register
    before = reader.block_number()
    for i, node in enumerate((n0, n1)):
        net.client(node).register_node(f"http://node{i}:8600", i, TEST.min_stake)
    assert reader.balance_of(n0.address) == 100 * WEI_PER_DNA - TEST.min_stake
    listed = reader.nodes()
    assert [n.address for n in listed] == [n0.address, n1.address]
    # The registry as of a past block, and the block of its latest change.
    assert reader.nodes(block=before) == []
    changed = reader.registry_changed_at()
    assert before < changed <= reader.block_number()
    assert reader.nodes(block=changed) == listed
    assert reader.registry_changed_at(block=before) < changed
    assert listed[1].hw_class == 1 and listed[1].endpoint == "http://node1:8600"
    assert all(n.active and n.stake == TEST.min_stake for n in listed)
    assert not reader.node_info(n2.address).registered
    # a node that moved updates its endpoint and class through the daemons' gateway
    moved = ClientGateway(net.client(n1))
    assert moved.update_node("http://node1-new:8701", 0).startswith("0x")
    record = moved.node(n1.address)
    assert record is not None
    assert (record.endpoint, record.hardware_class, record.stake) == (
        "http://node1-new:8701", 0, TEST.min_stake)
    moved.update_node("http://node1:8600", 1)

    # epoch 0 settles with a quorum of mixer signatures
    assert reader.last_settled_epoch() is None
    settlement, tree = settle_epoch_zero(net, {n0.address: 3, n1.address: 1})
    signatures = net.sign(settlement.hash_struct())
    supply = reader.total_supply()
    validator = net.client(n2)  # anyone may submit: the signatures are the authority
    receipt = validator.submit_epoch(settlement, signatures)
    assert receipt is not None
    assert reader.last_settled_epoch() == 0 and reader.next_epoch() == 1
    assert reader.merkle_root() == tree.root
    assert reader.total_supply() == supply + settlement.total
    record = reader.settlement(0)
    assert record is not None
    assert (record.rewards_root, record.total) == (tree.root, settlement.total)
    assert record.signers_bitmap == 0b0111 and record.tx_hash == receipt.tx_hash

    # re-submitting the same settlement sends nothing
    before = nonce(net, n2)
    assert validator.submit_epoch(settlement, signatures) is None
    assert nonce(net, n2) == before

    # n0 claims its cumulative reward with a proof; a second claim sends nothing
    owed = tree.amount(n0.address)
    balance = reader.balance_of(n0.address)
    assert reader.verify_claim(n0.address, owed, tree.proof(n0.address))
    assert net.client(n0).claim(n0.address, owed, tree.proof(n0.address)) is not None
    assert reader.balance_of(n0.address) == balance + owed
    assert reader.claimed(n0.address) == owed
    before = nonce(net, n0)
    assert net.client(n0).claim(n0.address, owed, tree.proof(n0.address)) is None
    assert nonce(net, n0) == before
    # anyone may claim for n1; the tokens go to n1
    balance = reader.balance_of(n1.address)
    validator.claim(n1.address, tree.amount(n1.address), tree.proof(n1.address))
    assert reader.balance_of(n1.address) == balance + tree.amount(n1.address)

    # n1 unbonds: inactive at once, withdrawal only after the delay
    net.client(n1).unbond()
    assert not reader.node_info(n1.address).active
    assert reader.node_info(n1.address).unbonding
    with pytest.raises(TransactionReverted) as err:
        net.client(n1).withdraw()
    assert err.value.reason == "unbonding delay"
    net.mine_to(net.deployment.epoch_start(reader.current_epoch() + TEST.unbond_epochs))
    stake_back = reader.balance_of(n1.address) + TEST.min_stake
    net.client(n1).withdraw()
    assert reader.balance_of(n1.address) == stake_back
    assert not reader.node_info(n1.address).registered

    # a quorum jails n0 and slashes 5%; repeating it sends nothing
    net.client(n0).top_up(WEI_PER_DNA)
    stake = TEST.min_stake + WEI_PER_DNA
    epoch = reader.current_epoch()
    punishment = Punishment(node=n0.address, epoch=epoch, jail=True, slash_bps=500,
                            evidence_digest=keccak256(b"wrong answer"))
    signatures = net.sign(punishment.hash_struct(), net.mixers[1:])
    assert validator.punish(punishment, signatures) is not None
    info = reader.node_info(n0.address)
    assert info.jailed and not info.active and info.stake == stake - stake * 500 // 10_000
    assert reader.is_punished(n0.address, epoch)
    assert validator.punish(punishment, signatures) is None

    # the owner changes the set from the next epoch on
    newcomer = identity("mixer-new")
    admin.add_mixer(newcomer.address, b"\x07" * 32, "http://mixer-new:8700")
    admin.remove_mixer(net.mixers[0].address)
    current = reader.current_epoch()
    assert reader.mixer_set(current).addresses == view.addresses
    upcoming = reader.mixer_set(current + 1)
    assert newcomer.address in upcoming.addresses
    assert net.mixers[0].address not in upcoming.addresses
    assert reader.is_mixer(current, net.mixers[0].address)
    assert not reader.is_mixer(current + 1, net.mixers[0].address)

    # plain token transfer, and block hashes as round seeds
    reader_balance = reader.balance_of(n2.address)
    net.client(n0).transfer(n2.address, 5)
    assert reader.balance_of(n2.address) == reader_balance + 5
    head = reader.block_number()
    assert reader.block_hash(head) == bytes(net.w3.eth.get_block(head)["hash"])
    assert len(reader.block_hash(0)) == 32


def test_full_flow_on_the_embedded_evm(net: Net) -> None:
    run_full_flow(net)


def test_deploy_wires_the_contracts(net: Net) -> None:
    client = net.client()
    d = net.deployment
    assert d.chain_id == client.chain_id() and d.preset == "test"
    assert d.genesis_block == d.deploy_block  # default: epoch 0 starts with the first deploy
    assert client.token.functions.minter().call().lower() == d.distributor
    assert client.token.functions.owner().call() == "0x" + "00" * 20  # nobody else can mint
    assert client.distributor.functions.GRACE_BLOCKS().call() == TEST.settlement_grace_blocks
    assert client.registry.functions.MIN_STAKE().call() == TEST.min_stake
    assert client.mixer_set_contract.functions.owner().call().lower() == net.deployer.address
    assert client.emission(0) == TEST.initial_emission
    assert client.total_supply() == 300 * WEI_PER_DNA
    assert client.balance_of(net.deployer.address) == 0


def test_deploy_with_explicit_genesis_and_supply(chain: EmbeddedChain) -> None:
    deployer = identity("second deployer")
    chain.fund(deployer.address, ETH)
    d = deploy(chain.w3, deployer, TEST, genesis_block=100, genesis_supply=7 * WEI_PER_DNA,
               policy=FAST)
    client = ChainClient(chain.w3, d)
    assert d.genesis_block == 100 and client.current_epoch() == 0
    assert client.balance_of(deployer.address) == 7 * WEI_PER_DNA
    assert client.mixer_set(0).members == ()
    chain.mine_blocks(100 + 2 * TEST.epoch_blocks - client.block_number())
    assert client.current_epoch() == 2


def test_deploy_rejects_bad_inputs(chain: EmbeddedChain) -> None:
    deployer = identity("penniless deployer")
    spec = MixerSpec(identity("m").address, b"\x01" * 32, "http://m")
    with pytest.raises(ConfigError, match="twice"):
        deploy(chain.w3, deployer, TEST, mixers=[spec, spec])
    with pytest.raises(ConfigError, match="below the allocations"):
        deploy(chain.w3, deployer, TEST, allocations={spec.address: 5}, genesis_supply=4)
    with pytest.raises(ConfigError, match="positive"):
        deploy(chain.w3, deployer, TEST, allocations={spec.address: 0})
    with pytest.raises(ConfigError, match="not an address") as err:
        deploy(chain.w3, deployer, TEST, allocations={"0x12": 1})
    assert err.value.field == "allocations"
    with pytest.raises(ConfigError, match="not an address") as err:
        deploy(chain.w3, deployer, TEST, treasury="treasury")
    assert err.value.field == "treasury"
    # without ETH for gas the node refuses the first transaction
    with pytest.raises(TransactionRejected):
        deploy(chain.w3, deployer, TEST, policy=FAST)


def test_mixer_spec_parse_and_validation() -> None:
    address = identity("m").address
    spec = MixerSpec.parse(f"{address.upper().replace('0X', '0x')}:{'ab' * 32}:http://h:1/x")
    assert (spec.address, spec.vrf_pk, spec.endpoint) == (address, b"\xab" * 32, "http://h:1/x")
    for text, field in [
        ("nocolons", "mixer"),
        (f"{address}:zz:http://h", "mixer.vrf_pk"),
        (f"{address}:{'ab' * 31}:http://h", "mixer.vrf_pk"),
        (f"{address}:{'00' * 32}:http://h", "mixer.vrf_pk"),
        (f"0x1234:{'ab' * 32}:http://h", "mixer.address"),
        (f"0x{'00' * 20}:{'ab' * 32}:http://h", "mixer.address"),
        (f"{address}:{'ab' * 32}:", "mixer.endpoint"),
        (f"{address}:{'ab' * 32}:{'x' * 257}", "mixer.endpoint"),
    ]:
        with pytest.raises(ConfigError) as err:
            MixerSpec.parse(text)
        assert err.value.field == field, text


# ---------------------------------------------------------------- reverts and idempotence


def test_claim_with_a_bad_proof_reverts_with_its_reason_and_sends_nothing(net: Net) -> None:
    n0, n1 = net.nodes[:2]
    settlement, tree = settle_epoch_zero(net, {n0.address: 1, n1.address: 1})
    net.client(n1).submit_epoch(settlement, net.sign(settlement.hash_struct()))
    client = net.client(n0)
    before = nonce(net, n0)
    with pytest.raises(TransactionReverted) as err:
        client.claim(n0.address, tree.amount(n0.address) + 1, tree.proof(n0.address))
    assert err.value.reason == "bad proof"
    assert "bad proof" in str(err.value) and err.value.tx_hash is None
    assert nonce(net, n0) == before
    assert client.claimed(n0.address) == 0


def test_settlement_reverts_map_to_reasons(net: Net) -> None:
    client = net.client(net.nodes[0])
    settlement, _ = settle_epoch_zero(net, {net.nodes[0].address: 1})
    signatures = net.sign(settlement.hash_struct())
    cases = [
        (signatures[:2], "below threshold"),
        ([signatures[0]] * 3, "duplicate"),
        (net.sign(settlement.hash_struct(), [identity("outsider"), *net.mixers[:2]]),
         "non-member"),
        (net.sign(replace(settlement, total=1).hash_struct()), "non-member"),
    ]
    for sigs, reason in cases:
        with pytest.raises(TransactionReverted) as err:
            client.submit_epoch(settlement, sigs)
        assert err.value.reason == reason
    early = replace(settlement, epoch=1)
    with pytest.raises(TransactionReverted, match="out of order"):
        client.submit_epoch(early, net.sign(early.hash_struct()))
    assert client.last_settled_epoch() is None


def test_resubmitting_another_root_for_a_settled_epoch_is_a_conflict(net: Net) -> None:
    n0, n1 = net.nodes[:2]
    settlement, _ = settle_epoch_zero(net, {n0.address: 1})
    client = net.client(n1)
    client.submit_epoch(settlement, net.sign(settlement.hash_struct()))
    other = replace(settlement, rewards_root=keccak256(b"another root"))
    before = nonce(net, n1)
    with pytest.raises(SettlementConflict, match="already settled"):
        client.submit_epoch(other, net.sign(other.hash_struct()))
    assert nonce(net, n1) == before


def test_writes_need_an_identity_and_well_formed_inputs(net: Net) -> None:
    reader = net.client()
    with pytest.raises(ConfigError, match="no sending identity"):
        reader.unbond()
    with pytest.raises(ChainError, match="no signatures"):
        pack_signatures([])
    with pytest.raises(ChainError, match="65 bytes"):
        pack_signatures([b"\x01" * 64])
    with pytest.raises(ChainError, match="at most 32"):
        pack_signatures([b"\x01" * 65] * 33)
    with pytest.raises(ChainError) as err:
        net.client(net.nodes[0]).claim(net.nodes[0].address, 1, [b"\x00" * 31])
    assert err.value.field == "proof[0]"
    with pytest.raises(ChainError, match="at most 32"):
        reader.verify_claim(net.nodes[0].address, 1, [b"\x00" * 32] * 33)


def test_client_refuses_a_deployment_of_another_chain(net: Net) -> None:
    wrong = replace(net.deployment, chain_id=net.deployment.chain_id + 1)
    with pytest.raises(ConfigError, match="wrong --rpc or wrong deployment"):
        ChainClient(net.w3, wrong)


# ---------------------------------------------------------------- transport and send faults


def test_connect_rpc_to_a_closed_port_is_chain_unavailable() -> None:
    from dnanet.chain.anvil import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailable, match="cannot reach the chain at " + url):
        connect_rpc(url, timeout_s=1.0)
    with pytest.raises(ConfigError, match="http://"):
        connect_rpc("ftp://example")


def test_reads_retry_with_exponential_backoff_then_give_up(net: Net) -> None:
    from dnanet.chain.anvil import free_port

    w3 = connect_rpc(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, check=False)
    pauses: list[float] = []
    policy = SendPolicy(attempts=4, backoff_s=0.5, max_backoff_s=1.5)
    client = ChainClient(w3, net.deployment, policy=policy, sleep=pauses.append,
                         check_chain=False)
    with pytest.raises(ChainUnavailable, match="after 4 tries"):
        client.block_number()
    assert pauses == [0.5, 1.0, 1.5]


def rpc_error(message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 0, "error": {"code": -32000, "message": message}}


def test_lost_send_answer_is_resent_without_a_second_claim(chain: EmbeddedChain,
                                                           net: Net) -> None:
    n0 = net.nodes[0]
    settlement, tree = settle_epoch_zero(net, {n0.address: 1})
    net.client(n0).submit_epoch(settlement, net.sign(settlement.hash_struct()))
    sends: list[Any] = []

    def lose_first_answer(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction":
            sends.append(params[0])
            response = forward()  # the chain takes the transaction ...
            if len(sends) == 1:
                raise ConnectionError("connection reset by peer")  # ... the answer is lost
            return response
        return forward()

    chain.intercept = lose_first_answer
    before = nonce(net, n0)
    receipt = net.client(n0).claim(n0.address, tree.amount(n0.address), tree.proof(n0.address))
    chain.intercept = None
    assert receipt is not None
    assert len(sends) == 2 and sends[0] == sends[1]  # the very same signed bytes again
    assert nonce(net, n0) == before + 1
    assert net.client().balance_of(n0.address) == 100 * WEI_PER_DNA + tree.amount(n0.address)


def test_a_lost_send_answer_and_failing_receipt_lookups_send_it_once(
        chain: EmbeddedChain, net: Net) -> None:
    """The chain took our transfer but the answer was lost, the resend is refused as "nonce
    too low", and the node fails the receipt lookups for a while: the sender waits for its own
    receipt instead of taking a new nonce and transferring twice."""
    n0, n1 = net.nodes[0], net.nodes[1]
    sends: list[Any] = []
    lookups_failed = [0]

    def lose_answer_then_fail_lookups(method: str, params: Any,
                                      forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction":
            sends.append(params[0])
            if len(sends) == 1:
                forward()  # the chain takes the transaction ...
                raise ConnectionError("connection reset by peer")  # ... the answer is lost
            return rpc_error("nonce too low")
        if method == "eth_getTransactionReceipt" and lookups_failed[0] < 3:
            lookups_failed[0] += 1
            raise ConnectionError("read timed out")
        return forward()

    chain.intercept = lose_answer_then_fail_lookups
    before, balance = nonce(net, n0), net.client().balance_of(n1.address)
    receipt = net.client(n0).transfer(n1.address, 5)
    chain.intercept = None
    assert receipt is not None and len(sends) == 2 and lookups_failed[0] == 3
    assert nonce(net, n0) == before + 1  # one transfer, not two
    assert net.client().balance_of(n1.address) == balance + 5


def test_underpriced_send_bumps_the_fee_on_the_same_nonce(chain: EmbeddedChain,
                                                          net: Net) -> None:
    seen: list[Any] = []

    def underpriced_twice(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction":
            seen.append(params[0])
            if len(seen) <= 2:
                return rpc_error("replacement transaction underpriced")
        return forward()

    chain.intercept = underpriced_twice
    net.client(net.nodes[0]).transfer(net.nodes[1].address, 1)
    chain.intercept = None
    decoded = [_decode(raw) for raw in seen]
    assert len({d["nonce"] for d in decoded}) == 1
    fees = [d["maxFeePerGas"] for d in decoded]
    assert fees[0] < fees[1] < fees[2]
    assert fees[1] >= fees[0] * 125 // 100


def test_underpriced_forever_gives_up_with_underpriced(chain: EmbeddedChain, net: Net) -> None:
    chain.intercept = lambda m, p, f: (
        rpc_error("transaction underpriced") if m == "eth_sendRawTransaction" else f()
    )
    with pytest.raises(Underpriced, match="bumps"):
        net.client(net.nodes[0]).transfer(net.nodes[1].address, 1)


def test_nonce_taken_by_another_sender_is_reread(chain: EmbeddedChain, net: Net) -> None:
    n0, n1 = net.nodes[:2]
    rival = TransactionSender(net.w3, n0, FAST)
    done: list[bool] = []

    def rival_sends_first(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction" and not done:
            done.append(True)
            chain.intercept = None
            rival.send(to=n1.address, data=b"", value=1, action="rival transfer")
            chain.intercept = rival_sends_first
        return forward()

    chain.intercept = rival_sends_first
    before = nonce(net, n0)
    net.client(n0).transfer(n1.address, 3)
    chain.intercept = None
    assert nonce(net, n0) == before + 2  # the rival's transaction and ours


def test_claim_made_elsewhere_while_ours_clashed_is_not_repeated(chain: EmbeddedChain,
                                                                 net: Net) -> None:
    n0 = net.nodes[0]
    settlement, tree = settle_epoch_zero(net, {n0.address: 1})
    net.client(n0).submit_epoch(settlement, net.sign(settlement.hash_struct()))
    other_process = net.client(n0)
    owed = tree.amount(n0.address)
    fired: list[bool] = []

    def other_claims_first(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction" and not fired:
            fired.append(True)
            chain.intercept = None
            other_process.claim(n0.address, owed, tree.proof(n0.address))
            chain.intercept = other_claims_first
        return forward()

    chain.intercept = other_claims_first
    before = nonce(net, n0)
    assert net.client(n0).claim(n0.address, owed, tree.proof(n0.address)) is None
    chain.intercept = None
    assert nonce(net, n0) == before + 1  # only the other process's claim
    assert net.client().claimed(n0.address) == owed


def test_a_receipt_lookup_that_fails_is_not_taken_for_another_senders_nonce(
        chain: EmbeddedChain, net: Net) -> None:
    """Our transaction is mined (the nonce moves on) while the node fails every receipt
    lookup for a while (a loaded host): that is no evidence another process took the nonce;
    the sender keeps polling and returns its own receipt."""
    failures = [0]

    def receipts_fail_for_a_while(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_getTransactionReceipt" and failures[0] < 4:
            failures[0] += 1
            raise ConnectionError("read timed out")
        return forward()

    chain.intercept = receipts_fail_for_a_while
    before = nonce(net, net.nodes[0])
    receipt = net.client(net.nodes[0]).transfer(net.nodes[1].address, 1)
    chain.intercept = None
    assert receipt is not None and failures[0] == 4
    assert nonce(net, net.nodes[0]) == before + 1


def test_endless_nonce_clashes_raise_nonce_conflict(chain: EmbeddedChain, net: Net) -> None:
    chain.intercept = lambda m, p, f: (
        rpc_error("nonce too low") if m == "eth_sendRawTransaction" else f()
    )
    with pytest.raises(NonceConflict, match="another process"):
        net.client(net.nodes[0]).transfer(net.nodes[1].address, 1)


def test_node_refusal_is_not_retried(chain: EmbeddedChain, net: Net) -> None:
    calls: list[str] = []

    def refuse(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_sendRawTransaction":
            calls.append(method)
            return rpc_error("insufficient funds for gas * price + value")
        return forward()

    chain.intercept = refuse
    with pytest.raises(TransactionRejected, match="insufficient funds"):
        net.client(net.nodes[0]).transfer(net.nodes[1].address, 1)
    assert calls == ["eth_sendRawTransaction"]


def test_send_during_an_outage_retries_then_reports_unavailable(chain: EmbeddedChain,
                                                                net: Net) -> None:
    pauses: list[float] = []
    chain.intercept = lambda m, p, f: (
        (_ for _ in ()).throw(ConnectionRefusedError("refused"))
        if m == "eth_sendRawTransaction" else f()
    )
    policy = replace(FAST, backoff_s=0.1, max_backoff_s=10.0)
    client = ChainClient(net.w3, net.deployment, net.nodes[0], policy=policy,
                         sleep=pauses.append)
    with pytest.raises(ChainUnavailable, match="after 4 tries"):
        client.transfer(net.nodes[1].address, 1)
    assert pauses == [0.1, 0.2, 0.4]


def test_reorg_of_the_receipt_block_is_detected(chain: EmbeddedChain, net: Net) -> None:
    sender = TransactionSender(net.w3, net.nodes[0], FAST)
    snapshot = chain.snapshot()
    receipt = sender.send(to=net.nodes[1].address, data=b"", value=1, action="transfer")
    assert receipt is not None
    check_still_canonical(net.w3, receipt, "transfer")  # nothing happened yet
    chain.revert(snapshot)
    chain.fund(net.nodes[2].address, 1)  # another block takes the height
    chain.mine_blocks(3)
    with pytest.raises(ReorgDetected, match="repeat the call"):
        check_still_canonical(net.w3, receipt, "transfer")


def test_confirmations_wait_and_detect_a_reorg_while_waiting(chain: EmbeddedChain,
                                                             net: Net) -> None:
    policy = replace(FAST, confirmations=2)
    polls: list[int] = []

    def blocks_arrive(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_blockNumber":
            polls.append(1)
            chain.tester.mine_blocks(1)
        return forward()

    chain.intercept = blocks_arrive
    receipt = net.client(net.nodes[0], policy).transfer(net.nodes[1].address, 1)
    assert polls and int(net.w3.eth.block_number) >= receipt.block_number + 2

    snapshot = chain.snapshot()

    def reorg_on_first_poll(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        if method == "eth_blockNumber":
            chain.intercept = None
            chain.tester.revert_to_snapshot(snapshot)
            chain.tester.mine_blocks(5)
        return forward()

    chain.intercept = reorg_on_first_poll
    with pytest.raises(ReorgDetected):
        net.client(net.nodes[0], policy).transfer(net.nodes[1].address, 1)


def test_classify_maps_provider_errors() -> None:
    import requests
    from web3.exceptions import ContractLogicError, Web3RPCError

    cases: list[tuple[BaseException, Fault]] = [
        (ContractLogicError("execution reverted: bad proof"), Fault.REVERTED),
        (Web3RPCError("execution reverted: early"), Fault.REVERTED),
        (requests.ConnectionError("refused"), Fault.UNAVAILABLE),
        (requests.Timeout("slow"), Fault.UNAVAILABLE),
        (ConnectionRefusedError(111, "refused"), Fault.UNAVAILABLE),
        (Web3RPCError("header not found; request timed out"), Fault.UNAVAILABLE),
        (Web3RPCError("nonce too low: next nonce 5, tx nonce 4"), Fault.NONCE_LOW),
        (Web3RPCError("nonce too high"), Fault.NONCE_HIGH),
        (Web3RPCError("replacement transaction underpriced"), Fault.UNDERPRICED),
        (Web3RPCError("max fee per gas less than block base fee"), Fault.UNDERPRICED),
        (Web3RPCError("already known"), Fault.ALREADY_KNOWN),
        (Web3RPCError("insufficient funds for gas * price + value"), Fault.REJECTED),
        (RuntimeError("???"), Fault.REJECTED),
    ]
    for exc, fault in cases:
        assert classify(exc)[0] is fault, exc
    assert classify(ContractLogicError("execution reverted: bad proof"))[1] == "bad proof"
    response = requests.Response()
    response.status_code = 503
    assert classify(requests.HTTPError("x", response=response))[0] is Fault.UNAVAILABLE
    response.status_code = 401
    assert classify(requests.HTTPError("x", response=response))[0] is Fault.REJECTED


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
@settings(max_examples=50, deadline=None)
def test_revert_reason_strips_only_the_prefix(reason: str) -> None:
    reason = reason.strip().strip("'\"")
    assert revert_reason(f"execution reverted: {reason}") == reason.strip()


def test_send_policy_validation_and_backoff() -> None:
    for kwargs, field in [
        ({"attempts": 0}, "attempts"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
        ({"confirmations": -1}, "confirmations"),
        ({"fee_bump_percent": 9}, "fee_bump_percent"),
        ({"backoff_s": -1}, "backoff_s"),
    ]:
        with pytest.raises(ConfigError) as err:
            SendPolicy(**kwargs)
        assert err.value.field == field
    policy = SendPolicy(backoff_s=1.0, max_backoff_s=5.0)
    assert [policy.delay(i) for i in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


# ---------------------------------------------------------------- embedded backend


def test_embedded_chain_mines_and_funds(chain: EmbeddedChain) -> None:
    start = chain.block_number
    assert chain.mine_blocks(50) == start + 50
    assert chain.mine_blocks(0) == start + 50
    with pytest.raises(ConfigError):
        chain.mine_blocks(-1)
    who = identity("funded")
    chain.fund(who.address, 123)
    assert chain.w3.eth.get_balance(chain.w3.to_checksum_address(who.address)) == 123
    assert chain.block_number == chain.w3.eth.block_number == start + 51
    # with a filter installed, mining feeds it (the fast path would skip it)
    block_filter = chain.w3.eth.filter("latest")
    chain.mine_blocks(3)
    assert len(block_filter.get_new_entries()) == 3
    assert chain.w3.eth.uninstall_filter(block_filter.filter_id)


def test_embedded_chain_is_safe_across_threads(net: Net) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = net.client(net.nodes[0])
    to = net.nodes[1].address
    before = client.balance_of(to)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: client.transfer(to, 1), range(8)))
        heads = list(pool.map(lambda _: client.block_number(), range(8)))
    assert client.balance_of(to) == before + 8
    assert len(heads) == 8


# ---------------------------------------------------------------- deployment file


def test_deployment_file_round_trip(net: Net, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "deployment.json"
    net.deployment.save(path)
    assert Deployment.load(path) == net.deployment
    data = json.loads(path.read_text())
    assert data["contracts"]["MixerSet"] == net.deployment.mixer_set
    assert data["format"] == 1


def _valid_document() -> dict[str, Any]:
    return {
        "format": 1, "preset": "local", "chain_id": 31337,
        "contracts": {"DNAToken": "0x" + "11" * 20, "MixerSet": "0x" + "22" * 20,
                      "NodeRegistry": "0x" + "33" * 20, "RewardsDistributor": "0x" + "44" * 20},
        "deploy_block": 1, "genesis_block": 2, "epoch_blocks": 1024,
    }


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda d: d.pop("chain_id"), "chain_id", "missing"),
        (lambda d: d.update(extra=1), "extra", "unknown"),
        (lambda d: d.update(format=2), "format", "unsupported"),
        (lambda d: d.update(chain_id="1"), "chain_id", "non-negative integer"),
        (lambda d: d.update(chain_id=0), "chain_id", "not a chain"),
        (lambda d: d.update(epoch_blocks=0), "epoch_blocks", "at least one"),
        (lambda d: d.update(genesis_block=-1), "genesis_block", "non-negative"),
        (lambda d: d.update(preset=""), "preset", "missing"),
        (lambda d: d["contracts"].update(MixerSet="0x12"), "contracts.MixerSet", "not an address"),
        (lambda d: d["contracts"].update(MixerSet="0x" + "00" * 20), "contracts.MixerSet",
         "zero address"),
        (lambda d: d["contracts"].update(MixerSet="0x" + "11" * 20), "contracts.MixerSet",
         "same address as DNAToken"),
        (lambda d: d["contracts"].pop("NodeRegistry"), "contracts", "NodeRegistry"),
        (lambda d: d.update(contracts=[]), "contracts", "object"),
    ],
)
def test_deployment_validation_names_the_field(
    change: Callable[[dict[str, Any]], Any], field: str, message: str
) -> None:
    document = _valid_document()
    assert Deployment.from_json(document).chain_id == 31337
    change(document)
    with pytest.raises(ConfigError, match=message) as err:
        Deployment.from_json(document)
    assert err.value.field == field


def test_deployment_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"cannot read deployment file .*nope\.json"):
        Deployment.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json is not JSON"):
        Deployment.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([1]))
    with pytest.raises(ConfigError, match=r"wrong\.json: a deployment is a JSON object"):
        Deployment.load(wrong)


def test_deployment_clock() -> None:
    d = Deployment.from_json(_valid_document())
    assert d.epoch_of_block(0) == 0 and d.epoch_of_block(2) == 0
    assert d.epoch_of_block(2 + 1024) == 1 and d.epoch_start(3) == 2 + 3 * 1024
    assert d.addresses["RewardsDistributor"] == "0x" + "44" * 20


def _decode(raw: Any) -> dict[str, Any]:
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    return dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())


# ---------------------------------------------------------------- command line


def contracts_cli(argv: list[str]) -> argparse.Namespace:
    from dnanet.chain.cli import add_contracts_commands

    parser = argparse.ArgumentParser(prog="dnanet")
    add_contracts_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["contracts", *argv])


def test_contracts_deploy_rejects_bad_arguments_before_touching_the_chain(
    tmp_path: Path,
) -> None:
    from dnanet.chain.anvil import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    keystore = str(tmp_path / "missing-keystore.json")
    existing = tmp_path / "deployment.json"
    existing.write_text("{}")
    base = ["deploy", "--rpc", closed, "--keystore", keystore]
    cases = [
        ([*base, "--out", str(existing)], ConfigError, "already exists"),
        ([*base, "--out", str(tmp_path / "d.json"), "--mixer", "0x12:ab:http://x"], ConfigError,
         "not an address"),
        ([*base, "--out", str(tmp_path / "d.json"), "--allocate", "0x" + "11" * 20], ConfigError,
         "ADDR=DNA"),
        ([*base, "--out", str(tmp_path / "d.json")], ChainUnavailable, "cannot reach"),
    ]
    for argv, error, message in cases:
        args = contracts_cli(argv)
        with pytest.raises(error, match=message):
            args.handler(args)
    assert existing.read_text() == "{}"
    for option in ("--confirmations", "--genesis-supply", "--genesis-block"):
        with pytest.raises(SystemExit):  # refused by the parser, naming the option
            contracts_cli([*base, "--out", str(tmp_path / "d.json"), option, "-1"])


def test_contracts_cli_never_takes_a_password_argument() -> None:
    with pytest.raises(SystemExit):
        contracts_cli(["deploy", "--rpc", "http://x", "--keystore", "k", "--password", "p"])


def test_settlement_found_when_submitted_long_after_its_settle_block(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dnanet.chain.client as client_module

    monkeypatch.setattr(client_module, "FIRST_LOG_WINDOW_BLOCKS", 2)
    monkeypatch.setattr(client_module, "LOG_WINDOW_BLOCKS", 8)
    n0 = net.nodes[0]
    settlement, _ = settle_epoch_zero(net, {n0.address: 1})
    net.mine(50)  # the validator was late: the event lies several windows away
    client = net.client(n0)
    receipt = client.submit_epoch(settlement, net.sign(settlement.hash_struct()))
    assert receipt is not None
    net.mine(20)
    record = client.settlement(0)
    assert record is not None and record.block_number == receipt.block_number
    assert client.settlement(0) is record  # cached once settled
    assert client.settlement(1) is None
    assert client.submit_epoch(settlement, net.sign(settlement.hash_struct())) is None


def test_revert_at_inclusion_reports_the_mined_transaction_and_reason(
    chain: EmbeddedChain, net: Net
) -> None:
    n0 = net.nodes[0]
    settlement, tree = settle_epoch_zero(net, {n0.address: 1})
    net.client(n0).submit_epoch(settlement, net.sign(settlement.hash_struct()))

    def estimate_blindly(method: str, params: Any, forward: Callable[[], Any]) -> Any:
        # as if the state changed between the estimate and the inclusion
        if method == "eth_estimateGas":
            return {"jsonrpc": "2.0", "id": 0, "result": 200_000}
        return forward()

    chain.intercept = estimate_blindly
    before = nonce(net, n0)
    with pytest.raises(TransactionReverted) as err:
        net.client(n0).claim(n0.address, tree.amount(n0.address) + 1, tree.proof(n0.address))
    chain.intercept = None
    assert err.value.reason == "bad proof"
    assert err.value.tx_hash is not None and err.value.tx_hash in str(err.value)
    assert nonce(net, n0) == before + 1  # it was mined, and failed
    receipt = net.w3.eth.get_transaction_receipt(err.value.tx_hash)
    assert receipt["status"] == 0
