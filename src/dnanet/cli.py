"""The ``dnanet`` command. Only this module reads ``sys.argv``.

Before a command's handler runs: a role's ``--config FILE`` becomes the defaults of its
options (``dnanet.config``; flags override it), and a daemon's port is checked free (``node
run``, ``mixer run``, ``validator run``), so a busy port is one line naming it, said before
any keystore is decrypted or model loaded. Output to a closed pipe (``dnanet node status |
head``) ends the command quietly with status 141, as SIGPIPE ends other tools.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dnanet import __version__
from dnanet.errors import DnanetError

Handler = Callable[[argparse.Namespace], int]
ROLES = ("node", "mixer", "validator")
DAEMONS = {("node", "run"), ("mixer", "run"), ("validator", "run")}
"""Commands that listen on ``--host``:``--port``: checked free before anything else."""
EMPTY_PASSWORD_HELP = ("accept an empty keystore password (the key is then stored "
                       "unprotected); without it an empty password is refused")
BROKEN_PIPE_STATUS = 141


def _keys_new(args: argparse.Namespace) -> int:
    from dnanet.crypto.keys import Identity
    from dnanet.keyfiles import derive_vrf_public_key, read_password, save_identity

    identity = Identity.from_entropy(os.urandom(32))
    save_identity(identity, Path(args.out),
                  read_password(confirm=True, allow_empty=args.empty_password))
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
    save_identity(identity, Path(args.out),
                  read_password(confirm=True, allow_empty=args.empty_password))
    _print_identity(identity.address, derive_vrf_public_key(identity), args.out)
    return 0


def _keys_show(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import derive_vrf_public_key, load_identity, read_keystore_address

    path = Path(args.keystore)
    if args.field == "vrf_public_key" and not args.vrf:
        raise DnanetError("--field vrf_public_key needs --vrf (the key is derived from the "
                          "decrypted account key)")
    if args.vrf:
        identity = load_identity(path)
        shown = {"address": identity.address,
                 "vrf_public_key": "0x" + derive_vrf_public_key(identity).hex(),
                 "keystore": args.keystore}
    else:
        shown = {"address": read_keystore_address(path)}
    print(shown[args.field] if args.field else json.dumps(shown))
    return 0


def _print_identity(address: str, vrf_public_key: bytes, path: str) -> None:
    print(json.dumps({"address": address, "vrf_public_key": "0x" + vrf_public_key.hex(),
                      "keystore": path}))


COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("devnet",), "dnanet.devnet", "add_devnet_command"),
    (("node", "mixer"), "dnanet.roles_cli", "add_role_commands"),
    (("validator",), "dnanet.validator.daemon", "add_validator_commands"),
    (("audit",), "dnanet.audit", "add_audit_command"),
    (("contracts",), "dnanet.chain.cli", "add_contracts_commands"),
    (("demo",), "dnanet.demo", "add_demo_command"),
)
"""The commands beside ``keys``, in help order: (names, module, function adding them)."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``dnanet`` parser. Given the ``argv`` it will parse, only the command named first
    is built (its module imported), so that ``dnanet keys show`` does not import the daemons;
    otherwise (``dnanet --help``, a name that is no command) every command is."""
    wanted = argv[0] if argv else None
    if not any(wanted in names for names, _, _ in COMMANDS) and wanted != "keys":
        wanted = None
    parser = argparse.ArgumentParser(
        prog="dnanet",
        description="dnanet: a decentralized AI compute network (nodes, QueryMixers, Validator).",
    )
    parser.add_argument("--version", action="version", version=f"dnanet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="create, import and show keystore files")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_sub.add_parser("new", help="create a new identity in a keystore v3 file")
    new.add_argument("--out", required=True, help="keystore file to create (mode 0600)")
    new.add_argument("--empty-password", action="store_true", help=EMPTY_PASSWORD_HELP)
    new.set_defaults(handler=_keys_new)
    imp = keys_sub.add_parser(
        "import", help="import a private key (read from a prompt or stdin) into a keystore file"
    )
    imp.add_argument("--out", required=True, help="keystore file to create (mode 0600)")
    imp.add_argument("--empty-password", action="store_true", help=EMPTY_PASSWORD_HELP)
    imp.set_defaults(handler=_keys_import)
    show = keys_sub.add_parser("show", help="show a keystore's address (and VRF key with --vrf)")
    show.add_argument("keystore", help="keystore file")
    show.add_argument("--vrf", action="store_true", help="decrypt to show the VRF public key")
    show.add_argument("--field", choices=["address", "vrf_public_key"],
                      help="print only this value, bare (for scripts: "
                      "NODE=$(dnanet keys show node.json --field address))")
    show.set_defaults(handler=_keys_show)

    for names, module, function in COMMANDS:
        if wanted is None or wanted in names:
            getattr(importlib.import_module(module), function)(sub)
    _add_config_options(sub)
    return parser


def _add_config_options(sub: Any) -> None:
    """``--config FILE`` on every command of each role, and ``<role> config init``."""
    from dnanet.config import subparsers_of

    for role_name in ROLES:
        role = sub.choices.get(role_name)
        if role is None:
            continue  # not built: another command was named
        pending = list(subparsers_of(role).items())
        while pending:
            name, command = pending.pop()
            if name == "serve":
                continue  # started by validator run with its options, not by a person
            children = subparsers_of(command)
            if children:
                pending.extend(children.items())
            else:
                command.add_argument(
                    "--config", metavar="FILE", help=f"TOML file of {role_name} options "
                    f"(`dnanet {role_name} config init` writes one); flags override it")
        actions = next(a for a in role._actions if isinstance(a, argparse._SubParsersAction))
        config = actions.add_parser("config", help=f"write a commented {role_name} "
                                    "configuration file")
        config_sub = config.add_subparsers(dest="config_command", required=True,
                                           metavar="ACTION")
        init = config_sub.add_parser("init", help=f"write a commented TOML file of every "
                                     f"{role_name} option (to stdout, or --out)")
        init.add_argument("--out", help="file to write (default: print it)")
        init.add_argument("--force", action="store_true", help="overwrite an existing --out")
        init.set_defaults(handler=_config_init, role=role_name, role_parser=role)


def _config_init(args: argparse.Namespace) -> int:
    from dnanet.config import config_template

    text = config_template(args.role, args.role_parser)
    if args.out is None:
        print(text, end="")
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise DnanetError(f"{out} already exists; pass --force to overwrite it")
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed, with the role's ``--config`` file as the defaults of its options."""
    from dnanet.config import apply_config, config_option, find_command

    path, chain = find_command(parser, argv)
    config = config_option(argv)
    applied = None
    if config is not None and path and path[0] in ROLES and len(chain) > 2:
        applied = apply_config(Path(config), chain[1], chain[-1], " ".join(path))
    args = parser.parse_args(argv)
    if applied is not None:
        applied.finish(args)
    if tuple(path[:2]) in DAEMONS:
        from dnanet.cliargs import verify_port_free

        verify_port_free(args.host, args.port)
    return args


def _quiet_closed_pipe() -> int:
    """After a BrokenPipeError on stdout: point stdout at /dev/null so that the interpreter's
    last flush cannot raise again, and end as SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(build_parser(argv), argv)
        handler: Handler = args.handler
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return status
    except DnanetError as exc:
        print(f"dnanet: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_closed_pipe()
    except KeyboardInterrupt:
        print("dnanet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
