"""Quorum thresholds, certificate signatures, and the batch's Merkle commitment to its reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnanet.crypto.eip712 import SECP256K1_N, Domain, to_checksum_address
from dnanet.crypto.hashing import keccak256, sha256
from dnanet.crypto.keys import Identity
from dnanet.errors import QuorumError
from dnanet.protocol.messages import ZERO32, QuorumCertificate, ScoreBatch, ScoreReport
from dnanet.protocol.quorum import (
    compute_backup_rank,
    compute_batch,
    compute_quorum_threshold,
    compute_reports_root,
    verify_batch_contents,
    verify_certificate,
    verify_quorum,
)
from strategies import synthetic_report

DOMAIN = Domain(31337, "0x" + "11" * 20)
MIXERS = [Identity.from_entropy(sha256(b"mixer-%d" % i)) for i in range(10)]
OUTSIDER = Identity.from_entropy(sha256(b"outsider"))
NODES = ["0x" + sha256(b"node-%d" % i)[:20].hex() for i in range(6)]
STRUCT_HASH = sha256(b"a batch header")


def members(n: int) -> list[str]:
    return [m.address for m in MIXERS[:n]]


def sign(signer: Identity, struct_hash: bytes = STRUCT_HASH, domain: Domain = DOMAIN) -> bytes:
    return signer.sign_typed(domain, struct_hash)


def high_s_twin(signature: bytes) -> bytes:
    """The malleable twin (r, n - s, v flipped): recovers the same key on the bare curve."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


# -- threshold ----------------------------------------------------------------------------------
def test_threshold_table() -> None:
    assert [compute_quorum_threshold(n) for n in range(1, 11)] == [1, 2, 3, 3, 4, 5, 5, 6, 7, 7]


@given(n=st.integers(1, 10_000))
def test_threshold_is_the_least_count_above_two_thirds(n: int) -> None:
    t = compute_quorum_threshold(n)
    assert 3 * t > 2 * n >= 3 * (t - 1)
    assert t <= n


@pytest.mark.parametrize("n", [0, -1])
def test_no_threshold_for_an_empty_set(n: int) -> None:
    with pytest.raises(QuorumError, match="empty"):
        compute_quorum_threshold(n)


# -- verify_quorum ------------------------------------------------------------------------------
BAD_KINDS = ["duplicate", "outsider", "short", "high-s", "empty", "other-message", "other-domain"]


def _bad_signature(kind: str, signers: list[Identity]) -> bytes:
    if kind == "duplicate":
        return sign(signers[0])
    if kind == "outsider":
        return sign(OUTSIDER)
    if kind == "short":
        return sign(signers[0])[:64]
    if kind == "high-s":
        return high_s_twin(sign(signers[0]))
    if kind == "empty":
        return b""
    if kind == "other-message":
        return sign(signers[0], struct_hash=sha256(b"another header"))
    if kind == "other-domain":
        return sign(signers[0], domain=Domain(1, DOMAIN.verifying_contract))
    raise AssertionError(kind)


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(1, 10),
    data=st.data(),
    bad=st.none() | st.sampled_from(BAD_KINDS),
)
def test_accepted_iff_enough_distinct_valid_member_signatures(
    n: int, data: st.DataObject, bad: str | None
) -> None:
    chosen = data.draw(
        st.permutations(MIXERS[:n]).flatmap(lambda p: st.integers(0, n).map(lambda k: p[:k]))
    )
    signers = list(chosen)
    signatures = [sign(m) for m in signers]
    if bad is not None and signers:
        position = data.draw(st.integers(0, len(signatures)))
        signatures.insert(position, _bad_signature(bad, signers))
    else:
        bad = None
    valid = bad is None and len(signers) >= compute_quorum_threshold(n)
    if valid:
        assert verify_quorum(DOMAIN, STRUCT_HASH, signatures, members(n)) == tuple(
            m.address for m in signers
        )
    else:
        with pytest.raises(QuorumError) as exc:
            verify_quorum(DOMAIN, STRUCT_HASH, signatures, members(n))
        assert exc.value.field is not None and exc.value.field.startswith("signatures")


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("duplicate", "signed twice"),
        ("outsider", "not a member"),
        ("short", "65 bytes"),
        ("high-s", "high"),
        ("empty", "missing"),
        ("other-message", "not a member"),
        ("other-domain", "not a member"),
    ],
)
def test_one_bad_signature_rejects_the_certificate(kind: str, needle: str) -> None:
    # Four members: threshold 3. Four good signatures, plus one bad one at index 2.
    good = [sign(m) for m in MIXERS[:4]]
    signatures = [*good[:2], _bad_signature(kind, MIXERS[:4]), *good[2:]]
    with pytest.raises(QuorumError, match=needle) as exc:
        verify_quorum(DOMAIN, STRUCT_HASH, signatures, members(4))
    assert exc.value.field == "signatures[2]"


def test_duplicate_cannot_make_up_the_count() -> None:
    # Two distinct signers of four (threshold 3) plus a repeat of the first.
    signatures = [sign(MIXERS[0]), sign(MIXERS[1]), sign(MIXERS[0])]
    with pytest.raises(QuorumError, match="signed twice") as exc:
        verify_quorum(DOMAIN, STRUCT_HASH, signatures, members(4))
    assert exc.value.field == "signatures[2]"


def test_empty_signature_list_is_rejected() -> None:
    with pytest.raises(QuorumError, match="0 distinct member signatures, need 1 of 1") as exc:
        verify_quorum(DOMAIN, STRUCT_HASH, [], members(1))
    assert exc.value.field == "signatures"


def test_too_few_signatures() -> None:
    signatures = [sign(m) for m in MIXERS[:4]]
    with pytest.raises(QuorumError, match="4 distinct member signatures, need 5 of 7") as exc:
        verify_quorum(DOMAIN, STRUCT_HASH, signatures, members(7))
    assert exc.value.field == "signatures"


def test_empty_member_set_is_rejected() -> None:
    with pytest.raises(QuorumError, match="empty"):
        verify_quorum(DOMAIN, STRUCT_HASH, [sign(MIXERS[0])], [])


def test_members_in_checksum_case_and_repeated_count_once() -> None:
    checksummed = [to_checksum_address(a) for a in members(3)]
    signatures = [sign(m) for m in MIXERS[:3]]
    assert verify_quorum(DOMAIN, STRUCT_HASH, signatures, checksummed) == tuple(members(3))
    # A member listed twice is still one member: threshold of 3, not of 4.
    repeated = [*members(3), members(3)[0]]
    assert verify_quorum(DOMAIN, STRUCT_HASH, signatures, repeated) == tuple(members(3))


# -- reports root -------------------------------------------------------------------------------
def _leaves(k: int) -> list[bytes]:
    return [sha256(b"report-%d" % i) for i in range(k)]


def _reference_root(leaves: list[bytes]) -> bytes:
    """The same tree defined top-down: split at the largest power of two below the count."""
    if len(leaves) == 1:
        return leaves[0]
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return keccak256(_reference_root(leaves[:split]) + _reference_root(leaves[split:]))


def test_reports_root_small_trees() -> None:
    a, b, c, d, e = _leaves(5)
    h = keccak256
    assert compute_reports_root([]) == ZERO32
    assert compute_reports_root([a]) == a  # a single leaf is the root
    assert compute_reports_root([a, b]) == h(a + b)
    assert compute_reports_root([a, b, c]) == h(h(a + b) + c)  # odd node promoted unchanged
    assert compute_reports_root([a, b, c, d]) == h(h(a + b) + h(c + d))
    assert compute_reports_root([a, b, c, d, e]) == h(h(h(a + b) + h(c + d)) + e)


@settings(max_examples=60)
@given(count=st.integers(1, 70))
def test_reports_root_matches_the_top_down_definition(count: int) -> None:
    leaves = _leaves(count)
    assert compute_reports_root(leaves) == _reference_root(leaves)


@settings(max_examples=60)
@given(count=st.integers(2, 20), data=st.data())
def test_reports_root_depends_on_order_and_content(count: int, data: st.DataObject) -> None:
    leaves = _leaves(count)
    root = compute_reports_root(leaves)
    i, j = data.draw(st.lists(st.integers(0, count - 1), min_size=2, max_size=2, unique=True))
    swapped = list(leaves)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert compute_reports_root(swapped) != root
    changed = list(leaves)
    changed[i] = sha256(b"tampered")
    assert compute_reports_root(changed) != root
    assert compute_reports_root(leaves[:-1]) != root


# -- batches and certificates -------------------------------------------------------------------
ORIGIN = MIXERS[0]
EPOCH, ROUND = 5, 2


def make_report(**overrides: Any) -> ScoreReport:
    return synthetic_report(**{"epoch": EPOCH, "round": ROUND, "mixer": ORIGIN.address,
                               "node": NODES[0], "compute_us": 10_000, "score": 250_000,
                               **overrides})


REPORTS = tuple(make_report(node=node, score=100_000 + i) for i, node in enumerate(NODES[:3]))


def make_certificate(
    signers: list[Identity], reports: tuple[ScoreReport, ...] = REPORTS, **batch: Any
) -> QuorumCertificate:
    header = compute_batch(EPOCH, ROUND, ORIGIN.address, reports)
    header = dataclasses.replace(header, **batch)
    return QuorumCertificate(
        batch=header,
        reports=reports,
        signatures=tuple(sign(m, header.hash_struct()) for m in signers),
    )


def test_compute_batch_commits_to_the_reports() -> None:
    batch = compute_batch(EPOCH, ROUND, ORIGIN.address, REPORTS)
    assert batch == ScoreBatch(
        epoch=EPOCH,
        round=ROUND,
        mixer=ORIGIN.address,
        reports_root=compute_reports_root([r.hash_struct() for r in REPORTS]),
        report_count=3,
    )
    verify_batch_contents(batch, REPORTS)


@pytest.mark.parametrize(
    ("reports", "field", "needle"),
    [
        ((), "reports", "at least one"),
        (REPORTS[:2], "reportCount", "says 3 reports, carries 2"),
        ((*REPORTS, make_report(node=NODES[4])), "reportCount", "says 3 reports, carries 4"),
        ((REPORTS[0], make_report(node=NODES[1], round=ROUND + 1), REPORTS[2]), "reports[1]",
         "differs"),
        ((REPORTS[0], REPORTS[1], make_report(node=NODES[2], epoch=EPOCH + 1)), "reports[2]",
         "differs"),
        ((make_report(mixer=MIXERS[1].address), *REPORTS[1:]), "reports[0]", "differs"),
        ((REPORTS[0], dataclasses.replace(REPORTS[1], score=REPORTS[1].score + 1), REPORTS[2]),
         "reportsRoot", "do not hash"),
        ((REPORTS[1], REPORTS[0], REPORTS[2]), "reportsRoot", "do not hash"),
    ],
    ids=["empty", "fewer", "more", "other-round", "other-epoch", "other-mixer", "tampered",
         "reordered"],
)  # fmt: skip
def test_batch_contents_rejections(
    reports: tuple[ScoreReport, ...], field: str, needle: str
) -> None:
    batch = compute_batch(EPOCH, ROUND, ORIGIN.address, REPORTS)
    with pytest.raises(QuorumError, match=needle) as exc:
        verify_batch_contents(batch, reports)
    assert exc.value.field == field


def test_certificate_accepted_and_round_trips() -> None:
    cert = make_certificate(MIXERS[:3])  # 4 members: threshold 3
    assert verify_certificate(DOMAIN, cert, members(4)) == tuple(members(3))
    decoded = QuorumCertificate.from_json(cert.to_json())
    assert verify_certificate(DOMAIN, decoded, members(4)) == tuple(members(3))


def test_certificate_needs_the_originator_among_the_signers() -> None:
    cert = make_certificate(MIXERS[1:4])  # three members sign, but not the batch's own mixer
    assert verify_quorum(DOMAIN, cert.batch.hash_struct(), cert.signatures, members(4))
    with pytest.raises(QuorumError, match="own mixer") as exc:
        verify_certificate(DOMAIN, cert, members(4))
    assert exc.value.field == "signatures"


def test_certificate_from_a_non_member_originator() -> None:
    outsider_reports = tuple(dataclasses.replace(r, mixer=OUTSIDER.address) for r in REPORTS)
    header = compute_batch(EPOCH, ROUND, OUTSIDER.address, outsider_reports)
    cert = QuorumCertificate(
        batch=header,
        reports=outsider_reports,
        signatures=tuple(sign(m, header.hash_struct()) for m in MIXERS[:3]),
    )
    with pytest.raises(QuorumError, match="own mixer"):
        verify_certificate(DOMAIN, cert, members(4))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: make_certificate(MIXERS[:2]), "signatures"),  # 2 of 4, threshold 3
        (lambda: make_certificate(MIXERS[:3], report_count=2), "reportCount"),
        (lambda: dataclasses.replace(
            make_certificate(MIXERS[:3]),
            reports=(REPORTS[0], REPORTS[1], dataclasses.replace(REPORTS[2], rtt_us=1)),
        ), "reportsRoot"),
        (lambda: dataclasses.replace(
            make_certificate(MIXERS[:3]),
            batch=dataclasses.replace(make_certificate([]).batch, round=ROUND + 1),
        ), "reports[0]"),
        (lambda: dataclasses.replace(
            make_certificate(MIXERS[:3]),
            signatures=make_certificate(MIXERS[:3], reports=REPORTS[:2]).signatures,
        ), "signatures[0]"),  # signatures over another batch recover strangers
        (lambda: dataclasses.replace(
            make_certificate(MIXERS[:3]),
            signatures=(*make_certificate(MIXERS[:3]).signatures[:2],
                        high_s_twin(make_certificate(MIXERS[:3]).signatures[2])),
        ), "signatures[2]"),
    ],
    ids=["below-threshold", "count-mismatch", "tampered-report", "other-round", "other-batch",
         "high-s"],
)  # fmt: skip
def test_certificate_rejections(build: Any, field: str) -> None:
    with pytest.raises(QuorumError) as exc:
        verify_certificate(DOMAIN, build(), members(4))
    assert exc.value.field == field


def test_certificate_under_another_domain_is_rejected() -> None:
    cert = make_certificate(MIXERS[:3])
    with pytest.raises(QuorumError, match="not a member"):
        verify_certificate(Domain(1, DOMAIN.verifying_contract), cert, members(4))


# -- backup forwarders --------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 10), origin=st.integers(0, 9), batch_hash=st.binary(min_size=32,
                                                                             max_size=32))
def test_backup_ranks_order_every_cosigner_once_by_keccak(n: int, origin: int,
                                                          batch_hash: bytes) -> None:
    """The co-signers (every member but the originator) get ranks 0..n-2, in the order of
    keccak256(batchHash || address), whatever the members' order or address case."""
    names = members(n)
    originator = names[origin % n]
    others = [m for m in names if m != originator]
    ranks = {m: compute_backup_rank(batch_hash, names, originator, m) for m in others}
    assert sorted(ranks.values()) == list(range(n - 1))
    expected = sorted(others, key=lambda m: keccak256(batch_hash + bytes.fromhex(m[2:])))
    assert sorted(others, key=ranks.__getitem__) == expected
    shuffled = [to_checksum_address(m) for m in reversed(names)]
    assert all(compute_backup_rank(batch_hash, shuffled, originator.upper().replace("0X", "0x"),
                                   to_checksum_address(m)) == r for m, r in ranks.items())


def test_the_first_backup_differs_from_batch_to_batch() -> None:
    names = members(4)
    firsts = {next(m for m in names[1:] if compute_backup_rank(
        sha256(b"batch-%d" % i), names, names[0], m) == 0) for i in range(32)}
    assert firsts == set(names[1:])


@pytest.mark.parametrize("who", ["originator", "outsider"])
def test_no_backup_rank_for_the_originator_or_an_outsider(who: str) -> None:
    names = members(4)
    mixer = names[0] if who == "originator" else OUTSIDER.address
    with pytest.raises(QuorumError) as err:
        compute_backup_rank(STRUCT_HASH, names, names[0], mixer)
    assert err.value.field == "mixer"
