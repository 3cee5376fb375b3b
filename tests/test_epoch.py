"""The epoch transition (dnanet.protocol.epoch) over synthetic certified reports.

Epoch processing trusts its input (certificates were verified on intake), so the reports here
are built directly: well-formed field values, no real signatures.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.errors import CodecError, RollupError
from dnanet.params import SCORE_ONE, TEST
from dnanet.protocol.epoch import (
    EpochState,
    compute_canary_evidence,
    compute_fraud_evidence,
    compute_reports_digest,
    compute_strike_evidence,
    process_epoch,
    process_epochs,
    punishment_cause,
    select_epoch_reports,
)
from dnanet.protocol.messages import ZERO32, Outcome, Punishment, ScoreReport
from dnanet.protocol.rollup import verify_proof


def address(label: str) -> str:
    return "0x" + hashlib.sha256(label.encode()).hexdigest()[:40]


MIXERS = [address(f"mixer-{i}") for i in range(3)]
NODES = [address(f"node-{i}") for i in range(6)]
A, B, C, D = NODES[:4]


def report(
    node: str,
    *,
    round_: int = 0,
    mixer: str = MIXERS[0],
    epoch: int = 0,
    outcome: Outcome = Outcome.OK,
    score: int = 500_000,
    reason: str = "",
) -> ScoreReport:
    """A well-formed report; fields that a failed outcome may not carry are zero."""
    signed = outcome in (Outcome.OK, Outcome.WRONG_ANSWER)
    ok = outcome == Outcome.OK
    digest = hashlib.sha256(f"{epoch}/{round_}/{mixer}/{node}".encode()).digest()
    return ScoreReport(
        epoch=epoch, round=round_, mixer=mixer, node=node, hardware_class=0,
        vrf_proof=b"\x01" * 80, challenge_digest=digest,
        echo_digest=digest if signed else ZERO32,
        compute_root=digest if signed else ZERO32,
        download_digest=digest if signed else ZERO32,
        upload_digest=digest if signed else ZERO32,
        response_signature=b"\x1b" * 65 if signed else b"",
        rtt_us=1_000 if ok else 0, compute_us=2_000 if ok else 0,
        download_us=3_000 if ok else 0, upload_us=4_000 if ok else 0,
        outcome=outcome, reason=reason,
        evidence=b"\x00" * 8 if outcome == Outcome.WRONG_ANSWER else b"",
        score=score if ok else 0,
    )


def epoch_reports(scores: dict[str, list[int]], epoch: int = 0) -> list[ScoreReport]:
    """One report per (node, score) in rounds 0, 1, ...; a score of -1 is a TIMEOUT."""
    return [
        report(node, round_=r, epoch=epoch,
               outcome=Outcome.TIMEOUT if s < 0 else Outcome.OK, score=max(s, 0))
        for node, node_scores in scores.items()
        for r, s in enumerate(node_scores)
    ]


# -- select_epoch_reports ------------------------------------------------------------------


def test_identical_duplicates_collapse() -> None:
    r = report(A)
    other = report(B)
    assert select_epoch_reports(0, [r, other, r, replace(r)]) == sorted(
        [r, other], key=lambda x: x.key
    )


def test_conflicting_duplicates_keep_the_smaller_hash() -> None:
    first, second = report(A, score=100), report(A, score=200)
    smaller = min(first, second, key=lambda x: x.hash_struct())
    assert select_epoch_reports(0, [first, second]) == [smaller]
    assert select_epoch_reports(0, [second, first]) == [smaller]


def test_selection_is_sorted_by_key_whatever_the_input_order() -> None:
    reports = [report(n, round_=r, mixer=m) for n in NODES[:3] for r in range(2) for m in MIXERS]
    shuffled = reports[:]
    random.Random(7).shuffle(shuffled)
    selected = select_epoch_reports(0, shuffled)
    assert [r.key for r in selected] == sorted(r.key for r in reports)


def test_report_of_another_epoch_is_rejected() -> None:
    with pytest.raises(RollupError) as exc:
        select_epoch_reports(0, [report(A), report(B, epoch=1)])
    assert exc.value.field == "epoch"
    with pytest.raises(RollupError):
        process_epoch(1, [report(A)], state=EpochState(epoch=1), preset=TEST)


# -- process_epoch ------------------------------------------------------------------------------


def test_rewards_split_the_whole_emission_by_epoch_score() -> None:
    reports = epoch_reports({A: [600_000, 400_000, -1], B: [300_000], C: [900_000, 900_000]})
    rollup = process_epoch(0, reports, state=EpochState(), preset=TEST)
    # Failures count as zero challenges scored: A has 1 failure of 3, not more than a third.
    assert rollup.epoch_scores == {A: 1_000_000 // 3, B: 300_000, C: 900_000}
    assert sum(rollup.rewards.values()) == TEST.epoch_emission(0) == rollup.settlement.total
    assert rollup.rewards[C] > rollup.rewards[A] > rollup.rewards[B] > 0
    assert rollup.strikes == () and rollup.punishments == ()


def test_settlement_fields() -> None:
    reports = epoch_reports({A: [600_000], B: [300_000, 100_000]}, epoch=3)
    rollup = process_epoch(3, reversed(reports), state=EpochState(epoch=3, cumulative={A: 5}),
                           preset=TEST)
    settlement = rollup.settlement
    assert settlement.epoch == 3
    assert rollup.tree is not None
    assert settlement.rewards_root == rollup.tree.root
    assert settlement.total == sum(rollup.rewards.values()) == TEST.epoch_emission(3)
    assert rollup.reports == tuple(select_epoch_reports(3, reports))
    assert settlement.reports_digest == compute_reports_digest(rollup.reports)
    assert rollup.cumulative == {A: 5 + rollup.rewards[A], B: rollup.rewards[B]}


def test_all_zero_epoch_settles_nothing() -> None:
    reports = epoch_reports({A: [-1, -1], B: [-1]})
    rollup = process_epoch(0, reports, state=EpochState(), preset=TEST)
    assert rollup.rewards == {}
    assert rollup.settlement.total == 0
    assert rollup.settlement.rewards_root == ZERO32
    assert rollup.tree is None
    with pytest.raises(RollupError):
        rollup.proof(A)
    assert rollup.strikes == tuple(sorted((A, B)))


def test_empty_epoch_settles_nothing() -> None:
    rollup = process_epoch(0, [], state=EpochState(), preset=TEST)
    assert (rollup.settlement.total, rollup.settlement.rewards_root) == (0, ZERO32)
    assert rollup.settlement.reports_digest == compute_reports_digest([])


def test_reports_digest_changes_when_a_report_changes() -> None:
    reports = epoch_reports({A: [600_000, 200_000], B: [300_000]})
    digest = process_epoch(0, reports, state=EpochState(), preset=TEST).settlement.reports_digest
    for i, changed in enumerate(
        (replace(reports[0], reason="x"), replace(reports[1], score=200_001),
         replace(reports[2], rtt_us=1_001))
    ):
        altered = [*reports[:i], changed, *reports[i + 1 :]]
        other = process_epoch(0, altered, state=EpochState(), preset=TEST)
        assert other.settlement.reports_digest != digest
    dropped = process_epoch(0, reports[1:], state=EpochState(), preset=TEST)
    assert dropped.settlement.reports_digest != digest
    shuffled = process_epoch(0, reports[::-1], state=EpochState(), preset=TEST)
    assert shuffled.settlement.reports_digest == digest


# -- process_epochs: cumulative totals and proofs ------------------------------------------------


def test_cumulative_totals_carry_across_epochs_and_every_proof_verifies() -> None:
    by_epoch = [
        epoch_reports({A: [500_000], B: [250_000]}, epoch=0),
        epoch_reports({B: [800_000], C: [100_000]}, epoch=1),
        epoch_reports({A: [-1]}, epoch=2),  # nobody earns: the tree stays, nothing is minted
        epoch_reports({C: [700_000], D: [700_000]}, epoch=3),
    ]
    rollups = process_epochs(by_epoch, TEST)
    assert [r.epoch for r in rollups] == [0, 1, 2, 3]
    running: dict[str, int] = {}
    for rollup in rollups:
        for node, reward in rollup.rewards.items():
            running[node] = running.get(node, 0) + reward
        assert {n: v for n, v in rollup.cumulative.items() if v} == running
        for node, amount in running.items():
            assert verify_proof(rollup.settlement.rewards_root, node, amount, rollup.proof(node))
        expected_total = TEST.epoch_emission(rollup.epoch) if rollup.rewards else 0
        assert rollup.settlement.total == expected_total
    assert rollups[2].settlement.total == 0
    assert rollups[2].settlement.rewards_root == rollups[1].settlement.rewards_root
    assert sum(running.values()) == sum(TEST.epoch_emission(e) for e in (0, 1, 3))
    # A proof of an older epoch does not verify an amount of a later one.
    assert not verify_proof(rollups[3].settlement.rewards_root, A, running[A] + 1,
                            rollups[3].proof(A))


# -- punishments ---------------------------------------------------------------------------------


def test_fraud_jails_and_slashes_at_once() -> None:
    fraud = report(A, round_=1, outcome=Outcome.WRONG_ANSWER)
    reports = [report(A, round_=0), fraud, report(A, round_=2), report(B)]
    rollup = process_epoch(0, reports, state=EpochState(), preset=TEST)
    assert rollup.punishments == (
        Punishment(node=A, epoch=0, jail=True, slash_bps=TEST.fraud_slash_bps,
                   evidence_digest=compute_fraud_evidence([fraud.hash_struct()])),
    )
    assert rollup.epoch_scores[A] == 0 and A not in rollup.rewards
    assert rollup.rewards[B] == TEST.epoch_emission(0)
    assert A not in rollup.strikes  # one failure of three is no strike


def test_fraud_takes_precedence_over_a_strike() -> None:
    reports = [report(A, outcome=Outcome.WRONG_ANSWER), report(B)]
    rollup = process_epoch(0, reports, state=EpochState(strikes={A: (0, 0)}), preset=TEST)
    assert A in rollup.strikes
    assert [(p.node, p.slash_bps) for p in rollup.punishments] == [(A, TEST.fraud_slash_bps)]


FOUR_MIXERS = [address(f"mixer-{i}") for i in range(4)]


def canary_epoch(failers: int) -> list[ScoreReport]:
    """Each of four mixers (f = 1) challenges A three times and B once; the first ``failers``
    of them found one canary answer of A wrong (far below the strike line)."""
    out = []
    for m, mixer in enumerate(FOUR_MIXERS):
        out.append(report(B, mixer=mixer))
        out += [report(A, round_=r, mixer=mixer, outcome=Outcome.CANARY_FAILED
                       if m < failers and r == 0 else Outcome.OK) for r in range(3)]
    return out


@pytest.mark.parametrize("failers", [0, 1])
def test_canary_failures_of_up_to_f_mixers_are_no_punishment(failers: int) -> None:
    rollup = process_epoch(0, canary_epoch(failers), state=EpochState(), preset=TEST)
    assert rollup.punishments == () and not rollup.strikes
    assert rollup.epoch_scores[A] > 0


@pytest.mark.parametrize("failers", [2, 3, 4])
def test_canary_failures_of_more_than_f_mixers_jail_and_slash_at_once(failers: int) -> None:
    reports = canary_epoch(failers)
    rollup = process_epoch(0, reports, state=EpochState(), preset=TEST)
    caught = [r.hash_struct() for r in reports if r.outcome == Outcome.CANARY_FAILED]
    assert rollup.punishments == (
        Punishment(node=A, epoch=0, jail=True, slash_bps=TEST.canary_slash_bps,
                   evidence_digest=compute_canary_evidence(caught)),
    )
    assert punishment_cause(rollup.punishments[0].slash_bps, TEST) == "canaries"
    assert rollup.epoch_scores[A] == 0 and A not in rollup.rewards
    assert A not in rollup.strikes  # one canary of three per mixer is far below the line
    assert rollup.next_state.strikes == {}


def test_each_punishment_names_its_cause() -> None:
    assert {punishment_cause(bps, TEST) for bps in (TEST.fraud_slash_bps, TEST.canary_slash_bps,
                                                    TEST.strike_slash_bps)} == {
        "fraud", "canaries", "strikes"}


def striking_epoch(epoch: int) -> list[ScoreReport]:
    """A fails 2 of 3 challenges (more than a third); B is fine."""
    return epoch_reports({A: [900_000, -1, -1], B: [400_000]}, epoch=epoch)


def test_third_strike_within_the_window_is_punished_not_before() -> None:
    assert TEST.strikes_to_punish == 3
    rollups = process_epochs([striking_epoch(e) for e in range(7)], TEST)
    assert [r.strikes for r in rollups] == [(A,), (A,), (A,), (), (A,), (A,), (A,)]
    assert all(r.epoch_scores[A] == 0 and A not in r.rewards for r in rollups)
    assert rollups[0].punishments == rollups[1].punishments == ()
    assert rollups[2].punishments == (
        Punishment(node=A, epoch=2, jail=True, slash_bps=TEST.strike_slash_bps,
                   evidence_digest=compute_strike_evidence(A, [0, 1, 2])),
    )
    # A punishment uses up the strikes behind it, and the epoch after it (its jail lands
    # then) counts no strike: the next punishment comes three strikes later, with only those
    # strikes as evidence.
    assert rollups[2].next_state.sentenced == (A,) and rollups[3].next_state.sentenced == ()
    assert rollups[3].punishments == rollups[4].punishments == rollups[5].punishments == ()
    assert rollups[6].punishments[0].evidence_digest == compute_strike_evidence(A, [4, 5, 6])


def test_exactly_a_third_failed_is_no_strike() -> None:
    rollups = process_epochs(
        [epoch_reports({A: [900_000, 900_000, -1]}, epoch=e) for e in range(3)], TEST
    )
    assert all(r.strikes == () and r.punishments == () for r in rollups)


@pytest.mark.parametrize(
    ("history", "punished"),
    [
        ([2, 5], True),  # the window of epoch 9 is [2, 9]
        ([1, 5], False),  # epoch 1 fell out of it
        ([0, 1], False),
        ([5, 5], False),  # one epoch counts once
        ([5, 9], False),  # this epoch's own strike is counted once
        ([5, 10, 11], False),  # strikes of later epochs do not count
        ([3, 5, 7], True),
    ],
)
def test_strikes_count_only_within_the_window(history: list[int], punished: bool) -> None:
    assert TEST.strike_window_epochs == 8
    rollup = process_epoch(9, striking_epoch(9),
                           state=EpochState(epoch=9, strikes={A: tuple(history)}), preset=TEST)
    assert rollup.strikes == (A,)
    assert bool(rollup.punishments) == punished
    if punished:
        recent = sorted({e for e in history if 2 <= e < 9} | {9})
        assert rollup.punishments[0].evidence_digest == compute_strike_evidence(A, recent)


def test_strikes_of_other_nodes_do_not_count() -> None:
    rollup = process_epoch(9, striking_epoch(9),
                           state=EpochState(epoch=9, strikes={B: (7, 8), C: (8,)}), preset=TEST)
    assert rollup.punishments == ()


def test_a_punished_node_that_fails_again_before_its_jail_lands_is_not_punished_twice() -> None:
    # The Validator used to rebuild strikes from every strike in the window, the mixers from
    # the carried state: at epoch 3 it proposed a second punishment that every mixer refused,
    # and settlement stopped for good. One rule now, carried forward.
    rollups = process_epochs([striking_epoch(e) for e in range(4)], TEST)
    assert [len(r.punishments) for r in rollups] == [0, 0, 1, 0]
    assert rollups[2].next_state.strikes == {}
    assert rollups[3].next_state.strikes == {}  # sentenced at 2: epoch 3 counts no strike


def test_a_sentenced_node_earns_nothing_and_is_not_punished_again_until_its_jail_lands() -> None:
    # A node caught in epoch 0 keeps cheating in epoch 1 until its jail (executed once epoch 0
    # settles, during epoch 1) lands: no second punishment, nothing earned; from epoch 2 on
    # (unjailed, honest again) it earns as anyone.
    fraud = [report(A, round_=0, epoch=e, outcome=Outcome.WRONG_ANSWER) for e in range(2)]
    epochs = [[fraud[0], report(B)],
              [fraud[1], report(A, round_=1, epoch=1), report(B, epoch=1)],
              [report(A, epoch=2), report(B, epoch=2)]]
    rollups = process_epochs(epochs, TEST)
    assert [[p.node for p in r.punishments] for r in rollups] == [[A], [], []]
    assert rollups[0].next_state.sentenced == (A,)
    assert rollups[1].epoch_scores[A] == 0 and A not in rollups[1].rewards
    assert rollups[1].next_state.sentenced == ()
    assert rollups[2].epoch_scores[A] == rollups[2].epoch_scores[B] > 0


def test_a_sentenced_state_round_trips_and_a_state_without_keeps_its_digest() -> None:
    state = EpochState(epoch=3, cumulative={A: 5}, strikes={B: (2,)},
                       sentenced=tuple(sorted((A, C))))
    assert EpochState.from_wire(json.loads(json.dumps(state.to_wire()))) == state
    plain = EpochState(epoch=3, cumulative={A: 5})
    assert "sentenced" not in plain.to_wire()
    assert plain.digest() != state.digest()


def test_strikes_older_than_the_window_are_dropped_from_the_carried_state() -> None:
    rollup = process_epoch(9, epoch_reports({B: [400_000]}, epoch=9),
                           state=EpochState(epoch=9, strikes={A: (1, 2, 8)}), preset=TEST)
    # The window of epoch 10 is [3, 10]: strikes 1 and 2 can never count again.
    assert rollup.next_state.strikes == {A: (8,)}


def test_an_epoch_settled_from_the_carried_state_equals_a_replay_from_genesis() -> None:
    by_epoch = [striking_epoch(e) + epoch_reports({C: [700_000]}, epoch=e) for e in range(7)]
    replay = process_epochs(by_epoch, TEST)
    state = EpochState()
    for e in range(7):
        state = EpochState.from_wire(json.loads(json.dumps(state.to_wire())))
        rollup = process_epoch(e, by_epoch[e], state=state, preset=TEST)
        assert rollup.settlement == replay[e].settlement
        assert rollup.punishments == replay[e].punishments
        state = rollup.next_state
    assert state.digest() == replay[-1].next_state.digest()


def test_a_state_for_another_epoch_is_refused() -> None:
    with pytest.raises(RollupError, match="carried state is for epoch 2, not 3") as exc:
        process_epoch(3, [], state=EpochState(epoch=2), preset=TEST)
    assert exc.value.field == "state"


@pytest.mark.parametrize("data", [
    None, [], {"epoch": 0}, {"epoch": -1, "cumulative": {}, "strikes": {}},
    {"epoch": 0, "cumulative": {A: 5}, "strikes": {}},
    {"epoch": 0, "cumulative": {A: "-5"}, "strikes": {}},
    {"epoch": 0, "cumulative": {}, "strikes": {A: ["x"]}},
    {"epoch": True, "cumulative": {}, "strikes": {}},
    {"epoch": 0, "cumulative": {}, "strikes": {}, "sentenced": []},
    {"epoch": 0, "cumulative": {}, "strikes": {}, "sentenced": sorted([A, B], reverse=True)},
    {"epoch": 0, "cumulative": {}, "strikes": {}, "sentenced": [A, A]},
    {"epoch": 0, "cumulative": {}, "strikes": {}, "sentenced": A},
    {"epoch": 0, "cumulative": {}, "strikes": {}, "jailed": []},
])
def test_a_malformed_state_is_refused_by_name(data: object) -> None:
    with pytest.raises(CodecError) as exc:
        EpochState.from_wire(data)
    assert exc.value.field is not None and exc.value.field.startswith("state")


# -- properties ----------------------------------------------------------------------------------

OUTCOMES = st.sampled_from([Outcome.OK, Outcome.OK, Outcome.OK, Outcome.TIMEOUT,
                            Outcome.UNREACHABLE, Outcome.BAD_RESPONSE, Outcome.WRONG_ANSWER])
REPORT = st.builds(
    lambda node, round_, mixer, outcome, score: report(
        NODES[node], round_=round_, mixer=MIXERS[mixer], outcome=outcome, score=score
    ),
    st.integers(0, len(NODES) - 1),
    st.integers(0, TEST.rounds_per_epoch - 1),
    st.integers(0, len(MIXERS) - 1),
    OUTCOMES,
    st.integers(0, SCORE_ONE),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(REPORT, max_size=24), min_size=1, max_size=3))
def test_rewards_are_conserved_and_every_total_has_a_proof(
    batches: list[list[ScoreReport]],
) -> None:
    by_epoch = [[replace(r, epoch=e) for r in batch] for e, batch in enumerate(batches)]
    rollups = process_epochs(by_epoch, TEST)
    minted = 0
    for rollup in rollups:
        total = sum(rollup.rewards.values())
        scored = any(s > 0 for s in rollup.epoch_scores.values())
        assert total == (TEST.epoch_emission(rollup.epoch) if scored else 0)
        assert rollup.settlement.total == total
        minted += total
        # Only a node with a positive epoch score is paid; fraud is always punished.
        assert all(rollup.epoch_scores[n] > 0 for n in rollup.rewards)
        fraud = {r.node for r in rollup.reports if r.outcome == Outcome.WRONG_ANSWER}
        sentenced = set(rollups[rollup.epoch - 1].next_state.sentenced) if rollup.epoch else set()
        # ... unless its jail for an earlier punishment has not landed yet (one per offence).
        assert fraud - sentenced <= {
            p.node for p in rollup.punishments if p.slash_bps == TEST.fraud_slash_bps}
        assert not sentenced & set(rollup.rewards)
        assert not fraud & set(rollup.rewards)
        positive = {n: v for n, v in rollup.cumulative.items() if v > 0}
        if not positive:
            assert rollup.tree is None and rollup.settlement.rewards_root == ZERO32
        for node, amount in positive.items():
            assert verify_proof(rollup.settlement.rewards_root, node, amount, rollup.proof(node))
    assert sum(rollups[-1].cumulative.values()) == minted
