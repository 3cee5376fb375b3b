#pragma version 0.4.3
#pragma evm-version cancun
#pragma optimize gas
"""
@title RewardsDistributor
@license Apache-2.0
@notice Settles each epoch's rewards on a quorum of the mixers' signatures, mints them, and
        pays nodes against the latest reward-tree root.
@dev Settlement: submit_epoch takes EpochSettlement(uint256 epoch,bytes32 rewardsRoot,
     uint256 total,bytes32 reportsDigest), signed under the MixerSet's EIP-712 domain by at
     least threshold(epoch) distinct members of that epoch's set. Epochs settle strictly in
     order from FIRST_EPOCH, each only once block.number >= GENESIS_BLOCK +
     (epoch + 1) * EPOCH_BLOCKS + GRACE_BLOCKS. The total is capped by the emission schedule
     emission(epoch) = INITIAL_EMISSION >> (epoch // HALVING_EPOCHS), and minted to this
     contract. The reward tree holds cumulative amounts, so the latest root is all a claim
     needs. An epoch where nobody earned settles with total 0 and any root; a zero root
     (total 0 only) keeps the previous root, so claims never stop working.

     Claims: OpenZeppelin StandardMerkleTree leaves,
     keccak256(bytes.concat(keccak256(abi.encode(account, cumulative)))), with sorted-pair
     hashing. claim pays cumulative - claimed[account] to the account, whoever calls it.

     The clock (GENESIS_BLOCK, EPOCH_BLOCKS) is copied from the MixerSet at deployment.
"""

from . import IDNAToken
from . import IMixerSet

MAX_SIGNATURE_BYTES: constant(uint256) = 2080  # MixerSet: 32 members * 65 bytes
MAX_PROOF: constant(uint256) = 32
SETTLEMENT_TYPEHASH: constant(bytes32) = keccak256(
    "EpochSettlement(uint256 epoch,bytes32 rewardsRoot,uint256 total,bytes32 reportsDigest)"
)


event EpochSettled:
    epoch: indexed(uint256)
    rewards_root: bytes32
    total: uint256
    reports_digest: bytes32
    signers: uint256


event Claimed:
    account: indexed(address)
    amount: uint256
    cumulative: uint256


MIXER_SET: public(immutable(IMixerSet))
TOKEN: public(immutable(IDNAToken))
GENESIS_BLOCK: public(immutable(uint256))
EPOCH_BLOCKS: public(immutable(uint256))
GRACE_BLOCKS: public(immutable(uint256))
INITIAL_EMISSION: public(immutable(uint256))
HALVING_EPOCHS: public(immutable(uint256))
FIRST_EPOCH: public(immutable(uint256))

next_epoch: public(uint256)
merkle_root: public(bytes32)
claimed: public(HashMap[address, uint256])


@deploy
def __init__(
    mixer_set: IMixerSet,
    token: IDNAToken,
    initial_emission: uint256,
    halving_epochs: uint256,
    grace_blocks: uint256,
    first_epoch: uint256,
):
    """
    @notice Bind the distributor to a network's MixerSet and token.
    @dev The token's owner must then call token.set_minter(this contract).
    @param mixer_set The network's MixerSet (clock, EIP-712 domain, quorum).
    @param token The DNA token.
    @param initial_emission Maximum wei minted for each epoch before the first halving.
    @param halving_epochs Epochs between halvings (> 0).
    @param grace_blocks Blocks to wait after an epoch's last block before it may settle.
    @param first_epoch The first epoch to settle (0 for a new network).
    """
    assert halving_epochs > 0, "zero halving epochs"
    MIXER_SET = mixer_set
    TOKEN = token
    GENESIS_BLOCK = staticcall mixer_set.GENESIS_BLOCK()
    EPOCH_BLOCKS = staticcall mixer_set.EPOCH_BLOCKS()
    GRACE_BLOCKS = grace_blocks
    INITIAL_EMISSION = initial_emission
    HALVING_EPOCHS = halving_epochs
    FIRST_EPOCH = first_epoch
    self.next_epoch = first_epoch


@internal
@view
def _emission(epoch: uint256) -> uint256:
    # a shift of 256 or more gives 0, as the schedule wants
    return INITIAL_EMISSION >> (epoch // HALVING_EPOCHS)


@external
@view
def emission(epoch: uint256) -> uint256:
    """
    @notice The most wei that `epoch` may mint: INITIAL_EMISSION >> (epoch // HALVING_EPOCHS).
    @param epoch An epoch number.
    """
    return self._emission(epoch)


@external
@view
def settle_block(epoch: uint256) -> uint256:
    """
    @notice The first block at which `epoch` may settle.
    @param epoch An epoch number.
    """
    return GENESIS_BLOCK + (epoch + 1) * EPOCH_BLOCKS + GRACE_BLOCKS


@external
def submit_epoch(
    epoch: uint256,
    rewards_root: bytes32,
    total: uint256,
    reports_digest: bytes32,
    signatures: Bytes[MAX_SIGNATURE_BYTES],
):
    """
    @notice Settle `epoch`: check the mixers' quorum on its EpochSettlement, mint `total`
            to this contract and make `rewards_root` the root that claims are checked against.
    @dev Anyone may submit; the signatures are the authority. `signatures` is the
         concatenation of 65-byte r || s || v signatures over the EIP-712 EpochSettlement,
         as MixerSet.verify_quorum describes. Reasons: "replayed" (already settled),
         "out of order" (an earlier epoch is unsettled), "early" (before settle_block),
         "over-emission", "empty root" (a zero root with a non-zero total), and the quorum
         reasons of MixerSet.verify_quorum.
    @param epoch The epoch to settle: next_epoch.
    @param rewards_root Root of the cumulative reward tree after this epoch.
    @param total Wei earned in this epoch (<= emission(epoch)).
    @param reports_digest Digest of the epoch's published score reports.
    @param signatures Concatenated 65-byte mixer signatures.
    """
    expected: uint256 = self.next_epoch
    assert epoch >= expected, "replayed"
    assert epoch == expected, "out of order"
    assert block.number >= GENESIS_BLOCK + (epoch + 1) * EPOCH_BLOCKS + GRACE_BLOCKS, "early"
    assert total <= self._emission(epoch), "over-emission"
    assert rewards_root != empty(bytes32) or total == 0, "empty root"
    struct_hash: bytes32 = keccak256(
        abi_encode(SETTLEMENT_TYPEHASH, epoch, rewards_root, total, reports_digest)
    )
    signers: uint256 = staticcall MIXER_SET.verify_quorum(epoch, struct_hash, signatures)
    self.next_epoch = epoch + 1
    if rewards_root != empty(bytes32):
        self.merkle_root = rewards_root
    if total != 0:
        extcall TOKEN.mint(self, total)
    log EpochSettled(
        epoch=epoch,
        rewards_root=rewards_root,
        total=total,
        reports_digest=reports_digest,
        signers=signers,
    )


@internal
@pure
def _leaf(account: address, cumulative: uint256) -> bytes32:
    return keccak256(keccak256(abi_encode(account, cumulative)))


@internal
@pure
def _process_proof(leaf: bytes32, proof: DynArray[bytes32, MAX_PROOF]) -> bytes32:
    # hashes as uint256: the sorted-pair comparison is then one LT, and abi_encode of two
    # words is the plain 64-byte concatenation (cheaper in Vyper than concat of bytes32)
    computed: uint256 = convert(leaf, uint256)
    for sibling: bytes32 in proof:
        other: uint256 = convert(sibling, uint256)
        if computed < other:
            computed = convert(keccak256(abi_encode(computed, other)), uint256)
        else:
            computed = convert(keccak256(abi_encode(other, computed)), uint256)
    return convert(computed, bytes32)


@external
@view
def verify_claim(account: address, cumulative: uint256, proof: DynArray[bytes32, MAX_PROOF]) -> bool:
    """
    @notice Whether (account, cumulative) is a leaf of the latest root under `proof`.
    @param account The node's address.
    @param cumulative Its cumulative reward in wei, as in the tree.
    @param proof Sibling hashes from the leaf up.
    """
    return self._process_proof(self._leaf(account, cumulative), proof) == self.merkle_root


@external
def claim(account: address, cumulative: uint256, proof: DynArray[bytes32, MAX_PROOF]):
    """
    @notice Pay `account` its unclaimed rewards: cumulative - claimed[account].
    @dev Anyone may call it; the tokens always go to `account`. One claim covers any number
         of settled epochs. Reasons: "bad proof", "already claimed" (nothing new to pay).
    @param account The node's address (the leaf's address).
    @param cumulative Its cumulative reward in wei in the latest tree.
    @param proof Sibling hashes from the leaf up (OpenZeppelin StandardMerkleTree).
    """
    assert self._process_proof(self._leaf(account, cumulative), proof) == self.merkle_root, "bad proof"
    paid: uint256 = self.claimed[account]
    assert cumulative > paid, "already claimed"
    self.claimed[account] = cumulative
    extcall TOKEN.transfer(account, unsafe_sub(cumulative, paid))
    log Claimed(account=account, amount=unsafe_sub(cumulative, paid), cumulative=cumulative)
