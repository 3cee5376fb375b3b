"""``dnanet node status``: what is claimable (never guessed without the chain), and the node's
registration as the chain holds it (stake, and why it is inactive if it is), from a
Validator and a chain stood in for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dnanet.node.status import collect_status, render_status
from dnanet.params import TEST, WEI_PER_DNA, Preset
from dnanet.protocol.rollup import RewardTree
from dnanet.service.network import NodeRecord, SettledEpoch

NODE = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20
TREE = RewardTree.build(sorted({NODE: 30 * WEI_PER_DNA, OTHER: 10 * WEI_PER_DNA}.items()))


def validator(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path == f"/v1/nodes/{NODE}":
        return httpx.Response(200, json={
            "address": NODE, "epoch": 0, "root": "0x" + TREE.root.hex(),
            "cumulative": str(TREE.amount(NODE)), "in_tree": True,
            "proof": ["0x" + p.hex() for p in TREE.proof(NODE)], "epochs": []})
    if path == "/v1/epochs":
        return httpx.Response(200, json=[{"epoch": 0}])
    if path == f"/v1/nodes/{NODE}/epochs/0":
        return httpx.Response(200, json={
            "address": NODE, "epoch": 0, "status": "settled", "final": True, "challenges": 0,
            "failures": 0, "strike": False, "fraud": False, "epoch_score": 750_000,
            "reward": str(TREE.amount(NODE)), "cumulative": str(TREE.amount(NODE)),
            "root": "0x" + TREE.root.hex(), "proof": [], "in_tree": True, "reports": []})
    return httpx.Response(404, json={"error": {"message": "no such thing"}})


@dataclass
class Chain:
    record: NodeRecord | None
    claimed_wei: int = 0
    calls: list[str] = field(default_factory=list)

    @property
    def preset(self) -> Preset:
        return TEST

    @property
    def genesis_block(self) -> int:
        return 0

    def block_number(self) -> int:
        return 40

    def claimed(self, account: str) -> int:
        return self.claimed_wei

    def settled_epoch(self, epoch: int) -> SettledEpoch | None:
        return SettledEpoch(epoch=0, rewards_root=TREE.root, total=40 * WEI_PER_DNA,
                            tx_hash="0x" + "11" * 32)

    def node(self, address: str) -> NodeRecord | None:
        return self.record


def status(chain: Chain | None) -> tuple[dict[str, Any], str]:
    with httpx.Client(transport=httpx.MockTransport(validator),
                      base_url="http://validator") as client:
        collected = collect_status(client, "http://validator", NODE, chain=chain)
    return collected, render_status(collected)


def record(*, stake: int, jailed: bool = False, active: bool = True) -> NodeRecord:
    return NodeRecord(address=NODE, endpoint="http://node:8701", hardware_class=0,
                      stake=stake, jailed=jailed, active=active)


@pytest.mark.parametrize(("registration", "line"), [
    (None, "registry   not registered (dnanet node run registers it)"),
    (record(stake=15 * WEI_PER_DNA), "registry   stake 15 DNA, active, at http://node:8701"),
    (record(stake=9 * WEI_PER_DNA, active=False),
     "registry   stake 9 DNA, inactive: below the minimum 10 DNA (dnanet node stake add)"),
    (record(stake=15 * WEI_PER_DNA, active=False),
     "registry   stake 15 DNA, inactive: unbonding (dnanet node withdraw once its delay has "
     "passed)"),
    (record(stake=15 * WEI_PER_DNA, jailed=True, active=False),
     "registry   stake 15 DNA, JAILED: the registry's owner must unjail it (dnanet node "
     "unjail)"),
])
def test_status_shows_the_registration_and_why_a_node_is_inactive(
        registration: NodeRecord | None, line: str) -> None:
    _, text = status(Chain(registration, claimed_wei=10 * WEI_PER_DNA))
    assert line in text
    assert "claimable   20 DNA -> dnanet node claim" in text


def test_without_the_chain_claimable_is_unknown_never_guessed() -> None:
    collected, text = status(None)
    assert collected["rewards"]["claimable"] is None and collected["chain"] is None
    assert "claimable   unknown (pass --rpc URL --deployment FILE" in text
    assert "registry" not in text


def test_everything_claimed_shows_nothing_to_claim() -> None:
    collected, text = status(Chain(record(stake=10 * WEI_PER_DNA),
                                   claimed_wei=TREE.amount(NODE)))
    assert collected["rewards"]["claimable"] == 0
    assert "claimable   0 DNA" in text and "-> dnanet node claim" not in text
