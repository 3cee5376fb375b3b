#pragma version 0.4.3
#pragma evm-version cancun
#pragma optimize gas
"""
@title DNAToken
@license Apache-2.0
@notice $DNA, the ERC-20 reward and stake token of dnanet (18 decimals).
@dev Supply: the constructor mints GENESIS_SUPPLY to a holder, so nodes can stake before any
     reward exists. After that only the minter mints, and holders burn (the node registry
     burns slashed stake from its own balance); at all times
     totalSupply == GENESIS_SUPPLY + total_minted - total_burned.

     Deployment order: deploy the token (the deployer becomes its owner), deploy the
     RewardsDistributor with the token's address, then call set_minter(distributor) from the
     owner. set_minter works once and clears the owner, so no key can mint afterwards; until
     it is called nobody can mint at all.

     An allowance of max_value(uint256) is never decreased by transferFrom.
"""

from ethereum.ercs import IERC20

implements: IERC20

DECIMALS: constant(uint8) = 18


event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256


event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256


event MinterSet:
    minter: indexed(address)


GENESIS_SUPPLY: public(immutable(uint256))

totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
total_minted: public(uint256)
total_burned: public(uint256)
owner: public(address)
minter: public(address)


@deploy
def __init__(genesis_holder: address, genesis_supply: uint256):
    """
    @notice Mint the genesis supply; the deployer becomes the owner until set_minter.
    @param genesis_holder Receives `genesis_supply` (non-zero if the supply is).
    @param genesis_supply Wei of $DNA that exist before any reward.
    """
    assert genesis_holder != empty(address) or genesis_supply == 0, "zero address"
    GENESIS_SUPPLY = genesis_supply
    self.owner = msg.sender
    if genesis_supply > 0:
        self.balanceOf[genesis_holder] = genesis_supply
        self.totalSupply = genesis_supply
        log Transfer(sender=empty(address), receiver=genesis_holder, value=genesis_supply)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "zero address"
    balance: uint256 = self.balanceOf[sender]
    assert balance >= amount, "insufficient balance"
    self.balanceOf[sender] = balance - amount
    # cannot overflow: the sum of balances is totalSupply, a uint256
    self.balanceOf[receiver] = unsafe_add(self.balanceOf[receiver], amount)
    log Transfer(sender=sender, receiver=receiver, value=amount)


@external
@view
def name() -> String[10]:
    """
    @notice The token's name.
    """
    return "dnanet DNA"


@external
@view
def symbol() -> String[3]:
    """
    @notice The token's symbol.
    """
    return "DNA"


@external
@view
def decimals() -> uint8:
    """
    @notice Decimals of the token: amounts are in wei, 10**18 wei = 1 DNA.
    """
    return DECIMALS


@external
def transfer(receiver: address, amount: uint256) -> bool:
    """
    @notice Move `amount` wei from the caller to `receiver`.
    @dev Reverts "insufficient balance" or "zero address".
    @param receiver The recipient (not the zero address).
    @param amount Wei to move.
    @return True.
    """
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(owner: address, receiver: address, amount: uint256) -> bool:
    """
    @notice Move `amount` wei from `owner` to `receiver` with the caller's allowance.
    @dev Reverts "insufficient allowance", "insufficient balance" or "zero address".
    @param owner The account debited.
    @param receiver The recipient (not the zero address).
    @param amount Wei to move.
    @return True.
    """
    allowed: uint256 = self.allowance[owner][msg.sender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "insufficient allowance"
        self.allowance[owner][msg.sender] = allowed - amount
    self._transfer(owner, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    """
    @notice Let `spender` move up to `amount` wei of the caller's tokens.
    @dev Replaces any previous allowance; max_value(uint256) means unlimited.
    @param spender The account allowed to spend.
    @param amount The allowance in wei.
    @return True.
    """
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True


@external
def set_minter(minter: address):
    """
    @notice Name the only account that may mint (the RewardsDistributor), once.
    @dev Owner only; clears the owner, so the minter can never be changed.
    @param minter The RewardsDistributor's address.
    """
    assert msg.sender == self.owner, "only owner"
    assert minter != empty(address), "zero address"
    self.minter = minter
    self.owner = empty(address)
    log MinterSet(minter=minter)


@external
def mint(receiver: address, amount: uint256):
    """
    @notice Create `amount` wei for `receiver`.
    @dev Minter only (the RewardsDistributor, which caps each epoch by its emission).
    @param receiver The recipient (not the zero address).
    @param amount Wei to create.
    """
    assert msg.sender == self.minter, "only minter"
    assert receiver != empty(address), "zero address"
    self.totalSupply += amount
    self.total_minted += amount
    self.balanceOf[receiver] = unsafe_add(self.balanceOf[receiver], amount)
    log Transfer(sender=empty(address), receiver=receiver, value=amount)


@external
def burn(amount: uint256):
    """
    @notice Destroy `amount` wei of the caller's tokens (the registry burns slashed stake).
    @dev Reverts "insufficient balance".
    @param amount Wei to destroy.
    """
    balance: uint256 = self.balanceOf[msg.sender]
    assert balance >= amount, "insufficient balance"
    self.balanceOf[msg.sender] = balance - amount
    self.totalSupply = unsafe_sub(self.totalSupply, amount)
    self.total_burned += amount
    log Transfer(sender=msg.sender, receiver=empty(address), value=amount)
