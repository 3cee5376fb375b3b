"""``dnanet node ...`` and ``dnanet mixer ...``: run a role against a real chain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from dnanet.errors import DnanetError
from dnanet.params import WEI_PER_DNA
from dnanet.service.loop import run as run_loop


def _add_chain_args(p: argparse.ArgumentParser, *, keystore: bool = True) -> None:
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain")
    p.add_argument("--deployment", required=True, help="deployment file (dnanet contracts deploy)")
    if keystore:
        p.add_argument("--keystore", required=True,
                       help="keystore v3 file (password: $DNANET_KEYSTORE_PASSWORD or a prompt)")


def _serve_until_signal(daemon: Any) -> None:
    logging.basicConfig(level=os.environ.get("DNANET_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await daemon.start()
        print(json.dumps({"address": daemon.address, "url": daemon.url}), flush=True)
        try:
            await stop.wait()
        finally:
            await daemon.stop()

    run_loop(main())


def _node_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.node.backends import make_backends
    from dnanet.node.daemon import NodeDaemon, NodeProfile, resolve_device
    from dnanet.service.gateway import open_gateway

    resolve_device(args.device)  # "cuda" without a CUDA device fails before any password prompt
    gateway = open_gateway(args.rpc, Path(args.deployment), Path(args.keystore))
    backends = make_backends(args.backend or ["minilm"], upstreams=args.upstream or [],
                             upstream_key=os.environ.get("DNANET_UPSTREAM_KEY"))
    daemon = NodeDaemon(
        load_identity(Path(args.keystore)), gateway, Path(args.data_dir), host=args.host,
        port=args.port, public_url=args.public_url,
        stake=int(args.stake * WEI_PER_DNA) if args.stake else None,
        profile=NodeProfile.named(args.profile, offline_at_block=args.offline_at_block),
        device=args.device, backends=backends)
    _serve_until_signal(daemon)
    return 0


def _mixer_run(args: argparse.Namespace) -> int:
    from dnanet.keyfiles import load_identity
    from dnanet.mixer.daemon import MixerDaemon
    from dnanet.service.gateway import open_gateway

    gateway = open_gateway(args.rpc, Path(args.deployment), Path(args.keystore))
    gateway_config = None
    if not args.no_gateway:
        from dnanet.gateway.app import GatewayConfig, parse_api_keys

        keys = parse_api_keys([*(args.gateway_key or []),
                               *os.environ.get("DNANET_GATEWAY_KEYS", "").split(",")])
        if not keys:
            raise DnanetError("the gateway needs an API key: --gateway-key KEY or "
                              "$DNANET_GATEWAY_KEYS (or --no-gateway)")
        gateway_config = GatewayConfig(api_keys=keys, canary_rate=args.canary_rate,
                                       canary_interval_s=args.canary_interval)
    daemon = MixerDaemon(load_identity(Path(args.keystore)), gateway, Path(args.data_dir),
                         validator_url=args.validator, host=args.host, port=args.port,
                         gateway_config=gateway_config)
    _serve_until_signal(daemon)
    return 0


def _address_of(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address).lower()
    from dnanet.keyfiles import read_keystore_document

    doc = read_keystore_document(Path(args.keystore))
    return "0x" + str(doc.get("address", "")).lower().removeprefix("0x")


def _node_status(args: argparse.Namespace) -> int:
    address = _address_of(args)
    with httpx.Client(timeout=10) as client:
        out: dict[str, Any] = {"address": address}
        try:
            node = client.get(f"{args.validator.rstrip('/')}/v1/nodes/{address}")
            out["rewards"] = node.json() if node.status_code == 200 else None
            if node.status_code == 200:
                for row in out["rewards"].get("epochs", [])[-3:]:
                    detail = client.get(
                        f"{args.validator.rstrip('/')}/v1/nodes/{address}/epochs/{row['epoch']}")
                    row["breakdown"] = detail.json() if detail.status_code == 200 else None
        except httpx.HTTPError as exc:
            raise DnanetError(f"cannot reach the validator at {args.validator}: {exc}") from None
        if args.node:
            with contextlib.suppress(httpx.HTTPError):
                out["node"] = client.get(f"{args.node.rstrip('/')}/v1/status").json()
    print(json.dumps(out, indent=2))
    return 0


def _node_claim(args: argparse.Namespace) -> int:
    from dnanet.protocol.rollup import verify_proof
    from dnanet.service.gateway import open_gateway

    gateway = open_gateway(args.rpc, Path(args.deployment), Path(args.keystore))
    address = _address_of(args)
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{args.validator.rstrip('/')}/v1/nodes/{address}")
    if response.status_code != 200:
        raise DnanetError(f"the validator has no rewards for {address} "
                          f"(HTTP {response.status_code})")
    node = response.json()
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
    run.add_argument("--port", type=int, default=8700)
    run.add_argument("--public-url", help="URL mixers reach this node at (default: host:port)")
    run.add_argument("--stake", type=float, help="DNA to stake when registering (default: min)")
    run.add_argument("--profile", default="normal", help="normal (real nodes), throttled, offline")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="where compute runs: cuda (fails without torch and a CUDA device), "
                     "cpu, or auto (cuda when torch sees one); the hardware class the node "
                     "declares follows it")
    run.add_argument("--offline-at-block", type=int,
                     help="with --profile offline: stop answering from this block (devnets)")
    run.add_argument("--backend", action="append", choices=["minilm", "trivial", "none"],
                     help="built-in model backend (repeatable; default: minilm, the packaged "
                     "all-MiniLM-L6-v2 on the CPU)")
    run.add_argument("--upstream", action="append", metavar="URL",
                     help="an OpenAI-compatible server to serve (vLLM, llama.cpp, Ollama; "
                     "repeatable; key: $DNANET_UPSTREAM_KEY)")
    run.set_defaults(handler=_node_run)
    status = node_sub.add_parser("status", help="challenges, scores, rewards and what is claimable")
    status.add_argument("--validator", required=True, help="validator URL")
    status.add_argument("--keystore")
    status.add_argument("--address")
    status.add_argument("--node", help="the node's own URL, for its recent challenges")
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
    mrun.add_argument("--port", type=int, default=8800)
    mrun.add_argument("--gateway-key", action="append", metavar="KEY",
                      help="an API key the OpenAI-compatible gateway accepts (repeatable; or "
                      "$DNANET_GATEWAY_KEYS, comma-separated)")
    mrun.add_argument("--no-gateway", action="store_true", help="serve no AI gateway")
    mrun.add_argument("--canary-rate", type=float, default=0.05,
                      help="fraction of gateway requests followed by a canary")
    mrun.add_argument("--canary-interval", type=float, default=60.0,
                      help="seconds between canaries to every node (0: traffic only)")
    mrun.set_defaults(handler=_mixer_run)


__all__ = ["add_role_commands"]
