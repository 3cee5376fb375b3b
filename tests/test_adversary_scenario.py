"""The adversarial scenario as data, its devnets' wiring, and the figures it proves: a cast
refused with what is wrong, the process devnet's command lines (a relay is one process, a
Byzantine mixer runs ``python -m dnanet.adversary``), the runner's usage errors, the table's
explanations and ``compute_figures`` over made-up evidence."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from dnanet.adversary.__main__ import main as adversary_main
from dnanet.adversary.devnet import (
    AdversarialDevnet,
    AdversarialProcessDevnet,
    _relay_front_args,
    needs_adversary,
)
from dnanet.adversary.proof import Evidence, compute_figures, explain_node_epoch
from dnanet.adversary.roles import DETECTION, NODE_CHEATS, NODE_ROLES
from dnanet.devnet_scenario import ScenarioProcessDevnet, build_scenario_devnet
from dnanet.errors import ConfigError
from dnanet.gateway.app import GatewayConfig
from dnanet.params import TEST
from dnanet.scenarios import ADVERSARIAL, CHURN, Cast, verify_scenario
from validator_helpers import DOMAIN


def test_the_adversarial_scenario_is_valid_and_casts_every_cheat() -> None:
    verify_scenario(ADVERSARIAL)
    roles = {r for _, r in ADVERSARIAL.cast.nodes}
    assert roles == set(NODE_ROLES)
    assert set(DETECTION) == set(NODE_CHEATS)
    assert needs_adversary(ADVERSARIAL) and not needs_adversary(CHURN)


@pytest.mark.parametrize(("cast", "says"), [
    (Cast(nodes=((0, "wizard"),)), "unknown node roles ['wizard']"),
    (Cast(nodes=((0, "lazy"), (0, "replayer"))), "distinct genesis nodes"),
    (Cast(nodes=((99, "lazy"),)), "distinct genesis nodes"),
    (Cast(nodes=((0, "relay"),)), "a relay is two identities"),
    (Cast(mixers=((0, ("inflate",)), (1, ("fabricate",)))), "at most f of 3f + 1 (1)"),
    (Cast(mixers=((0, ("steal",)),)), "behaviours ['steal']"),
    (Cast(mixers=((0, ()),)), "behaviours (none)"),
    (Cast(mixers=((7, ("inflate",)),)), "distinct genesis mixers"),
    (Cast(friends=(50,)), "friends must be genesis nodes"),
    (Cast(canary_rounds=0), "canary_rounds must be positive"),
])
def test_a_bad_cast_is_refused_naming_what_is_wrong(cast: Cast, says: str) -> None:
    with pytest.raises(ConfigError, match=r"cast") as refused:
        verify_scenario(dataclasses.replace(ADVERSARIAL, cast=cast))
    assert says in str(refused.value)


def test_the_scenario_devnet_is_the_adversarial_one_when_there_are_dishonest_parts(
        tmp_path: Path) -> None:
    devnet = build_scenario_devnet(ADVERSARIAL, chain="embedded", keystore=None, preset=TEST,
                                   data_dir=tmp_path, out=lambda _: None)
    assert isinstance(devnet, AdversarialDevnet)
    roles = sorted(devnet.roles.values())
    assert roles == sorted(r for _, r in ADVERSARIAL.cast.nodes)
    assert devnet.friends == {devnet.node_ids[1].address}
    assert list(devnet.byzantine) == [devnet.mixer_ids[3].address]
    # Every mixer's gateway sends canaries every two rounds, and refreshes twice as often.
    config = devnet.adversarial_gateway(GatewayConfig())
    round_s = TEST.round_blocks * TEST.block_interval_ms / 1000
    assert config.canary_interval_s == pytest.approx(2 * round_s)
    assert config.refresh_s == pytest.approx(round_s)
    assert "lazy@0" in devnet.role(devnet.node_ids[4].address, 0)


def test_the_process_devnet_runs_dishonest_roles_through_the_adversary_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[tuple[str, list[str], str]] = []

    def spawn(self: Any, name: str, args: list[str], env: dict[str, str], *,
              module: str = "dnanet.cli") -> None:
        spawned.append((name, args, module))
        self.processes.append((name, object()))
        self.commands[name] = (args, env, module)

    monkeypatch.setattr(ScenarioProcessDevnet, "_spawn", spawn)
    devnet = AdversarialProcessDevnet(scenario=ADVERSARIAL, chain="anvil", keystore=None,
                                      preset=TEST, data_dir=tmp_path, out=lambda _: None)

    def node_args(index: int) -> list[str]:
        return ["node", "run", "--keystore", f"k{index}", "--data-dir", f"d{index}",
                "--port", str(9000 + index), "--profile", "normal"]

    for index in range(len(devnet.node_ids)):
        devnet._spawn(devnet.node_name(index), node_args(index), {})
    for index, mixer in enumerate(devnet.mixer_ids):
        devnet._spawn(f"mixer-{mixer.address[2:10]}", ["mixer", "run", "--port", str(index)],
                      {})
    by_name = {name: (args, module) for name, args, module in spawned}
    honest, honest_module = by_name[devnet.node_name(0)]
    assert honest_module == "dnanet.cli" and "--cheat" not in honest
    lazy, lazy_module = by_name[devnet.node_name(4)]
    assert lazy_module == "dnanet.adversary" and lazy[-2:] == ["--cheat", "lazy"]
    # The relay's two identities are one process: the host's, serving the front's too.
    assert devnet.node_name(8) not in by_name
    host, _ = by_name[devnet.node_name(7)]
    assert host[-6:] == ["--relay-keystore", "k8", "--relay-data-dir", "d8",
                         "--relay-port", "9008"]
    assert dict(devnet.processes)[devnet.node_name(8)] is dict(devnet.processes)[
        devnet.node_name(7)]
    honest_mixer, module = by_name[f"mixer-{devnet.mixer_ids[0].address[2:10]}"]
    assert module == "dnanet.cli" and "--canary-interval" in honest_mixer
    faulty, module = by_name[f"mixer-{devnet.mixer_ids[3].address[2:10]}"]
    assert module == "dnanet.adversary"
    assert faulty[faulty.index("--byzantine") + 1] == ",".join(ADVERSARIAL.cast.mixers[0][1])
    assert faulty[faulty.index("--friend") + 1] == devnet.node_ids[1].address


def test_a_relay_fronts_options_come_from_its_command_line() -> None:
    args = ["node", "run", "--keystore", "k", "--data-dir", "d", "--port", "1",
            "--public-url", "http://x"]
    assert _relay_front_args(args) == ["--relay-keystore", "k", "--relay-data-dir", "d",
                                       "--relay-port", "1", "--relay-public-url", "http://x"]


@pytest.mark.parametrize(("argv", "says"), [
    (["node", "run", "--rpc", "x", "--deployment", "d", "--keystore", "k", "--data-dir", "x"],
     "--cheat ROLE is required"),
    (["mixer", "run", "--rpc", "x", "--deployment", "d", "--keystore", "k", "--data-dir", "x",
      "--validator", "v"], "--byzantine BEHAVIOURS is required"),
    (["mixer", "run", "--rpc", "x", "--deployment", "d", "--keystore", "k", "--data-dir", "x",
      "--validator", "v", "--byzantine", "steal"], "--byzantine: unknown behaviour 'steal'"),
    (["node", "status", "--validator", "v", "--address", "0x" + "11" * 20],
     "runs `node run` or `mixer run` only"),
])
def test_the_runner_refuses_what_it_cannot_run(argv: list[str], says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert adversary_main(argv) == 2
    assert says in capsys.readouterr().err


# -- what the table and the benchmark say ---------------------------------------------------------


def report(outcome: str, mixer: str = "0xm", reason: str = "") -> dict[str, Any]:
    return {"outcome": outcome, "mixer": mixer, "reason": reason}


def test_the_table_says_why_a_cheater_earned_nothing() -> None:
    fraud = {"challenges": 3, "fraud": True, "strike": True, "reports": [
        report("TIMEOUT", reason="no answer"), report("WRONG_ANSWER", reason="signed a wrong row"),
        report("OK")]}
    assert explain_node_epoch(fraud, TEST).startswith(
        'fraud: 2/3 failed (1 TIMEOUT, 1 WRONG_ANSWER) ("signed a wrong row")')
    strike = {"challenges": 2, "fraud": False, "strike": True, "reports": [
        report("CANARY_FAILED", reason="canary m: cosine 0.1"), report("CANARY_FAILED")]}
    assert "strike: 2/2 failed (2 CANARY_FAILED), more than 1/3" in \
        explain_node_epoch(strike, TEST)
    assert explain_node_epoch(None, TEST).startswith("no certified challenge")


def evidence(**changes: Any) -> Evidence:
    """Two epochs of four nodes: honest h1, h2 (h1 griefed), a lazy node, a relay pair."""
    def detail(reward: int, *reports: dict[str, Any], strike: bool = False) -> dict[str, Any]:
        return {"reward": reward, "challenges": len(reports), "fraud": False,
                "strike": strike, "reports": list(reports)}

    base = dict(
        preset=TEST, domain=DOMAIN, mixers=4, epochs=[0, 1],
        roles={"0xlazy": "lazy", "0xr1": "relay", "0xr2": "relay"}, honest=["0xh1", "0xh2"],
        byzantine={"0xbad": ("fabricate",)}, friends=frozenset(), griefed=["0xh1"],
        breakdowns={
            0: {"0xh1": detail(300, report("OK"), report("TIMEOUT", mixer="0xbad")),
                "0xh2": detail(300, report("OK")), "0xlazy": detail(0, report("WRONG_ANSWER")),
                "0xr1": detail(200, report("OK")), "0xr2": detail(200, report("OK"))},
            1: {"0xh1": detail(250, report("OK")), "0xh2": detail(250, report("OK")),
                "0xlazy": None, "0xr1": detail(250, report("OK")),
                "0xr2": detail(250, report("OK"))}},
        certificates={0: [], 1: []},
        punishments={0: [{"punishment": {"node": "0xlazy",
                                         "slashBps": TEST.fraud_slash_bps}}], 1: []},
        totals={0: 1000, 1: 1000}, lags={0: 10, 1: 12}, jailed={"0xlazy": True},
        stranger_sent=40, stranger_served=0)
    base.update(changes)
    return Evidence(**base)  # type: ignore[arg-type]


def test_the_figures_of_a_run_where_every_defence_held() -> None:
    figures = compute_figures(evidence())
    assert figures["cheater_reward_share"] == 0
    assert (figures["cheaters_punished_on_chain"], figures["detectable_cheats"],
            figures["punished_within_two_epochs"]) == (1, 1, 1)
    assert figures["griefed_node_failed_challenges"] == 0  # the faulty mixer's is not his
    assert figures["settlement_stalled_epochs"] == figures["stranger_requests_served"] == 0
    relay = figures["detail"]["cheats"]["relay"]
    assert relay["reward_share"] == 0.45 and relay["detectable"] is False
    assert figures["detail"]["undetectable"] == ["relay"]
    assert figures["detail"]["honest_node_reward_share_median"] == 0.275


def test_the_figures_show_each_defence_that_did_not_hold() -> None:
    broken = evidence(
        breakdowns={e: {**evidence().breakdowns[e], "0xlazy": {
            "reward": 100, "challenges": 1, "fraud": False, "strike": False,
            "reports": [report("OK")]}} for e in (0, 1)},
        punishments={0: [], 1: []}, jailed={}, lags={0: 10, 1: 10, 2: 200},
        stranger_served=3)
    broken.breakdowns[1]["0xh1"] = {"reward": 0, "challenges": 2, "fraud": False,
                                    "strike": True,
                                    "reports": [report("OK"), report("TIMEOUT", mixer="0xm2")]}
    figures = compute_figures(broken)
    assert figures["cheater_reward_share"] == 0.1
    assert figures["cheaters_punished_on_chain"] == figures["punished_within_two_epochs"] == 0
    assert figures["griefed_node_failed_challenges"] == 1
    assert figures["honest_node_strikes"] == 1
    assert figures["settlement_stalled_epochs"] == 1
    assert figures["stranger_requests_served"] == 3
