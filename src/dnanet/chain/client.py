"""The chain client: every read and write dnanet makes on its four contracts.

`ChainClient` is synchronous and thread-safe (daemons call it from a thread pool). Build it
from a ``Web3`` (`dnanet.chain.backends.connect_embedded` or `connect_rpc`), a
`dnanet.chain.deployment.Deployment`, and, for writes, the sending `Identity`; transactions are
signed locally, so no node holds our keys.

Faults map to `dnanet.errors.ChainError` subclasses (defined in `dnanet.chain.faults`,
re-exported here):

    ChainError
    ├── ChainUnavailable      RPC down, refused, timed out, 5xx (after retries with backoff)
    ├── TransactionReverted   the contract said no; ``.reason`` is its revert string
    ├── TransactionRejected   the node refused the transaction (e.g. insufficient funds)
    ├── NonceConflict         nonce clashes kept happening (another sender on this account?)
    ├── Underpriced           fee still too low after the allowed bumps
    ├── ReceiptTimeout        no receipt in time (``.tx_hash`` may still be mined)
    ├── ReorgDetected         the block holding our transaction left the chain
    └── SettlementConflict    the epoch is already settled with a different root

Idempotence: `submit_epoch` sends nothing (returns None) when the epoch is already settled
with the same root; `claim` when the account's claimed total already equals ``cumulative``;
`punish` when that (node, epoch) was already punished. These checks run before the first send
and again whenever an earlier attempt's fate is unknown, so retries never pay twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from dnanet.chain.artifacts import load_artifact
from dnanet.chain.deployment import Deployment
from dnanet.chain.faults import (
    ChainUnavailable,
    NonceConflict,
    ReceiptTimeout,
    ReorgDetected,
    SettlementConflict,
    TransactionRejected,
    TransactionReverted,
    Underpriced,
)
from dnanet.chain.registry import REGISTRY_EVENTS, RegistryEvent
from dnanet.chain.transactions import (
    RequestRunner,
    SendPolicy,
    TransactionSender,
    TxReceipt,
    compute_fee_cap,
    compute_gas_limit,
    suggest_fees,
)
from dnanet.crypto.eip712 import SIGNATURE_LENGTH, Domain, normalize_address, to_checksum_address
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, ConfigError
from dnanet.protocol.messages import EpochSettlement, Punishment

MAX_SIGNERS = 32  # MixerSet.MAX_MIXERS
MAX_PROOF = 32  # RewardsDistributor.MAX_PROOF
LOG_WINDOW_BLOCKS = 2_000  # most blocks per eth_getLogs request
FIRST_LOG_WINDOW_BLOCKS = 64  # a settlement usually lands soon after its settle block


@dataclass(frozen=True)
class MixerInfo:
    """A member of a mixer set: signing address, Ed25519 VRF public key, endpoint URL."""

    address: str
    vrf_pk: bytes
    endpoint: str


@dataclass(frozen=True)
class MixerSetView:
    """The committee of one epoch; ``members`` in index order (bit i of a signer bitmap)."""

    epoch: int
    members: tuple[MixerInfo, ...]
    threshold: int

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(m.address for m in self.members)


@dataclass(frozen=True)
class NodeInfo:
    """A node as the registry sees it. ``unbond_epoch`` means something only if unbonding."""

    address: str
    endpoint: str
    hw_class: int
    stake: int
    jailed: bool
    unbonding: bool
    unbond_epoch: int
    registered: bool
    active: bool


@dataclass(frozen=True)
class SettlementRecord:
    """An epoch as settled on chain (from its EpochSettled event)."""

    epoch: int
    rewards_root: bytes
    total: int
    reports_digest: bytes
    signers_bitmap: int
    block_number: int
    tx_hash: str


def pack_signatures(signatures: Sequence[bytes]) -> bytes:
    """The contracts' signature layout: 65-byte ``r || s || v`` signatures concatenated."""
    if not signatures:
        raise ChainError("no signatures to submit: a quorum of mixers must sign first")
    if len(signatures) > MAX_SIGNERS:
        raise ChainError(f"{len(signatures)} signatures; the contracts take at most {MAX_SIGNERS}")
    for i, sig in enumerate(signatures):
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_LENGTH:
            raise ChainError(
                f"signature {i} is not {SIGNATURE_LENGTH} bytes r || s || v", field="signatures"
            )
    return b"".join(signatures)


NODES_PAGE = 64
"""Nodes per ``nodes_page`` call (the contract's PAGE_MAX)."""


class ChainClient:
    """Reads and writes of one dnanet network; see the module docstring."""

    def __init__(
        self,
        w3: Any,
        deployment: Deployment,
        identity: Identity | None = None,
        *,
        policy: SendPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        check_chain: bool = True,
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.identity = identity
        self.policy = policy or SendPolicy()
        self._requests = RequestRunner(self.policy, sleep=sleep)
        self._sender = (
            TransactionSender(w3, identity, self.policy, sleep=sleep) if identity else None
        )
        self.token = self._contract("DNAToken", deployment.token)
        self.mixer_set_contract = self._contract("MixerSet", deployment.mixer_set)
        self.registry = self._contract("NodeRegistry", deployment.registry)
        self._settled: dict[int, SettlementRecord] = {}
        self.distributor = self._contract("RewardsDistributor", deployment.distributor)
        if check_chain:
            chain_id = self.chain_id()
            if chain_id != deployment.chain_id:
                raise ConfigError(
                    f"the deployment is for chain {deployment.chain_id} but the RPC endpoint "
                    f"serves chain {chain_id}: wrong --rpc or wrong deployment file?",
                    field="chain_id",
                )

    def _contract(self, name: str, address: str) -> Any:
        artifact = load_artifact(name)
        return self.w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)

    # ------------------------------------------------------------------ plumbing

    def _read(self, fn: Callable[[], Any], what: str) -> Any:
        return self._requests.run(fn, what)

    def _call(self, contract: Any, fn: str, *args: Any, block: int | None = None) -> Any:
        """A view call, at the head or (``block``) as of that block's state."""
        at = "latest" if block is None else block
        return self._read(lambda: getattr(contract.functions, fn)(*args).call(
            block_identifier=at), f"read {fn}")

    def _send(
        self,
        contract: Any,
        fn: str,
        args: Sequence[Any],
        *,
        action: str,
        already_done: Callable[[], bool] | None = None,
    ) -> TxReceipt | None:
        if self._sender is None:
            raise ConfigError(f"cannot {action}: this chain client has no sending identity")
        data = bytes.fromhex(contract.encode_abi(fn, args=list(args))[2:])
        return self._sender.send(
            to=contract.address, data=data, action=action, already_done=already_done
        )

    def _sent(self, receipt: TxReceipt | None, action: str) -> TxReceipt:
        if receipt is None:  # only sends with an already_done check may return None
            raise ChainError(f"{action}: no transaction was sent")
        return receipt

    @property
    def address(self) -> str | None:
        """The sender's lower-case address, if the client can send."""
        return self.identity.address if self.identity else None

    # ------------------------------------------------------------------ chain and clock

    def chain_id(self) -> int:
        return int(self._read(lambda: self.w3.eth.chain_id, "read the chain id"))

    def block_number(self) -> int:
        return int(self._read(lambda: self.w3.eth.block_number, "read the block number"))

    def block_hash(self, number: int) -> bytes:
        """The hash of block ``number`` (round seeds are block hashes)."""
        block = self._read(lambda: self.w3.eth.get_block(number), f"read block {number}")
        return bytes(block["hash"])

    def current_epoch(self) -> int:
        """The epoch of the head block (0 before genesis), from the deployment's clock."""
        return self.deployment.epoch_of_block(self.block_number())

    def domain(self) -> Domain:
        """The EIP-712 domain every dnanet message of this network is signed under."""
        return Domain(self.deployment.chain_id, self.deployment.mixer_set)

    def eth_balance(self, address: str) -> int:
        checksum = to_checksum_address(address)
        return int(self._read(lambda: self.w3.eth.get_balance(checksum), "read an ETH balance"))

    # ------------------------------------------------------------------ mixer set

    def mixer_set(self, epoch: int) -> MixerSetView:
        """The mixers of ``epoch`` (addresses, VRF keys, endpoints) and its threshold."""
        members = self._call(self.mixer_set_contract, "members", epoch)
        infos = []
        for member in members:
            vrf_pk, endpoint = self._call(self.mixer_set_contract, "mixer_info", member)
            infos.append(MixerInfo(normalize_address(member), bytes(vrf_pk), str(endpoint)))
        threshold = int(self._call(self.mixer_set_contract, "threshold", epoch))
        return MixerSetView(epoch=epoch, members=tuple(infos), threshold=threshold)

    def threshold(self, epoch: int) -> int:
        return int(self._call(self.mixer_set_contract, "threshold", epoch))

    def is_mixer(self, epoch: int, address: str) -> bool:
        return bool(self._call(
            self.mixer_set_contract, "is_member", epoch, to_checksum_address(address)
        ))

    def add_mixer(self, address: str, vrf_pk: bytes, endpoint: str) -> TxReceipt:
        """Add a mixer from the next epoch on (epoch 0 before genesis). Owner only."""
        action = f"add mixer {normalize_address(address)}"
        receipt = self._send(
            self.mixer_set_contract, "add_mixer",
            [to_checksum_address(address), _bytes32(vrf_pk, "vrf_pk"), endpoint], action=action,
        )
        return self._sent(receipt, action)

    def remove_mixer(self, address: str) -> TxReceipt:
        """Remove a mixer from the next epoch on. Owner only."""
        action = f"remove mixer {normalize_address(address)}"
        receipt = self._send(
            self.mixer_set_contract, "remove_mixer", [to_checksum_address(address)], action=action
        )
        return self._sent(receipt, action)

    # ------------------------------------------------------------------ node registry

    def node_info(self, address: str, *, block: int | None = None) -> NodeInfo:
        """A node's record, now or (``block``) as of that block."""
        checksum = to_checksum_address(address)
        info = self._call(self.registry, "node_info", checksum, block=block)
        active = bool(self._call(self.registry, "is_active", checksum, block=block))
        endpoint, hw_class, stake, jailed, unbonding, unbond_epoch, registered = info
        return NodeInfo(
            address=normalize_address(address),
            endpoint=str(endpoint),
            hw_class=int(hw_class),
            stake=int(stake),
            jailed=bool(jailed),
            unbonding=bool(unbonding),
            unbond_epoch=int(unbond_epoch),
            registered=bool(registered),
            active=active,
        )

    def node_count(self, *, block: int | None = None) -> int:
        """Nodes ever registered (including unbonded and jailed ones)."""
        return int(self._call(self.registry, "node_count", block=block))

    def nodes(self, *, block: int | None = None) -> list[NodeInfo]:
        """Every node ever registered, in registration order, with its state now or
        (``block``) as of that block: ``nodes_page`` calls of ``NODES_PAGE`` nodes each, all
        at the same block (now: the head when the first call was made)."""
        at = self.block_number() if block is None else block
        total = self.node_count(block=at)
        out: list[NodeInfo] = []
        for start in range(0, total, NODES_PAGE):
            for entry in self._call(self.registry, "nodes_page", start, NODES_PAGE, block=at):
                node, endpoint, hw_class, stake, jailed, unbonding, unbond_epoch, registered, \
                    active = entry
                out.append(NodeInfo(
                    address=normalize_address(node), endpoint=str(endpoint),
                    hw_class=int(hw_class), stake=int(stake), jailed=bool(jailed),
                    unbonding=bool(unbonding), unbond_epoch=int(unbond_epoch),
                    registered=bool(registered), active=bool(active)))
        return out

    def registry_changed_at(self, *, block: int | None = None) -> int:
        """The block of the registry's latest change to any node, as of ``block`` (now; an
        old block's state needs an archive node: ``RegistryHistory`` reads events instead)."""
        return int(self._call(self.registry, "last_change", block=block))

    def registry_events(self, from_block: int, to_block: int) -> list[RegistryEvent]:
        """Every NodeRegistry event that changes a record in ``[from_block, to_block]``, in
        chain order (``eth_getLogs`` in windows of ``LOG_WINDOW_BLOCKS``)."""
        decoders = [getattr(self.registry.events, name)() for name in REGISTRY_EVENTS]
        address = to_checksum_address(self.deployment.registry)
        out: list[RegistryEvent] = []
        start = max(from_block, self.deployment.deploy_block)
        while start <= to_block:
            end = min(to_block, start + LOG_WINDOW_BLOCKS - 1)
            logs = self._read(partial(self.w3.eth.get_logs, {
                "address": address, "fromBlock": start, "toBlock": end}),
                "read the registry's events")
            for log in logs:
                for decoder in decoders:
                    try:
                        decoded = decoder.process_log(log)
                    except Exception:  # another event's topic: try the next decoder
                        continue
                    args = dict(decoded["args"])
                    out.append(RegistryEvent(
                        block=int(log["blockNumber"]), log_index=int(log["logIndex"]),
                        name=str(decoded["event"]), node=normalize_address(args.pop("node")),
                        args=args))
                    break
            start = end + 1
        out.sort(key=lambda e: (e.block, e.log_index))
        return out

    def active_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes() if n.active]

    def min_stake(self) -> int:
        return int(self._call(self.registry, "MIN_STAKE"))

    def register_node(self, endpoint: str, hw_class: int, stake: int) -> TxReceipt:
        """Approve ``stake`` to the registry, then register the sender as a node."""
        self.approve(self.deployment.registry, stake)
        action = f"register node {self.address}"
        receipt = self._send(
            self.registry, "register", [endpoint, hw_class, stake], action=action
        )
        return self._sent(receipt, action)

    def update_node(self, endpoint: str, hw_class: int) -> TxReceipt:
        action = f"update node {self.address}"
        return self._sent(
            self._send(self.registry, "update_node", [endpoint, hw_class], action=action), action
        )

    def top_up(self, amount: int) -> TxReceipt:
        """Approve and add ``amount`` wei to the sender's stake."""
        self.approve(self.deployment.registry, amount)
        action = f"top up the stake of {self.address}"
        return self._sent(self._send(self.registry, "top_up", [amount], action=action), action)

    def unbond(self) -> TxReceipt:
        action = f"unbond node {self.address}"
        return self._sent(self._send(self.registry, "unbond", [], action=action), action)

    def withdraw(self) -> TxReceipt:
        action = f"withdraw the stake of {self.address}"
        return self._sent(self._send(self.registry, "withdraw", [], action=action), action)

    def is_punished(self, node: str, epoch: int) -> bool:
        return bool(self._call(self.registry, "punished", to_checksum_address(node), epoch))

    def punish(self, punishment: Punishment, signatures: Sequence[bytes]) -> TxReceipt | None:
        """Execute a quorum-signed punishment; None if that (node, epoch) is already punished."""
        packed = pack_signatures(signatures)
        node = to_checksum_address(punishment.node)
        action = f"punish {normalize_address(node)} for epoch {punishment.epoch}"
        return self._send(
            self.registry,
            "punish",
            [node, punishment.epoch, punishment.jail, punishment.slash_bps,
             punishment.evidence_digest, packed],
            action=action,
            already_done=lambda: self.is_punished(node, punishment.epoch),
        )

    # ------------------------------------------------------------------ rewards

    def next_epoch(self) -> int:
        """The next epoch to settle."""
        return int(self._call(self.distributor, "next_epoch"))

    def last_settled_epoch(self) -> int | None:
        """The latest settled epoch, or None if none is (yet)."""
        first = int(self._call(self.distributor, "FIRST_EPOCH"))
        nxt = self.next_epoch()
        return nxt - 1 if nxt > first else None

    def merkle_root(self) -> bytes:
        """The reward root that claims are checked against (the latest non-zero one)."""
        return bytes(self._call(self.distributor, "merkle_root"))

    def emission(self, epoch: int) -> int:
        return int(self._call(self.distributor, "emission", epoch))

    def settle_block(self, epoch: int) -> int:
        """The first block at which ``epoch`` may settle (end of epoch plus grace)."""
        return int(self._call(self.distributor, "settle_block", epoch))

    def settlement(self, epoch: int) -> SettlementRecord | None:
        """How ``epoch`` was settled, from its EpochSettled event; None if it is not settled.

        Records deeper than ``policy.confirmations`` blocks are cached: they cannot change.
        """
        cached = self._settled.get(epoch)
        if cached is not None:
            return cached
        if epoch >= self.next_epoch():
            return None
        event = self.distributor.events.EpochSettled
        # The event cannot precede settle_block(epoch), and usually follows it closely: scan
        # forward in windows (the embedded EVM reads every block of a range; public RPC
        # endpoints cap the range of one eth_getLogs).
        start = max(self.deployment.deploy_block, self.settle_block(epoch))
        head = self.block_number()
        logs: list[Any] = []
        window = FIRST_LOG_WINDOW_BLOCKS
        while start <= head and not logs:
            end = min(head, start + window - 1)
            window = min(2 * window, LOG_WINDOW_BLOCKS)
            logs = list(self._read(
                partial(event.get_logs, from_block=start, to_block=end,
                        argument_filters={"epoch": epoch}),
                f"read the settlement of epoch {epoch}",
            ))
            start = end + 1
        if not logs:
            raise ChainError(
                f"epoch {epoch} is settled but its EpochSettled event was not found "
                f"(does the RPC endpoint serve logs from block {self.deployment.deploy_block}?)"
            )
        log = logs[-1]
        args = log["args"]
        record = SettlementRecord(
            epoch=int(args["epoch"]),
            rewards_root=bytes(args["rewards_root"]),
            total=int(args["total"]),
            reports_digest=bytes(args["reports_digest"]),
            signers_bitmap=int(args["signers"]),
            block_number=int(log["blockNumber"]),
            tx_hash="0x" + bytes(log["transactionHash"]).hex(),
        )
        if record.block_number + self.policy.confirmations <= head:
            self._settled[epoch] = record
        return record

    def _settled_as(self, settlement: EpochSettlement) -> bool:
        record = self.settlement(settlement.epoch)
        if record is None:
            return False
        if (record.rewards_root, record.total, record.reports_digest) != (
            settlement.rewards_root, settlement.total, settlement.reports_digest
        ):
            raise SettlementConflict(
                f"epoch {settlement.epoch} is already settled with root "
                f"0x{record.rewards_root.hex()} and total {record.total} (tx {record.tx_hash}), "
                f"not with root 0x{settlement.rewards_root.hex()} and total {settlement.total}"
            )
        return True

    def submit_epoch(
        self, settlement: EpochSettlement, signatures: Sequence[bytes]
    ) -> TxReceipt | None:
        """Settle an epoch with the mixers' signatures over ``settlement``.

        Returns None, sending nothing, if the epoch is already settled with this very
        settlement; raises SettlementConflict if it is settled with another one.
        """
        packed = pack_signatures(signatures)
        return self._send(
            self.distributor,
            "submit_epoch",
            [settlement.epoch, settlement.rewards_root, settlement.total,
             settlement.reports_digest, packed],
            action=f"settle epoch {settlement.epoch}",
            already_done=lambda: self._settled_as(settlement),
        )

    def claimed(self, account: str) -> int:
        """Wei already paid to ``account`` (its claimed cumulative total)."""
        return int(self._call(self.distributor, "claimed", to_checksum_address(account)))

    def verify_claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> bool:
        return bool(self._call(
            self.distributor, "verify_claim", to_checksum_address(account), cumulative,
            _proof(proof),
        ))

    def claim(self, account: str, cumulative: int, proof: Sequence[bytes]) -> TxReceipt | None:
        """Pay ``account`` ``cumulative - claimed`` against the latest root.

        Returns None, sending nothing, if ``claimed(account)`` already equals ``cumulative``.
        """
        checksum = to_checksum_address(account)
        return self._send(
            self.distributor,
            "claim",
            [checksum, cumulative, _proof(proof)],
            action=f"claim {cumulative} wei cumulative for {normalize_address(account)}",
            already_done=lambda: self.claimed(checksum) == cumulative,
        )

    # ------------------------------------------------------------------ token

    def balance_of(self, address: str) -> int:
        return int(self._call(self.token, "balanceOf", to_checksum_address(address)))

    def total_supply(self) -> int:
        return int(self._call(self.token, "totalSupply"))

    def allowance(self, owner: str, spender: str) -> int:
        return int(self._call(
            self.token, "allowance", to_checksum_address(owner), to_checksum_address(spender)
        ))

    def approve(self, spender: str, amount: int) -> TxReceipt:
        action = f"approve {amount} wei to {normalize_address(spender)}"
        receipt = self._send(
            self.token, "approve", [to_checksum_address(spender), amount], action=action
        )
        return self._sent(receipt, action)

    def transfer(self, to: str, amount: int) -> TxReceipt:
        action = f"transfer {amount} wei of DNA to {normalize_address(to)}"
        receipt = self._send(self.token, "transfer", [to_checksum_address(to), amount],
                             action=action)
        return self._sent(receipt, action)

    # ------------------------------------------------------------------ operators' checks

    def registry_owner(self) -> str:
        """The account allowed to unjail nodes (NodeRegistry.owner)."""
        return normalize_address(self._call(self.registry, "owner"))

    def mixer_set_owner(self) -> str:
        """The account allowed to add and remove mixers (MixerSet.owner)."""
        return normalize_address(self._call(self.mixer_set_contract, "owner"))

    def unbond_epochs(self) -> int:
        """Epochs between ``unbond`` and the first epoch ``withdraw`` succeeds in."""
        return int(self._call(self.registry, "UNBOND_EPOCHS"))

    def fee_cap(self) -> int:
        """The most wei per gas a transaction sent now may cost (what the chain checks the
        sender's ETH against)."""
        return compute_fee_cap(suggest_fees(self.w3, self._requests))

    def simulate(self, contract: Any, fn: str, args: Sequence[Any], *, action: str,
                 sender: str | None = None) -> int:
        """Run ``fn(*args)`` as a transaction from ``sender`` (default: this client's
        identity) on the latest state without sending it (eth_estimateGas; no key needed):
        the gas limit a send would carry, or TransactionReverted with the contract's reason."""
        origin = sender or self.address
        if origin is None:
            raise ConfigError(f"cannot simulate {action}: no account to send it from")
        call = {"from": to_checksum_address(origin), "to": contract.address,
                "data": contract.encode_abi(fn, args=list(args))}
        estimate = int(self._read(lambda: self.w3.eth.estimate_gas(call), action))
        return compute_gas_limit(estimate, self.policy)

    def simulate_claim(self, account: str, cumulative: int, proof: Sequence[bytes], *,
                       sender: str | None = None) -> int:
        """`claim` run from ``sender`` without sending: its gas limit, or TransactionReverted
        and why."""
        return self.simulate(
            self.distributor, "claim", [to_checksum_address(account), cumulative, _proof(proof)],
            action=f"claim {cumulative} wei cumulative for {normalize_address(account)}",
            sender=sender)

    def stake_more(self, amount: int) -> TxReceipt:
        """Add ``amount`` wei to the sender's stake, approving it first only when the
        registry's allowance falls short (an approval the owner made already is used)."""
        sender = self.address or ""
        if self.allowance(sender, self.deployment.registry) < amount:
            self.approve(self.deployment.registry, amount)
        action = f"top up the stake of {sender}"
        return self._sent(self._send(self.registry, "top_up", [amount], action=action), action)

    def unjail(self, node: str) -> TxReceipt:
        """Lift ``node``'s jail. Owner of the registry only."""
        action = f"unjail node {normalize_address(node)}"
        receipt = self._send(self.registry, "unjail", [to_checksum_address(node)],
                             action=action)
        return self._sent(receipt, action)

    def mixer_change_epoch(self, receipt: TxReceipt) -> int | None:
        """The epoch from which the MixerAdded or MixerRemoved event in ``receipt`` applies
        (the chain's word, even if the change landed an epoch later than planned)."""
        for name in ("MixerAdded", "MixerRemoved"):
            event = getattr(self.mixer_set_contract.events, name)()
            for raw in receipt.logs:
                try:
                    decoded = event.process_log(raw)
                except Exception:  # a log of another event or contract
                    continue
                return int(decoded["args"]["effective_epoch"])
        return None


def _bytes32(value: bytes, field: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ChainError("expected 32 bytes", field=field)
    return value


def _proof(proof: Sequence[bytes]) -> list[bytes]:
    if len(proof) > MAX_PROOF:
        raise ChainError(f"a proof has at most {MAX_PROOF} hashes, got {len(proof)}",
                         field="proof")
    return [_bytes32(p, f"proof[{i}]") for i, p in enumerate(proof)]


__all__ = [
    "ChainClient",
    "ChainUnavailable",
    "MixerInfo",
    "MixerSetView",
    "NodeInfo",
    "NonceConflict",
    "ReceiptTimeout",
    "ReorgDetected",
    "SendPolicy",
    "SettlementConflict",
    "SettlementRecord",
    "TransactionRejected",
    "TransactionReverted",
    "TxReceipt",
    "Underpriced",
    "pack_signatures",
]
