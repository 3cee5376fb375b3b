"""Soak: one network through many epochs of its normal life, every figure from this one run.

    .venv/bin/python bench/soak.py --json                      # 20 epochs, local preset, anvil
    .venv/bin/python bench/soak.py --epochs 4 --preset test    # a quick check

A ``ScenarioProcessDevnet`` (``dnanet.devnet_scenario``: anvil from npm; the Validator, each
mixer and each node its own OS process, started with the operator commands) plays the
``churn`` scenario of ``dnanet.scenarios`` for ``--epochs`` epochs: two nodes join after
genesis, one unbonds, leaves and withdraws, one goes down until it is struck and punished, one
cheats once (a wrong product) and is slashed, a mixer and the Validator are SIGKILLed and
started again, a fifth mixer joins the set, and every epoch a burst of ``--requests`` requests
at ``--concurrency`` crosses mixer 0's OpenAI-compatible endpoint. After each epoch is settled,
claimed and audited, the soak reads the chain, the Validator and each mixer, and prints a row
on stderr (with the devnet's own tables). The last line on stdout (``--json``) is one object:

- ``epochs_settled``: epochs settled on chain, of ``epochs``.
- ``audits_ok``: epochs whose audit (``dnanet audit``: every certificate re-verified and the
  epoch recomputed from genesis) matched the Validator's publication and the chain.
- ``settle_lag_blocks``: per epoch, the block of its settlement transaction minus the first
  block it may settle in (the distributor's ``settle_block``); ``usual_settle_lag_blocks`` is
  their median, ``max_settle_lag_blocks`` the largest, ``max_lag_over_usual`` the ratio
  (target <= 2).
- ``reports_lost``: reports that a mixer certified (in a quorum certificate stored in its
  database, ``own_batches.certificate_json``) for an epoch that settled, whose key (epoch,
  round, mixer, node) is not among the reports the Validator published for that epoch
  (``/v1/epochs/{e}/reports``, what the rollup was computed from). Target 0.
- ``reports_double_counted``: per settled epoch, published reports beyond one per key, plus,
  per node, challenges the Validator's breakdown counts beyond the distinct keys of that
  node's published reports. Target 0.
- ``reports_never_certified`` (for information): reports mixers produced (``own_reports``)
  that no certificate of theirs carries: their epoch closed before a quorum, or the mixer died
  holding them.
- ``rewards_sum_exact``: in every settled epoch where any node scored, the rewards of all
  nodes (the Validator's breakdowns, departed and joined nodes included) sum to the epoch's
  emission and to the total the chain settled. Target true.
- ``gateway_requests``, ``gateway_non_200``: requests of the bursts that began with at least
  one node eligible (active on chain, its process up), and those not answered 200 (target 0;
  ``gateway_non_200_outcomes`` says which).
- ``settle_cpu_ms_first``/``_last``: CPU milliseconds (thread time) the mixers spent verifying
  and recomputing the first and the last settled epoch (their ``/v1/status``
  ``settlements[].verify_ms``, summed over the mixers that signed both);
  ``settle_cpu_last_over_first`` their ratio (target <= 1.5), and the same per report.
- ``rss_growth_mb``: per daemon, resident memory (VmRSS of it and its children: a node's
  compute process, the Validator's processes) after the last epoch minus after the first it
  served whole (a daemon started or restarted during the run counts from the end of the epoch
  after it started); ``rss_mb``, per daemon, each epoch's figure from there on (where a growth
  came from: the first epochs, or every epoch).
- ``events_failed``: scripted events that did not work (each with why).
- ``anvil_state_gb``: what anvil wrote to keep every block's state of the run (audits from
  genesis and the added mixer's catch-up read the registry at old blocks); it grows with the
  square of the run's length and is deleted when the run ends.

Nothing here is timed against a wall-clock target: lags are in blocks, CPU is thread time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dnanet.devnet import SETUP_BLOCKS, EpochSummary
from dnanet.devnet_scenario import ScenarioProcessDevnet, child_pids
from dnanet.params import get_preset
from dnanet.protocol.messages import QuorumCertificate
from dnanet.scenarios import get_scenario
from dnanet.service.logs import close_role_log, configure_logging, open_role_log
from dnanet.service.loop import run as run_loop

TARGETS = {"max_lag_over_usual": ("<=", 2.0), "reports_lost": ("==", 0),
           "reports_double_counted": ("==", 0), "rewards_sum_exact": ("==", True),
           "gateway_non_200": ("==", 0), "settle_cpu_last_over_first": ("<=", 1.5)}

Key = tuple[int, int, str, str]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rss_kb(pid: int) -> int:
    """VmRSS of process ``pid`` in kB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class EpochRecord:
    """What the soak read after one epoch settled."""

    epoch: int
    lag_blocks: int | None = None
    audit_ok: bool = False
    published: list[Key] = field(default_factory=list)
    challenges: dict[str, int] = field(default_factory=dict)
    rewards: int = 0
    scored: bool = False
    emission: int = 0
    chain_total: int | None = None
    rss_kb: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per daemon: (pid of its main process, kB of it and its children)."""


class SoakDevnet(ScenarioProcessDevnet):
    """The scenario devnet, reading its figures after each epoch is summarized."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The registry's past comes from its events: anvil keeps only its recent states.
        self.anvil_home = self.data_dir / "anvil-home"
        self.records: list[EpochRecord] = []
        self.verify_ms: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        """Per mixer address: epoch -> (verify_ms, reports) of the settlement it signed."""

    def _connect_chain(self) -> None:
        if self.chain_arg != "anvil":
            super()._connect_chain()
            return
        from dnanet.chain.anvil import ensure_anvil, start_anvil
        from dnanet.chain.backends import connect_rpc
        from dnanet.crypto.keys import Identity
        from dnanet.devnet import ANVIL_DEV_KEY

        binary = ensure_anvil()
        # anvil writes the states it persists under $HOME/.foundry/anvil/tmp and leaves them
        # there: a home of its own, measured and removed after the run.
        self.anvil_home.mkdir(parents=True, exist_ok=True)
        home = os.environ.get("HOME")
        os.environ["HOME"] = str(self.anvil_home)
        try:
            self.anvil = start_anvil(binary, extra_args=self.anvil_args)
        finally:
            if home is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = home
        self.rpc_url = self.anvil.url
        self.deployer = Identity.from_hex(ANVIL_DEV_KEY)
        self._w3 = connect_rpc(self.rpc_url)

    async def _wait_healthy(self, name: str, url: str, timeout_s: float = 60) -> None:
        # A dozen processes importing at once on a shared two-core host take minutes.
        await super()._wait_healthy(name, url, max(timeout_s, 300))

    async def summarize(self, epoch: int) -> EpochSummary:
        summary = await super().summarize(epoch)
        record = EpochRecord(epoch, audit_ok=summary.audit_ok,
                             emission=self.preset.epoch_emission(epoch))
        client = self.gateway(None).client

        def chain() -> tuple[int | None, int | None]:
            settled = client.settlement(epoch)
            if settled is None:
                return None, None
            return settled.block_number - client.settle_block(epoch), settled.total

        record.lag_blocks, record.chain_total = await asyncio.to_thread(chain)
        reports = await self._get_json(f"{self.validator_url}/v1/epochs/{epoch}/reports") or []
        record.published = [(r["epoch"], r["round"], r["mixer"], r["node"]) for r in reports]
        for identity in [*self.node_ids]:
            detail = await self._get_json(
                f"{self.validator_url}/v1/nodes/{identity.address}/epochs/{epoch}")
            if detail:
                record.challenges[identity.address] = int(detail.get("challenges", 0))
                record.rewards += int(detail.get("reward", 0))
                record.scored |= int(detail.get("epoch_score", 0)) > 0
        for (name, process) in dict(self.processes).items():
            if process.poll() is None and name != "shaping":
                pids = [process.pid, *child_pids(process.pid)]
                record.rss_kb[name] = (process.pid, sum(rss_kb(p) for p in pids))
        for url in self.mixer_urls:
            await self.read_mixer(url)
        self.records.append(record)
        say(format_row(record, self))
        return summary

    async def read_mixer(self, url: str) -> None:
        try:
            response = await self.http.get(f"{url}/v1/status",
                                           params={"rounds": 1, "assigned": False})
            status = response.json()
        except (httpx.HTTPError, ValueError):
            return  # down: its settlements are read after the next epoch
        for entry in status.get("settlements", []):
            if entry.get("verify_ms") is not None:
                self.verify_ms[status["address"]][int(entry["epoch"])] = (
                    int(entry["verify_ms"]), int(entry.get("reports") or 0))


def format_row(record: EpochRecord, devnet: SoakDevnet) -> str:
    bursts = [b for b in devnet.bursts if b.epoch == record.epoch]
    burst = " ".join(f"{b.ok}/{b.requests}" + (f"({b.eligible}n)" if b.eligible else "(0n)")
                     for b in bursts) or "-"
    cpu = sum(v[record.epoch][0] for v in devnet.verify_ms.values() if record.epoch in v)
    rss = sum(kb for _pid, kb in record.rss_kb.values()) / 1024
    events = "; ".join(f.event.describe() + ("" if f.ok else " FAILED")
                       for f in devnet.fired if f.epoch == record.epoch
                       and f.event.action != "burst")
    exact = record.rewards == record.emission == record.chain_total or not record.scored
    return (f"soak epoch {record.epoch:>3}: lag {record.lag_blocks!s:>4} blocks, audit "
            f"{'ok' if record.audit_ok else 'MISMATCH'}, {len(record.published):>4} reports, "
            f"rewards {'exact' if exact else 'OFF'}, burst {burst}, settle CPU {cpu} ms, "
            f"RSS {rss:,.0f} MB{'; ' + events if events else ''}")


def read_mixer_store(path: Path) -> tuple[dict[int, set[Key]], dict[int, set[Key]]]:
    """From a mixer's database: the keys of every report it certified, and of every report
    it produced, by epoch. Read-only: the soak measures, it does not touch the store."""
    certified: dict[int, set[Key]] = defaultdict(set)
    produced: dict[int, set[Key]] = defaultdict(set)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (raw,) in db.execute("SELECT certificate_json FROM own_batches"
                                 " WHERE certificate_json IS NOT NULL"):
            for report in QuorumCertificate.from_json(bytes(raw)).reports:
                certified[report.epoch].add(report.key)
        mixer = next(iter({k[2] for keys in certified.values() for k in keys}), None)
        for epoch, round_, node in db.execute("SELECT epoch, round, node FROM own_reports"):
            produced[epoch].add((epoch, round_, mixer or "?", node))
    finally:
        db.close()
    return certified, produced


def compute_report_figures(records: Iterable[EpochRecord], stores: Iterable[Path]
                           ) -> dict[str, int]:
    """``reports_lost``, ``reports_double_counted`` and ``reports_never_certified`` as the
    module docstring defines them."""
    by_epoch = {r.epoch: r for r in records}
    certified: dict[int, set[Key]] = defaultdict(set)
    uncertified = 0
    for path in stores:
        mine, produced = read_mixer_store(path)
        for epoch, keys in mine.items():
            certified[epoch] |= keys
        for epoch, keys in produced.items():
            if epoch in by_epoch:
                done = {k[:2] + k[3:] for k in mine.get(epoch, set())}
                uncertified += sum(1 for k in keys if k[:2] + k[3:] not in done)
    lost = sum(len(keys - set(by_epoch[e].published)) for e, keys in certified.items()
               if e in by_epoch)
    double = 0
    for record in by_epoch.values():
        double += len(record.published) - len(set(record.published))
        per_node = Counter(k[3] for k in set(record.published))
        double += sum(max(0, n - per_node[a]) for a, n in record.challenges.items())
    return {"reports_lost": lost, "reports_double_counted": double,
            "reports_never_certified": uncertified}


def compute_cpu_figures(verify_ms: dict[str, dict[int, tuple[int, int]]],
                        first: int, last: int) -> dict[str, Any]:
    """The mixers' CPU to sign the first and the last epoch, over mixers that signed both."""
    both = [v for v in verify_ms.values() if first in v and last in v]
    first_ms = sum(v[first][0] for v in both)
    last_ms = sum(v[last][0] for v in both)
    first_reports = sum(v[first][1] for v in both)
    last_reports = sum(v[last][1] for v in both)
    out: dict[str, Any] = {"settle_cpu_mixers": len(both), "settle_cpu_ms_first": first_ms,
                           "settle_cpu_ms_last": last_ms,
                           "settle_reports_first": first_reports,
                           "settle_reports_last": last_reports}
    out["settle_cpu_last_over_first"] = round(last_ms / first_ms, 3) if first_ms else None
    if first_reports and last_reports and first_ms:
        out["settle_cpu_per_report_last_over_first"] = round(
            (last_ms / last_reports) / (first_ms / first_reports), 3)
    return out


def compute_rss_series(records: list[EpochRecord]) -> dict[str, list[float]]:
    """Per daemon: MB after each epoch its current process served whole. A process started
    during the run (a joiner, a restarted or added daemon) is first measured at the end of the
    epoch it started in, possibly while still loading (a node that joined late in an epoch
    read 98 MB, then 369 MB like every other node): that sample is left out."""
    out: dict[str, list[float]] = {}
    names = {n for r in records for n in r.rss_kb}
    for name in sorted(names):
        samples = [r.rss_kb[name] for r in records if name in r.rss_kb]
        pid = samples[-1][0]
        mine = [round(kb / 1024, 1) for p, kb in samples if p == pid]
        started_during_run = records[0].rss_kb.get(name, (None, 0))[0] != pid
        out[name] = mine[1:] if started_during_run and len(mine) > 1 else mine
    return out


def compute_rss_growth(records: list[EpochRecord]) -> dict[str, float]:
    """Per daemon: MB after the last epoch minus after the first its current process ran."""
    return {name: round(series[-1] - series[0], 1)
            for name, series in compute_rss_series(records).items()}


async def soak(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    scenario = get_scenario(args.scenario).with_burst(args.requests, args.concurrency)
    preset = get_preset(args.preset)
    devnet = SoakDevnet(scenario=scenario, chain=args.chain, keystore=None, preset=preset,
                        data_dir=data_dir, out=say, backend=args.backend,
                        setup_blocks=args.setup_blocks)
    own_log = open_role_log(None, data_dir / "devnet.log")
    started = time.monotonic()
    try:
        await devnet.setup()
        await devnet.run(args.epochs)
    finally:
        await devnet.stop()
        close_role_log(own_log)
        anvil_state_bytes = sum(f.stat().st_size for f in devnet.anvil_home.rglob("*")
                                if f.is_file())
        shutil.rmtree(devnet.anvil_home, ignore_errors=True)
    wall = time.monotonic() - started
    records = devnet.records
    lags = [r.lag_blocks for r in records if r.lag_blocks is not None]
    usual = statistics.median(lags) if lags else None
    eligible = [b for b in devnet.bursts if b.eligible > 0 and b.ended]
    outcomes: Counter[str] = Counter()
    for burst in eligible:
        outcomes.update(burst.failures)
    stores = sorted(data_dir.glob("mixer-*/mixer.db"))
    figures: dict[str, Any] = {
        "epochs": args.epochs, "preset": args.preset, "chain": args.chain,
        "backend": args.backend, "cpus": os.cpu_count(), "wall_s": round(wall, 1),
        "epochs_settled": sum(1 for r in records if r.chain_total is not None),
        "audits_ok": sum(1 for r in records if r.audit_ok),
        "settle_lag_blocks": [r.lag_blocks for r in records],
        "usual_settle_lag_blocks": usual,
        "max_settle_lag_blocks": max(lags) if lags else None,
        "max_lag_over_usual": round(max(lags) / usual, 2) if lags and usual else None,
        **compute_report_figures(records, stores),
        "rewards_sum_exact": all(r.rewards == r.emission == r.chain_total
                                 for r in records if r.scored),
        "gateway_requests": sum(b.requests for b in eligible),
        "gateway_non_200": sum(outcomes.values()),
        "gateway_non_200_outcomes": dict(outcomes),
        "bursts_without_eligible_node": sum(1 for b in devnet.bursts if b.eligible == 0),
        **(compute_cpu_figures(devnet.verify_ms, records[0].epoch, records[-1].epoch)
           if records else {}),
        "rss_growth_mb": compute_rss_growth(records),
        "rss_mb": compute_rss_series(records),
        "anvil_state_gb": round(anvil_state_bytes / 1e9, 2),
        "events_failed": [f"epoch {f.epoch}: {f.event.describe()}: {f.detail}"
                          for f in devnet.fired if not f.ok],
        "data_dir": str(data_dir),
    }
    figures["targets_met"] = {name: _meets(figures.get(name), op, goal)
                              for name, (op, goal) in TARGETS.items()}
    figures["targets_met"]["epochs_settled"] = figures["epochs_settled"] == args.epochs
    figures["targets_met"]["audits_ok"] = figures["audits_ok"] == args.epochs
    return figures


def _meets(value: Any, op: str, goal: Any) -> bool | None:
    if value is None:
        return None
    return bool(value <= goal) if op == "<=" else bool(value == goal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs to run (default 20; fewer for a quick check)")
    parser.add_argument("--preset", default="local", help="local (default) or test")
    parser.add_argument("--chain", default="anvil", help="anvil (default) or a JSON-RPC URL")
    parser.add_argument("--scenario", default="churn")
    parser.add_argument("--requests", type=int, default=1000, help="requests per burst")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--backend", default="trivial", choices=["trivial", "minilm"],
                        help="model the nodes serve (default trivial: the gateway and the "
                        "protocol are measured, not the embedding model's CPU)")
    parser.add_argument("--setup-blocks", type=int, default=SETUP_BLOCKS)
    parser.add_argument("--data-dir", help="keep the network's state here (default: a new "
                        "temp dir, kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON "
                        "object on the last line")
    args = parser.parse_args()
    configure_logging("WARNING")
    data_dir = Path(args.data_dir) if args.data_dir else \
        Path(tempfile.mkdtemp(prefix="dnanet-soak-"))
    figures = run_loop(soak(args, data_dir))
    say("")
    for name, met in figures["targets_met"].items():
        op, goal = TARGETS.get(name, ("==", "all"))
        say(f"{name:<28} {figures.get(name)!s:>10}  target {op} {goal}: "
            f"{'met' if met else 'MISSED' if met is False else 'not measured'}")
    say(f"{'rss_growth_mb':<28} {figures['rss_growth_mb']}")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
