"""End-to-end: the ``churn`` scenario played on a whole network in this process (the devnet's
``ScenarioDevnet`` on the embedded EVM, the test preset, see ``tests/e2e_helpers.py``).

Over seven epochs: a node goes down and stays registered (struck three epochs running, then
punished), a node signs one wrong product (punished for fraud), two nodes join after genesis
and one unbonds, leaves and withdraws, a mixer and the Validator are killed and restarted, a
fifth mixer joins the set, and each epoch a burst of requests crosses mixer 0's gateway while
it refreshes its node view. Every epoch must settle and audit; the punished nodes must be
jailed on chain and never challenged once their jail has landed; the joined nodes must be
challenged and paid.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dnanet.protocol.messages import Outcome
from dnanet.protocol.schedule import RoundId, compute_epoch, compute_round_start_block
from dnanet.scenarios import CHURN
from e2e_helpers import E2E_PRESET, ZERO_ROOT, E2EScenarioDevnet, run_epochs

pytestmark = pytest.mark.slow

SCENARIO = CHURN.with_burst(requests=60, concurrency=8)
EPOCHS = SCENARIO.epochs
FAILING, CHEATER, LEAVER = 5, 4, 3
JOINERS = (6, 7)
ADDED_MIXER = 4


def challenges(devnet: E2EScenarioDevnet, address: str, epoch: int) -> int:
    detail = devnet.breakdowns[epoch].get(address)
    return int(detail["challenges"]) if detail else 0


def fired_epoch(devnet: E2EScenarioDevnet, action: str, target: int) -> int:
    """The epoch in which the event ``action target`` really fired (a busy host fires late)."""
    (fired,) = [f for f in devnet.fired if (f.event.action, f.event.target) == (action, target)]
    return compute_epoch(fired.block, devnet.preset, devnet.genesis)


def rounds_challenged(devnet: E2EScenarioDevnet, certificates: dict[int, list[Any]],
                      address: str) -> list[int]:
    """The first block of every round in which a certified report challenged ``address``."""
    return sorted(compute_round_start_block(RoundId(r.epoch, r.round), devnet.preset,
                                            devnet.genesis)
                  for certs in certificates.values() for c in certs for r in c.reports
                  if r.node == address)


def test_churn_settles_every_epoch_punishes_and_pays_joiners(tmp_path: Path) -> None:
    devnet = E2EScenarioDevnet(scenario=SCENARIO, data_dir=tmp_path, label="churn",
                               gateway_refresh_s=0.1)
    address = {i: devnet.scenario_node(i).address for i in range(8)}

    async def main() -> dict[str, Any]:
        try:
            await run_epochs(devnet, EPOCHS, timeout_s=600)
            client = devnet.gateway(None).client

            def chain_state() -> dict[str, Any]:
                return {
                    "settled": {e: client.settlement(e) for e in range(EPOCHS)},
                    "records": {i: client.node_info(a) for i, a in address.items()},
                    "at_genesis": {i: client.node_info(a, block=devnet.genesis)
                                   for i, a in address.items()},
                    "members": {e: client.mixer_set(e).addresses for e in range(EPOCHS)},
                    "balances": {i: client.balance_of(a) for i, a in address.items()},
                }

            state = await asyncio.to_thread(chain_state)
            state["punishments"] = {
                e: (await devnet.get_json(f"/v1/epochs/{e}"))["punishments"]
                for e in range(EPOCHS)}
            state["jailed_at"] = {
                p["punishment"]["node"]: int(client.w3.eth.get_transaction_receipt(
                    p["tx"])["blockNumber"])
                for e in range(EPOCHS) for p in state["punishments"][e] if p["tx"]}
            state["certificates"] = {e: await devnet.certificates(e) for e in range(EPOCHS)}
            mixer0 = devnet.mixer_daemons[0].ai_gateway
            assert mixer0 is not None
            state["in_flight"] = mixer0.scheduler.in_flight()
            return state
        finally:
            await devnet.stop()

    state = asyncio.run(main())

    # Every scripted event fired, in its epoch, and worked.
    scheduled = Counter((e, ev.describe()) for e in range(EPOCHS)
                        for ev in SCENARIO.events_in(e))
    assert Counter((f.epoch, f.event.describe()) for f in devnet.fired) == scheduled
    assert [f for f in devnet.fired if not f.ok] == []

    # Every epoch settled on chain as published, audited, paid its whole emission.
    assert [s.epoch for s in devnet.summaries] == list(range(EPOCHS))
    for epoch, summary in enumerate(devnet.summaries):
        settled = state["settled"][epoch]
        assert settled is not None and summary.audit_ok
        assert "0x" + settled.rewards_root.hex() == summary.root != ZERO_ROOT
        assert settled.total == summary.total == E2E_PRESET.epoch_emission(epoch)
        rewards = [int(d["reward"]) for d in devnet.breakdowns[epoch].values() if d]
        assert sum(rewards) == settled.total

    # The node that went down (in epoch 1): struck in that epoch and the next two, punished
    # when the third settled, jailed and slashed, never challenged once the jail landed.
    failing = address[FAILING]
    down = fired_epoch(devnet, "fail", FAILING)
    punished = down + E2E_PRESET.strikes_to_punish - 1
    assert punished <= EPOCHS - 2
    assert all(devnet.breakdowns[e][failing]["strike"] for e in range(down, punished + 1))
    (strike,) = [p for e in range(EPOCHS) for p in state["punishments"][e]
                 if p["punishment"]["node"] == failing]
    assert strike["punishment"]["epoch"] == punished and strike["status"] == "submitted"
    assert strike["punishment"]["slashBps"] == E2E_PRESET.strike_slash_bps
    assert state["records"][FAILING].jailed
    # A round is judged by the registry at its first block: none after the jail's block.
    assert max(rounds_challenged(devnet, state["certificates"], failing)) <= \
        state["jailed_at"][failing]
    assert state["jailed_at"][failing] < compute_round_start_block(
        RoundId(EPOCHS - 1, 0), devnet.preset, devnet.genesis)
    assert challenges(devnet, failing, EPOCHS - 1) == 0

    # The cheater: one wrong product, ever; punished for fraud in that epoch, jailed and
    # slashed, then never challenged again.
    cheater = address[CHEATER]
    wrong = [(e, r) for e in range(EPOCHS)
             for r in (devnet.breakdowns[e][cheater] or {}).get("reports", [])
             if r["outcome"] == Outcome.WRONG_ANSWER.name]
    assert len(wrong) == 1
    fraud_epoch = wrong[0][0]
    assert fraud_epoch >= 1 and devnet.breakdowns[fraud_epoch][cheater]["fraud"]
    (fraud,) = [p for e in range(EPOCHS) for p in state["punishments"][e]
                if p["punishment"]["node"] == cheater]
    assert fraud["punishment"]["epoch"] == fraud_epoch
    assert fraud["punishment"]["slashBps"] == E2E_PRESET.fraud_slash_bps
    record = state["records"][CHEATER]
    assert record.jailed and record.stake < E2E_PRESET.min_stake
    assert max(rounds_challenged(devnet, state["certificates"], cheater)) <= \
        state["jailed_at"][cheater]
    assert challenges(devnet, cheater, EPOCHS - 1) == 0

    # The joiners: not registered at genesis; challenged and paid from the epoch after they
    # joined, and their claims paid.
    for index in JOINERS:
        joiner = address[index]
        joined = fired_epoch(devnet, "join", index)
        assert not state["at_genesis"][index].registered
        assert state["records"][index].registered and state["records"][index].active
        # Challenged and paid after it joined (not in every epoch: on a busy host co-signers
        # refuse reports whose timings stray from the others', as for any node).
        after = [devnet.breakdowns[e][joiner] or {} for e in range(joined + 1, EPOCHS)]
        assert sum(int(d.get("challenges", 0)) for d in after) > 0
        assert sum(int(d.get("reward", 0)) for d in after) > 0, \
            [(d.get("challenges"), d.get("failures"), d.get("reward")) for d in after]
        assert devnet.claims[-1][joiner].claimed_after > 0

    # The leaver: unbonded (in epoch 2), not challenged from the next epoch on, its stake
    # withdrawn.
    leaver = address[LEAVER]
    unbonded = fired_epoch(devnet, "unbond", LEAVER)
    assert unbonded == 2
    assert all(challenges(devnet, leaver, e) == 0 for e in range(unbonded + 1, EPOCHS))
    assert not state["records"][LEAVER].registered
    assert state["records"][LEAVER].stake == 0

    # The fifth mixer: a member from the epoch after it was added (5, unless the host was
    # too busy to add it in time), certifying its own batches from then on.
    added = devnet.scenario_mixer(ADDED_MIXER).address
    member_from = devnet.members_from[ADDED_MIXER]
    assert member_from == fired_epoch(devnet, "add_mixer", ADDED_MIXER) + 1
    assert 5 <= member_from < EPOCHS
    assert [added in state["members"][e] for e in range(EPOCHS)] == \
        [e >= member_from for e in range(EPOCHS)]
    assert any(c.batch.mixer == added for e in range(member_from, EPOCHS)
               for c in state["certificates"][e])

    # The gateway: every request of every burst answered 200 (a node was always eligible),
    # requests were in flight across refreshes of the node view, and no count leaked.
    assert len(devnet.bursts) == EPOCHS
    for burst in devnet.bursts:
        assert burst.eligible > 0
        assert (burst.ok, dict(burst.failures)) == (burst.requests, {}), \
            (burst.epoch, burst.examples)
    spanned = [t for t in devnet.refreshes
               if any(b.started < t < b.ended for b in devnet.bursts)]
    assert spanned, "no refresh of the gateway's node view happened during a burst"
    assert state["in_flight"] == 0
