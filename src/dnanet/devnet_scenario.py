"""Playing a scenario (``dnanet.scenarios``) on the devnet: ``dnanet devnet --scenario churn``.

``ScenarioDevnet`` (every role in this process, the embedded EVM) and ``ScenarioProcessDevnet``
(every role its own OS process over anvil or a JSON-RPC chain) run the devnet as usual: each
epoch settled, claimed, audited and printed. Beside that, a player fires each event of the
scenario once the chain reaches its block, and says so (``scenario churn: epoch 2 block 3352:
kill_mixer mixer 1``). The node table gains a ``role`` column: each node's number in the
scenario and what happened to it, scripted or observed (``#6 joined@1``, ``#4 cheated@1
punished@1(fraud)``).

What both share is here; each action's I/O differs and lives in the two classes: in this
process a daemon stops and a new one starts on its data directory and port; as processes a
role is SIGKILLed and started again with the command line it was started with, and nodes
unbond, withdraw and mixers are added by the same ``dnanet`` commands an operator runs.
Bursts go through a mixer's OpenAI-compatible endpoint; each burst's answers are kept
(``bursts``), with how many nodes were eligible when it began. A failed action is shown and
kept (``fired``), and the network runs on: a soak reports it rather than stopping.

While the Validator is down, the devnet's own claims and summaries wait for it
(``validator_lock``), as an operator's tools would retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dnanet.ai.backends import make_backends
from dnanet.crypto.keys import Identity
from dnanet.devnet import (
    KEYSTORE_PASSWORD,
    Devnet,
    EpochSummary,
    ProcessDevnet,
    _NodeHandle,
    format_table,
)
from dnanet.errors import DnanetError
from dnanet.gateway.app import GatewayConfig
from dnanet.keyfiles import derive_vrf_public_key
from dnanet.node.hardware import devnet_compute_threads
from dnanet.params import Preset, format_dna, format_dna_short
from dnanet.ports import free_port
from dnanet.protocol.epoch import punishment_cause
from dnanet.scenarios import (
    MARKS,
    NODE_ACTIONS,
    Event,
    Scenario,
    compute_fire_block,
    verify_scenario,
    verify_scenario_preset,
)

log = logging.getLogger("dnanet.devnet.scenario")

BURST_TIMEOUT_S = 60.0
"""One gateway request of a burst fails after this long (the gateway's own request timeout)."""


@dataclass(frozen=True)
class FiredEvent:
    """An event as it was played: the block it fired at, whether it worked, what it did."""

    epoch: int
    event: Event
    block: int
    ok: bool
    detail: str


@dataclass
class BurstResult:
    """One burst: requests sent, answered 200, and every other outcome by status or error."""

    epoch: int
    mixer: int
    requests: int
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    eligible: int = 0
    """Nodes active on chain with their daemon up when the burst began."""
    started: float = 0.0
    """``time.monotonic()`` at the first request and the last answer."""
    ended: float = 0.0
    examples: list[str] = field(default_factory=list)
    """The first few answers other than 200, as the gateway gave them."""


@dataclass
class ScenarioEpochSummary(EpochSummary):
    """An epoch's summary with each node's role and the events of the epoch."""

    roles: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for node in out["nodes"]:
            node["role"] = self.roles.get(node["address"], "")
        out["events"] = list(self.events)
        return out


class ScenarioMixin:
    """The player and what both devnets share (mixed in before ``Devnet``/``ProcessDevnet``)."""

    # What Devnet provides.
    preset: Preset
    genesis: int
    data_dir: Path
    out: Callable[[str], Any]
    http: httpx.AsyncClient
    api_key: str
    validator_url: str
    node_ids: list[Identity]
    mixer_ids: list[Identity]
    mixer_urls: list[str]
    profiles: list[str]
    summaries: list[EpochSummary]
    head: Callable[[], int]
    gateway: Callable[[Identity | None], Any]
    wait_settled: Callable[[int], Any]
    claim_all: Callable[[], Any]
    _get_json: Callable[[str], Any]

    def _init_scenario(self, scenario: Scenario) -> None:
        verify_scenario(scenario)
        verify_scenario_preset(scenario, self.preset)
        self.scenario = scenario
        self.profiles = ["normal"] * scenario.nodes
        self.joiner_ids = [Identity.from_entropy(os.urandom(32)) for _ in range(scenario.joiners)]
        self.added_mixer_ids = [Identity.from_entropy(os.urandom(32))
                                for _ in range(scenario.added_mixers)]
        self.fired: list[FiredEvent] = []
        self.bursts: list[BurstResult] = []
        self.marks: dict[str, list[tuple[int, str]]] = {}
        self.down: set[str] = set()
        """Nodes whose daemon was stopped (failed or left)."""
        self.validator_lock = asyncio.Lock()
        self.accounts_lock = asyncio.Lock()
        """Held while the devnet sends from an account another of its senders may use: its
        claims for every node, a joiner's ETH (the deployer's) and stake (a genesis node's), a
        new mixer's entry (the deployer's), a node's unbond or withdraw. Two senders
        from one account at once take the same nonce, and one of them fails (the soak's
        withdraw of node 3 did, beside that epoch's claims: "nonce 6 ... was used by another
        transaction")."""
        self._player: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        """Events being fired and bursts under way."""
        self.members_from: dict[int, int] = {}
        """Each added mixer's number and the epoch the chain says it is a member from."""

    # -- who is who -------------------------------------------------------------------------
    def scenario_node(self, index: int) -> Identity:
        """Node ``index`` of the scenario (joiners after the genesis nodes)."""
        if index < self.scenario.nodes:
            return self.node_ids[index]
        return self.joiner_ids[index - self.scenario.nodes]

    def scenario_mixer(self, index: int) -> Identity:
        if index < self.scenario.mixers:
            return self.mixer_ids[index]
        return self.added_mixer_ids[index - self.scenario.mixers]

    def node_index(self, address: str) -> int | None:
        everyone = [*self.node_ids[:self.scenario.nodes], *self.joiner_ids]
        return next((i for i, n in enumerate(everyone) if n.address == address), None)

    def cheat_blocks(self) -> dict[str, int]:
        """Each cheating node's address and the block from which it signs a wrong product."""
        return {self.scenario_node(e.target).address:
                compute_fire_block(e, e.epoch, self.preset, self.genesis)
                for e in self.scenario.events if e.action == "cheat" and e.target is not None}

    def mark(self, address: str, epoch: int, text: str) -> None:
        marks = self.marks.setdefault(address, [])
        if (epoch, text) not in marks:
            marks.append((epoch, text))

    def role(self, address: str, epoch: int) -> str:
        """``#6 joined@1 ...``: the node's number and its marks up to ``epoch``."""
        index = self.node_index(address)
        marks = [f"{text}@{e}" for e, text in self.marks.get(address, []) if e <= epoch]
        return " ".join([f"#{index}" if index is not None else "?", *marks])

    # -- running ------------------------------------------------------------------------------
    async def run(self, epochs: int | None) -> list[EpochSummary]:
        """``Devnet.run`` with the scenario played beside it."""
        self._player = asyncio.create_task(self.play(epochs), name="scenario")
        try:
            epoch = 0
            while epochs is None or epoch < epochs:
                await self.wait_settled(epoch)
                async with self.validator_lock:
                    async with self.accounts_lock:
                        await self.claim_all()
                    summary = await self.summarize(epoch)
                self.summaries.append(summary)
                self.print_table(summary)
                epoch += 1
            return self.summaries
        finally:
            await self.stop_scenario()

    async def stop_scenario(self) -> None:
        for task in [self._player, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def play(self, epochs: int | None) -> None:
        """Fire each event at its block, epoch after epoch. Events about one node, one mixer
        or the Validator run in turn (a restart after its kill); events about different ones
        do not wait for each other, so one slow action (a kill that waits for the devnet's
        claims to end) delays nothing else."""
        lanes: dict[str, asyncio.Task[FiredEvent]] = {}
        epoch = 0
        while epochs is None or epoch < epochs:
            for event in self.scenario.events_in(epoch):
                await self.wait_block(compute_fire_block(event, epoch, self.preset,
                                                         self.genesis))
                lane = lane_of(event)
                task = asyncio.create_task(self._fire_after(lanes.get(lane), epoch, event),
                                           name=f"scenario-{lane}")
                lanes[lane] = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            epoch += 1

    async def _fire_after(self, previous: asyncio.Task[FiredEvent] | None, epoch: int,
                          event: Event) -> FiredEvent:
        if previous is not None:
            await asyncio.wait({previous})
        return await self.fire(epoch, event, await asyncio.to_thread(self.head))

    async def wait_block(self, block: int) -> None:
        interval = min(0.25, self.preset.block_interval_ms / 2000)
        while await asyncio.to_thread(self.head) < block:
            await asyncio.sleep(interval)

    async def fire(self, epoch: int, event: Event, block: int) -> FiredEvent:
        handler = getattr(self, f"do_{event.action}")
        try:
            detail = str(await handler(event, epoch) or "")
            ok = True
        except Exception as exc:  # shown and kept: the network runs on, the soak reports it
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            log.warning("scenario %s: epoch %d: %s failed", self.scenario.name, epoch,
                        event.describe(), exc_info=True)
        fired = FiredEvent(epoch, event, block, ok, detail)
        self.fired.append(fired)
        if event.action in NODE_ACTIONS and event.target is not None:
            self.mark(self.scenario_node(event.target).address, epoch,
                      MARKS[event.action] + ("" if ok else "(failed)"))
        self.out(f"  scenario {self.scenario.name}: epoch {epoch} block {block}: "
                 f"{event.describe()}{': ' + detail if detail else ''}"
                 f"{'' if ok else ' FAILED'}")
        return fired

    # -- actions shared by both devnets ----------------------------------------------------
    async def do_join(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        identity = self.scenario_node(event.target)
        seller = await self.buy_stake(identity)
        await self.start_joiner(identity)
        self.node_ids.append(identity)
        self.profiles.append("normal")
        return f"{identity.address[:10]} bought {format_dna(self.preset.min_stake)} from " \
               f"{seller[:10]} and registers"

    async def buy_stake(self, identity: Identity) -> str:
        """ETH for gas, and the minimum stake in DNA from the genesis node holding the most
        (a joiner buys its stake; nobody mints it): returns the seller's address."""
        async with self.accounts_lock:
            await self.fund_eth(identity.address)
        client = self.gateway(None).client
        holders = [n for n in self.node_ids[:self.scenario.nodes] if n.address not in self.down]

        def richest() -> Identity:
            return max(holders, key=lambda n: client.balance_of(n.address))

        seller = await asyncio.to_thread(richest)
        seller_client = self.gateway(seller).client
        async with self.accounts_lock:
            await asyncio.to_thread(seller_client.transfer, identity.address,
                                    self.preset.min_stake)
        return seller.address

    async def do_unbond(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        async with self.accounts_lock:
            return await self.node_command("unbond", self.scenario_node(event.target))

    async def do_withdraw(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        async with self.accounts_lock:
            return await self.node_command("withdraw", self.scenario_node(event.target))

    async def do_leave(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        identity = self.scenario_node(event.target)
        await self.stop_node(identity, crash=False)
        self.down.add(identity.address)
        return f"{identity.address[:10]} stopped"

    async def do_fail(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        identity = self.scenario_node(event.target)
        await self.stop_node(identity, crash=True)
        self.down.add(identity.address)
        return f"{identity.address[:10]} is down and stays registered"

    async def do_cheat(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        address = self.scenario_node(event.target).address
        return f"{address[:10]} signs a wrong product from block {self.cheat_blocks()[address]}"

    async def do_kill_mixer(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        await self.kill_mixer(event.target)
        return f"{self.scenario_mixer(event.target).address[:10]} killed"

    async def do_restart_mixer(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        await self.restart_mixer(event.target)
        return f"{self.scenario_mixer(event.target).address[:10]} restarted"

    async def do_add_mixer(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        identity = self.scenario_mixer(event.target)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        async with self.accounts_lock:  # the deployer's account, which also funds joiners
            await self.fund_eth(identity.address)
            effective = await self.add_to_mixer_set(identity, url)
        await self.start_added_mixer(identity, port)
        self.mixer_ids.append(identity)
        self.mixer_urls.append(url)
        self.members_from[event.target] = effective
        return f"{identity.address[:10]} at {url}, a member from epoch {effective}"

    async def do_kill_validator(self, event: Event, epoch: int) -> str:
        await self.validator_lock.acquire()  # released by restart_validator
        try:
            await self.kill_validator()
        except BaseException:
            self.validator_lock.release()
            raise
        return "killed"

    async def do_restart_validator(self, event: Event, epoch: int) -> str:
        try:
            await self.restart_validator()
        finally:
            if self.validator_lock.locked():
                self.validator_lock.release()
        return "restarted"

    async def do_burst(self, event: Event, epoch: int) -> str:
        assert event.target is not None and event.burst is not None
        result = BurstResult(epoch, event.target, event.burst.requests)
        self.bursts.append(result)
        task = asyncio.create_task(self.run_burst(result, event.burst.concurrency),
                                   name=f"burst-{epoch}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return f"through {self.mixer_urls[event.target]}"

    async def run_burst(self, result: BurstResult, concurrency: int) -> None:
        """Send the burst's requests, ``concurrency`` at a time, and count the answers."""
        base = f"{self.mixer_urls[result.mixer]}/v1"
        headers = {"authorization": f"Bearer {self.api_key}"}
        result.eligible = await self.eligible_nodes()
        limits = httpx.Limits(max_connections=concurrency,
                              max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=BURST_TIMEOUT_S, limits=limits) as http:
            model = await burst_model(http, base, headers)
            semaphore = asyncio.Semaphore(concurrency)

            async def one(index: int) -> None:
                async with semaphore:
                    try:
                        response = await http.post(
                            f"{base}/embeddings", headers=headers,
                            json={"model": model, "input": [f"burst {result.epoch} {index}"]})
                        outcome, text = str(response.status_code), response.text
                    except httpx.HTTPError as exc:
                        outcome, text = type(exc).__name__, str(exc)
                if outcome == "200":
                    result.ok += 1
                    return
                result.failures[outcome] += 1
                if len(result.examples) < 3:
                    result.examples.append(f"{outcome} {text[:300]}")

            result.started = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(result.requests)))
            result.ended = time.monotonic()
        if result.failures:
            self.out(f"  scenario {self.scenario.name}: epoch {result.epoch}: burst through "
                     f"mixer {result.mixer}: {result.ok}/{result.requests} answered 200, "
                     f"others {dict(result.failures)} ({result.eligible} nodes eligible), "
                     f"e.g. {result.examples[0]}")

    async def eligible_nodes(self) -> int:
        """Nodes active on chain (registered, staked, not unbonding or jailed) and up."""
        gateway = self.gateway(None)
        up = [n.address for n in self.node_ids if n.address not in self.down]

        def count() -> int:
            return sum(1 for a in up if (r := gateway.node(a)) is not None and r.active)

        return await asyncio.to_thread(count)

    # -- the table ------------------------------------------------------------------------------
    async def summarize(self, epoch: int) -> EpochSummary:
        base: EpochSummary = await super().summarize(epoch)  # type: ignore[misc]
        info = await self._get_json(f"{self.validator_url}/v1/epochs/{epoch}") or {}
        for entry in info.get("punishments", []):
            punishment = entry["punishment"]
            why = punishment_cause(punishment["slashBps"], self.preset)
            self.mark(punishment["node"], epoch, f"punished({why})")
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(EpochSummary)}
        return ScenarioEpochSummary(
            **fields, roles={n.address: self.role(n.address, epoch) for n in base.nodes},
            events=[f.event.describe() + ("" if f.ok else " (failed)")
                    for f in self.fired if f.epoch == epoch])

    def print_table(self, summary: EpochSummary) -> None:
        roles = summary.roles if isinstance(summary, ScenarioEpochSummary) else {}
        self.out(f"epoch {summary.epoch}: settled in {summary.settle_tx[:12]}.. root "
                 f"{summary.root[:14]}.. total {format_dna_short(summary.total)} DNA, audit "
                 f"{'OK' if summary.audit_ok else 'MISMATCH'}")
        lines = format_table(summary.nodes, final=True)
        self.out(f"{lines[0]}  role")
        for line, row in zip(lines[1:], summary.nodes, strict=True):
            self.out(f"{line}  {roles.get(row.address, '')}")
        if isinstance(summary, ScenarioEpochSummary) and summary.events:
            self.out(f"  events: {'; '.join(summary.events)}")

    # -- what each devnet does its own way ----------------------------------------------------
    async def fund_eth(self, address: str) -> None:
        raise NotImplementedError

    async def start_joiner(self, identity: Identity) -> None:
        raise NotImplementedError

    async def stop_node(self, identity: Identity, *, crash: bool) -> None:
        raise NotImplementedError

    async def node_command(self, command: str, identity: Identity) -> str:
        raise NotImplementedError

    async def kill_mixer(self, index: int) -> None:
        raise NotImplementedError

    async def restart_mixer(self, index: int) -> Any:
        raise NotImplementedError

    async def add_to_mixer_set(self, identity: Identity, url: str) -> int:
        raise NotImplementedError

    async def start_added_mixer(self, identity: Identity, port: int) -> None:
        raise NotImplementedError

    async def kill_validator(self) -> None:
        raise NotImplementedError

    async def restart_validator(self) -> None:
        raise NotImplementedError


def lane_of(event: Event) -> str:
    """What an event is about: its events fire in turn."""
    if event.action in NODE_ACTIONS:
        return f"node-{event.target}"
    if event.action == "burst":
        return "bursts"
    return "validator" if event.target is None else f"mixer-{event.target}"


async def burst_model(http: httpx.AsyncClient, base: str, headers: dict[str, str]) -> str:
    """The embeddings model the gateway lists (its first, if none says embed or minilm)."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError, IndexError):
        response = await http.get(f"{base}/models", headers=headers)
        models = [str(m["id"]) for m in response.json()["data"]]
        return next((m for m in models if "embed" in m or "minilm" in m), models[0])
    return "none-listed"


def check_node_command(client: Any, address: str, command: str) -> None:
    """What ``dnanet node unbond|withdraw`` checks before sending (``dnanet.chain.staking``)."""
    from dnanet.chain.staking import read_account_state, verify_unbond, verify_withdraw

    state = read_account_state(client, address)
    (verify_unbond if command == "unbond" else verify_withdraw)(state)


class ScenarioDevnet(ScenarioMixin, Devnet):
    """``Devnet`` (every role in this process) playing ``scenario``."""

    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(nodes=scenario.nodes, mixers=scenario.mixers, **kwargs)
        self._init_scenario(scenario)

    async def _start(self, daemon: Any, name: str) -> None:
        from dnanet.node.daemon import NodeDaemon

        cheat = self.cheat_blocks().get(getattr(daemon, "address", ""))
        if isinstance(daemon, NodeDaemon) and cheat is not None:
            daemon.profile = dataclasses.replace(daemon.profile, cheat_at_block=cheat)
        await super()._start(daemon, name)

    def _thread_of(self, daemon: Any) -> Any:
        return next(t for t in self.threads if t.daemon is daemon)

    async def _stop_daemon(self, daemon: Any) -> None:
        thread = self._thread_of(daemon)
        self.threads.remove(thread)
        await thread.stop()

    async def fund_eth(self, address: str) -> None:
        await asyncio.to_thread(self.chain.fund, address, 1_000 * 10**18)

    async def start_joiner(self, identity: Identity) -> None:
        from dnanet.chain.staking import read_account_state, verify_register
        from dnanet.node.daemon import NodeDaemon

        gateway = self.gateway(identity)
        state = await asyncio.to_thread(read_account_state, gateway.client, identity.address)
        verify_register(state, self.preset.min_stake)  # as `dnanet node run` checks first
        daemon = NodeDaemon(
            identity, gateway, self.data_dir / f"node-{identity.address[2:10]}",
            port=free_port(), hardware=self.hardware, stake=self.preset.min_stake,
            device="cpu", backends=make_backends([self.backend]))
        await self._start(daemon, f"node-{identity.address[2:8]}")  # registers, then serves
        self.node_daemons.append(daemon)

    async def stop_node(self, identity: Identity, *, crash: bool) -> None:
        daemon = next(d for d in self.node_daemons if d.address == identity.address)
        await self._stop_daemon(daemon)  # in one process a crash is a stop

    async def node_command(self, command: str, identity: Identity) -> str:
        client = self.gateway(identity).client

        def send() -> str:
            check_node_command(client, identity.address, command)
            receipt = client.unbond() if command == "unbond" else client.withdraw()
            return f"{identity.address[:10]} {command} in block {receipt.block_number}"

        return await asyncio.to_thread(send)

    async def kill_mixer(self, index: int) -> None:
        await self._stop_daemon(self.mixer_daemons[index])

    async def restart_mixer(self, index: int) -> Any:
        from dnanet.mixer.daemon import MixerDaemon

        old = self.mixer_daemons[index]
        identity = self.mixer_ids[index]
        ai = old.ai_gateway
        mixer = MixerDaemon(identity, self.gateway(identity), old.store.path.parent,
                            validator_url=self.validator_url, port=old.server.port,
                            gateway_config=ai.config if ai is not None else None,
                            references=ai.references if ai is not None else None)
        await self._start(mixer, f"mixer-{identity.address[2:8]}-restarted")
        self.mixer_daemons[index] = mixer
        return mixer

    async def add_to_mixer_set(self, identity: Identity, url: str) -> int:
        from dnanet.chain.cli import compute_change_epoch, verify_mixer_change

        client = self.gateway(self.deployer).client
        vrf_pk = derive_vrf_public_key(identity)

        def send() -> int:
            head = client.block_number()
            epoch = compute_change_epoch(head, self.genesis, self.preset.epoch_blocks)
            # What `dnanet contracts add-mixer` checks before it sends.
            verify_mixer_change(sender=self.deployer.address, owner=client.mixer_set_owner(),
                                members=list(client.mixer_set(epoch).addresses),
                                mixer=identity.address, adding=True)
            receipt = client.add_mixer(identity.address, vrf_pk, url)
            effective = client.mixer_change_epoch(receipt)
            return epoch if effective is None else int(effective)

        return await asyncio.to_thread(send)

    async def start_added_mixer(self, identity: Identity, port: int) -> None:
        from dnanet.mixer.daemon import MixerDaemon
        from dnanet.mixer.node_client import mixer_node_credentials

        gateway = self.gateway(identity)
        mixer = MixerDaemon(identity, gateway, self.data_dir / f"mixer-{identity.address[2:10]}",
                            validator_url=self.validator_url, port=port,
                            gateway_config=GatewayConfig(
                                api_keys=frozenset({self.api_key}),
                                node_credential=mixer_node_credentials(identity, gateway)))
        await self._start(mixer, f"mixer-{identity.address[2:8]}")
        self.mixer_daemons.append(mixer)

    async def kill_validator(self) -> None:
        await self._stop_daemon(self.validator)

    async def restart_validator(self) -> None:
        from dnanet.validator.daemon import ValidatorDaemon

        port = int(self.validator_url.rsplit(":", 1)[1])
        self.validator = ValidatorDaemon(self.gateway(self.validator_id),
                                         self.data_dir / "validator", host="127.0.0.1",
                                         port=port)
        await self._start(self.validator, "validator")


def child_pids(pid: int) -> list[int]:
    """The running children of process ``pid`` (Linux ``/proc``; none elsewhere)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class ScenarioProcessDevnet(ScenarioMixin, ProcessDevnet):
    """``ProcessDevnet`` (every role its own OS process) playing ``scenario``: roles die by
    SIGKILL and start again with their own command lines; unbond, withdraw and add-mixer are
    the ``dnanet`` commands an operator runs."""

    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(nodes=scenario.nodes, mixers=scenario.mixers, **kwargs)
        self._init_scenario(scenario)
        self.commands: dict[str, tuple[list[str], dict[str, str], str]] = {}
        """Each role's command line, environment and module, as it was last started."""

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def keystore_of(self, identity: Identity) -> Path:
        """The identity's keystore in the devnet's key directory (written on first use)."""
        from dnanet.keyfiles import save_identity

        path = self.keys_dir / f"{identity.address}.json"
        if not path.exists():
            save_identity(identity, path, KEYSTORE_PASSWORD, light=True)
        return path

    def chain_args(self, identity: Identity) -> list[str]:
        return ["--rpc", self.rpc_url, "--deployment", str(self.data_dir / "deployment.json"),
                "--keystore", str(self.keystore_of(identity))]

    def role_env(self) -> dict[str, str]:
        # The same as every role got at set-up: secrets in the environment, never in argv.
        return {**os.environ, "DNANET_KEYSTORE_PASSWORD": KEYSTORE_PASSWORD,
                "DNANET_GATEWAY_KEYS": self.api_key,
                "DNANET_LOG": os.environ.get("DNANET_LOG", "INFO")}

    def _spawn(self, name: str, args: list[str], env: dict[str, str], *,
               module: str = "dnanet.cli") -> None:
        cheat = next((b for a, b in self.cheat_blocks().items() if name == f"node-{a[2:10]}"),
                     None)
        if cheat is not None and "--cheat-at-block" not in args:
            args = [*args, "--cheat-at-block", str(cheat)]
        self.commands[name] = (args, env, module)
        super()._spawn(name, args, env, module=module)

    def process(self, name: str) -> Any:
        return dict(self.processes)[name]

    async def _kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.process(name)
        victims = child_pids(process.pid)
        if process.poll() is None:
            process.send_signal(sig)
        for pid in victims:  # the Validator's serving processes die with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        await asyncio.to_thread(process.wait, 30)

    async def _respawn(self, name: str, url: str) -> None:
        args, env, module = self.commands[name]
        self._spawn(name, args, env, module=module)
        await self._wait_healthy(name, url, timeout_s=120)

    async def _run_command(self, args: list[str]) -> str:
        """Run ``dnanet ARGS`` as an operator would; its last stdout line, or DnanetError
        with the end of what it printed."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dnanet.cli", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.role_env())
        stdout, stderr = await process.communicate()
        if process.returncode != 0:
            raise DnanetError(f"dnanet {' '.join(args[:2])} exited {process.returncode}: "
                              f"{stderr.decode(errors='replace').strip()[-400:]}")
        lines = stdout.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    async def fund_eth(self, address: str) -> None:
        await asyncio.to_thread(self._fund, address, 100 * 10**18)

    async def start_joiner(self, identity: Identity) -> None:
        name = f"node-{identity.address[2:10]}"
        port = free_port()
        stake = format_dna(self.preset.min_stake).removesuffix(" DNA")
        self._spawn(name, ["node", "run", *self.chain_args(identity), "--data-dir",
                           str(self.data_dir / name), "--port", str(port), "--stake", stake,
                           "--profile", "normal", "--device", "cpu", "--compute-threads",
                           str(devnet_compute_threads(len(self.node_ids) + 1)), "--backend",
                           self.backend], self.role_env())
        await self._wait_healthy(name, f"http://127.0.0.1:{port}", timeout_s=300)
        self.node_daemons.append(_NodeHandle(identity, "normal", self.hardware,
                                             self.gateway(identity)))

    async def stop_node(self, identity: Identity, *, crash: bool) -> None:
        await self._kill(f"node-{identity.address[2:10]}",
                         signal.SIGKILL if crash else signal.SIGTERM)

    async def node_command(self, command: str, identity: Identity) -> str:
        record = json.loads(await self._run_command(["node", command,
                                                     *self.chain_args(identity)]))
        return f"{identity.address[:10]} {command}: {record.get('tx', '')[:12]}.."

    def mixer_name(self, index: int) -> str:
        return f"mixer-{self.mixer_ids[index].address[2:10]}"

    async def kill_mixer(self, index: int) -> None:
        await self._kill(self.mixer_name(index))

    async def restart_mixer(self, index: int) -> Any:
        await self._respawn(self.mixer_name(index), self.mixer_urls[index])

    async def add_to_mixer_set(self, identity: Identity, url: str) -> int:
        vrf = derive_vrf_public_key(identity).hex()
        keystore = self.keys_dir / "deployer.json"
        if not keystore.exists():
            from dnanet.keyfiles import save_identity

            save_identity(self.deployer, keystore, KEYSTORE_PASSWORD, light=True)
        record = json.loads(await self._run_command([
            "contracts", "add-mixer", "--mixer", f"{identity.address}:{vrf}:{url}",
            "--rpc", self.rpc_url, "--deployment", str(self.data_dir / "deployment.json"),
            "--keystore", str(keystore)]))
        return int(record["effective_epoch"])

    async def start_added_mixer(self, identity: Identity, port: int) -> None:
        name = f"mixer-{identity.address[2:10]}"
        self._spawn(name, ["mixer", "run", *self.chain_args(identity), "--data-dir",
                           str(self.data_dir / name), "--validator", self.validator_url,
                           "--port", str(port), "--timing-lock", str(self.timing_lock)],
                    self.role_env())
        await self._wait_healthy(name, f"http://127.0.0.1:{port}")

    async def kill_validator(self) -> None:
        await self._kill("validator")

    async def restart_validator(self) -> None:
        await self._respawn("validator", self.validator_url)


def build_scenario_devnet(scenario: Scenario, *, chain: str, keystore: Path | None,
                          **kwargs: Any) -> Devnet:
    """The devnet that plays ``scenario``: in this process on the embedded chain, else every
    role its own process; with dishonest parts, ``dnanet.adversary``'s."""
    from dnanet.adversary.devnet import build_adversarial_devnet, needs_adversary

    if needs_adversary(scenario):
        return build_adversarial_devnet(scenario, chain=chain, keystore=keystore, **kwargs)
    if chain == "embedded":
        return ScenarioDevnet(scenario=scenario, **kwargs)
    return ScenarioProcessDevnet(scenario=scenario, chain=chain, keystore=keystore, **kwargs)


__all__ = [
    "BurstResult",
    "FiredEvent",
    "ScenarioDevnet",
    "ScenarioEpochSummary",
    "ScenarioMixin",
    "ScenarioProcessDevnet",
    "build_scenario_devnet",
    "child_pids",
]
