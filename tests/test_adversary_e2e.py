"""End-to-end: the ``adversarial`` scenario played on a whole network in this process (the
adversarial devnet on the embedded EVM, the test preset's tiny challenges in two-round epochs,
the lockstep clock of ``tests/e2e_helpers.py``).

Over four epochs, beside three honest nodes: the lazy node and the replayer sign wrong products
and are punished for fraud when epoch 0 settles; the model swapper fails canaries, earns
nothing and is punished for its strikes; one mixer of four is Byzantine in all five ways and
none of its fabricated OK reports or equivocations reaches a certificate, while the three
honest mixers alone certify and settle every epoch; a griefer attacks node 0 and the mixers
throughout and is served nothing, and node 0's challenges by honest mixers all pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from dnanet.adversary.devnet import AdversarialDevnet
from dnanet.adversary.proof import collect_evidence, compute_figures
from dnanet.scenarios import ADVERSARIAL
from e2e_helpers import E2E_PRESET, E2EMixin, run_epochs, seeded_identity

pytestmark = pytest.mark.slow

log = logging.getLogger("dnanet.e2e")
EPOCHS = 4
# Canaries every round (0.4 s of the test preset's clock): an epoch has two.
SCENARIO = dataclasses.replace(ADVERSARIAL, cast=dataclasses.replace(ADVERSARIAL.cast,
                                                                     canary_rounds=1.0))


class E2EAdversarialDevnet(E2EMixin, AdversarialDevnet):
    """The adversarial devnet with seeded identities and the lockstep clock."""

    def __init__(self, data_dir: Path, lines: list[str]) -> None:
        super().__init__(scenario=SCENARIO, preset=E2E_PRESET, data_dir=data_dir,
                         out=lines.append, backend="trivial")
        self._init_e2e(label="adversarial", profiles=None, down_mixers=(), lockstep=True)
        self.deployer = seeded_identity("adversarial/deployer")
        self.marks = {}
        self._init_adversary()  # again: the roles of the seeded identities


def test_the_adversarial_scenario_pays_no_cheater_and_certifies_nothing_forged(
        tmp_path: Path) -> None:
    lines: list[str] = []
    devnet = E2EAdversarialDevnet(tmp_path, lines)

    async def main() -> dict[str, Any]:
        try:
            await run_epochs(devnet, EPOCHS, timeout_s=240)
            return compute_figures(await collect_evidence(devnet))
        finally:
            await devnet.stop()

    figures = asyncio.run(main())
    detail = figures["detail"]
    cheats = detail["cheats"]
    assert [s.audit_ok for s in devnet.summaries] == [True] * EPOCHS
    # Every epoch settled with the three honest mixers' signatures alone, on time.
    assert figures["settlement_stalled_epochs"] == 0
    assert all(lag is not None for lag in detail["settle_lag_blocks"])
    # The cheats the design detects earned nothing and were punished on chain.
    assert figures["cheater_reward_share"] == 0
    for cheat in ("lazy", "replayer"):
        assert (cheats[cheat]["punished_epoch"], cheats[cheat]["punishment"]) == (0, "fraud")
        assert cheats[cheat]["jailed_on_chain"]
    swapper = cheats["swapper"]
    assert swapper["punishment"] == "canaries" and swapper["jailed_on_chain"]
    assert swapper["punished_epoch"] <= 1  # within two epochs, as fraud
    assert any("CANARY_FAILED" in why for why in swapper["why_each_epoch"])
    assert figures["cheaters_punished_on_chain"] == figures["detectable_cheats"] == 3
    assert figures["punished_within_two_epochs"] == 3
    # Nothing the Byzantine mixer forged reached a certificate but its made-up failures
    # (undetectable: no node signature); inflations of these microsecond figures stay
    # within the plausibility check's 2 ms slack, so they are not counted against it here.
    forged = detail["forged"]
    assert forged["fabricated_ok"] == forged["equivocated"] == 0
    assert figures["fabricated_failures_certified"] == forged["fabricated_failures"] > 0
    # The griefer: served nothing, and the griefed node failed no honest mixer's challenge.
    assert figures["stranger_requests_served"] == 0 < figures["stranger_requests_sent"]
    assert figures["griefed_node_failed_challenges"] == 0
    # The table says what each dishonest part earned and why.
    text = "\n".join(lines)
    assert "#4 lazy: earned 0.00: fraud:" in text
    assert "mixer #3 byzantine (inflate, fabricate, refuse-cosign, equivocate, " \
           "withhold-settlement)" in text
    assert "griefer of " in text and " 0 served" in text
