"""``python -m dnanet.adversary node run ... --cheat ROLE`` and ``... mixer run ...
--byzantine BEHAVIOURS``: a dishonest node or mixer as its own process (devnets only).

The options are those of ``dnanet node run`` and ``dnanet mixer run`` (parsed by the same
parser), plus the part to play:

- ``--cheat ROLE``: a role of ``dnanet.adversary.roles.NODE_ROLES``; a ``relay`` also takes
  ``--relay-keystore``, ``--relay-data-dir``, ``--relay-port`` (and ``--relay-public-url``):
  the second identity, served by the same process from the same machine;
- ``--byzantine a,b,...``: behaviours of ``dnanet.mixer.byzantine.Behaviour``, and
  ``--friend ADDRESS`` (repeatable) for the nodes it favours.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dnanet.errors import DnanetError


def _own_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m dnanet.adversary", add_help=False)
    parser.add_argument("--cheat")
    parser.add_argument("--relay-keystore")
    parser.add_argument("--relay-data-dir")
    parser.add_argument("--relay-port", type=int)
    parser.add_argument("--relay-public-url")
    parser.add_argument("--byzantine")
    parser.add_argument("--friend", action="append", default=[])
    return parser.parse_known_args(list(argv))


class NodePair:
    """Two node daemons of one machine, started and stopped together (a relay)."""

    def __init__(self, host: Any, front: Any) -> None:
        self.host = host
        self.front = front
        self.address = host.address

    @property
    def url(self) -> str:
        return str(self.host.url)

    async def start(self) -> None:
        await self.host.start()
        await self.front.start()

    async def stop(self) -> None:
        await asyncio.gather(self.front.stop(), self.host.stop(), return_exceptions=True)


def run_node(args: argparse.Namespace, own: argparse.Namespace) -> int:
    from dnanet.adversary.nodes import build_node
    from dnanet.ai.backends import make_backends
    from dnanet.keyfiles import load_identity
    from dnanet.roles_cli import _serve_until_signal, check_registration, prepare_node_process
    from dnanet.service.gateway import open_gateway

    if own.cheat is None:
        raise DnanetError("--cheat ROLE is required (python -m dnanet.adversary node run)")
    prepare_node_process(args)
    identity = load_identity(Path(args.keystore))
    backends = make_backends(args.backend or ["minilm"], upstreams=args.upstream or [],
                             upstream_key=os.environ.get("DNANET_UPSTREAM_KEY"))
    daemon: Any = build_node(
        own.cheat, identity, open_gateway(args.rpc, Path(args.deployment), identity),
        Path(args.data_dir), host=args.host, port=args.port, public_url=args.public_url,
        stake=args.stake, device=args.device, backends=backends)
    if own.relay_keystore:
        check_registration(argparse.Namespace(**{**vars(args),
                                                 "keystore": own.relay_keystore}))
        second = load_identity(Path(own.relay_keystore))
        front = build_node("relay", second,
                           open_gateway(args.rpc, Path(args.deployment), second),
                           Path(own.relay_data_dir), relay_host=daemon, host=args.host,
                           port=own.relay_port, public_url=own.relay_public_url,
                           stake=args.stake, device=args.device)
        daemon = NodePair(daemon, front)
    _serve_until_signal(daemon)
    return 0


def _timing_lock(args: argparse.Namespace) -> Path | None:
    return Path(args.timing_lock) if args.timing_lock else None


def run_mixer(args: argparse.Namespace, own: argparse.Namespace) -> int:
    from dnanet.adversary.mixers import ByzantineMixer, parse_behaviours
    from dnanet.gateway.app import GatewayConfig, parse_api_keys
    from dnanet.keyfiles import load_identity
    from dnanet.mixer.node_client import mixer_node_credentials
    from dnanet.roles_cli import GATEWAY_KEYS_ENV, _serve_until_signal, read_gateway_keys
    from dnanet.service.gateway import open_gateway

    if not own.byzantine:
        raise DnanetError("--byzantine BEHAVIOURS is required (python -m dnanet.adversary "
                          "mixer run)")
    try:
        behaviours = parse_behaviours(own.byzantine.split(","))
    except ValueError as exc:
        raise DnanetError(f"--byzantine: {exc}") from None
    gateway_config = None
    if not args.no_gateway:
        keys = parse_api_keys([*read_gateway_keys(args.gateway_key_file),
                               *os.environ.get(GATEWAY_KEYS_ENV, "").split(",")])
        if not keys:
            raise DnanetError(f"the gateway needs an API key: ${GATEWAY_KEYS_ENV}")
        gateway_config = GatewayConfig(api_keys=keys, canary_rate=args.canary_rate,
                                       canary_interval_s=args.canary_interval)
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    if gateway_config is not None:
        gateway_config = dataclasses.replace(
            gateway_config, node_credential=mixer_node_credentials(identity, gateway))
    daemon = ByzantineMixer(identity, gateway, Path(args.data_dir),
                            validator_url=args.validator, host=args.host, port=args.port,
                            gateway_config=gateway_config, behaviours=behaviours,
                            friends=own.friend, timing_lock=_timing_lock(args))
    _serve_until_signal(daemon)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from dnanet.cli import build_parser

    own, rest = _own_options(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(rest).parse_args(rest)
        command = (args.command, getattr(args, f"{args.command}_command", None))
        if command == ("node", "run"):
            return run_node(args, own)
        if command == ("mixer", "run"):
            return run_mixer(args, own)
        raise DnanetError("python -m dnanet.adversary runs `node run` or `mixer run` only")
    except DnanetError as exc:
        print(f"dnanet.adversary: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
