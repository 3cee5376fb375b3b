"""Deploy a dnanet network's four contracts and wire them together.

Order (each step needs the one before, and no key can mint afterwards):

1. ``MixerSet(genesis_block, epoch_blocks, mixers, vrf_pks, endpoints)``: the clock, the
   EIP-712 domain and the committee of epoch 0;
2. ``DNAToken(deployer, genesis_supply)``: the deployer holds the genesis supply;
3. ``RewardsDistributor(mixer_set, token, initial_emission, halving_epochs, grace, first)``;
4. ``token.set_minter(distributor)``: the distributor becomes the only minter, the token's
   owner is cleared;
5. ``NodeRegistry(mixer_set, token, min_stake, unbond_epochs, treasury)``;
6. genesis allocations: token transfers from the deployer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dnanet.chain.artifacts import Artifact, load_artifact
from dnanet.chain.deployment import Deployment
from dnanet.chain.transactions import SendPolicy, TransactionSender, TxReceipt
from dnanet.crypto.eip712 import normalize_address, to_checksum_address
from dnanet.crypto.keys import Identity
from dnanet.errors import ChainError, ConfigError, CryptoError
from dnanet.params import Preset

ZERO_ADDRESS = "0x" + "00" * 20
MAX_ENDPOINT_BYTES = 256


@dataclass(frozen=True)
class MixerSpec:
    """A mixer to put in the set: signing address, 32-byte VRF public key, endpoint URL."""

    address: str
    vrf_pk: bytes
    endpoint: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "address", normalize_address(self.address))
        except CryptoError:
            raise ConfigError(f"not an address: {self.address!r}", field="mixer.address") from None
        if self.address == ZERO_ADDRESS:
            raise ConfigError("the zero address cannot be a mixer", field="mixer.address")
        if not isinstance(self.vrf_pk, bytes) or len(self.vrf_pk) != 32:
            raise ConfigError("a VRF public key is 32 bytes", field="mixer.vrf_pk")
        if not self.vrf_pk.strip(b"\0"):
            raise ConfigError("the VRF public key is all zeros", field="mixer.vrf_pk")
        if not 0 < len(self.endpoint.encode()) <= MAX_ENDPOINT_BYTES:
            raise ConfigError(
                f"an endpoint is 1 to {MAX_ENDPOINT_BYTES} bytes", field="mixer.endpoint"
            )

    @classmethod
    def parse(cls, text: str) -> MixerSpec:
        """Parse ``ADDRESS:VRFPK:URL`` (the URL may contain colons; VRFPK is 64 hex digits)."""
        parts = text.split(":", 2)
        if len(parts) != 3:
            raise ConfigError(f"expected ADDRESS:VRFPK:URL, got {text!r}", field="mixer")
        address, vrf_hex, endpoint = parts
        try:
            vrf_pk = bytes.fromhex(vrf_hex.removeprefix("0x"))
        except ValueError:
            raise ConfigError(f"VRF key {vrf_hex!r} is not hex", field="mixer.vrf_pk") from None
        return cls(address=address, vrf_pk=vrf_pk, endpoint=endpoint)


def constructor_data(artifact: Artifact, args: Sequence[Any]) -> bytes:
    """Init code of ``artifact`` followed by its ABI-encoded constructor arguments."""
    from eth_abi.abi import encode

    ctor = next((e for e in artifact.abi if e.get("type") == "constructor"), None)
    types = [i["type"] for i in ctor["inputs"]] if ctor else []
    if len(types) != len(args):
        raise ChainError(
            f"{artifact.name} takes {len(types)} constructor arguments, got {len(args)}"
        )
    return artifact.bytecode + encode(types, list(args))


def deploy(
    w3: Any,
    deployer: Identity,
    preset: Preset,
    *,
    mixers: Sequence[MixerSpec] = (),
    genesis_block: int | None = None,
    allocations: Mapping[str, int] | None = None,
    genesis_supply: int | None = None,
    treasury: str | None = None,
    first_epoch: int = 0,
    policy: SendPolicy | None = None,
) -> Deployment:
    """Deploy and wire the four contracts from ``deployer``; returns the deployment record.

    ``genesis_block`` defaults to the block that will hold the first deployment transaction
    (head + 1), so epoch 0 starts at once. ``allocations`` (address -> wei of DNA) are paid
    from the genesis supply, which defaults to their sum (the deployer keeps any excess).
    ``treasury`` receives slashed stake (default: burn it). The deployer must hold ETH for gas.
    """
    allocations = dict(allocations or {})
    for address, amount in allocations.items():
        try:
            normalize_address(address)
        except CryptoError:
            raise ConfigError(f"not an address: {address!r}", field="allocations") from None
        if type(amount) is not int or amount <= 0:
            raise ConfigError(f"allocation of {address} must be a positive integer",
                              field="allocations")
    needed = sum(allocations.values())
    supply = needed if genesis_supply is None else genesis_supply
    if supply < needed:
        raise ConfigError(
            f"genesis supply {supply} is below the allocations' sum {needed}",
            field="genesis_supply",
        )
    if treasury is not None:
        try:
            treasury = normalize_address(treasury)
        except CryptoError:
            raise ConfigError(f"not an address: {treasury!r}", field="treasury") from None
    addresses = [m.address for m in mixers]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("the same mixer appears twice", field="mixers")

    sender = TransactionSender(w3, deployer, policy)
    head = int(sender.requests.run(lambda: w3.eth.block_number, "read the block number"))
    genesis = head + 1 if genesis_block is None else genesis_block
    if genesis < 0:
        raise ConfigError("the genesis block cannot be negative", field="genesis_block")

    def create(name: str, args: Sequence[Any]) -> TxReceipt:
        receipt = sender.send(
            to=None, data=constructor_data(load_artifact(name), args), action=f"deploy {name}"
        )
        if receipt is None or receipt.contract_address is None:
            raise ChainError(f"deploy {name}: the receipt names no contract address")
        return receipt

    def call(address: str, name: str, fn: str, args: Sequence[Any]) -> None:
        contract = w3.eth.contract(address=to_checksum_address(address),
                                   abi=load_artifact(name).abi)
        data = bytes.fromhex(contract.encode_abi(fn, args=list(args))[2:])
        sender.send(to=address, data=data, action=f"{name}.{fn}")

    first = create("MixerSet", [
        genesis,
        preset.epoch_blocks,
        [to_checksum_address(a) for a in addresses],
        [m.vrf_pk for m in mixers],
        [m.endpoint for m in mixers],
    ])
    mixer_set = _address(first)
    token = _address(create("DNAToken", [to_checksum_address(deployer.address), supply]))
    distributor = _address(create("RewardsDistributor", [
        to_checksum_address(mixer_set),
        to_checksum_address(token),
        preset.initial_emission,
        preset.halving_epochs,
        preset.settlement_grace_blocks,
        first_epoch,
    ]))
    call(token, "DNAToken", "set_minter", [to_checksum_address(distributor)])
    registry = _address(create("NodeRegistry", [
        to_checksum_address(mixer_set),
        to_checksum_address(token),
        preset.min_stake,
        preset.unbond_epochs,
        to_checksum_address(treasury or ZERO_ADDRESS),
    ]))
    for address, amount in allocations.items():
        call(token, "DNAToken", "transfer", [to_checksum_address(address), amount])
    return Deployment(
        chain_id=sender.chain_id(),
        token=token,
        mixer_set=mixer_set,
        registry=registry,
        distributor=distributor,
        deploy_block=first.block_number,
        genesis_block=genesis,
        epoch_blocks=preset.epoch_blocks,
        preset=preset.name,
    )


def _address(receipt: TxReceipt) -> str:
    assert receipt.contract_address is not None  # checked in create()
    return receipt.contract_address


__all__ = ["MixerSpec", "constructor_data", "deploy"]
