"""Shared helpers of the contract tests: deployment, EIP-712 signing with eth_account, and the
OpenZeppelin-compatible reward tree.

Signatures are made with ``eth_account`` (``encode_typed_data`` + ``sign_message``), an
implementation independent of both the contracts and ``dnanet.crypto``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boa
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from dnanet.chain.artifacts import CONTRACT_NAMES, CONTRACTS_DIR
from dnanet.protocol.rollup import RewardTree

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
WEI = 10**18
ZERO_ADDRESS = "0x" + "00" * 20
ZERO32 = b"\x00" * 32

EPOCH_BLOCKS = 16
GRACE_BLOCKS = 2
INITIAL_EMISSION = 1_000 * WEI
HALVING_EPOCHS = 8
MIN_STAKE = 10 * WEI
UNBOND_EPOCHS = 2
GENESIS_SUPPLY = 10**9 * WEI

DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
SETTLEMENT_FIELDS = [
    {"name": "epoch", "type": "uint256"},
    {"name": "rewardsRoot", "type": "bytes32"},
    {"name": "total", "type": "uint256"},
    {"name": "reportsDigest", "type": "bytes32"},
]
PUNISHMENT_FIELDS = [
    {"name": "node", "type": "address"},
    {"name": "epoch", "type": "uint256"},
    {"name": "jail", "type": "bool"},
    {"name": "slashBps", "type": "uint256"},
    {"name": "evidenceDigest", "type": "bytes32"},
]


def make_accounts(n: int, tag: str) -> list[Any]:
    """``n`` deterministic eth_account accounts; ``tag`` keeps different roles apart."""
    return [Account.from_key(keccak(f"dnanet-test/{tag}/{i}".encode())) for i in range(n)]


def domain(chain_id: int, verifying_contract: str) -> dict[str, Any]:
    return {
        "name": "dnanet",
        "version": "1",
        "chainId": chain_id,
        "verifyingContract": verifying_contract,
    }


def sign_typed_many(
    accounts: Iterable[Any], dom: dict[str, Any], primary: str, fields: list[dict[str, str]],
    message: dict[str, Any],
) -> list[bytes]:
    """65-byte r || s || v signatures of one EIP-712 message by each account, by eth_account."""
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": DOMAIN_FIELDS, primary: fields},
            "primaryType": primary,
            "domain": dom,
            "message": message,
        }
    )
    signatures = [bytes(Account.sign_message(signable, a.key).signature) for a in accounts]
    assert all(len(s) == 65 and s[64] in (27, 28) for s in signatures)
    return signatures


def settlement_message(epoch: int, root: bytes, total: int, digest: bytes) -> dict[str, Any]:
    return {"epoch": epoch, "rewardsRoot": root, "total": total, "reportsDigest": digest}


def punishment_message(
    node: str, epoch: int, jail: bool, slash_bps: int, evidence: bytes
) -> dict[str, Any]:
    return {
        "node": node,
        "epoch": epoch,
        "jail": jail,
        "slashBps": slash_bps,
        "evidenceDigest": evidence,
    }


def high_s_twin(signature: bytes) -> bytes:
    """The malleable twin (r, n - s, v flipped) of a valid signature: same signer, high s."""
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


# ---------------------------------------------------------------- reward tree


def _leaf(account: str, amount: int) -> bytes:
    word = bytes(12) + bytes.fromhex(account[2:]) + amount.to_bytes(32, "big")
    return keccak(keccak(word))


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a < b else b + a)


class MiniTree:
    """A minimal OpenZeppelin StandardMerkleTree over (address, uint256), written here to
    cross-check the protocol's tree independently.

    Same layout as OZ: leaves sorted by hash, stored from the end of a 2n - 1 array.
    """

    def __init__(self, entries: Sequence[tuple[str, int]]) -> None:
        if not entries:
            raise ValueError("an OZ tree needs at least one leaf")
        leaves = sorted((_leaf(a.lower(), v), a.lower()) for a, v in entries)
        size = 2 * len(leaves) - 1
        self._nodes: list[bytes] = [b""] * size
        self._index: dict[str, int] = {}
        for i, (h, account) in enumerate(leaves):
            pos = size - 1 - i
            self._nodes[pos] = h
            self._index[account] = pos
        for pos in range(size - len(leaves) - 1, -1, -1):
            self._nodes[pos] = _pair(self._nodes[2 * pos + 1], self._nodes[2 * pos + 2])

    @property
    def root(self) -> bytes:
        return self._nodes[0]

    def proof(self, account: str) -> list[bytes]:
        pos = self._index[account.lower()]
        out = []
        while pos > 0:
            sibling = pos - 1 if pos % 2 == 0 else pos + 1
            out.append(self._nodes[sibling])
            pos = (pos - 1) // 2
        return out


@dataclass
class Tree:
    """A reward tree built by the protocol's own code (dnanet.protocol.rollup.RewardTree)."""

    entries: dict[str, int]
    root: bytes = field(init=False)
    _impl: RewardTree = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._impl = RewardTree.build(sorted(self.entries.items()))
        self.root = self._impl.root

    def proof(self, account: str) -> list[bytes]:
        return self._impl.proof(account)


# ---------------------------------------------------------------- deployment


_PARTIALS: dict[str, Any] = {}


def partial(name: str) -> Any:
    """The compiled (by titanoboa, cached) deployer of contract ``name``."""
    if name not in _PARTIALS:
        assert name in CONTRACT_NAMES
        _PARTIALS[name] = boa.load_partial(str(CONTRACTS_DIR / f"{name}.vy"))
    return _PARTIALS[name]


def block_number() -> int:
    return int(boa.env.evm.patch.block_number)


def chain_id() -> int:
    return int(boa.env.evm.patch.chain_id)


def mine(blocks: int) -> None:
    boa.env.time_travel(blocks=blocks)


@dataclass
class Network:
    """A deployed dnanet network on titanoboa's chain."""

    token: Any
    mixer_set: Any
    registry: Any
    distributor: Any
    mixers: list[Any]
    owner: str
    faucet: str
    genesis_block: int
    treasury: str = ZERO_ADDRESS

    @property
    def domain(self) -> dict[str, Any]:
        return domain(chain_id(), str(self.mixer_set.address))

    def current_epoch(self) -> int:
        return (block_number() - self.genesis_block) // EPOCH_BLOCKS

    def settle_block(self, epoch: int) -> int:
        return self.genesis_block + (epoch + 1) * EPOCH_BLOCKS + GRACE_BLOCKS

    def mine_to(self, block: int) -> None:
        if block > block_number():
            mine(block - block_number())

    def mine_to_epoch(self, epoch: int) -> None:
        self.mine_to(self.genesis_block + epoch * EPOCH_BLOCKS)

    def settlement_signatures(
        self, signers: Iterable[Any], epoch: int, root: bytes, total: int, digest: bytes,
        dom: dict[str, Any] | None = None,
    ) -> list[bytes]:
        message = settlement_message(epoch, root, total, digest)
        return sign_typed_many(
            signers, dom or self.domain, "EpochSettlement", SETTLEMENT_FIELDS, message
        )

    def punishment_signatures(
        self, signers: Iterable[Any], node: str, epoch: int, jail: bool, slash_bps: int,
        evidence: bytes, dom: dict[str, Any] | None = None,
    ) -> list[bytes]:
        message = punishment_message(node, epoch, jail, slash_bps, evidence)
        return sign_typed_many(signers, dom or self.domain, "Punishment", PUNISHMENT_FIELDS, message)

    def quorum(self) -> list[Any]:
        """The first threshold-many mixers (the set of every epoch in the default network)."""
        n = len(self.mixers)
        return self.mixers[: 2 * n // 3 + 1]

    def settle(
        self, epoch: int, root: bytes, total: int, digest: bytes = b"\x11" * 32,
        signers: Sequence[Any] | None = None,
    ) -> None:
        """Mine to the settlement block of ``epoch`` and submit it with a quorum."""
        self.mine_to(self.settle_block(epoch))
        sigs = self.settlement_signatures(
            self.quorum() if signers is None else signers, epoch, root, total, digest
        )
        self.distributor.submit_epoch(epoch, root, total, digest, b"".join(sigs))

    def fund(self, account: str, amount: int) -> None:
        self.token.transfer(account, amount, sender=self.faucet)

    def register(self, node: str, stake: int = MIN_STAKE, endpoint: str = "http://n:1",
                 hw_class: int = 0) -> None:
        self.fund(node, stake)
        self.token.approve(self.registry.address, stake, sender=node)
        self.registry.register(endpoint, hw_class, stake, sender=node)


def deploy_network(
    n_mixers: int = 10, *, treasury: str = ZERO_ADDRESS, initial_mixers: bool = True,
) -> Network:
    """Deploy the four contracts in the documented order; epoch 0 starts at the current block."""
    owner = str(boa.env.eoa)
    faucet = str(boa.env.generate_address("faucet"))
    mixers = make_accounts(n_mixers, "mixer")
    genesis = block_number()
    members = [m.address for m in mixers] if initial_mixers else []
    mixer_set = partial("MixerSet").deploy(
        genesis,
        EPOCH_BLOCKS,
        members,
        [keccak(f"vrf{i}".encode()) for i in range(len(members))],
        [f"http://mixer{i}:7000" for i in range(len(members))],
    )
    token = partial("DNAToken").deploy(faucet, GENESIS_SUPPLY)
    distributor = partial("RewardsDistributor").deploy(
        mixer_set.address, token.address, INITIAL_EMISSION, HALVING_EPOCHS, GRACE_BLOCKS, 0
    )
    token.set_minter(distributor.address)
    registry = partial("NodeRegistry").deploy(
        mixer_set.address, token.address, MIN_STAKE, UNBOND_EPOCHS, treasury
    )
    return Network(
        token=token,
        mixer_set=mixer_set,
        registry=registry,
        distributor=distributor,
        mixers=mixers,
        owner=owner,
        faucet=faucet,
        genesis_block=genesis,
        treasury=treasury,
    )


def settlement_struct_hash(epoch: int, root: bytes, total: int, digest: bytes) -> bytes:
    """hashStruct(EpochSettlement), written out by hand (cross-checks eth_account's)."""
    typehash = keccak(
        b"EpochSettlement(uint256 epoch,bytes32 rewardsRoot,uint256 total,bytes32 reportsDigest)"
    )
    return keccak(typehash + epoch.to_bytes(32, "big") + root + total.to_bytes(32, "big") + digest)


def events(contract: Any, name: str) -> list[Any]:
    """The decoded ``name`` events of the last call made through ``contract`` (any emitter)."""
    return [e for e in contract.get_logs() if type(e).__name__ == name]
