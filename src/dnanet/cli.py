"""The ``dnanet`` command. Only this module reads ``sys.argv``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dnanet import __version__
from dnanet.errors import DnanetError

Handler = Callable[[argparse.Namespace], int]


def _keys_new(args: argparse.Namespace) -> int:
    from dnanet.crypto.keys import Identity
    from dnanet.keyfiles import derive_vrf_public_key, read_password, save_identity

    identity = Identity.from_entropy(os.urandom(32))
    save_identity(identity, Path(args.out), read_password(confirm=True))
    _print_identity(identity.address, derive_vrf_public_key(identity), args.out)
    return 0


def _keys_import(args: argparse.Namespace) -> int:
    import getpass

    from dnanet.crypto.keys import Identity
    from dnanet.keyfiles import derive_vrf_public_key, read_password, save_identity

    if sys.stdin.isatty():
        secret = getpass.getpass("Private key (hex): ")
    else:
        secret = sys.stdin.readline()
    identity = Identity.from_hex(secret)
    save_identity(identity, Path(args.out), read_password(confirm=True))
    _print_identity(identity.address, derive_vrf_public_key(identity), args.out)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import derive_vrf_public_key, load_identity, read_keystore_document

    path = Path(args.keystore)
    if args.vrf:
        identity = load_identity(path)
        _print_identity(identity.address, derive_vrf_public_key(identity), args.keystore)
    else:
        doc = read_keystore_document(path)
        address = doc.get("address")
        if not isinstance(address, str):
            raise DnanetError(f"{path} has no address field; use --vrf to decrypt it")
        print(json.dumps({"address": "0x" + address.lower().removeprefix("0x")}))
    return 0


def _print_identity(address: str, vrf_public_key: bytes, path: str) -> None:
    print(json.dumps({"address": address, "vrf_public_key": "0x" + vrf_public_key.hex(),
                      "keystore": path}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnanet",
        description="dnanet: a decentralized AI compute network (nodes, QueryMixers, Validator).",
    )
    parser.add_argument("--version", action="version", version=f"dnanet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="create, import and show keystore files")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="create a new identity in a keystore v3 file")
    new.add_argument("--out", required=True, help="keystore file to create")
    new.set_defaults(handler=_keys_new)
    imp = keys_sub.add_parser(
        "import", help="import a private key (read from a prompt or stdin) into a keystore file"
    )
    imp.add_argument("--out", required=True, help="keystore file to create")
    imp.set_defaults(handler=_keys_import)
    show = keys_sub.add_parser("show", help="show a keystore's address (and VRF key with --vrf)")
    show.add_argument("keystore", help="keystore file")
    show.add_argument("--vrf", action="store_true", help="decrypt to show the VRF public key")
    show.set_defaults(handler=_keys_show)

    from dnanet.demo import add_demo_command
    from dnanet.devnet import add_devnet_command
    from dnanet.roles_cli import add_role_commands

    add_devnet_command(sub)
    add_role_commands(sub)
    for module, name in (("dnanet.validator.daemon", "add_validator_commands"),
                         ("dnanet.audit", "add_audit_command"),
                         ("dnanet.chain.cli", "add_contracts_commands")):
        getattr(importlib.import_module(module), name)(sub)
    add_demo_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DnanetError as exc:
        print(f"dnanet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dnanet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
