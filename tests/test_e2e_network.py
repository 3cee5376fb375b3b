"""End-to-end: a whole network running (embedded EVM, the Validator, four mixers and the nodes,
each on its own loopback port and event loop, SQLite per daemon) through settled epochs.

Every test starts its own network in a temporary directory (``E2EDevnet``, a ``Devnet`` with a
small preset and test hooks, see ``tests/e2e_helpers.py``) and checks what the chain and the
Validator's public API say afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

import dnanet.devnet
from dnanet.crypto.eip712 import recover_typed
from dnanet.errors import ConfigError
from dnanet.params import BPS_ONE, TEST, Preset
from dnanet.protocol.messages import Outcome
from dnanet.protocol.schedule import RoundId
from e2e_helpers import (
    E2E_PRESET,
    ZERO_ROOT,
    E2EDevnet,
    E2EMixin,
    E2EProcessDevnet,
    mixer_rounds,
    run_epochs,
)

pytestmark = pytest.mark.slow

NORMAL4 = ["normal"] * 4


async def check_settled(devnet: E2EDevnet, epoch: int) -> dict[str, Any]:
    """The epoch is settled on chain as the Validator published it: root non-zero, the whole
    emission paid, the rewards adding up; returns the Validator's epoch record."""
    info: dict[str, Any] = await devnet.get_json(f"/v1/epochs/{epoch}")
    settlement = info["settlement"]
    chain = await asyncio.to_thread(devnet.gateway(None).settled_epoch, epoch)
    assert chain is not None
    assert "0x" + chain.rewards_root.hex() == settlement["rewardsRoot"] != ZERO_ROOT
    assert chain.total == int(settlement["total"]) == E2E_PRESET.epoch_emission(epoch)
    rewards = 0
    for daemon in devnet.node_daemons:
        detail = await devnet.get_json(f"/v1/nodes/{daemon.address}/epochs/{epoch}")
        rewards += int(detail["reward"])
    assert rewards == chain.total
    summary = devnet.summaries[epoch]
    assert summary.audit_ok
    return info


def check_summary_and_claims(devnet: E2EMixin, summary: dict[str, Any], preset: Preset,
                             profiles: dict[str, str]) -> None:
    """The summary has the documented shape; each epoch is settled on chain with the root
    and the whole emission the summary shows, audited; claims paid exactly what the Validator
    served and token balances grew by exactly the amounts claimed."""
    assert set(summary) == {"chain_id", "epochs"}
    assert isinstance(summary["chain_id"], int)
    assert [e["epoch"] for e in summary["epochs"]] == list(range(len(devnet.claims)))
    for epoch in summary["epochs"]:
        assert set(epoch) == {"epoch", "root", "settle_tx", "total", "audit_ok", "nodes"}
        assert isinstance(epoch["root"], str) and isinstance(epoch["settle_tx"], str)
        assert isinstance(epoch["total"], int) and epoch["audit_ok"] is True
        assert [n["address"] for n in epoch["nodes"]] == devnet.node_addresses()
        for node in epoch["nodes"]:
            assert set(node) == {"address", "profile", "score", "reward", "cumulative",
                                 "claimed"}
            assert all(isinstance(node[k], int)
                       for k in ("score", "reward", "cumulative", "claimed"))

    previous: dict[str, int] = defaultdict(int)
    for epoch, claims in zip(summary["epochs"], devnet.claims, strict=True):
        number = epoch["epoch"]
        settled = devnet.settled[number]
        assert settled is not None
        assert epoch["root"] == "0x" + settled.rewards_root.hex() != ZERO_ROOT
        assert epoch["total"] == settled.total == preset.epoch_emission(number)
        assert epoch["settle_tx"] == settled.tx_hash
        assert sum(n["reward"] for n in epoch["nodes"]) == epoch["total"]
        for node in epoch["nodes"]:
            claim = claims[node["address"]]
            # Cumulative totals grow by the epoch's reward; claims pay exactly what the
            # Validator served, and the token balance grows by exactly the amount claimed.
            assert node["cumulative"] == previous[node["address"]] + node["reward"]
            assert claim.served == node["cumulative"] == node["claimed"] == claim.claimed_after
            assert claim.balance_after - claim.balance_before == \
                claim.claimed_after - claim.claimed_before
            assert node["profile"] == profiles[node["address"]]
            previous[node["address"]] = node["cumulative"]
    assert any(n["reward"] > 0 for n in summary["epochs"][0]["nodes"])


def check_offline_node(devnet: E2EMixin, summary: dict[str, Any], profiles: dict[str, str],
                       epoch: int) -> None:
    """The node that dropped out in epoch 0 was challenged in ``epoch`` and earned nothing."""
    (offline,) = [a for a, p in profiles.items() if p == "offline"]
    detail = devnet.breakdowns[epoch][offline]
    assert detail["challenges"] > 0
    assert all(r["outcome"] != Outcome.OK.name for r in detail["reports"])
    row = next(n for n in summary["epochs"][epoch]["nodes"] if n["address"] == offline)
    assert row["reward"] == 0 and row["score"] == 0


def test_full_epochs_settle_pay_claims_and_write_the_summary(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Two epochs through ``run_devnet``: settled on chain, audited, claimed; the node that
    drops out in the middle of epoch 0 earns nothing in epoch 1."""
    monkeypatch.setattr(dnanet.devnet, "Devnet",
                        lambda **kw: E2EDevnet(label="full", **kw))
    summary_path = tmp_path / "summary.json"
    E2EDevnet.instances.clear()
    printed: list[str] = []

    async def main() -> None:
        await asyncio.wait_for(dnanet.devnet.run_devnet(
            nodes=5, mixers=4, epochs=2, preset=E2E_PRESET, data_dir=tmp_path / "net",
            backend="trivial", summary=summary_path, out=printed.append), 300)

    asyncio.run(main())
    (devnet,) = E2EDevnet.instances
    assert f"  dashboard: {devnet.validator_url}/ (the validator's page, in a browser)" in printed
    summary = json.loads(summary_path.read_text())
    assert summary["chain_id"] == devnet.deployment.chain_id
    profiles = {n.address: n.profile.name for n in devnet.node_daemons}
    assert sorted(profiles.values()) == ["normal", "normal", "normal", "offline", "throttled"]
    check_summary_and_claims(devnet, summary, E2E_PRESET, profiles)
    assert len(summary["epochs"]) == 2
    check_offline_node(devnet, summary, profiles, 1)
    client = devnet.gateway(None).client  # the embedded chain outlives the devnet
    for claim in devnet.claims[-1].values():
        # nothing moved the tokens but the claims
        assert client.balance_of(claim.address) == claim.balance_after


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the running children of process ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(entry.name),
                            (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError):
            continue
    return out


class _KillingDevnet(E2EProcessDevnet):
    """Kills one of the Validator's serving processes once certificates arrive, and records
    that the Validator started it again."""

    killed: int | None = None
    restarted = False

    async def setup(self) -> None:
        await super().setup()
        self._killer = asyncio.create_task(self._kill_a_serving_process())

    async def _kill_a_serving_process(self) -> None:
        import os
        import signal

        leader = dict(self.processes)["validator"].pid
        while not ((await self.get_json("/v1/epochs/0")) or {}).get("certificates"):
            await asyncio.sleep(0.2)  # None (404) until the epoch begins
        serving = [pid for pid, cmd in _children(leader) if "validator serve" in cmd]
        assert len(serving) == dnanet.devnet.VALIDATOR_PROCESSES - 1
        self.killed = serving[0]
        os.kill(serving[0], signal.SIGKILL)
        while not self.restarted:
            await asyncio.sleep(0.2)
            metrics = (await self.http.get(f"{self.validator_url}/metrics")).text
            self.restarted = "dnanet_validator_process_restarts_total 1.0" in metrics


@pytest.mark.npm
def test_full_epoch_on_anvil_with_every_role_its_own_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_devnet(chain="anvil")``: anvil from npm, the Validator (two processes), mixers and
    nodes each started as its own OS process with the operator commands; the epoch settles,
    audits and pays claims as on the embedded chain, though one of the Validator's processes
    is killed once certificates arrive (and started again)."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("the anvil devnet needs node and npm on PATH")
    from dnanet.chain.anvil import ensure_anvil

    try:
        ensure_anvil()
    except ConfigError as exc:
        pytest.skip(f"no usable anvil here: {exc}")
    monkeypatch.setattr(dnanet.devnet, "ProcessDevnet",
                        lambda *, chain, keystore, **kw: _KillingDevnet(**kw))
    summary_path = tmp_path / "summary.json"
    E2EProcessDevnet.instances.clear()

    async def main() -> None:
        await asyncio.wait_for(dnanet.devnet.run_devnet(
            nodes=4, mixers=4, epochs=1, preset=TEST, data_dir=tmp_path / "net",
            chain="anvil", backend="trivial", summary=summary_path, out=lambda _: None), 400)

    asyncio.run(main())
    (devnet,) = E2EProcessDevnet.instances
    summary = json.loads(summary_path.read_text())
    assert summary["chain_id"] == devnet.deployment.chain_id == 31337
    profiles = dict(zip(devnet.node_addresses(), devnet.profiles, strict=True))
    check_summary_and_claims(devnet, summary, TEST, profiles)
    assert [p.poll() is not None for _, p in devnet.processes] == \
        [True] * (1 + 4 + 4)  # every role was its own process, and it stopped
    assert isinstance(devnet, _KillingDevnet)
    if devnet._killer.done():
        devnet._killer.result()  # its failure, if it failed
    assert devnet.killed is not None and devnet.restarted
    assert _children(devnet.processes[0][1].pid) == []  # the Validator stopped its own


def test_quorum_forms_with_one_of_four_mixers_down(tmp_path: Path) -> None:
    """A mixer that never runs an epoch: 3 of 4 still certify and settle."""
    devnet = E2EDevnet(nodes=4, data_dir=tmp_path, label="down", profiles=NORMAL4,
                       down_mixers=[3])
    down = devnet.mixer_ids[3].address

    async def main() -> None:
        try:
            async def down_before_genesis() -> None:
                assert await mixer_rounds(devnet.http, devnet.mixer_urls[3]) is None

            await run_epochs(devnet, 1, before=down_before_genesis)
            await check_settled(devnet, 0)
            # Settled on chain with the signatures of the three others (bit i: member i).
            client = devnet.gateway(None).client
            members = [m.address for m in client.mixer_set(0).members]
            settlement = client.settlement(0)
            assert settlement is not None
            assert bin(settlement.signers_bitmap).count("1") == 3
            assert not settlement.signers_bitmap & (1 << members.index(down))
            certificates = await devnet.certificates(0)
            assert certificates
            domain = devnet.gateway(None).domain
            for certificate in certificates:
                batch_hash = certificate.batch.hash_struct()
                signers = {recover_typed(domain, batch_hash, s) for s in certificate.signatures}
                assert certificate.batch.mixer != down and down not in signers
                assert len(signers) == 3
        finally:
            await devnet.stop()

    asyncio.run(main())


def test_mixer_killed_and_restarted_mid_epoch_counts_nothing_twice(tmp_path: Path) -> None:
    """Kill a mixer as soon as it begins the epoch's first round and restart a new daemon on
    its data directory and port: the epoch settles, and every (epoch, round, mixer, node)
    counts once."""
    devnet = E2EDevnet(nodes=4, data_dir=tmp_path, label="restart", profiles=NORMAL4)
    victim = 1

    async def main() -> None:
        try:
            async def kill_and_restart() -> None:
                await devnet.wait_round_begun(victim, RoundId(0, 0))
                await devnet.stop_mixer(victim)
                assert await mixer_rounds(devnet.http, devnet.mixer_urls[victim]) is None
                await devnet.restart_mixer(victim)

            await run_epochs(devnet, 1, before=kill_and_restart)
            await check_settled(devnet, 0)
            reports = await devnet.reports(0)
            certificates = await devnet.certificates(0)
            restarted = await devnet.http.get(f"{devnet.mixer_daemons[victim].url}/v1/status")
        finally:
            await devnet.stop()

        # The Validator's selected reports: one per key.
        keys = [r.key for r in reports]
        assert len(keys) == len(set(keys))
        # Every key the certificates carry holds one and the same report wherever it appears,
        # and each node has exactly as many reports as distinct keys in the certificates.
        by_key: dict[tuple[int, int, str, str], set[bytes]] = defaultdict(set)
        for certificate in certificates:
            for report in certificate.reports:
                by_key[report.key].add(report.hash_struct())
        assert all(len(hashes) == 1 for hashes in by_key.values())
        assert Counter(k[3] for k in by_key) == Counter(r.node for r in reports)
        assert {r.hash_struct() for r in reports} == set().union(*by_key.values())
        # With all four mixers up, each certificate still carries exactly the threshold (3):
        # the originator's signature first.
        domain = devnet.gateway(None).domain
        for certificate in certificates:
            batch_hash = certificate.batch.hash_struct()
            signers = [recover_typed(domain, batch_hash, s) for s in certificate.signatures]
            assert len(set(signers)) == len(signers) == 3
            assert signers[0] == certificate.batch.mixer
        for address, count in Counter(r.node for r in reports).items():
            assert devnet.breakdowns[0][address]["challenges"] == count
        # The restarted daemon carried on: it finished the epoch's last round.
        rounds = restarted.json()["rounds"]
        last = E2E_PRESET.rounds_per_epoch - 1
        assert any(r["epoch"] == 0 and r["round"] == last and r["done"] for r in rounds)

    asyncio.run(main())


def test_a_node_that_answers_wrongly_earns_nothing_and_is_jailed(tmp_path: Path) -> None:
    """A node whose committed product is wrong: every challenge it answers is WRONG_ANSWER
    (signed fraud), it earns nothing for the epoch, and the settlement's punishment jails it
    and slashes ``fraud_slash_bps`` of its stake on chain."""
    devnet = E2EDevnet(nodes=4, data_dir=tmp_path, label="cheat", profiles=NORMAL4,
                       cheaters=[0])
    cheater = devnet.node_ids[0].address

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
        try:
            await run_epochs(devnet, 1)
            await check_settled(devnet, 0)
            detail = await devnet.get_json(f"/v1/nodes/{cheater}/epochs/0")
            punishments = await devnet.wait_punishments_done(0)
            record = await asyncio.to_thread(devnet.gateway(None).node, cheater)
            return detail, punishments, record
        finally:
            await devnet.stop()

    detail, punishments, record = asyncio.run(main())
    outcomes = [r["outcome"] for r in detail["reports"]]
    assert outcomes and Outcome.WRONG_ANSWER.name in outcomes
    assert Outcome.OK.name not in outcomes
    assert all(r["score"] == 0 for r in detail["reports"])
    assert detail["fraud"] is True and detail["strike"] is True
    assert detail["failures"] == detail["challenges"] == len(outcomes)
    assert detail["reward"] == 0 and detail["epoch_score"] == 0
    (mine,) = [p for p in punishments if p["punishment"]["node"] == cheater]
    assert len(punishments) == 1
    assert mine["status"] == "submitted"
    assert mine["punishment"]["jail"] is True
    assert mine["punishment"]["slashBps"] == E2E_PRESET.fraud_slash_bps
    stake = E2E_PRESET.min_stake
    assert record is not None
    assert record.jailed is True and record.active is False
    assert record.stake == stake - stake * E2E_PRESET.fraud_slash_bps // BPS_ONE
