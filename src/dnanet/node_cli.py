"""``dnanet node status|claim|stake add|unbond|withdraw|unjail``: a node's life on chain.

Each command that sends reads the chain first (no password needed: the keystore's address is
read without it), checks what the registry or distributor would check (``dnanet.chain.staking``,
a simulated ``claim``) and refuses with the numbers before anything is signed; only then is
the keystore decrypted and the transaction sent. Each prints one JSON line of what it did.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from dnanet.cliargs import dna_amount, positive_int
from dnanet.errors import ConfigError, DnanetError
from dnanet.keyfiles import read_keystore_address as keystore_address
from dnanet.params import format_dna

if TYPE_CHECKING:
    from dnanet.chain.client import ChainClient
    from dnanet.node.status import ChainReader

CLAIM_ATTEMPTS = 3
"""Claims retried when an epoch settles between reading the proof and the claim's block."""


def add_chain_args(p: argparse.ArgumentParser, *, keystore: str | None = None) -> None:
    """``--rpc``, ``--deployment`` and (with its help text) ``--keystore``."""
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    p.add_argument("--deployment", required=True, help="deployment file (dnanet contracts deploy)")
    if keystore is not None:
        p.add_argument("--keystore", required=True,
                       help=f"{keystore} (password: $DNANET_KEYSTORE_PASSWORD, the file named by "
                       "$DNANET_KEYSTORE_PASSWORD_FILE, or a prompt)")


def _address_option(text: str, option: str) -> str:
    address = text.lower()
    if not re.fullmatch(r"0x[0-9a-f]{40}", address):
        raise ConfigError(f"{option}: not an account address (0x and 40 hex digits): "
                          f"{text[:60]!r}")
    return address


def address_of(args: argparse.Namespace) -> str:
    """``--address``, else the address in ``--keystore`` (read without its password)."""
    if getattr(args, "address", None):
        return _address_option(str(args.address), "--address")
    return keystore_address(Path(args.keystore))


def chain_client(args: argparse.Namespace, *, sending: bool = False) -> ChainClient:
    """The chain of ``--rpc``/``--deployment``; sending as ``--keystore`` (decrypted now, its
    password asked once) with ``sending``, read-only without."""
    from dnanet.service.gateway import open_gateway

    identity = None
    if sending:
        from dnanet.keyfiles import load_identity

        identity = load_identity(Path(args.keystore))
    return open_gateway(args.rpc, Path(args.deployment), identity).client


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------- stake


def _stake_add(args: argparse.Namespace) -> int:
    from dnanet.chain.staking import read_account_state, verify_top_up

    address = keystore_address(Path(args.keystore))
    state = read_account_state(chain_client(args), address)
    actions = verify_top_up(state, args.amount)
    after = state.stake + args.amount
    _say(f"adding {format_dna(args.amount)} to the stake of {address} ({format_dna(state.stake)}"
         f" now, {format_dna(after)} after; minimum {format_dna(state.min_stake)}): "
         f"{' then '.join(actions)}")
    client = chain_client(args, sending=True)
    receipt = client.stake_more(args.amount)
    stake = client.node_info(address).stake
    _print({"address": address, "added": str(args.amount), "stake": str(stake),
            "active": stake >= state.min_stake and not state.jailed, "tx": receipt.tx_hash})
    return 0


def _unbond(args: argparse.Namespace) -> int:
    from dnanet.chain.staking import read_account_state, verify_unbond

    address = keystore_address(Path(args.keystore))
    state = read_account_state(chain_client(args), address)
    verify_unbond(state)
    client = chain_client(args, sending=True)
    receipt = client.unbond()
    info = client.node_info(address)
    withdraw = info.unbond_epoch + state.unbond_epochs
    _say(f"{address} unbonds from epoch {info.unbond_epoch}: it is no longer challenged or "
         f"paid; its stake ({format_dna(info.stake)}) stays slashable until `dnanet node "
         f"withdraw` returns it, from epoch {withdraw} on")
    _print({"address": address, "unbond_epoch": info.unbond_epoch, "withdraw_epoch": withdraw,
            "stake": str(info.stake), "tx": receipt.tx_hash})
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from dnanet.chain.staking import read_account_state, verify_withdraw

    address = keystore_address(Path(args.keystore))
    state = read_account_state(chain_client(args), address)
    verify_withdraw(state)
    client = chain_client(args, sending=True)
    receipt = client.withdraw()
    _say(f"withdrew {format_dna(state.stake)} to {address}; to serve again, `dnanet node run` "
         "registers anew")
    _print({"address": address, "withdrawn": str(state.stake), "tx": receipt.tx_hash})
    return 0


def _unjail(args: argparse.Namespace) -> int:
    from dnanet.chain.staking import read_account_state, verify_unjail

    node = _address_option(args.address, "--address")
    sender = keystore_address(Path(args.keystore))
    reader = chain_client(args)
    verify_unjail(read_account_state(reader, sender), read_account_state(reader, node),
                  reader.registry_owner())
    receipt = chain_client(args, sending=True).unjail(node)
    _print({"node": node, "unjailed": True, "tx": receipt.tx_hash})
    return 0


# ---------------------------------------------------------------- claim and status


def _read_only_chain(args: argparse.Namespace) -> ChainReader | None:
    """The chain as ``node status`` reads it, or None without ``--rpc``/``--deployment``."""
    if not args.rpc and not args.deployment:
        return None
    if not (args.rpc and args.deployment):
        raise ConfigError("--rpc and --deployment go together (the chain to read claims from)")
    from dnanet.service.gateway import open_gateway

    return open_gateway(args.rpc, Path(args.deployment), None)


def _node_status(args: argparse.Namespace) -> int:
    from dnanet.node.status import DEFAULT_EPOCHS, DEFAULT_RECENT, collect_status, render_status

    address = address_of(args)
    chain = _read_only_chain(args)
    with httpx.Client(timeout=10) as client:
        status = collect_status(client, args.validator, address, node_url=args.node,
                                chain=chain, epochs=args.epochs or DEFAULT_EPOCHS,
                                recent=args.recent or DEFAULT_RECENT)
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def prepare_claim(client: ChainClient, validator: str, account: str,
                  sender: str) -> tuple[int, list[bytes], int] | None:
    """The Validator's cumulative total and proof for ``account``, checked as the chain will
    check them, and the gas limit of the claim from ``sender``; None when everything is
    claimed already. Raises DnanetError saying why a claim now would fail."""
    from dnanet.chain.staking import verify_simulated
    from dnanet.node.status import get_json
    from dnanet.protocol.rollup import verify_proof

    with httpx.Client(timeout=10) as http:
        node = get_json(http, f"{validator.rstrip('/')}/v1/nodes/{account}", "the Validator")
    if node.get("root") is None:
        raise DnanetError(f"the Validator at {validator} has no settled epoch yet: nothing to "
                          "claim")
    cumulative = int(node["cumulative"])
    proof = [bytes.fromhex(p[2:]) for p in node["proof"]]
    root = bytes.fromhex(node["root"][2:])
    # Verify the proof against the root it came with, then that root against the chain's.
    if not verify_proof(root, account, cumulative, proof):
        raise DnanetError("the Validator's proof does not verify against its root; not claiming")
    claimed = client.claimed(account)
    if claimed >= cumulative:
        return None
    chain_root = client.merkle_root()
    if chain_root != root:
        raise DnanetError(
            f"the Validator's proof is for epoch {node.get('epoch')} (root 0x{root.hex()[:16]}..)"
            f" but the chain's root is 0x{chain_root.hex()[:16]}.. (latest settled epoch "
            f"{client.last_settled_epoch()}): the Validator has not published that epoch's "
            "proofs yet; try again in a moment")
    gas = verify_simulated(client, sender, "the claim",
                           lambda: client.simulate_claim(account, cumulative, proof,
                                                         sender=sender))
    return cumulative, proof, gas


def _node_claim(args: argparse.Namespace) -> int:
    from dnanet.chain.client import TransactionReverted

    account = address_of(args)
    sender = keystore_address(Path(args.keystore))
    reader = chain_client(args)
    client: ChainClient | None = None
    for attempt in range(CLAIM_ATTEMPTS):
        plan = prepare_claim(reader, args.validator, account, sender)
        before = reader.claimed(account)
        if plan is None:
            _print({"address": account, "cumulative": str(before), "paid": "0", "tx": None})
            return 0
        cumulative, proof, _gas = plan
        client = client or chain_client(args, sending=True)
        try:
            receipt = client.claim(account, cumulative, proof)
        except TransactionReverted as exc:
            # An epoch settled between the simulation and the claim's block: the root moved.
            if exc.reason != "bad proof" or attempt + 1 == CLAIM_ATTEMPTS:
                raise
            _say("an epoch settled while claiming (the chain's root moved); claiming again")
            continue
        _print({"address": account, "cumulative": str(cumulative),
                "paid": str(cumulative - before), "tx": receipt.tx_hash if receipt else None})
        return 0
    raise AssertionError("unreachable")  # pragma: no cover


def add_node_life_commands(node_sub: Any) -> None:
    """``node status``, ``node claim``, ``node stake add``, ``node unbond``, ``node withdraw``
    and ``node unjail``."""
    status = node_sub.add_parser(
        "status", help="recent challenges, scores and failure reasons per epoch, rewards and "
        "what is claimable")
    status.add_argument("--validator", required=True, help="the Validator's URL")
    who = status.add_mutually_exclusive_group(required=True)
    who.add_argument("--keystore", help="the node's keystore file (its address is read, "
                     "no password needed)")
    who.add_argument("--address", help="the node's address")
    status.add_argument("--node", help="the node's own URL, for the challenges it answered")
    status.add_argument("--rpc", help="JSON-RPC URL of the chain, to read what is already "
                        "claimed (with --deployment)")
    status.add_argument("--deployment", help="deployment file (with --rpc)")
    status.add_argument("--epochs", type=positive_int,
                        help="how many of the latest epochs to break down (default 3)")
    status.add_argument("--recent", type=positive_int,
                        help="how many of the node's latest challenges to show (default 20)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_node_status)

    claim = node_sub.add_parser(
        "claim", help="claim rewards with the Validator's proof (checked and simulated on "
        "chain before anything is sent)")
    add_chain_args(claim, keystore="keystore of the account that sends the claim and pays "
                   "its gas")
    claim.add_argument("--validator", required=True,
                       help="the Validator's URL, which serves the node's cumulative total and "
                       "Merkle proof")
    claim.add_argument("--address", help="claim for this account (default: the keystore's); "
                       "the reward goes to it, whoever sends")
    claim.set_defaults(handler=_node_claim)

    stake = node_sub.add_parser("stake", help="add to a registered node's stake")
    stake_sub = stake.add_subparsers(dest="stake_command", required=True, metavar="ACTION")
    add = stake_sub.add_parser(
        "add", help="add DNA to the node's stake (approving only what the allowance lacks); "
        "checks registration, DNA and ETH first")
    add.add_argument("amount", type=dna_amount, metavar="DNA",
                     help="DNA to add, e.g. 50 or 12.5")
    add_chain_args(add, keystore="the node's keystore")
    add.set_defaults(handler=_stake_add)

    unbond = node_sub.add_parser(
        "unbond", help="stop being challenged and paid; the stake unlocks after the preset's "
        "unbonding epochs (then: node withdraw)")
    add_chain_args(unbond, keystore="the node's keystore")
    unbond.set_defaults(handler=_unbond)

    withdraw = node_sub.add_parser(
        "withdraw", help="return an unbonded node's stake once its unbonding delay has passed")
    add_chain_args(withdraw, keystore="the node's keystore")
    withdraw.set_defaults(handler=_withdraw)

    unjail = node_sub.add_parser(
        "unjail", help="lift a node's jail: owner-only, sent by the NodeRegistry's owner (the "
        "network operator, after review); slashed stake is not returned")
    unjail.add_argument("--address", required=True, help="address of the jailed node")
    add_chain_args(unjail, keystore="keystore of the NodeRegistry's owner (the deployer "
                   "unless ownership was transferred)")
    unjail.set_defaults(handler=_unjail)


__all__ = ["add_chain_args", "add_node_life_commands", "address_of", "prepare_claim"]
