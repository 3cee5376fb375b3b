"""``dnanet node ...`` and ``dnanet mixer ...``: run a role against a real chain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from dnanet.cliargs import dna_amount, fraction, non_negative_int, port, positive_int, seconds
from dnanet.errors import ConfigError, DnanetError
from dnanet.service.logs import configure_logging
from dnanet.service.loop import run as run_loop

if TYPE_CHECKING:
    from dnanet.node.status import ChainReader

log = logging.getLogger("dnanet.cli")

NODE_PORT = 8701
"""``dnanet node run``'s default port (``validator run`` defaults to 8700, ``mixer run`` to
8800), so that a node and the Validator can share a host with their defaults."""


def _add_chain_args(p: argparse.ArgumentParser, *, keystore: bool = True) -> None:
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    p.add_argument("--deployment", required=True, help="deployment file (dnanet contracts deploy)")
    if keystore:
        p.add_argument("--keystore", required=True,
                       help="keystore v3 file (password: $DNANET_KEYSTORE_PASSWORD or a prompt)")


def _serve_until_signal(daemon: Any) -> None:
    """Start ``daemon``, serve until SIGINT or SIGTERM, stop it. A signal during start-up
    (a model loading, the registration on chain) ends the start-up at its current step: the
    daemon does not go on to register or serve, and stops."""
    configure_logging("INFO")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(daemon.start())
        signalled = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.warning("stopped during start-up: a signal arrived before it was serving")
        else:
            signalled.cancel()
            starting.result()  # a start-up error ends the command with its message
            print(json.dumps({"address": daemon.address, "url": daemon.url}), flush=True)
        try:
            await stop.wait()
        finally:
            await daemon.stop()

    run_loop(main())


def _node_run(args: argparse.Namespace) -> int:
    from dnanet.ai.backends import make_backends
    from dnanet.keyfiles import load_identity
    from dnanet.node.daemon import NodeDaemon, NodeProfile, resolve_device
    from dnanet.service.gateway import open_gateway

    resolve_device(args.device)  # "cuda" without a CUDA device fails before any password prompt
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    backends = make_backends(args.backend or ["minilm"], upstreams=args.upstream or [],
                             upstream_key=os.environ.get("DNANET_UPSTREAM_KEY"))
    daemon = NodeDaemon(
        identity, gateway, Path(args.data_dir), host=args.host,
        port=args.port, public_url=args.public_url,
        stake=args.stake,
        profile=NodeProfile.named(args.profile, offline_at_block=args.offline_at_block),
        device=args.device, backends=backends)
    _serve_until_signal(daemon)
    return 0


def _mixer_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.mixer.daemon import MixerDaemon
    from dnanet.service.gateway import open_gateway

    gateway_config = None
    if not args.no_gateway:  # a missing API key fails before the password prompt
        from dnanet.gateway.app import GatewayConfig, parse_api_keys

        keys = parse_api_keys([*(args.gateway_key or []),
                               *os.environ.get("DNANET_GATEWAY_KEYS", "").split(",")])
        if not keys:
            raise DnanetError("the gateway needs an API key: --gateway-key KEY or "
                              "$DNANET_GATEWAY_KEYS (or --no-gateway)")
        gateway_config = GatewayConfig(api_keys=keys, canary_rate=args.canary_rate,
                                       canary_interval_s=args.canary_interval)
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    daemon = MixerDaemon(identity, gateway, Path(args.data_dir),
                         validator_url=args.validator, host=args.host, port=args.port,
                         gateway_config=gateway_config)
    _serve_until_signal(daemon)
    return 0


def _address_of(args: argparse.Namespace) -> str:
    """``--address``, else the address in ``--keystore`` (read without its password)."""
    if args.address:
        address = str(args.address).lower()
        option = "--address"
    else:
        from dnanet.keyfiles import read_keystore_document

        doc = read_keystore_document(Path(args.keystore))
        address = "0x" + str(doc.get("address", "")).lower().removeprefix("0x")
        option = "--keystore"
    if not re.fullmatch(r"0x[0-9a-f]{40}", address):
        raise ConfigError(f"{option}: not an account address (0x and 40 hex digits): "
                          f"{address[:60]!r}")
    return address


def _read_only_chain(args: argparse.Namespace) -> ChainReader | None:
    """The chain as ``node claim`` reads it (no key needed to read), or None without
    ``--rpc``/``--deployment``."""
    if not args.rpc and not args.deployment:
        return None
    if not (args.rpc and args.deployment):
        raise ConfigError("--rpc and --deployment go together (the chain to read claims from)")
    from dnanet.service.gateway import open_gateway

    return open_gateway(args.rpc, Path(args.deployment), None)


def _node_status(args: argparse.Namespace) -> int:
    from dnanet.node.status import (
        DEFAULT_EPOCHS,
        DEFAULT_RECENT,
        collect_status,
        render_status,
    )

    address = _address_of(args)
    chain = _read_only_chain(args)
    with httpx.Client(timeout=10) as client:
        status = collect_status(client, args.validator, address, node_url=args.node,
                                chain=chain, epochs=args.epochs or DEFAULT_EPOCHS,
                                recent=args.recent or DEFAULT_RECENT)
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return 0


def _node_claim(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.node.status import get_json
    from dnanet.protocol.rollup import verify_proof
    from dnanet.service.gateway import open_gateway

    gateway = open_gateway(args.rpc, Path(args.deployment), load_identity(Path(args.keystore)))
    address = _address_of(args)
    with httpx.Client(timeout=10) as client:
        node = get_json(client, f"{args.validator.rstrip('/')}/v1/nodes/{address}",
                        "the Validator")
    cumulative = int(node["cumulative"])
    proof = [bytes.fromhex(p[2:]) for p in node["proof"]]
    if not verify_proof(bytes.fromhex(node["root"][2:]), address, cumulative, proof):
        raise DnanetError("the validator's proof does not verify against its root; not claiming")
    before = gateway.claimed(address)
    tx = gateway.claim(address, cumulative, proof)
    print(json.dumps({"address": address, "cumulative": cumulative, "paid": cumulative - before,
                      "tx": tx or None}))
    return 0


def add_role_commands(sub: Any) -> None:
    node = sub.add_parser("node", help="run an AI node, see its status, claim its rewards")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    run = node_sub.add_parser("run", help="serve challenges (registers on chain if needed)")
    _add_chain_args(run)
    run.add_argument("--data-dir", required=True)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=port, default=NODE_PORT,
                     help=f"port to serve on (default {NODE_PORT}; the Validator's is 8700)")
    run.add_argument("--public-url", help="URL mixers reach this node at (default: host:port)")
    run.add_argument("--stake", type=dna_amount, metavar="DNA",
                     help="DNA to stake when registering, e.g. 100 or 250.5 (default: the "
                     "minimum stake)")
    run.add_argument("--profile", default="normal", help="normal (real nodes), throttled, offline")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="where compute runs: cuda (fails without torch and a CUDA device), "
                     "cpu, or auto (cuda when torch sees one); the hardware class the node "
                     "declares follows it")
    run.add_argument("--offline-at-block", type=non_negative_int,
                     help="with --profile offline: stop answering from this block (devnets)")
    run.add_argument("--backend", action="append", choices=["minilm", "trivial", "none"],
                     help="built-in model backend (repeatable; default: minilm, the packaged "
                     "all-MiniLM-L6-v2 on the CPU)")
    run.add_argument("--upstream", action="append", metavar="URL",
                     help="an OpenAI-compatible server to serve (vLLM, llama.cpp, Ollama; "
                     "repeatable; key: $DNANET_UPSTREAM_KEY)")
    run.set_defaults(handler=_node_run)
    status = node_sub.add_parser(
        "status", help="recent challenges, scores and failure reasons per epoch, rewards and "
        "what is claimable")
    status.add_argument("--validator", required=True, help="validator URL")
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
    claim = node_sub.add_parser("claim", help="claim rewards with the validator's proof")
    _add_chain_args(claim)
    claim.add_argument("--validator", required=True)
    claim.add_argument("--address", help="claim for this account (default: the keystore's)")
    claim.set_defaults(handler=_node_claim)

    mixer = sub.add_parser("mixer", help="run a QueryMixer")
    mixer_sub = mixer.add_subparsers(dest="mixer_command", required=True, metavar="ACTION")
    mrun = mixer_sub.add_parser("run", help="challenge, score, co-sign, certify")
    _add_chain_args(mrun)
    mrun.add_argument("--data-dir", required=True)
    mrun.add_argument("--validator", required=True, help="validator URL")
    mrun.add_argument("--host", default="127.0.0.1")
    mrun.add_argument("--port", type=port, default=8800)
    mrun.add_argument("--gateway-key", action="append", metavar="KEY",
                      help="an API key the OpenAI-compatible gateway accepts (repeatable; or "
                      "$DNANET_GATEWAY_KEYS, comma-separated)")
    mrun.add_argument("--no-gateway", action="store_true", help="serve no AI gateway")
    mrun.add_argument("--canary-rate", type=fraction, default=0.05,
                      help="fraction of gateway requests followed by a canary")
    mrun.add_argument("--canary-interval", type=seconds, default=60.0,
                      help="seconds between canaries to every node (0: traffic only)")
    mrun.set_defaults(handler=_mixer_run)


__all__ = ["add_role_commands"]
