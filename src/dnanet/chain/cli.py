"""``dnanet contracts deploy|show|add-mixer|remove-mixer``: a network on a real chain.

The keystore password comes from ``DNANET_KEYSTORE_PASSWORD`` (or the file named by
``DNANET_KEYSTORE_PASSWORD_FILE``) or an interactive prompt, never from an argument.
`add_contracts_commands` registers the commands on ``dnanet``'s argparse subparsers; each
handler returns the exit status and raises DnanetError on failure.

The mixer set is versioned by epoch (``MixerSet.vy``): a change made during epoch ``c``
applies from epoch ``c + 1`` (before genesis, from epoch 0), so every epoch is judged by the
set it began with. ``add-mixer`` and ``remove-mixer`` check the owner, the membership and the
sender's ETH before they send, and say from which epoch the change applies (as the chain's
event says, should the transaction land an epoch later than planned).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from dnanet.cliargs import non_negative_int
from dnanet.errors import ChainError, ConfigError
from dnanet.params import PRESETS, WEI_PER_DNA

KEYSTORE_HELP = ("(password: $DNANET_KEYSTORE_PASSWORD, the file named by "
                 "$DNANET_KEYSTORE_PASSWORD_FILE, or a prompt)")


def add_contracts_commands(subparsers: Any) -> None:
    """Add ``contracts deploy`` and ``contracts show`` to ``dnanet``'s subcommands."""
    contracts = subparsers.add_parser(
        "contracts", help="deploy dnanet's contracts to a chain, or show a deployment"
    )
    sub = contracts.add_subparsers(dest="contracts_command", required=True, metavar="ACTION")

    deploy = sub.add_parser(
        "deploy",
        help="deploy the four contracts over JSON-RPC and write a deployment file",
        description="Deploy DNAToken, MixerSet, RewardsDistributor and NodeRegistry from the "
        "keystore's account (it pays the gas), wire the distributor as the only minter, and "
        "write the deployment file that the daemons read. The keystore password comes from "
        "DNANET_KEYSTORE_PASSWORD or a prompt.",
    )
    deploy.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    deploy.add_argument("--keystore", required=True, type=Path,
                        help=f"keystore v3 file of the deployer (owner of the mixer set and "
                        f"the node registry) {KEYSTORE_HELP}")
    deploy.add_argument("--preset", default="mainnet", choices=sorted(PRESETS),
                        help="protocol parameters (default: mainnet)")
    deploy.add_argument("--out", type=Path, default=Path("deployment.json"),
                        help="deployment file to write (default: deployment.json)")
    deploy.add_argument("--force", action="store_true",
                        help="overwrite an existing deployment file")
    deploy.add_argument("--mixer", action="append", default=[], metavar="ADDR:VRFPK:URL",
                        help="a mixer of epoch 0 (repeat): address, 32-byte hex VRF public "
                        "key, endpoint URL")
    deploy.add_argument("--genesis-block", type=non_negative_int, default=None,
                        help="first block of epoch 0 (default: the block of the first "
                        "deployment transaction)")
    deploy.add_argument("--genesis-supply", type=non_negative_int, default=0, metavar="DNA",
                        help="whole DNA minted to the deployer at deployment (default: 0 "
                        "plus any --allocate)")
    deploy.add_argument("--allocate", action="append", default=[], metavar="ADDR=DNA",
                        help="pay whole DNA of the genesis supply to an account (repeat)")
    deploy.add_argument("--treasury", default=None,
                        help="account receiving slashed stake (default: slashed stake is burned)")
    deploy.add_argument("--confirmations", type=non_negative_int, default=0,
                        help="blocks to wait on each transaction before trusting it (default 0;"
                        " use a few on a public chain)")
    deploy.set_defaults(handler=_deploy)

    show = sub.add_parser("show", help="show a deployment and its live state on chain")
    show.add_argument("--deployment", required=True, type=Path, help="deployment file")
    show.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    show.set_defaults(handler=_show)

    add = sub.add_parser(
        "add-mixer", help="add a mixer to the set from the next epoch on (MixerSet owner only)",
        description="Add a mixer to the MixerSet, from the next epoch on (from epoch 0 before "
        "genesis). Owner only: the keystore must be the MixerSet's owner (the deployer unless "
        "ownership was transferred). The mixer should be running at its endpoint before that "
        "epoch begins.")
    add.add_argument("--mixer", required=True, metavar="ADDR:VRFPK:URL",
                     help="the mixer: address, 32-byte hex VRF public key (`dnanet keys show "
                     "KEYSTORE --vrf`), endpoint URL")
    _add_change_args(add)
    add.set_defaults(handler=_add_mixer)
    remove = sub.add_parser(
        "remove-mixer", help="remove a mixer from the set from the next epoch on (MixerSet "
        "owner only)")
    remove.add_argument("--address", required=True, help="the mixer's address")
    _add_change_args(remove)
    remove.set_defaults(handler=_remove_mixer)


def _add_change_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    p.add_argument("--deployment", required=True, type=Path, help="deployment file")
    p.add_argument("--keystore", required=True, type=Path,
                   help=f"keystore v3 file of the MixerSet's owner {KEYSTORE_HELP}")


def _parse_allocation(text: str) -> tuple[str, int]:
    from dnanet.crypto.eip712 import normalize_address
    from dnanet.errors import CryptoError

    address, sep, amount = text.partition("=")
    try:
        if not sep:
            raise ValueError
        dna = int(amount)
        return normalize_address(address), dna * WEI_PER_DNA
    except (ValueError, CryptoError):
        raise ConfigError(f"expected ADDR=DNA (whole DNA), got {text!r}",
                          field="allocate") from None


def _deploy(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from dnanet.chain.backends import connect_rpc
    from dnanet.chain.deploy import MixerSpec, deploy
    from dnanet.chain.transactions import SendPolicy
    from dnanet.keyfiles import load_identity
    from dnanet.params import get_preset

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to overwrite it or choose "
                          "another --out", field="out")
    mixers = [MixerSpec.parse(text) for text in args.mixer]
    allocations: dict[str, int] = {}
    for text in args.allocate:
        address, wei = _parse_allocation(text)
        allocations[address] = allocations.get(address, 0) + wei
    preset = get_preset(args.preset)
    w3 = connect_rpc(args.rpc)
    deployer = load_identity(args.keystore)
    supply = args.genesis_supply * WEI_PER_DNA + sum(allocations.values())
    policy = SendPolicy(confirmations=args.confirmations, receipt_timeout_s=600.0)
    print(f"deploying preset {preset.name} from {deployer.address} to {args.rpc}",
          file=sys.stderr)
    deployment = deploy(
        w3, deployer, preset,
        mixers=mixers, genesis_block=args.genesis_block, allocations=allocations,
        genesis_supply=supply, treasury=args.treasury, policy=policy,
    )
    deployment.save(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    print(json.dumps(deployment.to_json(), indent=2), file=out or sys.stdout)
    return 0


def _show(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from dnanet.chain.backends import connect_rpc
    from dnanet.chain.client import ChainClient
    from dnanet.chain.deployment import Deployment

    deployment = Deployment.load(args.deployment)
    client = ChainClient(connect_rpc(args.rpc), deployment)
    print(json.dumps(describe(client), indent=2), file=out or sys.stdout)
    return 0


def compute_change_epoch(head: int, genesis_block: int, epoch_blocks: int) -> int:
    """The first epoch a mixer-set change sent at block ``head`` applies to (MixerSet's
    ``_effective_epoch``): epoch 0 before genesis, else the next epoch."""
    if head < genesis_block:
        return 0
    return (head - genesis_block) // epoch_blocks + 1


def verify_mixer_change(*, sender: str, owner: str, members: list[str], mixer: str,
                        adding: bool, max_members: int = 32) -> None:
    """Raise ChainError unless ``sender`` may add (or remove) ``mixer`` to (from) the set
    whose members are ``members``."""
    verb = "adding" if adding else "removing"
    if sender != owner:
        raise ChainError(f"{verb} a mixer is owner-only: the MixerSet's owner is {owner}, not "
                         f"{sender}")
    if adding and mixer in members:
        raise ChainError(f"{mixer} is in the set already")
    if adding and len(members) >= max_members:
        raise ChainError(f"the set has {len(members)} members, the most it may have")
    if not adding and mixer not in members:
        raise ChainError(f"{mixer} is not in the set (members: {', '.join(members) or 'none'})")
    if not adding and len(members) == 1:
        raise ChainError(f"{mixer} is the set's only member: without a mixer nothing could be "
                         "signed or settled; add its successor first")


def _change_mixer_set(args: argparse.Namespace, mixer: str, adding: bool,
                      out: TextIO | None) -> int:
    from dnanet.chain.backends import connect_rpc
    from dnanet.chain.client import ChainClient
    from dnanet.chain.deployment import Deployment
    from dnanet.chain.staking import verify_simulated
    from dnanet.keyfiles import load_identity, read_keystore_address

    deployment = Deployment.load(args.deployment)
    reader = ChainClient(connect_rpc(args.rpc), deployment)
    sender = read_keystore_address(args.keystore)
    head = reader.block_number()
    epoch = compute_change_epoch(head, deployment.genesis_block, deployment.epoch_blocks)
    members = list(reader.mixer_set(epoch).addresses)
    verify_mixer_change(sender=sender, owner=reader.mixer_set_owner(), members=members,
                        mixer=mixer, adding=adding)
    fn, call_args = (("add_mixer", [_checksum(mixer), args.spec.vrf_pk, args.spec.endpoint])
                     if adding else ("remove_mixer", [_checksum(mixer)]))
    action = f"{'adding' if adding else 'removing'} mixer {mixer}"
    verify_simulated(reader, sender, action, lambda: reader.simulate(
        reader.mixer_set_contract, fn, call_args, action=action, sender=sender))
    client = ChainClient(reader.w3, deployment, load_identity(args.keystore))
    receipt = (client.add_mixer(mixer, args.spec.vrf_pk, args.spec.endpoint) if adding
               else client.remove_mixer(mixer))
    effective = client.mixer_change_epoch(receipt)
    effective = epoch if effective is None else effective
    view = client.mixer_set(effective)
    verb = "joins" if adding else "leaves"
    print(f"{mixer} {verb} the mixer set from epoch {effective} (block "
          f"{deployment.epoch_start(effective)}; now block {receipt.block_number}, epoch "
          f"{deployment.epoch_of_block(receipt.block_number)}): that epoch's set has "
          f"{len(view.members)} members, threshold {view.threshold}", file=sys.stderr)
    record = {"mixer": mixer, "change": "added" if adding else "removed",
              "effective_epoch": effective, "members": list(view.addresses),
              "threshold": view.threshold, "tx": receipt.tx_hash}
    print(json.dumps(record), file=out or sys.stdout)
    return 0


def _checksum(address: str) -> str:
    from dnanet.crypto.eip712 import to_checksum_address

    return to_checksum_address(address)


def _add_mixer(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from dnanet.chain.deploy import MixerSpec

    args.spec = MixerSpec.parse(args.mixer)
    return _change_mixer_set(args, args.spec.address, True, out)


def _remove_mixer(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from dnanet.crypto.eip712 import normalize_address
    from dnanet.errors import CryptoError

    try:
        mixer = normalize_address(args.address)
    except CryptoError:
        raise ConfigError(f"not an address: {args.address!r}", field="address") from None
    return _change_mixer_set(args, mixer, False, out)


def describe(client: Any) -> dict[str, Any]:
    """A JSON-ready summary of a deployment and its state on chain."""
    epoch = client.current_epoch()
    view = client.mixer_set(epoch)
    nodes = client.nodes()
    root = client.merkle_root()
    return {
        "deployment": client.deployment.to_json(),
        "block": client.block_number(),
        "epoch": epoch,
        "mixers": {
            "owner": client.mixer_set_owner(),
            "threshold": view.threshold,
            "members": [{"address": m.address, "vrf_pk": "0x" + m.vrf_pk.hex(),
                         "endpoint": m.endpoint} for m in view.members],
        },
        "nodes": {
            "registered": sum(1 for n in nodes if n.registered),
            "active": sum(1 for n in nodes if n.active),
            "total_stake": str(sum(n.stake for n in nodes)),
            "min_stake": str(client.min_stake()),
            "unbond_epochs": client.unbond_epochs(),
            "registry_owner": client.registry_owner(),
        },
        "rewards": {
            "next_epoch": client.next_epoch(),
            "last_settled_epoch": client.last_settled_epoch(),
            "merkle_root": "0x" + root.hex(),
            "emission_next_epoch": str(client.emission(client.next_epoch())),
        },
        "token": {"total_supply": str(client.total_supply())},
    }


__all__ = ["add_contracts_commands", "compute_change_epoch", "describe", "verify_mixer_change"]
