#pragma version 0.4.3
#pragma evm-version cancun
#pragma optimize gas
"""
@title MixerSet
@license Apache-2.0
@notice The QueryMixer committee of a dnanet network, versioned by epoch. It is also the
        network's clock and its EIP-712 anchor: every dnanet message is signed under the
        domain {name: "dnanet", version: "1", chainId, verifyingContract: this contract}.
@dev Clock: epoch(block) = (block - GENESIS_BLOCK) // EPOCH_BLOCKS for block >= GENESIS_BLOCK.

     Versions: the set is stored as a list of versions; version v holds a member array and a
     member -> (index + 1) map, and applies to epochs [version_start[v], version_start[v+1]).
     Version 0 starts at epoch 0 and holds the constructor's members. A change made during
     epoch c edits the version starting at c + 1, creating it (a copy of the latest) on the
     first change of that epoch; before GENESIS_BLOCK changes edit version 0. So the set of
     the current epoch and of every past epoch never changes, and old signatures keep
     verifying against the set that was live when they were made. Finding an epoch's version
     costs one read when it is the latest version and a binary search otherwise. The first
     change in an epoch copies the latest version (about 44k gas per member): admin-only,
     rare, and bounded by MAX_MIXERS.

     Size cap: MAX_MIXERS = 32 members, so a signer bitmap fits one word and a quorum fits
     in signatures of at most 32 * 65 bytes.

     Signatures (see verify_quorum): the concatenation of 65-byte r || s || v signatures, in
     any order. A signer's index comes from the version's member -> index map (one storage
     read per signature, no scan and no index hints for the caller to get right); a bitmap
     over member indices rejects duplicates.
"""

MAX_MIXERS: public(constant(uint256)) = 32
SIGNATURE_LENGTH: public(constant(uint256)) = 65
MAX_SIGNATURE_BYTES: constant(uint256) = 2080  # MAX_MIXERS * SIGNATURE_LENGTH
MAX_ENDPOINT: constant(uint256) = 256
# secp256k1n / 2: a larger s is the malleable twin of a valid signature (EIP-2)
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
NAME_HASH: constant(bytes32) = keccak256("dnanet")
VERSION_HASH: constant(bytes32) = keccak256("1")


struct MixerInfo:
    vrf_pk: bytes32
    endpoint: String[MAX_ENDPOINT]


event MixerAdded:
    mixer: indexed(address)
    effective_epoch: uint256
    vrf_pk: bytes32
    endpoint: String[MAX_ENDPOINT]


event MixerRemoved:
    mixer: indexed(address)
    effective_epoch: uint256


event OwnershipTransferred:
    previous_owner: indexed(address)
    new_owner: indexed(address)


GENESIS_BLOCK: public(immutable(uint256))
EPOCH_BLOCKS: public(immutable(uint256))
_CACHED_CHAIN_ID: immutable(uint256)
_CACHED_DOMAIN_SEPARATOR: immutable(bytes32)

owner: public(address)
version_count: public(uint256)
version_start: public(HashMap[uint256, uint256])
_version_members: HashMap[uint256, DynArray[address, MAX_MIXERS]]
_position: HashMap[uint256, HashMap[address, uint256]]
_info: HashMap[address, MixerInfo]


@deploy
def __init__(
    genesis_block: uint256,
    epoch_blocks: uint256,
    mixers: DynArray[address, MAX_MIXERS],
    vrf_pks: DynArray[bytes32, MAX_MIXERS],
    endpoints: DynArray[String[MAX_ENDPOINT], MAX_MIXERS],
):
    """
    @notice Start the clock and the set of epoch 0. The deployer becomes the owner.
    @param genesis_block First block of epoch 0.
    @param epoch_blocks Blocks per epoch (> 0).
    @param mixers Members of epoch 0 (may be empty: add them before GENESIS_BLOCK).
    @param vrf_pks The members' Ed25519 VRF public keys, in the order of `mixers`.
    @param endpoints The members' URLs, in the order of `mixers`.
    """
    assert epoch_blocks > 0, "zero epoch blocks"
    assert len(vrf_pks) == len(mixers) and len(endpoints) == len(mixers), "length mismatch"
    GENESIS_BLOCK = genesis_block
    EPOCH_BLOCKS = epoch_blocks
    _CACHED_CHAIN_ID = chain.id
    _CACHED_DOMAIN_SEPARATOR = self._compute_domain_separator()
    self.owner = msg.sender
    log OwnershipTransferred(previous_owner=empty(address), new_owner=msg.sender)
    self.version_count = 1
    for i: uint256 in range(len(mixers), bound=MAX_MIXERS):
        self._add(0, mixers[i], vrf_pks[i], endpoints[i])


# ---------------------------------------------------------------- internal


@internal
@view
def _compute_domain_separator() -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))


@internal
@view
def _domain_separator() -> bytes32:
    # recompute after a chain split, so signatures of one fork never verify on the other
    if chain.id == _CACHED_CHAIN_ID:
        return _CACHED_DOMAIN_SEPARATOR
    return self._compute_domain_separator()


@internal
@view
def _current_epoch() -> uint256:
    if block.number < GENESIS_BLOCK:
        return 0
    return (block.number - GENESIS_BLOCK) // EPOCH_BLOCKS


@internal
@view
def _effective_epoch() -> uint256:
    # before genesis no epoch has begun, so epoch 0's set may still change
    if block.number < GENESIS_BLOCK:
        return 0
    return (block.number - GENESIS_BLOCK) // EPOCH_BLOCKS + 1


@internal
@view
def _version_of(epoch: uint256) -> uint256:
    last: uint256 = self.version_count - 1
    if self.version_start[last] <= epoch:
        return last
    # version_start is strictly increasing and version_start[0] == 0 <= epoch:
    # find the largest v < last with version_start[v] <= epoch
    lo: uint256 = 0
    hi: uint256 = last - 1
    for _: uint256 in range(256):
        if lo >= hi:
            break
        mid: uint256 = (lo + hi + 1) // 2
        if self.version_start[mid] <= epoch:
            lo = mid
        else:
            hi = mid - 1
    return lo


@internal
def _editable_version() -> uint256:
    target: uint256 = self._effective_epoch()
    last: uint256 = self.version_count - 1
    if self.version_start[last] == target:
        return last
    new: uint256 = last + 1
    members: DynArray[address, MAX_MIXERS] = self._version_members[last]
    self._version_members[new] = members
    for i: uint256 in range(len(members), bound=MAX_MIXERS):
        self._position[new][members[i]] = i + 1
    self.version_start[new] = target
    self.version_count = new + 1
    return new


@internal
def _add(version: uint256, mixer: address, vrf_pk: bytes32, endpoint: String[MAX_ENDPOINT]):
    assert mixer != empty(address), "zero address"
    assert vrf_pk != empty(bytes32), "empty vrf key"
    assert len(endpoint) > 0, "empty endpoint"
    assert self._position[version][mixer] == 0, "already member"
    n: uint256 = len(self._version_members[version])
    assert n < MAX_MIXERS, "set full"
    self._version_members[version].append(mixer)
    self._position[version][mixer] = n + 1
    self._info[mixer] = MixerInfo(vrf_pk=vrf_pk, endpoint=endpoint)
    log MixerAdded(
        mixer=mixer,
        effective_epoch=self.version_start[version],
        vrf_pk=vrf_pk,
        endpoint=endpoint,
    )


# ---------------------------------------------------------------- owner


@external
def add_mixer(mixer: address, vrf_pk: bytes32, endpoint: String[MAX_ENDPOINT]):
    """
    @notice Add a mixer to the set, from the next epoch on (epoch 0 before genesis).
    @dev Owner only. Re-adding a removed mixer replaces its VRF key and endpoint.
    @param mixer The mixer's signing address.
    @param vrf_pk The mixer's Ed25519 VRF public key.
    @param endpoint The mixer's URL (1 to 256 bytes).
    """
    assert msg.sender == self.owner, "only owner"
    self._add(self._editable_version(), mixer, vrf_pk, endpoint)


@external
def remove_mixer(mixer: address):
    """
    @notice Remove a mixer from the set, from the next epoch on (epoch 0 before genesis).
    @dev Owner only. The last member takes the removed member's index.
    @param mixer The mixer's signing address.
    """
    assert msg.sender == self.owner, "only owner"
    version: uint256 = self._editable_version()
    pos: uint256 = self._position[version][mixer]
    assert pos != 0, "not member"
    last_index: uint256 = len(self._version_members[version]) - 1
    if pos - 1 != last_index:
        moved: address = self._version_members[version][last_index]
        self._version_members[version][pos - 1] = moved
        self._position[version][moved] = pos
    self._version_members[version].pop()
    self._position[version][mixer] = 0
    log MixerRemoved(mixer=mixer, effective_epoch=self.version_start[version])


@external
def transfer_ownership(new_owner: address):
    """
    @notice Hand the right to change the set to `new_owner`.
    @dev Owner only. `empty(address)` freezes the set for good.
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
def epoch_of_block(block_number: uint256) -> uint256:
    """
    @notice The epoch that contains `block_number`.
    @param block_number A block number >= GENESIS_BLOCK.
    """
    assert block_number >= GENESIS_BLOCK, "before genesis"
    return (block_number - GENESIS_BLOCK) // EPOCH_BLOCKS


@external
@view
def version_of(epoch: uint256) -> uint256:
    """
    @notice The index of the set version that applies to `epoch`.
    @param epoch An epoch number.
    """
    return self._version_of(epoch)


@external
@view
def members(epoch: uint256) -> DynArray[address, MAX_MIXERS]:
    """
    @notice The mixers of `epoch`, in index order (bit i of a signer bitmap is members[i]).
    @param epoch An epoch number; a future epoch reads the set as scheduled so far.
    """
    return self._version_members[self._version_of(epoch)]


@external
@view
def member_count(epoch: uint256) -> uint256:
    """
    @notice The number of mixers of `epoch`.
    @param epoch An epoch number.
    """
    return len(self._version_members[self._version_of(epoch)])


@external
@view
def threshold(epoch: uint256) -> uint256:
    """
    @notice Signatures needed for a quorum of `epoch`: floor(2n/3) + 1 with n its set size.
    @dev An epoch with an empty set has no quorum at all (verify_quorum reverts "empty set").
    @param epoch An epoch number.
    """
    return len(self._version_members[self._version_of(epoch)]) * 2 // 3 + 1


@external
@view
def is_member(epoch: uint256, mixer: address) -> bool:
    """
    @notice Whether `mixer` belongs to the set of `epoch`.
    @param epoch An epoch number.
    @param mixer An address.
    """
    return self._position[self._version_of(epoch)][mixer] != 0


@external
@view
def mixer_info(mixer: address) -> (bytes32, String[MAX_ENDPOINT]):
    """
    @notice The VRF public key and endpoint last registered for `mixer`.
    @param mixer A mixer address (zeros and an empty string if it was never added).
    """
    info: MixerInfo = self._info[mixer]
    return (info.vrf_pk, info.endpoint)


@external
@view
def domain_separator() -> bytes32:
    """
    @notice The EIP-712 domain separator of every dnanet message on this network.
    """
    return self._domain_separator()


@external
@view
def eip712Domain() -> (
    bytes1, String[6], String[1], uint256, address, bytes32, DynArray[uint256, 1]
):
    """
    @notice The EIP-712 domain, as EIP-5267 describes it (fields: name, version, chainId,
            verifyingContract).
    """
    return (0x0f, "dnanet", "1", chain.id, self, empty(bytes32), [])


@external
@view
def typed_data_hash(struct_hash: bytes32) -> bytes32:
    """
    @notice The digest that is signed for an EIP-712 struct hash under this network's domain.
    @param struct_hash keccak256(typeHash || encodeData) of the message.
    """
    return keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))


@external
@view
def verify_quorum(
    epoch: uint256, struct_hash: bytes32, signatures: Bytes[MAX_SIGNATURE_BYTES]
) -> uint256:
    """
    @notice Check that distinct members of the set of `epoch`, at least threshold(epoch) of
            them, signed the EIP-712 message `struct_hash`; revert with the reason otherwise.
    @dev Layout: `signatures` is the concatenation of 65-byte signatures r || s || v (v in
         {27, 28}, s <= secp256k1n / 2), in any order. Every signature must be valid: one bad
         signature reverts the whole call, so the count of signatures is the count of
         signers. Cost: one ecrecover (3,000 gas) and one cold storage read per signature.
         Reasons: "empty set", "bad signature length", "below threshold", "bad v", "high-s",
         "bad signature" (no key recovered), "non-member" (includes a signature over another
         domain or message, which recovers an unrelated address), "duplicate".
    @param epoch The epoch whose set must sign.
    @param struct_hash The message's EIP-712 struct hash.
    @param signatures Concatenated 65-byte signatures.
    @return Bitmap of the signers' member indices (bit i: members(epoch)[i]).
    """
    version: uint256 = self._version_of(epoch)
    n: uint256 = len(self._version_members[version])
    assert n != 0, "empty set"
    count: uint256 = len(signatures) // SIGNATURE_LENGTH
    assert count * SIGNATURE_LENGTH == len(signatures), "bad signature length"
    # every signature below must be valid and distinct, so counting them up front is exact
    assert count >= n * 2 // 3 + 1, "below threshold"
    digest: bytes32 = keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))
    bitmap: uint256 = 0
    for i: uint256 in range(count, bound=MAX_MIXERS):
        offset: uint256 = i * SIGNATURE_LENGTH
        r: uint256 = convert(extract32(signatures, offset), uint256)
        s: uint256 = convert(extract32(signatures, offset + 32), uint256)
        # the word ending at the signature's last byte: its low byte is v
        v: uint256 = convert(extract32(signatures, offset + 33), uint256) & 255
        assert v == 27 or v == 28, "bad v"
        assert s <= HALF_N, "high-s"
        signer: address = ecrecover(digest, v, r, s)
        assert signer != empty(address), "bad signature"
        position: uint256 = self._position[version][signer]
        assert position != 0, "non-member"
        bit: uint256 = 1 << (position - 1)
        assert bitmap & bit == 0, "duplicate"
        bitmap |= bit
    return bitmap
