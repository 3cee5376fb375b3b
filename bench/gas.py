"""Gas of dnanet's hot contract paths, from real transaction receipts.

Deploys the checked-in artifacts on an in-process EVM (eth-tester with py-evm, the same chain
as the embedded devnet), sends real transactions and reads ``gasUsed`` from their receipts:
intrinsic gas, calldata, cold/warm access and refunds included.

Scenarios (each the costly case of its kind):

- ``submit_epoch_7_of_10_gas``: settle an epoch with 7 signatures of a 10-mixer set (the
  threshold), a non-zero total and a new root; a steady-state epoch (not the first).
- ``claim_after_1_epoch_gas``: a node's first claim after one settled epoch, against a tree of
  1,000 leaves, with the longest proof in the tree; fresh storage for its claimed amount and
  its token balance.
- ``claim_after_20_epochs_gas``: a node that waited 20 epochs claims once (its first claim),
  same tree size and proof length.
- ``register_node_gas``: register with a stake (transferFrom), a 22-byte endpoint and a
  hardware class; the worse of the very first registration and a later one.

Usage: ``python bench/gas.py [--json]``; with ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider

from dnanet.chain.artifacts import load_artifact
from dnanet.crypto.eip712 import Domain, to_checksum_address
from dnanet.crypto.hashing import keccak256
from dnanet.crypto.keys import Identity
from dnanet.protocol.messages import EpochSettlement
from dnanet.protocol.rollup import RewardTree

WEI = 10**18
EPOCH_BLOCKS = 4  # gas does not depend on the epoch length; short epochs keep the bench fast
GRACE_BLOCKS = 1
N_MIXERS = 10
N_SIGNERS = 7
N_LEAVES = 1_000
ENDPOINT = "http://203.0.113.7:8000"

LIMITS = {
    "submit_epoch_7_of_10_gas": 150_000,
    "claim_after_1_epoch_gas": 90_000,
    "claim_after_20_epochs_gas": 90_000,
    "register_node_gas": 150_000,
}

class Chain:
    """An eth-tester chain with the four contracts deployed from their artifacts."""

    def __init__(self) -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.accounts = self.w3.eth.accounts
        self.deployer = self.accounts[0]
        self.mixers = [
            Identity(keccak256(f"bench/mixer/{i}".encode())) for i in range(N_MIXERS)
        ]
        self.genesis = self.w3.eth.block_number + 1
        self.mixer_set = self.deploy(
            "MixerSet",
            self.genesis,
            EPOCH_BLOCKS,
            [to_checksum_address(m.address) for m in self.mixers],
            [keccak256(f"vrf{i}".encode()) for i in range(N_MIXERS)],
            [f"http://mixer{i}.example:7000" for i in range(N_MIXERS)],
        )
        self.token = self.deploy("DNAToken", self.deployer, 10**9 * WEI)
        self.distributor = self.deploy(
            "RewardsDistributor",
            self.mixer_set.address,
            self.token.address,
            10**6 * WEI,
            2**14,
            GRACE_BLOCKS,
            0,
        )
        self.send(self.token.functions.set_minter(self.distributor.address))
        self.registry = self.deploy(
            "NodeRegistry", self.mixer_set.address, self.token.address, 100 * WEI, 7,
            "0x" + "00" * 20,
        )
        self.domain = Domain(self.w3.eth.chain_id, self.mixer_set.address)

    def deploy(self, name: str, *args: Any) -> Any:
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args))
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)

    def send(self, call: Any, sender: str | None = None) -> Any:
        tx_hash = call.transact({"from": sender or self.deployer, "gas": 10_000_000})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction failed: {receipt}")
        return receipt

    def mine_to(self, block: int) -> None:
        # the next transaction goes into block number + 1
        missing = block - 1 - self.w3.eth.block_number
        if missing > 0:
            self.tester.mine_blocks(missing)

    def settle(self, epoch: int, root: bytes, total: int) -> int:
        self.mine_to(self.genesis + (epoch + 1) * EPOCH_BLOCKS + GRACE_BLOCKS)
        digest = keccak256(f"reports/{epoch}".encode())
        settlement = EpochSettlement(epoch=epoch, rewards_root=root, total=total,
                                     reports_digest=digest)
        sigs = b"".join(m.sign_typed(self.domain, settlement.hash_struct())
                        for m in self.mixers[:N_SIGNERS])
        receipt = self.send(
            self.distributor.functions.submit_epoch(epoch, root, total, digest, sigs)
        )
        return int(receipt["gasUsed"])

    def claim(self, tree: RewardTree, account: str) -> int:
        receipt = self.send(
            self.distributor.functions.claim(account, tree.amount(account), tree.proof(account)),
            sender=self.accounts[1],
        )
        return int(receipt["gasUsed"])

    def register(self, node: str, stake: int) -> int:
        self.send(self.token.functions.transfer(node, stake))
        self.send(self.token.functions.approve(self.registry.address, stake), sender=node)
        receipt = self.send(self.registry.functions.register(ENDPOINT, 1, stake), sender=node)
        return int(receipt["gasUsed"])


def run() -> dict[str, int]:
    chain = Chain()
    rng = random.Random(7)
    leaves = [Web3.to_checksum_address(rng.randbytes(20).hex()) for _ in range(N_LEAVES)]
    per_epoch = {a: rng.randrange(1, 10**3) * 10**15 for a in leaves}

    figures: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    trees: list[RewardTree] = []
    first_claimer = second_claimer = ""
    for epoch in range(21):
        for account, amount in per_epoch.items():
            cumulative[account] = cumulative.get(account, 0) + amount
        tree = RewardTree.build(sorted(cumulative.items()))
        trees.append(tree)
        gas = chain.settle(epoch, tree.root, sum(per_epoch.values()))
        if epoch == 0:
            figures["submit_first_epoch_gas"] = gas
            # the longest proofs: the worst case for a claim
            deepest = sorted(leaves, key=lambda a: (-len(tree.proof(a)), a))
            first_claimer, second_claimer = deepest[0], deepest[1]
            figures["claim_after_1_epoch_gas"] = chain.claim(tree, first_claimer)
        elif epoch == 1:
            figures["submit_epoch_7_of_10_gas"] = gas
            figures["claim_again_next_epoch_gas"] = chain.claim(tree, first_claimer)
    figures["claim_after_20_epochs_gas"] = chain.claim(trees[-1], second_claimer)
    figures["proof_length"] = len(trees[-1].proof(second_claimer))

    nodes = chain.accounts[2:4]
    first = chain.register(nodes[0], 1_000 * WEI)
    later = chain.register(nodes[1], 1_000 * WEI)
    figures["register_first_node_gas"] = first
    figures["register_later_node_gas"] = later
    figures["register_node_gas"] = max(first, later)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = run()
    elapsed = time.perf_counter() - started
    print(f"{'measure':<32} {'gas':>9} {'limit':>9}")
    for key, value in figures.items():
        limit = LIMITS.get(key)
        mark = "" if limit is None else f"{limit:>9} {'ok' if value <= limit else 'OVER'}"
        print(f"{key:<32} {value:>9} {mark}")
    print(f"({N_LEAVES} leaves, {N_SIGNERS} of {N_MIXERS} signatures, {elapsed:.1f} s)")
    if args.json:
        print(json.dumps({key: figures[key] for key in LIMITS}))
    over = [key for key, limit in LIMITS.items() if figures[key] > limit]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
