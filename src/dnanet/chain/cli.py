"""``dnanet contracts deploy`` and ``dnanet contracts show``: a network on a real chain.

The keystore password comes from ``DNANET_KEYSTORE_PASSWORD`` or an interactive prompt, never
from an argument. `add_contracts_commands` registers the commands on ``dnanet``'s argparse
subparsers; each handler returns the exit status and raises DnanetError on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from dnanet.cliargs import non_negative_int
from dnanet.errors import ConfigError
from dnanet.params import PRESETS, WEI_PER_DNA


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
                        help="keystore v3 file of the deployer (owner of the mixer set)")
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


def _deploy(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
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
    print(json.dumps(deployment.to_json(), indent=2), file=out)
    return 0


def _show(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from dnanet.chain.backends import connect_rpc
    from dnanet.chain.client import ChainClient
    from dnanet.chain.deployment import Deployment

    deployment = Deployment.load(args.deployment)
    client = ChainClient(connect_rpc(args.rpc), deployment)
    print(json.dumps(describe(client), indent=2), file=out)
    return 0


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
            "threshold": view.threshold,
            "members": [{"address": m.address, "vrf_pk": "0x" + m.vrf_pk.hex(),
                         "endpoint": m.endpoint} for m in view.members],
        },
        "nodes": {
            "registered": sum(1 for n in nodes if n.registered),
            "active": sum(1 for n in nodes if n.active),
            "total_stake": str(sum(n.stake for n in nodes)),
        },
        "rewards": {
            "next_epoch": client.next_epoch(),
            "last_settled_epoch": client.last_settled_epoch(),
            "merkle_root": "0x" + root.hex(),
            "emission_next_epoch": str(client.emission(client.next_epoch())),
        },
        "token": {"total_supply": str(client.total_supply())},
    }


__all__ = ["add_contracts_commands", "describe"]
