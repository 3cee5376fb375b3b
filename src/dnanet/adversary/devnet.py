"""The adversarial devnet: a scenario devnet whose cast plays dishonest parts.

``dnanet devnet --scenario adversarial`` (``dnanet.scenarios.ADVERSARIAL``) builds, beside
honest nodes, the node cheats of ``dnanet.adversary.nodes`` and the Byzantine mixers of
``dnanet.adversary.mixers``; its ``grief N`` event sets ``dnanet.adversary.griefer`` on node N
and the mixers' routes. Every mixer sends canaries as often as the cast says.

In one process (``AdversarialDevnet``) the dishonest daemons are built in place of honest
ones. With every role its own process (``AdversarialProcessDevnet``, ``--chain anvil``) their
command lines run ``python -m dnanet.adversary`` (the same options as ``dnanet node run`` and
``dnanet mixer run``, plus the part to play); the two identities of a relay are one process,
one machine.

The table of each settled epoch marks every node's role, and says for each dishonest or
attacked one what it earned and why (its failures' outcomes and reasons from the Validator's
breakdown, its punishment), and for each Byzantine mixer what reached a certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from dnanet.adversary.griefer import ANSWER_TIMEOUT_S, Griefer
from dnanet.adversary.mixers import ByzantineMixer
from dnanet.adversary.nodes import RelayHost, build_node
from dnanet.adversary.proof import (
    compute_mixer_certified,
    explain_node_epoch,
)
from dnanet.crypto.keys import Identity
from dnanet.devnet import EpochSummary, _NodeHandle
from dnanet.devnet_scenario import ScenarioDevnet, ScenarioProcessDevnet
from dnanet.gateway.app import GatewayConfig
from dnanet.mixer.daemon import MixerDaemon
from dnanet.node.daemon import NodeDaemon
from dnanet.node.hardware import CLASS_GPU
from dnanet.params import Preset, format_dna_short
from dnanet.protocol.messages import QuorumCertificate
from dnanet.protocol.schedule import compute_settlement_block
from dnanet.scenarios import Cast, Event, Scenario

log = logging.getLogger("dnanet.adversary.devnet")

GRIEF_INTERVAL_S = 0.5
"""Time between two of the griefer's waves."""


def needs_adversary(scenario: Scenario) -> bool:
    """Whether ``scenario`` has dishonest parts (a cast, or a griefer)."""
    return scenario.cast != Cast() or any(e.action == "grief" for e in scenario.events)


class AdversarialMixin:
    """What both adversarial devnets add to ``ScenarioMixin`` (mixed in before it)."""

    # What the scenario devnets provide.
    scenario: Scenario
    preset: Preset
    genesis: int
    data_dir: Path
    out: Any
    http: httpx.AsyncClient
    validator_url: str
    node_ids: list[Identity]
    mixer_ids: list[Identity]
    mixer_urls: list[str]
    profiles: list[str]
    summaries: list[EpochSummary]
    _tasks: set[asyncio.Task[Any]]

    def _init_adversary(self) -> None:
        cast = self.scenario.cast
        self.cast = cast
        for index, role in cast.nodes:
            self.mark(self.node_ids[index].address, 0, role)  # type: ignore[attr-defined]
        for index in cast.friends:
            self.mark(self.node_ids[index].address, 0,  # type: ignore[attr-defined]
                      "friend(" + ",".join(f"m{m}" for m, _ in cast.mixers) + ")")
        self.roles = {self.node_ids[i].address: role for i, role in cast.nodes}
        """Each dishonest (or control) node's address and role."""
        self.byzantine = {self.mixer_ids[i].address: behaviours for i, behaviours in cast.mixers}
        self.friends = frozenset(self.node_ids[i].address for i in cast.friends)
        self.griefers: dict[str, Griefer] = {}
        """Each griefed node's address and the griefer attacking it."""
        self.breakdowns: dict[int, dict[str, Any]] = {}
        """Each settled epoch's Validator breakdown per node (``/v1/nodes/{a}/epochs/{e}``)."""
        self.certificates: dict[int, list[QuorumCertificate]] = {}
        """Each settled epoch's certificates, as the Validator published them."""
        self._relay_host: RelayHost | None = None

    # -- canaries ---------------------------------------------------------------------------
    def canary_interval_s(self) -> float | None:
        """The cast's canary interval in seconds on this preset's block clock."""
        rounds = self.cast.canary_rounds
        if rounds is None:
            return None
        return rounds * self.preset.round_blocks * self.preset.block_interval_ms / 1000

    def adversarial_gateway(self, config: GatewayConfig) -> GatewayConfig:
        interval = self.canary_interval_s()
        if interval is None:
            return config
        # The gateway sweeps canaries from its refresh loop: refresh twice per interval.
        return dataclasses.replace(config, canary_interval_s=interval,
                                   refresh_s=min(config.refresh_s, interval / 2))

    # -- the griefer ------------------------------------------------------------------------
    async def do_grief(self, event: Event, epoch: int) -> str:
        assert event.target is not None
        identity = self.scenario_node(event.target)  # type: ignore[attr-defined]
        gateway = self.gateway(None)  # type: ignore[attr-defined]
        record = await asyncio.to_thread(gateway.node, identity.address)
        if record is None:
            raise ValueError(f"node {event.target} is not registered")
        head = {"block": await asyncio.to_thread(self.head)}  # type: ignore[attr-defined]

        def closed_epoch() -> int | None:
            closed = None
            e = 0
            while compute_settlement_block(e, self.preset, self.genesis) <= head["block"]:
                closed, e = e, e + 1
            return closed

        griefer = Griefer(
            node_url=record.endpoint, node_address=identity.address,
            node_db=self.data_dir / f"node-{identity.address[2:10]}" / "node.db",
            domain=gateway.domain, preset=self.preset,
            mixers=lambda: list(zip([m.address for m in self.mixer_ids], self.mixer_urls,
                                    strict=False)),
            closed_epoch=closed_epoch, head=lambda: head["block"], seed=event.target)
        self.griefers[identity.address] = griefer

        async def attack() -> None:
            async with httpx.AsyncClient(timeout=ANSWER_TIMEOUT_S) as http:
                while True:
                    head["block"] = await asyncio.to_thread(self.head)  # type: ignore[attr-defined]
                    await griefer.wave(http)
                    await asyncio.sleep(GRIEF_INTERVAL_S)

        task = asyncio.create_task(attack(), name=f"griefer-{event.target}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return f"a stranger attacks {identity.address[:10]} at {record.endpoint} and the mixers"

    # -- the table ------------------------------------------------------------------------
    async def summarize(self, epoch: int) -> EpochSummary:
        summary: EpochSummary = await super().summarize(epoch)  # type: ignore[misc]
        get = self._get_json  # type: ignore[attr-defined]
        self.breakdowns[epoch] = {
            row.address: await get(f"{self.validator_url}/v1/nodes/{row.address}/epochs/{epoch}")
            for row in summary.nodes}
        items = await get(f"{self.validator_url}/v1/epochs/{epoch}/certificates") or []
        self.certificates[epoch] = [QuorumCertificate.from_wire(c, f"certificates[{i}]")
                                    for i, c in enumerate(items)]
        return summary

    def print_table(self, summary: EpochSummary) -> None:
        super().print_table(summary)  # type: ignore[misc]
        details = self.breakdowns.get(summary.epoch, {})
        watched = [*self.roles, *self.friends, *self.griefers]
        for row in summary.nodes:
            if row.address not in watched:
                continue
            index = self.node_index(row.address)  # type: ignore[attr-defined]
            role = self.roles.get(row.address) or (
                "friend" if row.address in self.friends else "griefed")
            self.out(f"  #{index} {role}: earned {format_dna_short(row.reward)}: "
                     f"{explain_node_epoch(details.get(row.address), self.preset)}")
        for line in self.mixer_lines(summary.epoch):
            self.out(line)

    def mixer_lines(self, epoch: int) -> list[str]:
        """What each Byzantine mixer got certified in ``epoch``, and the griefers' tallies."""
        lines = []
        for address, behaviours in self.byzantine.items():
            index = [m.address for m in self.mixer_ids].index(address)
            counts = compute_mixer_certified(self.certificates.get(epoch, []), address,
                                             self.friends)
            lines.append(f"  mixer #{index} byzantine ({', '.join(behaviours)}): certified "
                         f"{counts['ok']} OK and {counts['failed']} failed reports; forged "
                         f"ones certified: {counts['inflated']} inflated, "
                         f"{counts['fabricated_ok']} fabricated OK, {counts['equivocated']} "
                         f"equivocated; fabricated failures certified: "
                         f"{counts['fabricated_failures']}")
        for address, griefer in self.griefers.items():
            lines.append(f"  griefer of {address[:10]}: {griefer.waves} waves, "
                         f"{griefer.sent} attempts, {griefer.served} served")
        return lines


class AdversarialDevnet(AdversarialMixin, ScenarioDevnet):
    """``ScenarioDevnet`` (every role in this process) with the cast's dishonest daemons."""

    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(scenario=scenario, **kwargs)
        self._init_adversary()

    def gateway_config(self, identity: Identity) -> GatewayConfig:
        return self.adversarial_gateway(super().gateway_config(identity))

    def make_mixer(self, index: int, identity: Identity, port: int) -> MixerDaemon:
        behaviours = self.cast.mixer_behaviours(index)
        if not behaviours:
            return super().make_mixer(index, identity, port)
        return ByzantineMixer(identity, self.gateway(identity),
                              self.data_dir / f"mixer-{identity.address[2:10]}",
                              validator_url=self.validator_url, port=port,
                              gateway_config=self.gateway_config(identity),
                              timing_lock=self.timing_lock,
                              behaviours=behaviours, friends=self.friends)

    def make_node(self, index: int, identity: Identity, data_dir: Path,
                  **options: Any) -> NodeDaemon:
        role = self.cast.node_role(index)
        if role is None:
            return super().make_node(index, identity, data_dir, **options)
        daemon = build_node(role, identity, self.gateway(identity), data_dir,
                            relay_host=self._relay_host if role == "relay" else None,
                            **options)
        if isinstance(daemon, RelayHost):
            self._relay_host = daemon
        return daemon


@dataclasses.dataclass
class RoleHandle(_NodeHandle):
    """A node of another process, with the class it declares (the hardware liar's GPU)."""

    declared: str = "cpu"

    @property
    def hardware_class_name(self) -> str:
        return self.declared


class AdversarialProcessDevnet(AdversarialMixin, ScenarioProcessDevnet):
    """``ScenarioProcessDevnet`` (every role its own process) with the cast's dishonest
    roles run by ``python -m dnanet.adversary``."""

    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(scenario=scenario, **kwargs)
        self._init_adversary()
        self._relay_pending: tuple[str, list[str], dict[str, str]] | None = None
        # A run longer than anvil keeps state for (~4,100 blocks) needs more kept: the
        # audit reads the registry at every round's first block since genesis.
        self.history_blocks = 0

    def node_name(self, index: int) -> str:
        return f"node-{self.node_ids[index].address[2:10]}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str], *,
               module: str = "dnanet.cli") -> None:
        args = list(args)
        if args[:2] == ["mixer", "run"]:
            index = next((i for i, m in enumerate(self.mixer_ids)
                          if name == f"mixer-{m.address[2:10]}"), None)
            interval = self.canary_interval_s()
            if interval is not None:
                args += ["--canary-interval", f"{interval:g}"]
            behaviours = self.cast.mixer_behaviours(index) if index is not None else ()
            if behaviours:
                module = "dnanet.adversary"
                args += ["--byzantine", ",".join(behaviours)]
                for friend in sorted(self.friends):
                    args += ["--friend", friend]
        elif args[:2] == ["node", "run"]:
            index = next((i for i in range(len(self.node_ids)) if name == self.node_name(i)),
                         None)
            role = self.cast.node_role(index) if index is not None else None
            if role is not None:
                module = "dnanet.adversary"
                args += ["--cheat", role]
                if role == "relay":
                    if self._relay_pending is None:  # the host: waits for its front
                        self._relay_pending = (name, args, env)
                        return
                    host, host_args, host_env = self._relay_pending
                    self._relay_pending = None
                    front_args = _relay_front_args(args)
                    super()._spawn(host, [*host_args, *front_args], host_env, module=module)
                    self.processes.append((name, self.process(host)))
                    self.commands[name] = self.commands[host]
                    return
        super()._spawn(name, args, env, module=module)

    async def setup(self) -> None:
        await super().setup()
        chain = self.gateway(None)

        def declared() -> list[str]:
            return ["gpu" if (r := chain.node(n.address)) is not None
                    and r.hardware_class == CLASS_GPU else "cpu" for n in self.node_ids]

        classes = await asyncio.to_thread(declared)
        self.node_views = [RoleHandle(i, self.roles.get(i.address, p), self.hardware,
                                      self.gateway(i), declared=c)
                           for i, p, c in zip(self.node_ids, self.profiles, classes,
                                              strict=True)]


def _relay_front_args(args: Sequence[str]) -> list[str]:
    """The relay options naming a front's keystore, data directory and port (from the
    ``node run`` arguments the devnet would have started it with)."""
    def value(option: str) -> str:
        return args[list(args).index(option) + 1]

    out = ["--relay-keystore", value("--keystore"), "--relay-data-dir", value("--data-dir"),
           "--relay-port", value("--port")]
    if "--public-url" in args:
        out += ["--relay-public-url", value("--public-url")]
    return out


def build_adversarial_devnet(scenario: Scenario, *, chain: str, keystore: Path | None,
                             **kwargs: Any) -> ScenarioDevnet | ScenarioProcessDevnet:
    """The devnet that plays ``scenario`` with its dishonest parts."""
    if chain == "embedded":
        return AdversarialDevnet(scenario=scenario, **kwargs)
    return AdversarialProcessDevnet(scenario=scenario, chain=chain, keystore=keystore, **kwargs)


__all__ = ["AdversarialDevnet", "AdversarialMixin", "AdversarialProcessDevnet",
           "build_adversarial_devnet", "needs_adversary"]
