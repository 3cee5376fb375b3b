"""Adversaries: the ``adversarial`` scenario for a few epochs, every figure from this one run.

    nice .venv/bin/python bench/adversary.py --json                  # 4 epochs, local, embedded
    nice .venv/bin/python bench/adversary.py --chain anvil --json    # every role its own process
    .venv/bin/python bench/adversary.py --preset test --epochs 4     # a quick check

The devnet (``dnanet.adversary.devnet``) plays ``dnanet.scenarios.ADVERSARIAL``: beside three
honest nodes, a lazy node, a replayer, a hardware liar, a relay (two identities, one machine),
a model swapper, a selective node and an echo-fast node with its honest twin; one mixer of
four is Byzantine in all five ways at once (it inflates node 1's figures, fabricates reports
for the other nodes it is assigned, equivocates after each certified batch, refuses to
co-sign, never answers a settlement request), so the three honest mixers are exactly the
quorum; a griefer attacks node 0 and the mixers' routes from genesis on. After the last epoch
is settled, claimed and audited, the figures are read from the Validator (each node's
breakdown, the certificates, the punishments) and the chain (``dnanet.adversary.proof``).
The devnet's tables go to stderr; with ``--json`` the last line on stdout is one object:

- ``cheater_reward_share``: what the cheats the network can detect (lazy, replayer,
  swapper) earned, over everything paid. Target 0.
- ``cheaters_punished_on_chain``: those jailed on chain at the end, of
  ``detectable_cheats``; ``punished_within_two_epochs``: those whose punishment the
  settlement of epoch 0 or 1 decided (target: all).
- ``forged_reports_certified``: the Byzantine mixer's inflated, fabricated OK and
  equivocated reports that reached a certificate (target 0);
  ``forged_reports_certified_with_reference`` leaves out inflations of a node's first rounds,
  before co-signers had three reports of it by other mixers to compare with.
- ``fabricated_failures_certified``: its made-up failures, which carry no node signature and
  pass (undetectable by design), with ``fabricated_failure_strike_probability``: the chance
  that one faulty mixer failing every challenge it is assigned strikes an honest node in an
  epoch, and ``honest_node_strikes`` as they happened.
- ``griefed_node_failed_challenges``: failed challenges of node 0 reported by honest
  mixers (target 0).
- ``settlement_stalled_epochs``: epochs settled more than twice the usual lag (and a round)
  after they could (target 0).
- ``stranger_requests_served``: the griefer's attempts the target served (of
  ``stranger_requests_sent``; target 0).
- ``honest_reports_lost``: reports the honest mixers made that no certificate of theirs
  carries (``honest_reports_made``): with one mixer refusing every batch, one honest
  co-signer's refusal of a report is enough to lose it (and a batch refused twice is lost
  whole), so this counts what the Byzantine mixer's refusals cost the honest nodes.
- ``undetectable``: the cheats the design cannot detect, each with why; ``detail.cheats``:
  each cheat's reward share, punishment and, epoch by epoch, why it earned what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dnanet.adversary.devnet import AdversarialDevnet, AdversarialProcessDevnet
from dnanet.adversary.proof import collect_evidence, compute_figures
from dnanet.adversary.roles import DETECTION
from dnanet.devnet import SETUP_BLOCKS
from dnanet.params import get_preset
from dnanet.protocol.messages import QuorumCertificate
from dnanet.scenarios import ADVERSARIAL
from dnanet.service.logs import close_role_log, configure_logging, open_role_log
from dnanet.service.loop import run as run_loop

ANVIL_KEPT_BLOCKS = 4_000
"""About the blocks whose state anvil keeps by default: a longer run keeps more."""
TARGETS: dict[str, tuple[str, Any]] = {
    "cheater_reward_share": ("==", 0), "forged_reports_certified": ("==", 0),
    "griefed_node_failed_challenges": ("==", 0), "settlement_stalled_epochs": ("==", 0),
    "stranger_requests_served": ("==", 0)}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class AnvilAdversarialDevnet(AdversarialProcessDevnet):
    """Over anvil, keeping the state of every block of the run (audits from genesis read the
    registry at old blocks) in a home of its own, removed after the run."""

    def __init__(self, *, history_blocks: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.anvil_home = self.data_dir / "anvil-home"
        if history_blocks > ANVIL_KEPT_BLOCKS:
            self.anvil_args = ("--max-persisted-states", str(history_blocks))

    def _connect_chain(self) -> None:
        self.anvil_home.mkdir(parents=True, exist_ok=True)
        home = os.environ.get("HOME")
        os.environ["HOME"] = str(self.anvil_home)  # anvil keeps states under $HOME/.foundry
        try:
            super()._connect_chain()
        finally:
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home

    async def _wait_healthy(self, name: str, url: str, timeout_s: float = 60) -> None:
        # A dozen processes importing at once on a shared two-core host take minutes.
        await super()._wait_healthy(name, url, max(timeout_s, 300))


async def run_scenario(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    preset = get_preset(args.preset)
    common: dict[str, Any] = dict(scenario=ADVERSARIAL, preset=preset, data_dir=data_dir,
                                  out=say, backend=args.backend,
                                  setup_blocks=args.setup_blocks)
    devnet: AdversarialDevnet | AdversarialProcessDevnet
    if args.chain == "embedded":
        devnet = AdversarialDevnet(**common)
    else:
        history = args.setup_blocks + (args.epochs + 2) * preset.epoch_blocks + 1_000
        devnet = AnvilAdversarialDevnet(chain=args.chain, keystore=None,
                                        history_blocks=history, **common)
    own_log = open_role_log(None, data_dir / "devnet.log")
    started = time.monotonic()
    try:
        await devnet.setup()
        await devnet.run(args.epochs)
        evidence = await collect_evidence(devnet)
    finally:
        await devnet.stop()
        close_role_log(own_log)
        if isinstance(devnet, AnvilAdversarialDevnet):
            shutil.rmtree(devnet.anvil_home, ignore_errors=True)
    figures = compute_figures(evidence)
    made, certified = count_honest_reports(data_dir, set(devnet.byzantine))
    figures = {
        "scenario": ADVERSARIAL.name, "epochs": args.epochs, "preset": args.preset,
        "chain": args.chain, "backend": args.backend, "cpus": os.cpu_count(),
        "wall_s": round(time.monotonic() - started, 1),
        **figures,
        "honest_reports_made": made, "honest_reports_lost": made - certified,
        "undetectable": {d.cheat: d.how for d in DETECTION.values() if not d.detectable},
        "audits_ok": sum(1 for s in devnet.summaries if s.audit_ok),
        "events_failed": [f"epoch {f.epoch}: {f.event.describe()}: {f.detail}"
                          for f in devnet.fired if not f.ok],
        "data_dir": str(data_dir),
    }
    met = {name: _meets(figures.get(name), op, goal) for name, (op, goal) in TARGETS.items()}
    met["cheaters_punished_on_chain"] = (figures["cheaters_punished_on_chain"]
                                         == figures["detectable_cheats"])
    met["punished_within_two_epochs"] = (figures["punished_within_two_epochs"]
                                         == figures["detectable_cheats"])
    figures["targets_met"] = met
    return figures


def count_honest_reports(data_dir: Path, byzantine: set[str]) -> tuple[int, int]:
    """(made, certified) reports of the honest mixers, read from their stores."""
    made = certified = 0
    for path in sorted(data_dir.glob("mixer-*/mixer.db")):
        if any(path.parent.name == f"mixer-{a[2:10]}" for a in byzantine):
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            made += db.execute("SELECT count(*) FROM own_reports").fetchone()[0]
            for (raw,) in db.execute("SELECT certificate_json FROM own_batches"
                                     " WHERE certificate_json IS NOT NULL"):
                certified += len(QuorumCertificate.from_json(raw).reports)
    return made, certified


def _meets(value: Any, op: str, goal: Any) -> bool | None:
    if value is None:
        return None
    return bool(value <= goal) if op == "<=" else bool(value == goal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=ADVERSARIAL.epochs,
                        help=f"epochs to run (default {ADVERSARIAL.epochs}: the swapper's "
                        "three strikes and its jail; at least 2)")
    parser.add_argument("--preset", default="local", help="local (default) or test")
    parser.add_argument("--chain", default="embedded",
                        help="embedded (default: every role in this process) or anvil (every "
                        "role its own process)")
    parser.add_argument("--backend", default="trivial", choices=["trivial", "minilm"],
                        help="model the nodes serve and the swapper imitates (default "
                        "trivial: the protocol is measured, not the embedding model's CPU)")
    parser.add_argument("--setup-blocks", type=int, default=SETUP_BLOCKS)
    parser.add_argument("--data-dir", help="keep the network's state here (default: a new "
                        "temp dir, kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON "
                        "object on the last line")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")
    configure_logging("WARNING")
    data_dir = Path(args.data_dir) if args.data_dir else \
        Path(tempfile.mkdtemp(prefix="dnanet-adversary-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    figures = run_loop(run_scenario(args, data_dir))
    say("")
    for name, met in figures["targets_met"].items():
        say(f"{name:<34} {figures.get(name)!s:>8}  "
            f"{'met' if met else 'MISSED' if met is False else 'not measured'}")
    for cheat, why in figures["undetectable"].items():
        say(f"undetectable: {cheat}: {why}")
    if args.json:
        print(json.dumps(figures, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
