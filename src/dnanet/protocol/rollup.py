"""Epoch rollup: per-node rewards, cumulative totals and the reward Merkle tree.

The reward tree is byte-for-byte OpenZeppelin's `StandardMerkleTree` (npm package
`@openzeppelin/merkle-tree`, `StandardMerkleTree.of(values, ["address", "uint256"])` with the
default `sortLeaves: true`), so the distributor contract can verify claims with OZ's
`MerkleProof.verify` and any OZ tooling can rebuild the root:

- leaf = keccak256(keccak256(abi.encode(address, uint256 cumulative)))
- node = keccak256(min(a, b) ++ max(a, b))  (commutative: proofs carry no left/right flags)
- leaves sorted ascending by hash, stored in an array-backed complete binary tree of 2n - 1
  nodes (children of `i` at `2i + 1`, `2i + 2`), the sorted leaves placed from the end
  backwards; a proof lists the siblings from the leaf up to, not including, the root.

Addresses are `0x` followed by 40 hex digits in any case (an EIP-55 checksum is not checked);
they are compared case-insensitively and returned lowercase. Amounts are integers in wei.
Every rejection raises `RollupError` naming the offending field.

Pure: no I/O, no clock, no floats.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from dnanet.crypto.hashing import keccak256
from dnanet.errors import RollupError

UINT256_LIMIT = 1 << 256
_ADDRESS_PAD = bytes(12)  # abi.encode left-pads a 20-byte address to a 32-byte word
# fullmatch, not match with $: "$" would also accept a trailing newline
_is_address = re.compile(r"0x[0-9a-fA-F]{40}").fullmatch


def normalize_address(address: object, *, field: str = "address") -> str:
    """Return `address` lowercased; raise RollupError unless it is `0x` + 40 hex digits."""
    if not isinstance(address, str) or _is_address(address) is None:
        raise _address_error(address, field)
    return address.lower()


def _address_error(address: object, field: str) -> RollupError:
    if not isinstance(address, str):
        return RollupError(
            f"expected a 0x-prefixed hex string, got {type(address).__name__}", field=field
        )
    return RollupError(f"{address!r} is not an address (0x followed by 40 hex digits)", field=field)


def _is_uint256(value: object) -> bool:
    # bool is an int subclass; True as an amount is a bug upstream, not 1 wei
    return type(value) is int and 0 <= value < UINT256_LIMIT


def _uint256_error(value: object, field: str) -> RollupError:
    if type(value) is not int:
        return RollupError(f"expected an integer, got {type(value).__name__}", field=field)
    return RollupError(f"{value} is outside the uint256 range [0, 2**256)", field=field)


def _hash_leaf(address: str, amount: int) -> bytes:
    # abi.encode(address, uint256) is two 32-byte words; no need for a general ABI encoder
    word = _ADDRESS_PAD + bytes.fromhex(address[2:]) + amount.to_bytes(32, "big")
    return keccak256(keccak256(word))


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a < b else b + a)


def compute_leaf_hash(address: str, amount: int) -> bytes:
    """Return the 32-byte leaf of `(address, amount)`, as OZ's `standardLeafHash` computes it."""
    normalize_address(address)
    if not _is_uint256(amount):
        raise _uint256_error(amount, "amount")
    return _hash_leaf(address, amount)


class RewardTree:
    """An OZ-compatible StandardMerkleTree over `(address, uint256 cumulative)` entries.

    Build it with `RewardTree.build`; it is immutable afterwards.
    """

    __slots__ = ("_index", "_nodes")

    def __init__(self, nodes: list[bytes], index: dict[str, tuple[int, int]]) -> None:
        self._nodes = nodes
        # lowercase address -> (position in _nodes, amount)
        self._index = index

    @classmethod
    def build(cls, entries: Sequence[tuple[str, int]]) -> RewardTree:
        """Build the tree of `entries` (address, cumulative amount in wei).

        Raises RollupError on an empty list (an epoch where nobody ever earned has no tree;
        the caller decides what to settle), a malformed address or entry, an amount outside
        [0, 2**256), or the same address twice (in any case).
        """
        n = len(entries)
        if n == 0:
            raise RollupError("cannot build a reward tree without entries", field="entries")
        for i, entry in enumerate(entries):
            try:
                address, amount = entry
            except (TypeError, ValueError):
                raise RollupError(
                    "expected an (address, amount) pair", field=f"entries[{i}]"
                ) from None
            if not isinstance(address, str) or _is_address(address) is None:
                raise _address_error(address, f"entries[{i}].address")
            if not _is_uint256(amount):
                raise _uint256_error(amount, f"entries[{i}].amount")
        keys = [address.lower() for address, _ in entries]
        if len(set(keys)) != n:
            seen: set[str] = set()
            for i, key in enumerate(keys):
                if key in seen:
                    raise RollupError(f"address {key} appears twice", field=f"entries[{i}].address")
                seen.add(key)
        leaves = [_hash_leaf(address, amount) for address, amount in entries]
        # Distinct addresses give distinct leaves, so this order is OZ's (stable) sort by hash.
        order = sorted(range(n), key=leaves.__getitem__)

        size = 2 * n - 1
        nodes: list[bytes] = [b""] * (n - 1)
        nodes.extend([leaves[j] for j in reversed(order)])  # k-th smallest leaf at size - 1 - k
        index = {keys[j]: (size - 1 - k, entries[j][1]) for k, j in enumerate(order)}
        hash_pair = _hash_pair
        for i in range(n - 2, -1, -1):
            nodes[i] = hash_pair(nodes[2 * i + 1], nodes[2 * i + 2])
        return cls(nodes, index)

    @property
    def root(self) -> bytes:
        """The 32-byte Merkle root (what the distributor stores)."""
        return self._nodes[0]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        """Iterate the lowercase addresses, in no particular order."""
        return iter(self._index)

    def _lookup(self, address: str) -> tuple[int, int]:
        key = normalize_address(address)
        try:
            return self._index[key]
        except KeyError:
            raise RollupError(f"{key} is not in the reward tree", field="address") from None

    def amount(self, address: str) -> int:
        """The cumulative amount recorded for `address`; RollupError if it is not in the tree."""
        return self._lookup(address)[1]

    def leaf(self, address: str) -> bytes:
        """The leaf hash of `address`; RollupError if it is not in the tree."""
        return self._nodes[self._lookup(address)[0]]

    def proof(self, address: str) -> list[bytes]:
        """The sibling hashes from `address`'s leaf up to the root, exactly as OZ's `getProof`.

        RollupError if the address is not in the tree. A one-leaf tree has an empty proof.
        """
        i = self._lookup(address)[0]
        nodes = self._nodes
        proof: list[bytes] = []
        while i > 0:
            proof.append(nodes[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return proof


def verify_proof(root: bytes, address: str, amount: int, proof: Sequence[bytes]) -> bool:
    """True iff `proof` proves `(address, amount)` under `root` (as OZ `MerkleProof.verify`).

    A proof that does not lead to the root gives False; malformed inputs (root or proof
    elements not 32 bytes, bad address, amount outside uint256) raise RollupError.
    """
    if not isinstance(root, bytes) or len(root) != 32:
        raise RollupError("expected 32 bytes", field="root")
    node = compute_leaf_hash(address, amount)
    for i, sibling in enumerate(proof):
        if not isinstance(sibling, bytes) or len(sibling) != 32:
            raise RollupError("expected 32 bytes", field=f"proof[{i}]")
        node = _hash_pair(node, sibling)
    return node == root


def _normalized_amounts(values: Mapping[str, int], what: str) -> dict[str, int]:
    """Lowercase the keys and check each value is an int >= 0; reject case-duplicates."""
    out: dict[str, int] = {}
    for address, value in values.items():
        if not isinstance(address, str) or _is_address(address) is None:
            raise _address_error(address, f"{what} key")
        key = address.lower()
        if type(value) is not int:
            raise RollupError(
                f"expected an integer, got {type(value).__name__}", field=f"{what}[{key}]"
            )
        if value < 0:
            raise RollupError(f"{value} is negative", field=f"{what}[{key}]")
        if key in out:
            raise RollupError(f"address {key} appears twice (in different case)", field=what)
        out[key] = value
    return out


def compute_epoch_rewards(epoch_scores: Mapping[str, int], emission: int) -> dict[str, int]:
    """Split `emission` among nodes in proportion to their integer scores.

    Each node gets `emission * score // total`; the few units left over go one each to the
    nodes with the largest remainders, ties broken by ascending lowercase address. The result
    has an entry (lowercase address) for every node with a positive score, possibly 0 when the
    emission is tiny, and none for zero scores. Its values sum to `emission` when any score is
    positive; it is empty when none is. A higher score never gets a smaller reward.
    Raises RollupError on a negative or non-integer score or emission, a malformed address,
    or the same address twice in different case.
    """
    if type(emission) is not int:
        raise RollupError(f"expected an integer, got {type(emission).__name__}", field="emission")
    if not 0 <= emission < UINT256_LIMIT:
        raise RollupError(f"{emission} is outside the uint256 range [0, 2**256)", field="emission")
    scores = {a: s for a, s in _normalized_amounts(epoch_scores, "epoch_scores").items() if s}
    total = sum(scores.values())
    if total == 0:
        return {}
    rewards: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    distributed = 0
    for address, score in scores.items():
        share, remainder = divmod(emission * score, total)
        rewards[address] = share
        distributed += share
        if remainder:
            remainders.append((-remainder, address))
    # leftover < number of nonzero remainders, since each one is < 1 unit of the exact share
    leftover = emission - distributed
    if leftover:
        remainders.sort()
        for _, address in remainders[:leftover]:
            rewards[address] += 1
    return rewards


def compute_cumulative(previous: Mapping[str, int], rewards: Mapping[str, int]) -> dict[str, int]:
    """Return each address's cumulative total: `previous` plus this epoch's `rewards`.

    Keys are lowercase; an address in either mapping appears in the result. Raises RollupError
    on a malformed address, a negative or non-integer amount, a case-duplicate address, or a
    total that no longer fits in uint256.
    """
    cumulative = _normalized_amounts(previous, "previous")
    for address, reward in _normalized_amounts(rewards, "rewards").items():
        cumulative[address] = cumulative.get(address, 0) + reward
    for address, total in cumulative.items():
        if total >= UINT256_LIMIT:
            raise RollupError(f"cumulative total {total} exceeds uint256", field=address)
    return cumulative


__all__ = [
    "UINT256_LIMIT",
    "RewardTree",
    "compute_cumulative",
    "compute_epoch_rewards",
    "compute_leaf_hash",
    "normalize_address",
    "verify_proof",
]
