"""Scenarios as data (``dnanet.scenarios``): when each event fires, and every refusal of
``verify_scenario`` naming the event and what is wrong."""

from __future__ import annotations

import dataclasses

import pytest

from dnanet.errors import ConfigError
from dnanet.params import LOCAL, MAINNET, TEST
from dnanet.protocol.schedule import compute_epoch
from dnanet.scenarios import (
    CHURN,
    SCENARIOS,
    Burst,
    Event,
    Scenario,
    compute_fire_block,
    get_scenario,
    verify_scenario,
    verify_scenario_preset,
)

BASE = Scenario(name="t", summary="", nodes=3, joiners=1, mixers=2, added_mixers=1,
                events=(Event(1, "join", 3), Event(2, "add_mixer", 2)), epochs=4)


def with_events(*events: Event, **changes: int) -> Scenario:
    return dataclasses.replace(BASE, events=BASE.events + events, **changes)


@pytest.mark.parametrize("preset", [LOCAL, TEST])
def test_every_scenario_is_valid_on_the_devnet_presets(preset: object) -> None:
    for scenario in SCENARIOS.values():
        verify_scenario(scenario)
        verify_scenario_preset(scenario, preset)  # type: ignore[arg-type]


def test_churn_scripts_what_the_soak_needs() -> None:
    actions = [(e.action, e.target) for e in CHURN.events]
    for needed in ("fail", "cheat", "unbond", "leave", "withdraw", "kill_mixer",
                   "restart_mixer", "kill_validator", "restart_validator", "add_mixer"):
        assert needed in {a for a, _ in actions}
    assert sum(1 for a, _ in actions if a == "join") == CHURN.joiners == 2
    assert CHURN.added_mixers == 1 and CHURN.mixers + CHURN.added_mixers == 5
    (burst,) = [e for e in CHURN.events if e.action == "burst"]
    assert burst.every == 1 and burst.burst == Burst(1_000, 32)
    # A mixer kill never overlaps the fifth mixer's membership: the quorum stays within
    # reach (3 of 4 up, or 4 of 5).
    kills = [e.epoch for e in CHURN.events if e.action == "kill_mixer"]
    added = [e.epoch for e in CHURN.events if e.action == "add_mixer"]
    assert max(kills) < min(added) + 1


def test_events_fire_in_their_epoch_in_order_and_bursts_repeat() -> None:
    assert [e.describe() for e in CHURN.events_in(0)] == ["burst mixer 0 (1000 at 32)"]
    two = [e.describe() for e in CHURN.events_in(2)]
    # By ``at``, then as listed (the burst and the kill share 0.3).
    assert two == ["unbond node 3", "burst mixer 0 (1000 at 32)", "kill_mixer mixer 1",
                   "leave node 3", "restart_mixer mixer 1"]
    assert [e.action for e in CHURN.events_in(50)] == ["burst"]
    every_third = Event(4, "burst", 0, every=3, burst=Burst(1, 1))
    assert [e for e in range(12) if every_third.fires_in(e)] == [4, 7, 10]
    assert Event(4, "join", 1).fires_in(4) and not Event(4, "join", 1).fires_in(5)


@pytest.mark.parametrize("preset", [LOCAL, TEST, MAINNET])
def test_an_event_fires_at_its_fraction_of_its_epoch(preset: object) -> None:
    genesis = 1_000
    event = Event(3, "kill_validator", at=0.5)
    block = compute_fire_block(event, 3, preset, genesis)  # type: ignore[arg-type]
    epoch_blocks = preset.epoch_blocks  # type: ignore[attr-defined]
    assert block == genesis + 3 * epoch_blocks + epoch_blocks // 2
    assert compute_epoch(block, preset, genesis) == 3  # type: ignore[arg-type]
    assert compute_fire_block(Event(0, "fail", 1), 7, preset, genesis) == \
        genesis + 7 * epoch_blocks  # type: ignore[arg-type]


def test_with_burst_resizes_only_bursts() -> None:
    small = CHURN.with_burst(10, 2)
    assert {e.burst for e in small.events if e.action == "burst"} == {Burst(10, 2)}
    assert [e for e in small.events if e.action != "burst"] == \
        [e for e in CHURN.events if e.action != "burst"]
    verify_scenario(small)


@pytest.mark.parametrize(("scenario", "message"), [
    (with_events(Event(1, "dance", 0)), "unknown action"),
    (with_events(Event(-1, "fail", 0)), "non-negative"),
    (with_events(Event(1, "fail", 0, at=1.0)), "at in [0, 1)"),
    (with_events(Event(1, "fail", 0, every=2)), "only bursts repeat"),
    (with_events(Event(1, "burst", 0)), "a burst, and only a burst"),
    (with_events(Event(1, "fail", 0, burst=Burst(1, 1))), "a burst, and only a burst"),
    (with_events(Event(1, "burst", 0, burst=Burst(0, 1))), "must be positive"),
    (with_events(Event(1, "fail")), "needs a target"),
    (with_events(Event(1, "fail", 9)), "node 9 does not exist"),
    (with_events(Event(1, "join", 0)), "not a joiner that has yet to join"),
    (with_events(Event(3, "join", 3)), "not a joiner that has yet to join"),
    (with_events(Event(0, "fail", 3)), "node 3 has not joined yet"),
    (with_events(Event(1, "kill_mixer", 7)), "mixer 7 does not exist"),
    (with_events(Event(1, "kill_mixer", 2)), "mixer 2 has not been added yet"),
    (with_events(Event(1, "restart_mixer", 0)), "mixer 0 is not down"),
    (with_events(Event(1, "kill_mixer", 0), Event(1, "kill_mixer", 0, at=0.5)),
     "mixer 0 is down already"),
    (with_events(Event(1, "restart_validator")), "must alternate"),
    (with_events(Event(1, "kill_validator"), Event(2, "kill_validator")), "must alternate"),
    (with_events(Event(1, "kill_validator", 0)), "take no target"),
    (dataclasses.replace(BASE, added_mixers=2,
                         events=(Event(1, "join", 3), Event(1, "add_mixer", 3))),
     "the next one is 2"),
    (dataclasses.replace(BASE, events=(Event(2, "add_mixer", 2),)), "joiners [3] never join"),
    (dataclasses.replace(BASE, events=(Event(1, "join", 3),)), "1 mixers to add but 0"),
    (dataclasses.replace(BASE, nodes=0), "at least one node"),
    (dataclasses.replace(BASE, epochs=0), "epochs must be positive"),
])
def test_verify_scenario_refuses_naming_the_event(scenario: Scenario, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        verify_scenario(scenario)
    assert message in str(raised.value)
    assert "scenario t" in str(raised.value)


def test_a_withdrawal_before_the_unbonding_delay_is_refused_for_that_preset() -> None:
    early = with_events(Event(1, "unbond", 0), Event(1, "withdraw", 0, at=0.5))
    verify_scenario(early)  # fine as data
    with pytest.raises(ConfigError, match=r"withdraws in epoch 1, before its unbonding delay "
                       r"\(7 epochs of preset mainnet\)"):
        verify_scenario_preset(early, MAINNET)
    never = with_events(Event(1, "withdraw", 0))
    with pytest.raises(ConfigError, match="before its unbonding delay"):
        verify_scenario_preset(never, TEST)
    verify_scenario_preset(with_events(Event(1, "unbond", 0), Event(2, "withdraw", 0)), TEST)


def test_an_unknown_scenario_names_the_known_ones() -> None:
    assert get_scenario("churn") is CHURN
    with pytest.raises(ConfigError,
                       match=r"unknown scenario 'chrun'; choose one of \['adversarial', 'churn'\]"):
        get_scenario("chrun")


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenario", "chrun"], "unknown scenario 'chrun'"),
    (["--scenario", "churn", "--nodes", "3"], "--scenario churn plays 6 nodes (and 2 that join) "
     "and 4 mixers unshaped: leave out --nodes, --mixers and --shape"),
    (["--scenario", "churn", "--mixers", "5"], "leave out --nodes, --mixers and --shape"),
])
def test_devnet_refuses_a_scenario_it_cannot_play_before_starting_anything(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from dnanet.cli import main

    assert main(["devnet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_scenario_devnet_numbers_its_nodes_and_mixers(tmp_path: object) -> None:
    from pathlib import Path

    from dnanet.devnet_scenario import ScenarioDevnet

    devnet = ScenarioDevnet(scenario=CHURN, preset=TEST, data_dir=Path(str(tmp_path)),
                            out=lambda _: None)
    devnet.genesis = 1_000
    assert (len(devnet.node_ids), len(devnet.joiner_ids)) == (6, 2)
    assert (len(devnet.mixer_ids), len(devnet.added_mixer_ids)) == (4, 1)
    assert devnet.profiles == ["normal"] * 6
    assert devnet.scenario_node(7) is devnet.joiner_ids[1]
    assert devnet.scenario_mixer(4) is devnet.added_mixer_ids[0]
    # The cheater signs its wrong product from the first block of epoch 1.
    assert devnet.cheat_blocks() == {devnet.node_ids[4].address: 1_000 + TEST.epoch_blocks}
    joiner = devnet.joiner_ids[0].address
    devnet.mark(joiner, 1, "joined")
    devnet.mark(joiner, 3, "punished(strikes)")
    assert devnet.role(joiner, 2) == "#6 joined@1"
    assert devnet.role(joiner, 3) == "#6 joined@1 punished(strikes)@3"
    with pytest.raises(ConfigError, match="before its unbonding delay"):
        ScenarioDevnet(scenario=CHURN, preset=MAINNET, data_dir=Path(str(tmp_path)),
                       out=lambda _: None)
