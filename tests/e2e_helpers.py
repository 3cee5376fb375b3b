"""A devnet for end-to-end tests: the real ``Devnet`` (embedded EVM, every role on loopback
HTTP, SQLite per daemon) with a small preset and a few test hooks.

- ``E2E_PRESET``: 32-block epochs of two 16-block rounds, 25 ms blocks, TEST's tiny challenges.
- ``LockstepClock``: the devnet's block clock, except that it holds the first block of a round
  until every mixer that answers HTTP has finished the previous round (bounded). On a machine
  that keeps up it mines exactly like ``BlockClock``; on a busy one (two cores, a parallel test
  run) the chain's time waits for the daemons instead of leaving rounds unprocessed, so a
  test's outcome does not depend on the machine's speed. A mixer that is down holds nothing.
  While ``Devnet.run`` is claiming and auditing epoch ``e``, it also stays a round short of
  the settlement block of epoch ``e + 1``: a claim proves against the latest root, and with
  epochs this short the next settlement could otherwise replace the root under a claim in
  flight (``Devnet.claim_all`` does not retry a claim that reverts with "bad proof").
- ``E2EDevnet``: seeded identities, chosen node profiles, cheating nodes (every committed row
  wrong), mixers taken down before genesis, ``stop_mixer``/``restart_mixer`` (a new
  ``MixerDaemon`` on the same data directory and port), and a record of every claim (token
  balances and ``claimed`` before and after) and of each epoch's per-node breakdown.
- ``E2EProcessDevnet``: the same records and clock over ``ProcessDevnet`` (anvil, each role
  its own OS process).
- ``E2EScenarioDevnet``: the same over ``ScenarioDevnet``, playing a ``dnanet.scenarios``
  scenario (nodes joining, leaving, failing and cheating; mixers and the Validator restarted;
  gateway bursts), with a gateway that refreshes its node view as often as a test needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx

from dnanet.crypto.keys import Identity
from dnanet.devnet import BlockClock, DaemonThread, Devnet, EpochSummary, ProcessDevnet
from dnanet.devnet_scenario import ScenarioDevnet
from dnanet.errors import DnanetError
from dnanet.mixer.daemon import MixerDaemon
from dnanet.node.daemon import NodeDaemon
from dnanet.params import TEST, Preset
from dnanet.protocol.challenges.compute import (
    ComputeAnswer,
    ComputeSize,
    commit_product,
    compute_product,
)
from dnanet.protocol.messages import QuorumCertificate, ScoreReport
from dnanet.protocol.schedule import (
    RoundId,
    compute_round,
    compute_round_start_block,
    compute_settlement_block,
)
from dnanet.scenarios import Scenario
from dnanet.service.gateway import ClientGateway
from dnanet.service.network import SettledEpoch

log = logging.getLogger("dnanet.e2e")

E2E_PRESET = dataclasses.replace(
    TEST, name="e2e", epoch_blocks=32, round_blocks=16, block_interval_ms=25,
    settlement_grace_blocks=16, challenges_per_round=3, challenge_timeout_ms=5_000)
"""Two rounds per epoch (the fewer rounds, the quicker an epoch: each costs every daemon chain
reads); a node is assigned to each mixer with probability 3/4 per round, so a node goes
unchallenged for a whole epoch with probability 4^-8."""

ZERO_ROOT = "0x" + "00" * 32


def seeded_identity(label: str) -> Identity:
    return Identity.from_entropy(hashlib.sha256(f"dnanet-e2e/{label}".encode()).digest())


def cheating_compute(seed: bytes, size: ComputeSize) -> ComputeAnswer:
    """Commits to a product whose every row is wrong (each entry off by one), so every spot
    check catches the node: signed fraud evidence, whatever rows the mixer opens."""
    product = compute_product(seed, size, "cpu").product + 1
    return commit_product(size, product)


class LockstepClock(BlockClock):
    """Mines a block every ``interval_s`` with ``mine_one``, but holds the first block of each
    round until every reachable mixer reports the previous round done (``GET /v1/status``),
    and any block ``may_mine`` refuses, each for at most ``hold_s``. Blocks mined by
    transactions (the embedded chain mines one per transaction) are not held."""

    def __init__(self, mine_one: Callable[[], object], head: Callable[[], int],
                 interval_s: float, *, preset: Preset, genesis: int,
                 mixer_urls: Callable[[], Sequence[str]],
                 may_mine: Callable[[int], bool] = lambda _block: True,
                 hold_s: float = 60.0) -> None:
        super().__init__(mine_one, interval_s)
        self.head = head
        self.preset = preset
        self.genesis = genesis
        self.mixer_urls = mixer_urls
        self.may_mine = may_mine
        self.hold_s = hold_s
        self.holds = 0
        """Rounds whose end waited for a mixer (how often the daemons fell behind)."""
        self.timeouts = 0

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                started = time.monotonic()
                try:
                    head = await asyncio.to_thread(self.head)
                    following = head + 1
                    if following > self.genesis and \
                            (following - self.genesis) % self.preset.round_blocks == 0:
                        await self._hold(http, compute_round(head, self.preset, self.genesis))
                    await self._hold_block(following)
                    await asyncio.to_thread(self.mine_one)
                except Exception as exc:  # a busy RPC: the next tick tries again
                    log.warning("lockstep clock: %s", exc)
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def _hold(self, http: httpx.AsyncClient, rid: RoundId) -> None:
        deadline = time.monotonic() + self.hold_s
        waited = False
        while True:
            urls = list(self.mixer_urls())
            done = await asyncio.gather(*(mixer_round_done(http, url, rid) for url in urls))
            if all(done):
                self.holds += waited
                return
            if time.monotonic() > deadline:
                self.timeouts += 1
                log.warning("lockstep clock: round %s still open at %s after %.0f s; mining on",
                            rid, [u for u, d in zip(urls, done, strict=True) if not d],
                            self.hold_s)
                return
            waited = True
            await asyncio.sleep(0.02)


    async def _hold_block(self, block: int) -> None:
        deadline = time.monotonic() + self.hold_s
        while not self.may_mine(block):
            if time.monotonic() > deadline:
                self.timeouts += 1
                log.warning("lockstep clock: block %d held for %.0f s; mining on", block,
                            self.hold_s)
                return
            await asyncio.sleep(0.02)


async def mixer_rounds(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]] | None:
    """The mixer's recent rounds from ``/v1/status``; None when it does not answer."""
    try:
        response = await http.get(f"{url}/v1/status", params={"rounds": 4, "assigned": False})
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    rounds: list[dict[str, Any]] = response.json()["rounds"]
    return rounds


async def mixer_round_done(http: httpx.AsyncClient, url: str, rid: RoundId) -> bool:
    """Whether the mixer at ``url`` finished round ``rid`` (True when it does not answer)."""
    rounds = await mixer_rounds(http, url)
    if rounds is None:
        return True
    return any(r["epoch"] == rid.epoch and r["round"] == rid.round and r["done"] for r in rounds)


@dataclass(frozen=True)
class ClaimCheck:
    """One node around one ``claim_all``: what the Validator served, and the chain before and
    after."""

    address: str
    served: int
    """The cumulative total ``/v1/nodes/{address}`` served (0 when not in the tree)."""
    claimed_before: int
    claimed_after: int
    balance_before: int
    balance_after: int


class E2EMixin:
    """What both end-to-end devnets add (mixed in before ``Devnet`` or ``ProcessDevnet``):
    seeded identities, a ``LockstepClock`` swapped in once set up (the ``down_mixers`` taken
    down before genesis), the next settlement kept behind ``run()``'s claims, a record of
    every claim and of each epoch's per-node breakdown, and the Validator's API."""

    preset: Preset
    genesis: int
    clock: BlockClock | None
    summaries: list[EpochSummary]
    mixer_urls: list[str]
    validator_url: str
    http: httpx.AsyncClient
    deployer: Identity
    validator_id: Identity
    mixer_ids: list[Identity]
    node_ids: list[Identity]
    profiles: list[str]
    head: Callable[[], int]
    gateway: Callable[[Identity | None], ClientGateway]

    def _init_e2e(self, *, label: str, profiles: Sequence[str] | None,
                  down_mixers: Iterable[int], lockstep: bool) -> None:
        self.validator_id = seeded_identity(f"{label}/validator")
        self.mixer_ids = [seeded_identity(f"{label}/mixer-{i}") for i in range(len(self.mixer_ids))]
        self.node_ids = [seeded_identity(f"{label}/node-{i}") for i in range(len(self.node_ids))]
        if profiles is not None:
            if len(profiles) != len(self.node_ids):
                raise ValueError(f"{len(profiles)} profiles for {len(self.node_ids)} nodes")
            self.profiles = list(profiles)
        self.down_mixers = sorted(set(down_mixers))
        self.lockstep = lockstep
        self.running = False
        """Inside ``run()``: the clock keeps the next settlement behind the claims."""
        self.claims: list[dict[str, ClaimCheck]] = []
        self.breakdowns: dict[int, dict[str, dict[str, Any]]] = {}
        """Each settled epoch's ``/v1/nodes/{address}/epochs/{epoch}`` per node."""
        self.settled: dict[int, SettledEpoch | None] = {}
        """What the chain said of each epoch once ``run()`` summarized it (anvil is gone
        once a devnet stops)."""

    def node_addresses(self) -> list[str]:
        return [i.address for i in self.node_ids]

    async def stop_mixer(self, index: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot stop mixer {index}")

    async def setup(self) -> None:
        await super().setup()  # type: ignore[misc]
        # setup() starts its clock last, without yielding since: nothing is mined yet, and
        # the chain stands one block before genesis.
        if self.clock is None:
            raise DnanetError("the devnet did not start a block clock")
        await self.clock.stop()
        for index in self.down_mixers:
            await self.stop_mixer(index)
        mine_one = self.clock.mine_one
        interval = self.preset.block_interval_ms / 1000
        if self.lockstep:
            self.clock = LockstepClock(
                mine_one, self.head, interval, preset=self.preset, genesis=self.genesis,
                mixer_urls=lambda: self.mixer_urls, may_mine=self._may_mine)
        else:
            self.clock = BlockClock(mine_one, interval)
        self.clock.start()

    def _may_mine(self, block: int) -> bool:
        """Not within a round of the settlement block of the epoch after the one ``run()`` is
        processing (the claims' own transactions mine blocks too)."""
        following = len(self.summaries) + 1
        limit = compute_settlement_block(following, self.preset, self.genesis)
        return not self.running or block < limit - self.preset.round_blocks

    async def run(self, epochs: int | None) -> list[EpochSummary]:
        self.running = True
        try:
            out: list[EpochSummary] = await super().run(epochs)  # type: ignore[misc]
            return out
        finally:
            self.running = False

    # -- claims ---------------------------------------------------------------------------------
    async def claim_all(self) -> None:
        """Claim as the devnet does, recording balances and ``claimed`` around it."""
        client = self.gateway(None).client

        def chain_state() -> dict[str, tuple[int, int]]:
            return {a: (client.balance_of(a), client.claimed(a)) for a in self.node_addresses()}

        before = await asyncio.to_thread(chain_state)
        served = {}
        for address in self.node_addresses():
            node = await self.get_json(f"/v1/nodes/{address}")
            served[address] = int(node["cumulative"]) if node else 0
        await super().claim_all()  # type: ignore[misc]
        after = await asyncio.to_thread(chain_state)
        self.claims.append({
            a: ClaimCheck(a, served[a], before[a][1], after[a][1], before[a][0], after[a][0])
            for a in before})

    async def summarize(self, epoch: int) -> EpochSummary:
        summary: EpochSummary = await super().summarize(epoch)  # type: ignore[misc]
        self.settled[epoch] = await asyncio.to_thread(self.gateway(None).settled_epoch, epoch)
        self.breakdowns[epoch] = {
            a: await self.get_json(f"/v1/nodes/{a}/epochs/{epoch}")
            for a in self.node_addresses()}
        return summary

    # -- the Validator's API ------------------------------------------------------------------------
    async def get_json(self, path: str) -> Any:
        """``GET`` a Validator path; None on 404."""
        response = await self.http.get(f"{self.validator_url}{path}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    async def certificates(self, epoch: int) -> list[QuorumCertificate]:
        items = await self.get_json(f"/v1/epochs/{epoch}/certificates")
        return [QuorumCertificate.from_wire(c, f"certificates[{i}]") for i, c in enumerate(items)]

    async def reports(self, epoch: int) -> list[ScoreReport]:
        items = await self.get_json(f"/v1/epochs/{epoch}/reports")
        return [ScoreReport.from_wire(r, f"reports[{i}]") for i, r in enumerate(items)]

    async def wait_punishments_done(self, epoch: int, timeout_s: float = 120
                                    ) -> list[dict[str, Any]]:
        """The epoch's punishments once none is pending any more."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self.get_json(f"/v1/epochs/{epoch}")
            punishments: list[dict[str, Any]] = info["punishments"]
            if all(p["status"] != "pending" for p in punishments):
                return punishments
            if time.monotonic() > deadline:
                raise TimeoutError(f"punishments of epoch {epoch} still pending: {punishments}")
            await asyncio.sleep(0.1)


class E2EDevnet(E2EMixin, Devnet):
    """``Devnet`` with the hooks the end-to-end tests need (see the module docstring).

    ``profiles`` replaces the default node profiles (one throttled, one offline);
    ``cheaters`` and ``down_mixers`` are indexes into the nodes and mixers. Nodes serve the
    weightless ``trivial`` model unless ``backend`` says otherwise.
    """

    instances: ClassVar[list[E2EDevnet]] = []
    """Every devnet built in this process (a test that goes through ``run_devnet`` finds its
    devnet here)."""

    def __init__(self, *, nodes: int, mixers: int = 4, preset: Preset = E2E_PRESET,
                 data_dir: Path, out: Callable[[str], Any] | None = None, label: str = "net",
                 profiles: Sequence[str] | None = None, cheaters: Iterable[int] = (),
                 down_mixers: Iterable[int] = (), lockstep: bool = True,
                 backend: str = "trivial", **devnet_options: Any) -> None:
        super().__init__(nodes=nodes, mixers=mixers, preset=preset, data_dir=data_dir,
                         out=out or log.info, backend=backend, **devnet_options)
        self._init_e2e(label=label, profiles=profiles, down_mixers=down_mixers,
                       lockstep=lockstep)
        self.deployer = seeded_identity(f"{label}/deployer")
        self.cheaters = {self.node_ids[i].address for i in cheaters}
        E2EDevnet.instances.append(self)

    # -- set-up hooks ---------------------------------------------------------------------------
    async def _start(self, daemon: Any, name: str) -> None:
        if isinstance(daemon, NodeDaemon) and daemon.address in self.cheaters:
            # NodeDaemon hands its bound _compute to the prover at construction: replace the
            # prover's, the function that really answers.
            daemon.prover._compute = cheating_compute
        await super()._start(daemon, name)

    # -- mixers ---------------------------------------------------------------------------------
    def _thread_of(self, daemon: Any) -> DaemonThread:
        return next(t for t in self.threads if t.daemon is daemon)

    async def stop_mixer(self, index: int) -> None:
        """Stop mixer ``index`` (its HTTP server, rounds and store), as a crash would."""
        thread = self._thread_of(self.mixer_daemons[index])
        self.threads.remove(thread)
        await thread.stop()

    async def restart_mixer(self, index: int) -> MixerDaemon:
        """A new MixerDaemon for mixer ``index`` on the old one's data directory and port."""
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

    async def wait_round_begun(self, index: int, rid: RoundId, timeout_s: float = 120) -> None:
        """Wait until mixer ``index`` has begun round ``rid`` (or a later one)."""
        url = self.mixer_daemons[index].url
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rounds = await mixer_rounds(self.http, url) or []
            if any(RoundId(r["epoch"], r["round"]) >= rid for r in rounds):
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"mixer {index} did not begin round {rid} in {timeout_s:g} s")

    async def wait_block(self, block: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.chain.block_number < block:
            if time.monotonic() > deadline:
                raise TimeoutError(f"block {block} not reached in {timeout_s:g} s")
            await asyncio.sleep(0.02)

    def round_start(self, rid: RoundId) -> int:
        return compute_round_start_block(rid, self.preset, self.genesis)


class E2EProcessDevnet(E2EMixin, ProcessDevnet):
    """``ProcessDevnet`` (anvil, every role its own OS process started with the operator
    commands) with the lockstep clock and the records of ``E2EMixin``. The roles read the
    preset by name from the deployment file, so it must be a registered one (``test``)."""

    instances: ClassVar[list[E2EProcessDevnet]] = []

    def __init__(self, *, nodes: int, mixers: int = 4, preset: Preset = TEST, data_dir: Path,
                 out: Callable[[str], Any] | None = None, label: str = "anvil",
                 profiles: Sequence[str] | None = None, lockstep: bool = True,
                 backend: str = "trivial", **devnet_options: Any) -> None:
        super().__init__(chain="anvil", nodes=nodes, mixers=mixers, preset=preset,
                         data_dir=data_dir, out=out or log.info, backend=backend,
                         **devnet_options)
        self._init_e2e(label=label, profiles=profiles, down_mixers=(), lockstep=lockstep)
        E2EProcessDevnet.instances.append(self)


class E2EScenarioDevnet(E2EMixin, ScenarioDevnet):
    """``ScenarioDevnet`` (a scenario played in this process) with the lockstep clock, seeded
    identities (joiners and added mixers too) and the records of ``E2EMixin``. With
    ``gateway_refresh_s`` mixer 0's gateway refreshes its node view that often (the default
    5 s is longer than a test epoch), and ``refreshes`` keeps when each refresh ended
    (``time.monotonic()``), so a test can tell which requests spanned one."""

    def __init__(self, *, scenario: Scenario, preset: Preset = E2E_PRESET, data_dir: Path,
                 out: Callable[[str], Any] | None = None, label: str = "scenario",
                 backend: str = "trivial", gateway_refresh_s: float | None = None,
                 **devnet_options: Any) -> None:
        super().__init__(scenario=scenario, preset=preset, data_dir=data_dir,
                         out=out or log.info, backend=backend, **devnet_options)
        self._init_e2e(label=label, profiles=None, down_mixers=(), lockstep=True)
        self.deployer = seeded_identity(f"{label}/deployer")
        self.joiner_ids = [seeded_identity(f"{label}/joiner-{i}")
                           for i in range(scenario.joiners)]
        self.added_mixer_ids = [seeded_identity(f"{label}/added-mixer-{i}")
                                for i in range(scenario.added_mixers)]
        self.gateway_refresh_s = gateway_refresh_s
        self.refreshes: list[float] = []

    async def _start(self, daemon: Any, name: str) -> None:
        gateway = getattr(daemon, "ai_gateway", None)
        if self.gateway_refresh_s is not None and isinstance(daemon, MixerDaemon) and \
                gateway is not None and daemon.address == self.mixer_ids[0].address:
            gateway.config = dataclasses.replace(gateway.config,
                                                 refresh_s=self.gateway_refresh_s)
            update = gateway.scheduler.update

            def recorded(states: Any) -> None:
                update(states)
                self.refreshes.append(time.monotonic())

            gateway.scheduler.update = recorded  # type: ignore[method-assign]
        await super()._start(daemon, name)


async def run_epochs(devnet: Devnet, epochs: int, timeout_s: float = 240,
                     before: Callable[[], Any] | None = None) -> None:
    """Set the devnet up and run ``epochs`` epochs (settled, claimed, audited); it keeps
    running afterwards: stop it with ``devnet.stop()``."""
    async def body() -> None:
        await devnet.setup()
        if before is not None:
            await before()
        await devnet.run(epochs)

    await asyncio.wait_for(body(), timeout_s)


__all__ = [
    "E2E_PRESET",
    "ZERO_ROOT",
    "ClaimCheck",
    "E2EDevnet",
    "E2EMixin",
    "E2EProcessDevnet",
    "E2EScenarioDevnet",
    "LockstepClock",
    "cheating_compute",
    "mixer_round_done",
    "mixer_rounds",
    "run_epochs",
    "seeded_identity",
]
