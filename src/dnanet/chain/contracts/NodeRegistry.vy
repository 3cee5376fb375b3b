#pragma version 0.4.3
#pragma evm-version cancun
#pragma optimize gas
"""
@title NodeRegistry
@license Apache-2.0
@notice AI nodes register here with a stake of DNA, their endpoint and declared hardware
        class; they top up, unbond and withdraw. A quorum of mixers can jail and slash them.
@dev Lifecycle: register (stake >= MIN_STAKE, pulled with transferFrom) -> active;
     unbond() -> inactive at once, stake still slashable; withdraw() from epoch
     unbond_epoch + UNBOND_EPOCHS on -> stake returned, record cleared (the jail mark stays,
     so a jailed node cannot re-register its way out of jail). A node is active when it is
     registered, not unbonding, not jailed and holds at least MIN_STAKE (a slash can take it
     below).

     punish() carries Punishment(address node,uint256 epoch,bool jail,uint256 slashBps,
     bytes32 evidenceDigest) signed under the MixerSet's EIP-712 domain by a quorum of the
     set of `epoch`; at most one punishment per (node, epoch). Slashed stake goes to
     TREASURY, or is burned when TREASURY is the zero address.

     Storage: a node's numbers live in one packed word (stake: bits 0-127, unbond epoch:
     bits 128-191, hardware class: bits 192-199, flags: bits 200-203, endpoint length: bits
     204-212) and its endpoint in ceil(length / 32) words, so registering with an endpoint of
     up to 32 bytes writes two slots. The clock (GENESIS_BLOCK, EPOCH_BLOCKS) is copied from the MixerSet.
"""

from . import IDNAToken
from . import IMixerSet

MAX_SIGNATURE_BYTES: constant(uint256) = 2080  # MixerSet: 32 members * 65 bytes
MAX_ENDPOINT: constant(uint256) = 256
BPS: constant(uint256) = 10000
PUNISHMENT_TYPEHASH: constant(bytes32) = keccak256(
    "Punishment(address node,uint256 epoch,bool jail,uint256 slashBps,bytes32 evidenceDigest)"
)

STAKE_MASK: constant(uint256) = 2**128 - 1
UNBOND_SHIFT: constant(uint256) = 128
EPOCH_MASK: constant(uint256) = 2**64 - 1
HW_SHIFT: constant(uint256) = 192
REGISTERED: constant(uint256) = 2**200
UNBONDING: constant(uint256) = 2**201
JAILED: constant(uint256) = 2**202
LISTED: constant(uint256) = 2**203
LENGTH_SHIFT: constant(uint256) = 204
LENGTH_MASK: constant(uint256) = 511
ENDPOINT_WORDS: constant(uint256) = 8  # MAX_ENDPOINT / 32
PAGE_MAX: constant(uint256) = 64


struct NodeInfo:
    endpoint: String[MAX_ENDPOINT]
    hw_class: uint8
    stake: uint256
    jailed: bool
    unbonding: bool
    unbond_epoch: uint256
    registered: bool


struct NodeEntry:
    node: address
    endpoint: String[MAX_ENDPOINT]
    hw_class: uint8
    stake: uint256
    jailed: bool
    unbonding: bool
    unbond_epoch: uint256
    registered: bool
    active: bool


event NodeRegistered:
    node: indexed(address)
    endpoint: String[MAX_ENDPOINT]
    hw_class: uint8
    stake: uint256


event NodeUpdated:
    node: indexed(address)
    endpoint: String[MAX_ENDPOINT]
    hw_class: uint8


event StakeAdded:
    node: indexed(address)
    amount: uint256
    stake: uint256


event Unbonding:
    node: indexed(address)
    epoch: uint256
    withdraw_epoch: uint256


event Withdrawn:
    node: indexed(address)
    amount: uint256


event Punished:
    node: indexed(address)
    epoch: indexed(uint256)
    jail: bool
    slash_bps: uint256
    slashed: uint256
    evidence_digest: bytes32
    signers: uint256


event Unjailed:
    node: indexed(address)


event OwnershipTransferred:
    previous_owner: indexed(address)
    new_owner: indexed(address)


MIXER_SET: public(immutable(IMixerSet))
TOKEN: public(immutable(IDNAToken))
GENESIS_BLOCK: public(immutable(uint256))
EPOCH_BLOCKS: public(immutable(uint256))
MIN_STAKE: public(immutable(uint256))
UNBOND_EPOCHS: public(immutable(uint256))
TREASURY: public(immutable(address))

owner: public(address)
node_count: public(uint256)
# The block of the latest change to any node's record: a registry read at block B equals one
# at block B' >= B when last_change at B' is at most B.
last_change: public(uint256)
punished: public(HashMap[address, HashMap[uint256, bool]])
_nodes: HashMap[uint256, address]
_record: HashMap[address, uint256]
_endpoint_words: HashMap[address, bytes32[ENDPOINT_WORDS]]


@deploy
def __init__(
    mixer_set: IMixerSet,
    token: IDNAToken,
    min_stake: uint256,
    unbond_epochs: uint256,
    treasury: address,
):
    """
    @notice Bind the registry to a network's MixerSet and token. The deployer becomes owner.
    @param mixer_set The network's MixerSet (clock, EIP-712 domain, quorum).
    @param token The DNA token.
    @param min_stake Least stake in wei of an active node (> 0).
    @param unbond_epochs Epochs between unbond() and withdraw().
    @param treasury Receives slashed stake; the zero address burns it instead.
    """
    assert min_stake > 0, "zero min stake"
    assert min_stake <= STAKE_MASK, "min stake too large"
    MIXER_SET = mixer_set
    TOKEN = token
    GENESIS_BLOCK = staticcall mixer_set.GENESIS_BLOCK()
    EPOCH_BLOCKS = staticcall mixer_set.EPOCH_BLOCKS()
    MIN_STAKE = min_stake
    UNBOND_EPOCHS = unbond_epochs
    TREASURY = treasury
    self.owner = msg.sender
    log OwnershipTransferred(previous_owner=empty(address), new_owner=msg.sender)


@internal
@view
def _current_epoch() -> uint256:
    if block.number < GENESIS_BLOCK:
        return 0
    return (block.number - GENESIS_BLOCK) // EPOCH_BLOCKS


@internal
def _store_endpoint(node: address, endpoint: String[MAX_ENDPOINT]) -> uint256:
    # write only the words the endpoint covers; its length goes into the record
    length: uint256 = len(endpoint)
    data: Bytes[MAX_ENDPOINT + 32] = concat(convert(endpoint, Bytes[MAX_ENDPOINT]), empty(bytes32))
    for i: uint256 in range((length + 31) // 32, bound=ENDPOINT_WORDS):
        self._endpoint_words[node][i] = extract32(data, i * 32)
    return length << LENGTH_SHIFT


@internal
@view
def _load_endpoint(node: address, record: uint256) -> String[MAX_ENDPOINT]:
    words: bytes32[ENDPOINT_WORDS] = self._endpoint_words[node]
    data: Bytes[MAX_ENDPOINT] = concat(
        words[0], words[1], words[2], words[3], words[4], words[5], words[6], words[7]
    )
    return convert(slice(data, 0, (record >> LENGTH_SHIFT) & LENGTH_MASK), String[MAX_ENDPOINT])


@internal
@view
def _is_active(record: uint256) -> bool:
    return (
        record & (REGISTERED | UNBONDING | JAILED) == REGISTERED
        and record & STAKE_MASK >= MIN_STAKE
    )


# ---------------------------------------------------------------- nodes


@external
def register(endpoint: String[MAX_ENDPOINT], hw_class: uint8, stake: uint256):
    """
    @notice Register the caller as a node, pulling `stake` wei of DNA from it.
    @dev The caller must first approve this contract for `stake`. Reasons: "already
         registered", "jailed", "empty endpoint", "stake below minimum", "stake too large",
         and the token's "insufficient allowance" / "insufficient balance".
    @param endpoint The node's URL (1 to 256 bytes).
    @param hw_class The declared hardware class (it only chooses challenge sizes).
    @param stake Wei to stake (>= MIN_STAKE).
    """
    record: uint256 = self._record[msg.sender]
    assert record & REGISTERED == 0, "already registered"
    assert record & JAILED == 0, "jailed"
    assert len(endpoint) > 0, "empty endpoint"
    assert stake >= MIN_STAKE, "stake below minimum"
    assert stake <= STAKE_MASK, "stake too large"
    if record & LISTED == 0:
        count: uint256 = self.node_count
        self._nodes[count] = msg.sender
        self.node_count = count + 1
    self.last_change = block.number
    self._record[msg.sender] = (
        stake
        | (convert(hw_class, uint256) << HW_SHIFT)
        | REGISTERED
        | LISTED
        | self._store_endpoint(msg.sender, endpoint)
    )
    extcall TOKEN.transferFrom(msg.sender, self, stake)
    log NodeRegistered(node=msg.sender, endpoint=endpoint, hw_class=hw_class, stake=stake)


@external
def update_node(endpoint: String[MAX_ENDPOINT], hw_class: uint8):
    """
    @notice Change the caller's endpoint and declared hardware class.
    @dev Reasons: "not registered", "empty endpoint".
    @param endpoint The node's new URL (1 to 256 bytes).
    @param hw_class The node's new hardware class.
    """
    record: uint256 = self._record[msg.sender]
    assert record & REGISTERED != 0, "not registered"
    assert len(endpoint) > 0, "empty endpoint"
    mask: uint256 = (255 << HW_SHIFT) | (LENGTH_MASK << LENGTH_SHIFT)
    self.last_change = block.number
    self._record[msg.sender] = (
        (record & ~mask)
        | (convert(hw_class, uint256) << HW_SHIFT)
        | self._store_endpoint(msg.sender, endpoint)
    )
    log NodeUpdated(node=msg.sender, endpoint=endpoint, hw_class=hw_class)


@external
def top_up(amount: uint256):
    """
    @notice Add `amount` wei to the caller's stake (pulled with transferFrom).
    @dev Reasons: "not registered", "unbonding", "zero amount", "stake too large".
    @param amount Wei to add.
    """
    record: uint256 = self._record[msg.sender]
    assert record & REGISTERED != 0, "not registered"
    assert record & UNBONDING == 0, "unbonding"
    assert amount != 0, "zero amount"
    stake: uint256 = (record & STAKE_MASK) + amount
    assert stake <= STAKE_MASK, "stake too large"
    self.last_change = block.number
    self._record[msg.sender] = (record & ~STAKE_MASK) | stake
    extcall TOKEN.transferFrom(msg.sender, self, amount)
    log StakeAdded(node=msg.sender, amount=amount, stake=stake)


@external
def unbond():
    """
    @notice Stop serving: the caller becomes inactive now and may withdraw its stake from
            epoch current_epoch() + UNBOND_EPOCHS on. The stake stays slashable until then.
    @dev Reasons: "not registered", "already unbonding".
    """
    record: uint256 = self._record[msg.sender]
    assert record & REGISTERED != 0, "not registered"
    assert record & UNBONDING == 0, "already unbonding"
    epoch: uint256 = self._current_epoch()
    self.last_change = block.number
    self._record[msg.sender] = (
        (record & ~(EPOCH_MASK << UNBOND_SHIFT)) | (epoch << UNBOND_SHIFT) | UNBONDING
    )
    log Unbonding(node=msg.sender, epoch=epoch, withdraw_epoch=epoch + UNBOND_EPOCHS)


@external
def withdraw():
    """
    @notice Return the caller's whole stake once its unbonding delay has passed, and clear
            its registration.
    @dev Reasons: "not unbonding", "unbonding delay" (too early).
    """
    record: uint256 = self._record[msg.sender]
    assert record & UNBONDING != 0, "not unbonding"
    since: uint256 = (record >> UNBOND_SHIFT) & EPOCH_MASK
    assert self._current_epoch() >= since + UNBOND_EPOCHS, "unbonding delay"
    stake: uint256 = record & STAKE_MASK
    # keep the jail mark and the listing; everything else goes
    self.last_change = block.number
    self._record[msg.sender] = record & (JAILED | LISTED)
    if stake != 0:
        extcall TOKEN.transfer(msg.sender, stake)
    log Withdrawn(node=msg.sender, amount=stake)


# ---------------------------------------------------------------- punishment


@external
def punish(
    node: address,
    epoch: uint256,
    jail: bool,
    slash_bps: uint256,
    evidence_digest: bytes32,
    signatures: Bytes[MAX_SIGNATURE_BYTES],
):
    """
    @notice Execute a Punishment signed by a quorum of the mixers of `epoch`: jail `node`
            and/or slash `slash_bps` / 10000 of its stake. Anyone may submit it.
    @dev `signatures` is the concatenation of 65-byte r || s || v signatures over the
         EIP-712 Punishment, as MixerSet.verify_quorum describes. Reasons: "bad slash bps",
         "empty punishment", "future epoch", "unknown node", "replayed" (one punishment per
         node and epoch), and the quorum reasons of MixerSet.verify_quorum.
    @param node The punished node.
    @param epoch The epoch of the offence; its set must sign.
    @param jail Whether to jail the node (it reads as inactive until unjailed).
    @param slash_bps Share of the stake to slash, in basis points (0 to 10000).
    @param evidence_digest Digest of the evidence the mixers checked.
    @param signatures Concatenated 65-byte mixer signatures.
    """
    assert slash_bps <= BPS, "bad slash bps"
    assert jail or slash_bps != 0, "empty punishment"
    assert epoch <= self._current_epoch(), "future epoch"
    record: uint256 = self._record[node]
    assert record & REGISTERED != 0, "unknown node"
    assert not self.punished[node][epoch], "replayed"
    struct_hash: bytes32 = keccak256(
        abi_encode(PUNISHMENT_TYPEHASH, node, epoch, jail, slash_bps, evidence_digest)
    )
    signers: uint256 = staticcall MIXER_SET.verify_quorum(epoch, struct_hash, signatures)
    self.punished[node][epoch] = True
    # stake < 2**128, so the product cannot overflow and the amount fits the stake bits
    slashed: uint256 = unsafe_div(unsafe_mul(record & STAKE_MASK, slash_bps), BPS)
    record = unsafe_sub(record, slashed)
    if jail:
        record |= JAILED
    self.last_change = block.number
    self._record[node] = record
    if slashed != 0:
        if TREASURY == empty(address):
            extcall TOKEN.burn(slashed)
        else:
            extcall TOKEN.transfer(TREASURY, slashed)
    log Punished(
        node=node,
        epoch=epoch,
        jail=jail,
        slash_bps=slash_bps,
        slashed=slashed,
        evidence_digest=evidence_digest,
        signers=signers,
    )


# ---------------------------------------------------------------- owner


@external
def unjail(node: address):
    """
    @notice Lift a node's jail (after review). Slashed stake is not returned.
    @dev Owner only. Reason: "not jailed".
    @param node The jailed node.
    """
    assert msg.sender == self.owner, "only owner"
    record: uint256 = self._record[node]
    assert record & JAILED != 0, "not jailed"
    self.last_change = block.number
    self._record[node] = record & ~JAILED
    log Unjailed(node=node)


@external
def transfer_ownership(new_owner: address):
    """
    @notice Hand the right to unjail nodes to `new_owner`.
    @dev Owner only. `empty(address)` gives it up for good.
    @param new_owner The next owner.
    """
    assert msg.sender == self.owner, "only owner"
    log OwnershipTransferred(previous_owner=self.owner, new_owner=new_owner)
    self.owner = new_owner


# ---------------------------------------------------------------- views


@external
@view
def current_epoch() -> uint256:
    """
    @notice The epoch of the current block (0 before GENESIS_BLOCK).
    """
    return self._current_epoch()


@external
@view
def is_active(node: address) -> bool:
    """
    @notice Whether `node` may be challenged and scheduled: registered, not unbonding, not
            jailed, and staking at least MIN_STAKE.
    @param node A node address.
    """
    return self._is_active(self._record[node])


@external
@view
def node_info(node: address) -> NodeInfo:
    """
    @notice Everything the registry knows about `node`.
    @dev unbond_epoch is meaningful only while unbonding is true.
    @param node A node address.
    """
    record: uint256 = self._record[node]
    return NodeInfo(
        endpoint=self._load_endpoint(node, record),
        hw_class=convert((record >> HW_SHIFT) & 255, uint8),
        stake=record & STAKE_MASK,
        jailed=record & JAILED != 0,
        unbonding=record & UNBONDING != 0,
        unbond_epoch=(record >> UNBOND_SHIFT) & EPOCH_MASK,
        registered=record & REGISTERED != 0,
    )


@external
@view
def stake_of(node: address) -> uint256:
    """
    @notice The stake of `node` in wei (0 if not registered).
    @param node A node address.
    """
    return self._record[node] & STAKE_MASK


@external
@view
def nodes_page(start: uint256, count: uint256) -> DynArray[NodeEntry, PAGE_MAX]:
    """
    @notice The nodes at positions start .. start + count - 1 of registration order (at most
            PAGE_MAX, fewer at the end), each with its record and whether it is active: a
            reader lists the whole registry in node_count() / PAGE_MAX calls.
    @param start The first position.
    @param count How many (capped at PAGE_MAX).
    """
    out: DynArray[NodeEntry, PAGE_MAX] = []
    total: uint256 = self.node_count
    if start >= total:
        return out
    end: uint256 = min(start + min(count, PAGE_MAX), total)
    for i: uint256 in range(start, end, bound=PAGE_MAX):
        node: address = self._nodes[i]
        record: uint256 = self._record[node]
        out.append(NodeEntry(
            node=node,
            endpoint=self._load_endpoint(node, record),
            hw_class=convert((record >> HW_SHIFT) & 255, uint8),
            stake=record & STAKE_MASK,
            jailed=record & JAILED != 0,
            unbonding=record & UNBONDING != 0,
            unbond_epoch=(record >> UNBOND_SHIFT) & EPOCH_MASK,
            registered=record & REGISTERED != 0,
            active=self._is_active(record),
        ))
    return out


@external
@view
def node_at(index: uint256) -> address:
    """
    @notice The `index`-th node ever registered (0 <= index < node_count()), to enumerate
            nodes; check is_active for each.
    @param index A position in registration order.
    """
    assert index < self.node_count, "index out of range"
    return self._nodes[index]
