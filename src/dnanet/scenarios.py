"""Scenarios: the life of a network scripted as events by epoch (``dnanet devnet --scenario``).

A scenario is data. It says how many nodes register before genesis and how many join later,
how many mixers the set begins with and how many the owner adds, and lists events: an epoch, a
point in it (``at``, a fraction of the epoch: the event fires at the first block at or past
``epoch start + at * epoch_blocks``) and a named action on a node or a mixer. Nodes are
numbered ``0 .. nodes - 1`` (registered before genesis), then ``nodes .. nodes + joiners - 1``
(they join); mixers ``0 .. mixers - 1``, then those added. The devnet plays a scenario with
``dnanet.devnet_scenario``, the same way in one process and with every role its own process.

=================  ============================================================================
``join N``         node N gets ETH and DNA (bought from a holder) and starts: it registers
                   with the minimum stake, as ``dnanet node run --stake`` does
``unbond N``       ``dnanet node unbond``: from now on N is neither challenged nor paid
``leave N``        N's process stops for good (after unbonding: the node has left)
``withdraw N``     ``dnanet node withdraw``: the stake comes back once the delay has passed
``fail N``         N's process dies and stays down while N stays registered: its challenges
                   fail, an epoch of failures is a strike, enough strikes a punishment
``cheat N``        N signs one wrong product (its first compute challenge from the event on):
                   signed fraud, punished (jail and slash) when the epoch settles
``kill_mixer M``   mixer M dies (SIGKILL when it is a process); ``restart_mixer M`` starts it
                   again on the same data directory and port
``add_mixer M``    the MixerSet's owner adds mixer M (``dnanet contracts add-mixer``): a member
                   from the next epoch on; its daemon starts at once
``kill_validator`` the Validator dies; ``restart_validator`` starts it again on the same data
                   directory and port
``burst M``        ``requests`` embeddings requests, ``concurrency`` at a time, through mixer
                   M's OpenAI-compatible endpoint
``grief N``        a stranger starts attacking node N (and the mixers' routes) and goes on
                   until the devnet stops (``dnanet.adversary.griefer``)
=================  ============================================================================

A scenario's ``cast`` names the parts that are not honest from genesis on: node cheats and
Byzantine mixers (``dnanet.adversary``), the nodes a Byzantine mixer favours, and how often
the mixers send canaries.

An event with ``every = k > 0`` fires again every ``k`` epochs after its first (bursts).
``verify_scenario`` checks a scenario before anything runs: targets in range, joiners join
once and before anything else happens to them, mixers added in order, kills and restarts
alternating. A second scenario plugs in by being a ``Scenario`` value in ``SCENARIOS``; an
action it needs beyond these is a name added to ``ACTIONS`` (with its target kind, and a
``MARKS`` entry for a node's) and a ``do_<name>`` method of ``dnanet.devnet_scenario``'s
``ScenarioMixin`` (with what differs between one process and many in its two devnets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from dnanet.errors import ConfigError
from dnanet.params import Preset
from dnanet.protocol.schedule import RoundId, compute_round_start_block

NODE_ACTIONS = ("join", "unbond", "leave", "withdraw", "fail", "cheat", "grief")
MIXER_ACTIONS = ("kill_mixer", "restart_mixer", "add_mixer", "burst")
VALIDATOR_ACTIONS = ("kill_validator", "restart_validator")
ACTIONS = NODE_ACTIONS + MIXER_ACTIONS + VALIDATOR_ACTIONS

MARKS = {"join": "joined", "unbond": "unbonded", "leave": "left", "withdraw": "withdrew",
         "fail": "down", "cheat": "cheated", "grief": "griefed"}
"""How a node action marks the node's row in the devnet's table (``joined@1``)."""


@dataclass(frozen=True)
class Burst:
    """``requests`` gateway requests, ``concurrency`` of them in flight at a time."""

    requests: int
    concurrency: int


@dataclass(frozen=True)
class Event:
    """One scripted action: at ``at`` (a fraction of the epoch) of ``epoch``, again every
    ``every`` epochs if ``every`` > 0."""

    epoch: int
    action: str
    target: int | None = None
    """The node or mixer the action is about (None for the Validator's)."""
    at: float = 0.0
    every: int = 0
    burst: Burst | None = None

    def fires_in(self, epoch: int) -> bool:
        """Whether the event fires in ``epoch``."""
        if epoch < self.epoch:
            return False
        if epoch == self.epoch:
            return True
        return self.every > 0 and (epoch - self.epoch) % self.every == 0

    def describe(self) -> str:
        """``join node 6``, ``kill_mixer mixer 1``, ``burst mixer 0 (1000 at 32)``."""
        if self.action in VALIDATOR_ACTIONS:
            return self.action
        kind = "node" if self.action in NODE_ACTIONS else "mixer"
        text = f"{self.action} {kind} {self.target}"
        if self.burst is not None:
            text += f" ({self.burst.requests} at {self.burst.concurrency})"
        return text


@dataclass(frozen=True)
class Cast:
    """Who plays a dishonest part from genesis on (``dnanet.adversary`` builds them)."""

    nodes: tuple[tuple[int, str], ...] = ()
    """(node, role): a cheat of ``dnanet.adversary.roles.NODE_ROLES`` (``relay`` nodes share
    one machine, the first of them hosting it; ``control`` is honest, the echo-fast node's
    twin)."""
    mixers: tuple[tuple[int, tuple[str, ...]], ...] = ()
    """(mixer, behaviours of ``dnanet.mixer.byzantine.Behaviour``), at most f of 3f + 1."""
    friends: tuple[int, ...] = ()
    """Nodes the Byzantine mixers favour (``inflate``; ``fabricate`` spares them)."""
    canary_rounds: float | None = None
    """Every mixer sends every node a canary this often, in rounds (None: the default)."""

    def node_role(self, index: int) -> str | None:
        return dict(self.nodes).get(index)

    def mixer_behaviours(self, index: int) -> tuple[str, ...]:
        return dict(self.mixers).get(index, ())


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    nodes: int
    """Nodes registered before genesis (numbered from 0)."""
    joiners: int
    """Nodes that join while the network runs (numbered from ``nodes``)."""
    mixers: int
    """Mixers in the set at genesis."""
    added_mixers: int
    """Mixers the owner adds (numbered from ``mixers``)."""
    events: tuple[Event, ...]
    epochs: int
    """Epochs the scenario needs to play out and show what follows (the last event's epoch
    and then some); the default of ``--epochs``."""
    cast: Cast = Cast()
    """The dishonest parts (none: everyone is honest, as in ``churn``)."""

    def events_in(self, epoch: int) -> list[Event]:
        """The events that fire in ``epoch``, in the order they fire (by ``at``, then as
        listed)."""
        return sorted((e for e in self.events if e.fires_in(epoch)), key=lambda e: e.at)

    def with_burst(self, requests: int, concurrency: int) -> Scenario:
        """The same scenario with every burst resized."""
        burst = Burst(requests, concurrency)
        return dataclasses.replace(self, events=tuple(
            dataclasses.replace(e, burst=burst) if e.action == "burst" else e
            for e in self.events))

    def node_marks(self, index: int) -> Iterator[tuple[int, str]]:
        """(epoch, mark) of every scripted event of node ``index`` (``joined``...)."""
        for event in self.events:
            if event.action in NODE_ACTIONS and event.target == index:
                yield event.epoch, MARKS[event.action]


def compute_fire_block(event: Event, epoch: int, preset: Preset, genesis_block: int) -> int:
    """The block from which ``event`` fires in ``epoch``."""
    start = compute_round_start_block(RoundId(epoch, 0), preset, genesis_block)
    return start + int(event.at * preset.epoch_blocks)


def verify_scenario(scenario: Scenario) -> None:
    """Raise ConfigError naming the event (``events[3]``) and what is wrong with it."""
    if scenario.nodes < 1 or scenario.mixers < 1:
        raise ConfigError("a scenario needs at least one node and one mixer at genesis",
                          field=f"scenario {scenario.name}")
    if min(scenario.joiners, scenario.added_mixers) < 0 or scenario.epochs < 1:
        raise ConfigError("joiners and added mixers cannot be negative, epochs must be "
                          "positive", field=f"scenario {scenario.name}")
    nodes = scenario.nodes + scenario.joiners
    mixers = scenario.mixers + scenario.added_mixers
    joined: dict[int, tuple[int, float]] = {}
    added: dict[int, tuple[int, float]] = {}
    down_mixers: set[int] = set()
    validator_down = False
    ordered = sorted(enumerate(scenario.events), key=lambda p: (p[1].epoch, p[1].at, p[0]))
    for index, event in ordered:
        where = f"scenario {scenario.name}: events[{index}] ({event.action})"
        when = (event.epoch, event.at)
        if event.action not in ACTIONS:
            raise ConfigError(f"unknown action; choose one of {', '.join(ACTIONS)}", field=where)
        if event.epoch < 0 or not 0 <= event.at < 1 or event.every < 0:
            raise ConfigError("epoch and every must be non-negative, at in [0, 1)", field=where)
        if (event.action == "burst") != (event.burst is not None):
            raise ConfigError("a burst, and only a burst, gives requests and concurrency",
                              field=where)
        if event.burst is not None and min(event.burst.requests, event.burst.concurrency) < 1:
            raise ConfigError("requests and concurrency must be positive", field=where)
        if event.every and event.action != "burst":
            raise ConfigError("only bursts repeat", field=where)
        if event.action in VALIDATOR_ACTIONS:
            if event.target is not None:
                raise ConfigError("the Validator's actions take no target", field=where)
            if validator_down != (event.action == "restart_validator"):
                raise ConfigError("kill_validator and restart_validator must alternate, "
                                  "beginning with a kill", field=where)
            validator_down = not validator_down
            continue
        target = event.target
        if target is None or target < 0:
            raise ConfigError("needs a target (a node or mixer number)", field=where)
        if event.action in NODE_ACTIONS:
            if target >= nodes:
                raise ConfigError(f"node {target} does not exist ({nodes} nodes)", field=where)
            if event.action == "join":
                if target < scenario.nodes or target in joined:
                    raise ConfigError(f"node {target} is not a joiner that has yet to join "
                                      f"(joiners are {scenario.nodes}..{nodes - 1})", field=where)
                joined[target] = when
            elif target >= scenario.nodes and target not in joined:
                raise ConfigError(f"node {target} has not joined yet", field=where)
            continue
        if target >= mixers:
            raise ConfigError(f"mixer {target} does not exist ({mixers} mixers)", field=where)
        if event.action == "add_mixer":
            if target != scenario.mixers + len(added):
                raise ConfigError(f"mixers are added in order: the next one is "
                                  f"{scenario.mixers + len(added)}", field=where)
            added[target] = when
            continue
        if target >= scenario.mixers and target not in added:
            raise ConfigError(f"mixer {target} has not been added yet", field=where)
        if event.action == "kill_mixer":
            if target in down_mixers:
                raise ConfigError(f"mixer {target} is down already", field=where)
            down_mixers.add(target)
        elif event.action == "restart_mixer":
            if target not in down_mixers:
                raise ConfigError(f"mixer {target} is not down", field=where)
            down_mixers.discard(target)
    verify_cast(scenario)
    missing = sorted(set(range(scenario.nodes, nodes)) - set(joined))
    if missing:
        raise ConfigError(f"joiners {missing} never join", field=f"scenario {scenario.name}")
    if len(added) != scenario.added_mixers:
        raise ConfigError(f"{scenario.added_mixers} mixers to add but {len(added)} add_mixer "
                          "events", field=f"scenario {scenario.name}")


def verify_cast(scenario: Scenario) -> None:
    """Raise ConfigError naming what is wrong with the scenario's cast: unknown roles or
    behaviours, a part given twice, a number out of range, more Byzantine mixers than f."""
    from dnanet.adversary.roles import MIXER_BEHAVIOURS, NODE_ROLES

    cast, where = scenario.cast, f"scenario {scenario.name}: cast"
    numbers = [n for n, _ in cast.nodes]
    if len(set(numbers)) != len(numbers) or any(not 0 <= n < scenario.nodes for n in numbers):
        raise ConfigError(f"node roles need distinct genesis nodes 0..{scenario.nodes - 1}",
                          field=where)
    unknown = sorted({r for _, r in cast.nodes} - set(NODE_ROLES))
    if unknown:
        raise ConfigError(f"unknown node roles {unknown}; choose from {', '.join(NODE_ROLES)}",
                          field=where)
    if [r for _, r in cast.nodes].count("relay") == 1:
        raise ConfigError("a relay is two identities or more on one machine", field=where)
    byzantine = [m for m, _ in cast.mixers]
    if len(set(byzantine)) != len(byzantine) or any(
            not 0 <= m < scenario.mixers for m in byzantine):
        raise ConfigError(f"Byzantine mixers need distinct genesis mixers "
                          f"0..{scenario.mixers - 1}", field=where)
    if len(byzantine) > (scenario.mixers - 1) // 3:
        raise ConfigError(f"{len(byzantine)} Byzantine mixers of {scenario.mixers}: at most f "
                          f"of 3f + 1 ({(scenario.mixers - 1) // 3})", field=where)
    for _, behaviours in cast.mixers:
        wrong = sorted(set(behaviours) - set(MIXER_BEHAVIOURS))
        if wrong or not behaviours:
            raise ConfigError(f"behaviours {wrong or '(none)'}: choose from "
                              f"{', '.join(MIXER_BEHAVIOURS)}", field=where)
    if any(not 0 <= f < scenario.nodes for f in cast.friends):
        raise ConfigError("friends must be genesis nodes", field=where)
    if cast.canary_rounds is not None and not cast.canary_rounds > 0:
        raise ConfigError("canary_rounds must be positive", field=where)


def verify_scenario_preset(scenario: Scenario, preset: Preset) -> None:
    """Raise ConfigError if ``preset`` cannot play ``scenario``: a withdrawal scripted before
    the preset's unbonding delay has passed."""
    unbonded: dict[int, int] = {}
    for event in sorted(scenario.events, key=lambda e: (e.epoch, e.at)):
        if event.action == "unbond" and event.target is not None:
            unbonded[event.target] = event.epoch
        if event.action == "withdraw" and event.target is not None:
            since = unbonded.get(event.target)
            if since is None or event.epoch < since + preset.unbond_epochs:
                raise ConfigError(
                    f"node {event.target} withdraws in epoch {event.epoch}, before its "
                    f"unbonding delay ({preset.unbond_epochs} epochs of preset {preset.name}) "
                    "has passed", field=f"scenario {scenario.name}")


CHURN_BURST = Burst(requests=1_000, concurrency=32)

CHURN = Scenario(
    name="churn",
    summary="nodes join, one unbonds and leaves, one fails until punished, one cheats once "
    "and is slashed; a mixer and the Validator are killed and restarted, a fifth mixer joins; "
    "a gateway burst every epoch",
    nodes=6, joiners=2, mixers=4, added_mixers=1,
    events=(
        Event(0, "burst", 0, at=0.3, every=1, burst=CHURN_BURST),
        # Down from epoch 1 on: strikes in epochs 1, 2 and 3 (strikes_to_punish), punished
        # when epoch 3 settles, jailed early in epoch 4, never challenged again.
        Event(1, "fail", 5),
        # Cheats in epoch 1, punished when it settles: jailed and slashed early in epoch 2.
        Event(1, "cheat", 4),
        Event(1, "join", 6, at=0.25),
        Event(2, "unbond", 3, at=0.25),
        Event(2, "kill_mixer", 1, at=0.3),
        Event(2, "leave", 3, at=0.6),
        Event(2, "restart_mixer", 1, at=0.7),
        Event(3, "join", 7, at=0.25),
        Event(3, "kill_validator", at=0.4),
        Event(3, "withdraw", 3, at=0.5),
        Event(3, "restart_validator", at=0.6),
        # A member from epoch 5: epochs 5 on settle with four of five signatures.
        Event(4, "add_mixer", 4, at=0.1),
    ),
    epochs=7,
)

ADVERSARIAL_BURST = Burst(requests=200, concurrency=8)

ADVERSARIAL = Scenario(
    name="adversarial",
    summary="beside three honest nodes: a lazy node, a replayer, a hardware liar, a relay "
    "(two identities, one machine), a model swapper, a selective node and an echo-fast node "
    "with its honest twin; one mixer of four Byzantine in every way at once (inflates node "
    "1's scores, fabricates reports, equivocates, refuses to co-sign, withholds its "
    "settlement signature); a griefer attacks node 0 and the mixers' routes; a gateway burst "
    "every epoch",
    nodes=12, joiners=0, mixers=4, added_mixers=0,
    events=(
        Event(0, "grief", 0),
        Event(0, "burst", 0, at=0.3, every=1, burst=ADVERSARIAL_BURST),
    ),
    # The swapper's strikes in epochs 0, 1 and 2 (strikes_to_punish) are punished when epoch
    # 2 settles: it is jailed early in epoch 3.
    epochs=4,
    cast=Cast(
        nodes=((3, "control"), (4, "lazy"), (5, "replayer"), (6, "gpu-liar"), (7, "relay"),
               (8, "relay"), (9, "swapper"), (10, "selective"), (11, "echo-fast")),
        mixers=((3, ("inflate", "fabricate", "refuse-cosign", "equivocate",
                     "withhold-settlement")),),
        friends=(1,),
        # Two rounds: a mixer challenges a given node about every four rounds, so a wrong
        # canary answer precedes most of a swapper's reports.
        canary_rounds=2.0,
    ),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (CHURN, ADVERSARIAL)}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ConfigError(f"unknown scenario {name!r}; choose one of {sorted(SCENARIOS)}",
                          field="scenario") from None


__all__ = [
    "ACTIONS",
    "ADVERSARIAL",
    "CHURN",
    "SCENARIOS",
    "Burst",
    "Cast",
    "Event",
    "Scenario",
    "compute_fire_block",
    "get_scenario",
    "verify_cast",
    "verify_scenario",
    "verify_scenario_preset",
]
