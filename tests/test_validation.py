"""verify_score_report, verify_batch_proposal and verify_certified_batch over real reports.

Reports come from real challenge sessions (VRF proofs, LocalTransport, ChallengeProver) like
``dnanet.demo``; each negative test tampers one thing and asserts the error class and field.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

import pytest

from dnanet.errors import (
    ChallengeError,
    CodecError,
    InvalidProof,
    ProtocolError,
    QuorumError,
    ScheduleError,
    ScoringError,
    SignatureError,
)
from dnanet.node.local import LocalTransport
from dnanet.params import TEST
from dnanet.protocol.challenge_params import compute_challenge, compute_kind_seeds
from dnanet.protocol.challenges import derive_attempt_seeds
from dnanet.protocol.challenges.compute import ComputeSize, open_rows
from dnanet.protocol.evidence import (
    decode_fraud_evidence,
    encode_fraud_evidence,
    verify_fraud_evidence,
)
from dnanet.protocol.messages import ZERO32, Outcome, ScoreReport
from dnanet.protocol.schedule import RoundId
from dnanet.protocol.scoring import compute_report_score
from dnanet.protocol.validation import (
    BatchRejected,
    EpochView,
    NodeInfo,
    verify_batch_proposal,
    verify_certified_batch,
    verify_report_timeliness,
    verify_score_report,
)
from protocol_fixtures import (
    EPOCH,
    Mixer,
    cheating_compute,
    compute_round_seeds,
    find_pairs,
    make_certificate,
    make_mixers,
    make_nodes,
    make_proposal,
    make_prover,
    make_view,
    prove_round,
    run_honest_session,
    run_session,
)

MIXERS = make_mixers(4)  # quorum threshold 3
NODES = make_nodes(8)
OUTSIDER = make_mixers(1, label="outsider")[0]
TIMEOUT_US = TEST.challenge_timeout_ms * 1000


def view() -> EpochView:
    return make_view(MIXERS, NODES)


@cache
def assigned() -> list[tuple[Mixer, int, str]]:
    return [(m, r, n.address) for m, r, n in find_pairs(MIXERS, NODES, assigned=True)]


@cache
def honest_report() -> ScoreReport:
    mixer, round_, node = assigned()[0]
    return run_honest_session(MIXERS, mixer, round_, next(n for n in NODES if n.address == node))


@cache
def cheating_report() -> ScoreReport:
    """A WRONG_ANSWER report from a node that got the last half of its rows wrong."""
    mixer, round_, address = assigned()[1]
    node = next(n for n in NODES if n.address == address)
    transport = LocalTransport(make_prover(node, MIXERS, compute=cheating_compute(0.5)))
    report = run_session(transport, mixer, round_, address)
    assert report.outcome == Outcome.WRONG_ANSWER, report.reason
    return report


def failed_report(outcome: Outcome = Outcome.TIMEOUT) -> ScoreReport:
    """The honest report's session, as the failed report a mixer would have built."""
    return replace(
        honest_report(), echo_digest=ZERO32, compute_root=ZERO32, download_digest=ZERO32,
        upload_digest=ZERO32, response_signature=b"", rtt_us=0, compute_us=0, download_us=0,
        upload_us=0, outcome=outcome, reason="no answer", evidence=b"", score=0,
    )


def challenge_of(report: ScoreReport) -> tuple[bytes, ComputeSize]:
    """The compute seed and size of a report's challenge."""
    mixer = next(m for m in MIXERS if m.address == report.mixer)
    beta = prove_round(mixer, report.round)[1]
    challenge = compute_challenge(
        beta=beta, epoch=report.epoch, round_=report.round, mixer=report.mixer,
        node=report.node, hardware_class=report.hardware_class, preset=TEST,
    )
    size = ComputeSize(n=challenge.compute_n, rows=challenge.compute_rows,
                       checks=challenge.compute_checks)
    return compute_kind_seeds(beta, report.node).compute_seed, size


# -- honest reports -------------------------------------------------------------------------


def test_honest_report_verifies_and_its_score_recomputes() -> None:
    report = honest_report()
    assert report.outcome == Outcome.OK
    score = verify_score_report(report, view())
    assert score.total == report.score > 0
    assert score == compute_report_score(report, TEST)


@pytest.mark.parametrize("outcome", [Outcome.TIMEOUT, Outcome.UNREACHABLE, Outcome.BAD_RESPONSE])
def test_failed_report_verifies_with_score_zero(outcome: Outcome) -> None:
    assert verify_score_report(failed_report(outcome), view()).total == 0


def test_wrong_answer_report_with_evidence_verifies() -> None:
    report = cheating_report()
    assert verify_score_report(report, view()).total == report.score == 0
    _, size = challenge_of(report)
    assert decode_fraud_evidence(report.evidence, size).index >= size.rows // 2


def test_vrf_proof_is_verified_once_per_mixer_and_round() -> None:
    v = view()
    report = honest_report()
    verify_score_report(report, v)
    assert list(v.beta_cache) == [(report.mixer, report.round, report.vrf_proof)]
    verify_score_report(report, v)
    assert len(v.beta_cache) == 1


# -- verify_score_report: one test per rejection ---------------------------------------------


def test_rejects_wrong_epoch() -> None:
    with pytest.raises(ScheduleError) as exc:
        verify_score_report(replace(honest_report(), epoch=EPOCH + 1), view())
    assert exc.value.field == "epoch"


def test_rejects_round_out_of_range() -> None:
    with pytest.raises(ScheduleError) as exc:
        verify_score_report(replace(honest_report(), round=TEST.rounds_per_epoch), view())
    assert exc.value.field == "round"


def test_rejects_round_without_known_seed() -> None:
    report = honest_report()
    seeds = {r: s for r, s in compute_round_seeds().items() if r != report.round}
    with pytest.raises(ScheduleError) as exc:
        verify_score_report(report, make_view(MIXERS, NODES, round_seeds=seeds))
    assert exc.value.field == "round"


def test_rejects_mixer_not_in_set() -> None:
    with pytest.raises(ProtocolError) as exc:
        verify_score_report(replace(honest_report(), mixer=OUTSIDER.address), view())
    assert exc.value.field == "mixer"


def test_rejects_unregistered_node() -> None:
    report = honest_report()
    nodes = {n.address: NodeInfo(0) for n in NODES if n.address != report.node}
    with pytest.raises(ProtocolError) as exc:
        verify_score_report(report, make_view(MIXERS, nodes))
    assert exc.value.field == "node"
    assert "not registered" in str(exc.value)


def test_rejects_inactive_node() -> None:
    report = honest_report()
    nodes = {n.address: NodeInfo(0, active=n.address != report.node) for n in NODES}
    with pytest.raises(ProtocolError) as exc:
        verify_score_report(report, make_view(MIXERS, nodes))
    assert exc.value.field == "node"
    assert "jailed" in str(exc.value)


def test_rejects_wrong_hardware_class() -> None:
    report = honest_report()
    nodes = {n.address: NodeInfo(1) for n in NODES}
    with pytest.raises(ProtocolError) as exc:
        verify_score_report(report, make_view(MIXERS, nodes))
    assert exc.value.field == "hardwareClass"
    # The same report claiming the chain's class instead fails on the challenge it rebuilds.
    with pytest.raises(ChallengeError) as exc2:
        verify_score_report(replace(report, hardware_class=1), make_view(MIXERS, nodes))
    assert exc2.value.field == "challengeDigest"


def test_rejects_tampered_vrf_proof() -> None:
    report = honest_report()
    proof = bytearray(report.vrf_proof)
    proof[40] ^= 1  # inside c
    with pytest.raises(InvalidProof) as exc:
        verify_score_report(replace(report, vrf_proof=bytes(proof)), view())
    assert exc.value.field == "vrfProof"


def test_rejects_vrf_proof_of_another_round() -> None:
    report = honest_report()
    mixer = next(m for m in MIXERS if m.address == report.mixer)
    other = prove_round(mixer, (report.round + 1) % TEST.rounds_per_epoch)[0]
    assert other != report.vrf_proof
    with pytest.raises(InvalidProof) as exc:
        verify_score_report(replace(report, vrf_proof=other), view())
    assert exc.value.field == "vrfProof"


def test_rejects_vrf_proof_of_another_mixer() -> None:
    report = honest_report()
    mixer = next(m for m in MIXERS if m.address != report.mixer)
    with pytest.raises(InvalidProof) as exc:
        verify_score_report(replace(report, vrf_proof=prove_round(mixer, report.round)[0]), view())
    assert exc.value.field == "vrfProof"


def test_rejects_node_not_assigned() -> None:
    # A real session, honestly run and signed, but with a node the VRF did not assign.
    mixer, round_, node = find_pairs(MIXERS, NODES, assigned=False)[0]
    report = run_honest_session(MIXERS, mixer, round_, node)
    assert report.outcome == Outcome.OK
    with pytest.raises(ScheduleError) as exc:
        verify_score_report(report, view())
    assert exc.value.field == "node"


def test_rejects_tampered_challenge_digest() -> None:
    report = honest_report()
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(report, challenge_digest=bytes(32)), view())
    assert exc.value.field == "challengeDigest"


def test_rejects_ok_without_node_signature() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_score_report(replace(honest_report(), response_signature=b""), view())
    assert exc.value.field == "responseSignature"


def test_rejects_wrong_answer_without_node_signature() -> None:
    with pytest.raises(SignatureError) as exc:
        verify_score_report(replace(cheating_report(), response_signature=b""), view())
    assert exc.value.field == "responseSignature"


def test_rejects_response_signed_by_another_key() -> None:
    report = honest_report()
    other = next(n for n in NODES if n.address != report.node)
    forged = other.sign_typed(view().domain, report.response().hash_struct())
    with pytest.raises(SignatureError) as exc:
        verify_score_report(replace(report, response_signature=forged), view())
    assert exc.value.field == "responseSignature"
    assert other.address in str(exc.value)


def test_rejects_response_field_changed_after_signing() -> None:
    # The node signed its digests: a mixer cannot swap one (the signature then recovers to
    # some other address).
    with pytest.raises(SignatureError) as exc:
        verify_score_report(replace(honest_report(), upload_digest=bytes(32)), view())
    assert exc.value.field == "responseSignature"


@pytest.mark.parametrize(
    ("attr", "wire_name"),
    [
        ("echo_digest", "echoDigest"),
        ("compute_root", "computeRoot"),
        ("download_digest", "downloadDigest"),
        ("upload_digest", "uploadDigest"),
    ],
)
def test_rejects_response_fields_on_timeout(attr: str, wire_name: str) -> None:
    report = replace(failed_report(), **{attr: getattr(honest_report(), attr)})
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(report, view())
    assert exc.value.field == wire_name


def test_rejects_signature_on_timeout() -> None:
    report = replace(failed_report(), response_signature=honest_report().response_signature)
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(report, view())
    assert exc.value.field == "responseSignature"


def test_rejects_evidence_on_ok_report() -> None:
    report = replace(honest_report(), evidence=cheating_report().evidence)
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(report, view())
    assert exc.value.field == "evidence"


def test_rejects_evidence_on_failed_report() -> None:
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(failed_report(), evidence=b"\x00" * 8), view())
    assert exc.value.field == "evidence"


def _cheater_opening(index: int) -> tuple[bytes, ComputeSize]:
    """Evidence bytes opening row ``index`` of the cheater's committed product."""
    report = cheating_report()
    seed, size = challenge_of(report)
    # The node signed the root of the attempt the mixer counted (the fastest): that one's.
    answers = [cheating_compute(0.5)(attempt_seed, size) for attempt_seed in derive_attempt_seeds(
        seed, TEST.hardware_classes[report.hardware_class].compute_attempts)]
    (answer,) = [a for a in answers if a.root == report.compute_root]
    return encode_fraud_evidence(open_rows(answer, [index])[0]), size


def test_evidence_of_any_wrong_row_is_accepted() -> None:
    # The last row is wrong in the cheater's product: any such opening proves fraud.
    last = TEST.hardware_classes[0].compute_rows - 1
    evidence, size = _cheater_opening(last)
    assert decode_fraud_evidence(evidence, size).index == last
    report = replace(cheating_report(), evidence=evidence)
    assert verify_score_report(report, view()).total == 0


def test_rejects_evidence_of_a_correct_row() -> None:
    evidence, _ = _cheater_opening(0)  # the first half of the cheater's rows is right
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(cheating_report(), evidence=evidence), view())
    assert exc.value.field == "evidence"
    assert "correct" in str(exc.value)


def test_rejects_evidence_not_under_the_signed_root() -> None:
    evidence = bytearray(cheating_report().evidence)
    evidence[-1] ^= 1  # last proof hash
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(cheating_report(), evidence=bytes(evidence)), view())
    assert exc.value.field == "evidence"
    assert "computeRoot" in str(exc.value)


def test_rejects_evidence_row_out_of_range() -> None:
    evidence = bytearray(cheating_report().evidence)
    evidence[:4] = (TEST.hardware_classes[0].compute_rows).to_bytes(4, "big")
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(cheating_report(), evidence=bytes(evidence)), view())
    assert exc.value.field == "evidence"


@pytest.mark.parametrize("length", [0, 7, 4 + 4 * 32 + 31])
def test_rejects_evidence_of_garbage_length(length: int) -> None:
    with pytest.raises(ChallengeError) as exc:
        verify_score_report(replace(cheating_report(), evidence=b"\x01" * length), view())
    assert exc.value.field == "evidence"


def test_fraud_evidence_checks_directly() -> None:
    report = cheating_report()
    seed, _ = challenge_of(report)
    mixer = next(m for m in MIXERS if m.address == report.mixer)
    challenge = compute_challenge(
        beta=prove_round(mixer, report.round)[1], epoch=report.epoch, round_=report.round,
        mixer=report.mixer, node=report.node, hardware_class=0, preset=TEST,
    )
    verify_fraud_evidence(report, challenge, seed)
    # Under a root the node did not sign, the very same opening proves nothing.
    with pytest.raises(ChallengeError):
        verify_fraud_evidence(replace(report, compute_root=bytes(32)), challenge, seed)


@pytest.mark.parametrize(
    ("name", "attr", "value"),
    [
        ("rttUs", "rtt_us", TIMEOUT_US + 1),
        ("computeUs", "compute_us", 0),
        ("computeUs", "compute_us", TIMEOUT_US + 1),
        ("downloadUs", "download_us", 0),
        ("uploadUs", "upload_us", TIMEOUT_US + 1),
    ],
)
def test_rejects_measurement_out_of_bounds(name: str, attr: str, value: int) -> None:
    changes: dict[str, Any] = {attr: value}
    with pytest.raises(ScoringError) as exc:
        verify_score_report(replace(honest_report(), **changes), view())
    assert exc.value.field == name


def test_rejects_measurement_on_failed_report() -> None:
    with pytest.raises(ScoringError) as exc:
        verify_score_report(replace(failed_report(), compute_us=5), view())
    assert exc.value.field == "computeUs"


def test_rejects_wrong_score() -> None:
    report = honest_report()
    for score in (report.score + 1, report.score - 1, 0):
        with pytest.raises(ScoringError) as exc:
            verify_score_report(replace(report, score=score), view())
        assert exc.value.field == "score"


def test_rejects_score_on_failed_report() -> None:
    with pytest.raises(ScoringError) as exc:
        verify_score_report(replace(failed_report(), score=1), view())
    assert exc.value.field == "score"


def test_rejects_malformed_report_at_construction() -> None:
    with pytest.raises(CodecError):
        replace(honest_report(), response_signature=b"\x01" * 64)


# -- verify_report_timeliness ----------------------------------------------------------------


def test_timeliness_window() -> None:
    report = replace(honest_report(), round=2)
    for now in (2, 3):
        verify_report_timeliness(report, RoundId(report.epoch, now), max_age_rounds=1)
    for now, field in ((1, "round"), (4, "round")):
        with pytest.raises(ScheduleError) as exc:
            verify_report_timeliness(report, RoundId(report.epoch, now), max_age_rounds=1)
        assert exc.value.field == field
    with pytest.raises(ScheduleError) as exc:
        verify_report_timeliness(report, RoundId(report.epoch + 1, 2), max_age_rounds=1)
    assert exc.value.field == "epoch"


# -- batches -----------------------------------------------------------------------------------


@cache
def batch_reports() -> tuple[Mixer, tuple[ScoreReport, ...]]:
    """Honest reports of the first (mixer, round) with at least three assigned nodes."""
    groups: dict[tuple[str, int], list[str]] = {}
    for mixer, round_, node in assigned():
        groups.setdefault((mixer.address, round_), []).append(node)
    (address, round_), nodes = next((k, v) for k, v in groups.items() if len(v) >= 3)
    mixer = next(m for m in MIXERS if m.address == address)
    by_address = {n.address: n for n in NODES}
    reports = tuple(run_honest_session(MIXERS, mixer, round_, by_address[a]) for a in nodes[:3])
    assert all(r.outcome == Outcome.OK for r in reports)
    return mixer, reports


def test_valid_batch_passes() -> None:
    mixer, reports = batch_reports()
    scores = verify_batch_proposal(make_proposal(mixer, reports), view())
    assert [s.total for s in scores] == [r.score for r in reports]


def test_batch_rejects_bad_originator_signature() -> None:
    mixer, reports = batch_reports()
    proposal = make_proposal(mixer, reports)
    other = next(m for m in MIXERS if m is not mixer)
    forged = replace(
        proposal, signature=other.identity.sign_typed(view().domain, proposal.batch.hash_struct())
    )
    with pytest.raises(SignatureError) as exc:
        verify_batch_proposal(forged, view())
    assert exc.value.field == "signature"


def test_batch_rejects_wrong_epoch_and_outsider() -> None:
    mixer, reports = batch_reports()
    proposal = make_proposal(mixer, reports)
    with pytest.raises(ScheduleError) as exc:
        verify_batch_proposal(proposal, make_view(MIXERS, NODES, epoch=EPOCH + 1))
    assert exc.value.field == "epoch"
    others = [m for m in MIXERS if m is not mixer]
    with pytest.raises(ProtocolError) as exc2:
        verify_batch_proposal(proposal, make_view(others, NODES))
    assert exc2.value.field == "mixer"


def test_batch_rejects_reports_not_matching_root() -> None:
    mixer, reports = batch_reports()
    proposal = make_proposal(mixer, reports)
    swapped = replace(proposal, reports=(reports[1], reports[0], *reports[2:]))
    with pytest.raises(QuorumError) as exc:
        verify_batch_proposal(swapped, view())
    assert exc.value.field == "reportsRoot"
    dropped = replace(proposal, reports=reports[:-1])
    with pytest.raises(QuorumError) as exc:
        verify_batch_proposal(dropped, view())
    assert exc.value.field == "reportCount"


def test_batch_with_one_bad_report_is_rejected_naming_it() -> None:
    mixer, reports = batch_reports()
    bad = (reports[0], replace(reports[1], score=reports[1].score + 1), *reports[2:])
    with pytest.raises(BatchRejected) as exc:
        verify_batch_proposal(make_proposal(mixer, bad), view())
    assert [i for i, _ in exc.value.reasons] == [1]
    assert "score" in exc.value.reasons[0][1]
    assert exc.value.field == "reports"


@pytest.mark.parametrize("bad_index", [0, 2])
def test_batch_with_a_crypto_failure_is_rejected_naming_it(bad_index: int) -> None:
    # A bad VRF proof or node signature is a CryptoError, not a ProtocolError: the batch must
    # still be refused whole with its reasons, not crash the co-signer.
    mixer, reports = batch_reports()
    bad = list(reports)
    if bad_index == 0:
        proof = bytearray(bad[0].vrf_proof)
        proof[40] ^= 1
        bad[0] = replace(bad[0], vrf_proof=bytes(proof))
    else:
        bad[2] = replace(bad[2], response_signature=bad[1].response_signature)
    with pytest.raises(BatchRejected) as exc:
        verify_batch_proposal(make_proposal(mixer, bad), view())
    assert [i for i, _ in exc.value.reasons] == [bad_index]


def test_batch_with_duplicate_report_is_rejected() -> None:
    mixer, reports = batch_reports()
    with pytest.raises(BatchRejected) as exc:
        verify_batch_proposal(make_proposal(mixer, (*reports, reports[0])), view())
    assert [i for i, _ in exc.value.reasons] == [len(reports)]
    assert "duplicate" in exc.value.reasons[0][1]


def test_batch_rejected_lists_every_bad_report() -> None:
    mixer, reports = batch_reports()
    bad = tuple(replace(r, score=r.score + 1) for r in reports)
    with pytest.raises(BatchRejected) as exc:
        verify_batch_proposal(make_proposal(mixer, bad), view())
    assert [i for i, _ in exc.value.reasons] == list(range(len(reports)))


# -- certificates ------------------------------------------------------------------------------


def test_certified_batch_with_quorum_passes() -> None:
    mixer, reports = batch_reports()
    others = [m for m in MIXERS if m is not mixer]
    certificate = make_certificate(make_proposal(mixer, reports), [mixer, *others[:2]])
    assert verify_certified_batch(certificate, view()) == (
        mixer.address, others[0].address, others[1].address
    )


def test_certified_batch_below_threshold_is_rejected() -> None:
    mixer, reports = batch_reports()
    other = next(m for m in MIXERS if m is not mixer)
    certificate = make_certificate(make_proposal(mixer, reports), [mixer, other])
    with pytest.raises(QuorumError) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == "signatures"


def test_certified_batch_without_its_originator_is_rejected() -> None:
    mixer, reports = batch_reports()
    others = [m for m in MIXERS if m is not mixer]
    certificate = make_certificate(make_proposal(mixer, reports), others)
    with pytest.raises(QuorumError) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == "signatures"


def test_certified_batch_with_outsider_signature_is_rejected() -> None:
    mixer, reports = batch_reports()
    others = [m for m in MIXERS if m is not mixer]
    certificate = make_certificate(make_proposal(mixer, reports), [mixer, *others[:2], OUTSIDER])
    with pytest.raises(QuorumError) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == "signatures[3]"


def test_certified_batch_with_invalid_report_is_rejected() -> None:
    mixer, reports = batch_reports()
    bad = (reports[0], replace(reports[1], rtt_us=TIMEOUT_US + 1), reports[2])
    certificate = make_certificate(make_proposal(mixer, bad), MIXERS)
    with pytest.raises(ScoringError) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == "reports[1]"
    assert "rttUs" in str(exc.value)


def test_certified_batch_with_bad_vrf_proof_names_the_report() -> None:
    mixer, reports = batch_reports()
    proof = bytearray(reports[2].vrf_proof)
    proof[40] ^= 1
    bad = (*reports[:2], replace(reports[2], vrf_proof=bytes(proof)))
    certificate = make_certificate(make_proposal(mixer, bad), MIXERS)
    with pytest.raises(InvalidProof) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == "reports[2]"


def test_certified_batch_with_duplicate_report_is_rejected() -> None:
    mixer, reports = batch_reports()
    certificate = make_certificate(make_proposal(mixer, (*reports, reports[1])), MIXERS)
    with pytest.raises(ProtocolError) as exc:
        verify_certified_batch(certificate, view())
    assert exc.value.field == f"reports[{len(reports)}]"


def test_certified_batch_of_another_epoch_is_rejected() -> None:
    mixer, reports = batch_reports()
    certificate = make_certificate(make_proposal(mixer, reports), MIXERS)
    with pytest.raises(ScheduleError) as exc:
        verify_certified_batch(certificate, make_view(MIXERS, NODES, epoch=EPOCH + 1))
    assert exc.value.field == "epoch"
