"""Compute challenge: generator, exact product, row commitment, spot checks, soundness."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dnanet.protocol.challenges as challenges
from dnanet.errors import ChallengeError, ConfigError
from dnanet.protocol.challenges import (
    COMPUTE_SIZES,
    ComputeSize,
    RowOpening,
    bandwidth,
    commit_product,
    compute,
    compute_product,
    derive_check_indices,
    derive_kind_seeds,
    detection_probability,
    latency,
    open_rows,
    verified_flops,
    verify_openings,
)
from dnanet.protocol.challenges.compute import (
    compute_a_rows,
    compute_b,
    compute_root_from_proof,
    compute_row_leaf,
)

SEED = bytes(range(32))
TEST_SIZE = COMPUTE_SIZES["test"]


def seeds(i: int) -> challenges.KindSeeds:
    return derive_kind_seeds(hashlib.sha256(b"test-challenge" + i.to_bytes(4, "big")).digest())


# --- independent reference implementations (byte by byte, no numpy) -------------------------


def ref_row(label: bytes, seed: bytes, i: int, n: int) -> list[int]:
    out = []
    for byte in hashlib.shake_128(label + seed + struct.pack(">I", i)).digest(n // 2):
        out.append((byte & 0x0F) - 8)
        out.append((byte >> 4) - 8)
    return out


def ref_product(seed: bytes, rows: int, n: int) -> list[list[int]]:
    a = [ref_row(b"dnanet/A", seed, i, n) for i in range(rows)]
    b = [ref_row(b"dnanet/B", seed, j, n) for j in range(n)]
    return [[sum(a[i][t] * b[t][j] for t in range(n)) for j in range(n)] for i in range(rows)]


def ref_leaf(i: int, row: list[int]) -> bytes:
    return hashlib.sha256(
        b"\x00" + struct.pack(">I", i) + struct.pack(f"<{len(row)}i", *row)
    ).digest()


def ref_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash over already-hashed leaves (split at the largest 2^k < n)."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 audit path of leaf m, leaf-side first."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_check_indices(check_seed: bytes, root: bytes, rows: int, k: int) -> list[int]:
    stream = hashlib.shake_128(b"dnanet/checks" + check_seed + root).digest(1 << 16)
    words = struct.unpack(f">{len(stream) // 4}I", stream)
    limit = (1 << 32) - (1 << 32) % rows
    out: list[int] = []
    for w in words:
        if w < limit and w % rows not in out:
            out.append(w % rows)
            if len(out) == k:
                return out
    raise AssertionError("reference stream too short")


def honest(size: ComputeSize, i: int = 0) -> tuple[challenges.KindSeeds, compute.ComputeAnswer]:
    s = seeds(i)
    return s, compute_product(s.compute_seed, size, device="cpu")


def openings_for(s: challenges.KindSeeds, answer: compute.ComputeAnswer) -> list[RowOpening]:
    return open_rows(answer, derive_check_indices(s.check_seed, answer.root, answer.size))


# --- generator --------------------------------------------------------------------------------


def test_generator_pinned_vector() -> None:
    # Pinned from the byte-by-byte reference above; a change here changes the protocol.
    assert compute_a_rows(SEED, 16, [0])[0].tolist() == [
        2, -3, -2, -7, -4, 4, 1, -6, -5, 7, -2, 0, 0, 2, -1, 4,
    ]  # fmt: skip
    assert compute_a_rows(SEED, 16, [5])[0, :8].tolist() == [-6, -7, -5, -6, -7, 3, -1, -5]
    assert compute_b(SEED, 16)[0].tolist() == [
        -2, 7, -7, -6, -5, 4, 0, 1, -3, -5, -1, 5, 5, -1, 6, -2,
    ]  # fmt: skip


@pytest.mark.parametrize("n", [2, 6, 16, 64])
def test_generator_matches_reference(n: int) -> None:
    rows = [0, 1, 7, 1000, 2**32 - 1]
    assert compute_a_rows(SEED, n, rows).tolist() == [
        ref_row(b"dnanet/A", SEED, i, n) for i in rows
    ]
    assert compute_b(SEED, n).tolist() == [ref_row(b"dnanet/B", SEED, j, n) for j in range(n)]


def test_generator_range_and_independence() -> None:
    a = compute_a_rows(SEED, 256, range(64))
    assert a.min() == -8 and a.max() == 7
    assert not np.array_equal(a[:16], compute_b(SEED, 256)[:16])  # A and B are separate streams
    other = compute_a_rows(hashlib.sha256(SEED).digest(), 256, range(64))
    assert not np.array_equal(a, other)


# --- exact product and commitment -----------------------------------------------------------


@pytest.mark.parametrize(("n", "rows"), [(2, 1), (4, 3), (6, 5), (8, 9)])
def test_product_matches_pure_python_reference(n: int, rows: int) -> None:
    size = ComputeSize(n=n, rows=rows, checks=1)
    answer = compute_product(SEED, size, device="cpu")
    expected = ref_product(SEED, rows, n)
    assert answer.product.tolist() == expected
    assert answer.root == ref_mth([ref_leaf(i, row) for i, row in enumerate(expected)])


@pytest.mark.parametrize(("n", "rows"), [(64, 64), (128, 37), (34, 300)])
def test_product_matches_int64_numpy(n: int, rows: int) -> None:
    s = seeds(n + rows)
    answer = compute_product(s.compute_seed, ComputeSize(n=n, rows=rows, checks=1), device="auto")
    a = compute_a_rows(s.compute_seed, n, range(rows)).astype(np.int64)
    b = compute_b(s.compute_seed, n).astype(np.int64)
    assert np.array_equal(answer.product, a @ b)


def test_cpu_blocks_do_not_change_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    size = ComputeSize(n=32, rows=50, checks=4)
    whole = compute_product(SEED, size, device="cpu")
    monkeypatch.setattr(compute, "_CPU_BLOCK_ENTRIES", 32 * 7)  # 7 rows per block
    blocked = compute_product(SEED, size, device="cpu")
    assert np.array_equal(whole.product, blocked.product) and whole.root == blocked.root


def test_pinned_root_and_checks() -> None:
    answer = compute_product(SEED, TEST_SIZE, device="cpu")
    assert answer.root.hex() == "368cf508bf88b7284871ac8597f4ea901ba3b2aff92b53783c9824c9770c1412"
    assert derive_check_indices(SEED, answer.root, TEST_SIZE) == [27, 13, 0, 20, 49, 30, 4, 37]


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_hash_workers_do_not_change_the_root(workers: int) -> None:
    size = ComputeSize(n=16, rows=41, checks=1)
    one = compute_product(SEED, size, device="cpu", workers=1)
    many = compute_product(SEED, size, device="cpu", workers=workers)
    assert one.root == many.root and one.levels == many.levels


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 8, 9, 13])
def test_merkle_tree_is_rfc6962(rows: int) -> None:
    product = np.arange(rows * 4, dtype=np.int32).reshape(rows, 4) - 7
    answer = commit_product(ComputeSize(n=4, rows=rows, checks=1), product)
    leaves = [ref_leaf(i, product[i].tolist()) for i in range(rows)]
    assert answer.root == ref_mth(leaves)
    for opening in open_rows(answer, range(rows)):
        assert list(opening.proof) == ref_path(opening.index, leaves)
        leaf = compute_row_leaf(opening.index, opening.row)
        assert compute_root_from_proof(leaf, opening.index, rows, opening.proof) == answer.root


def test_commit_rejects_wrong_shape() -> None:
    with pytest.raises(ChallengeError, match="shape") as err:
        commit_product(TEST_SIZE, np.zeros((TEST_SIZE.rows, TEST_SIZE.n + 2), dtype=np.int32))
    assert err.value.field == "product"


# --- check indices ----------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "k"), [(1, 1), (5, 5), (64, 8), (1000, 32), (2**31 + 1, 40)])
def test_check_indices_match_reference(rows: int, k: int) -> None:
    # rows = 2^31 + 1 rejects about half the words, and 40 checks outrun the first squeeze.
    size = ComputeSize(n=2, rows=rows, checks=k)
    for i in range(5):
        s = seeds(i)
        root = hashlib.sha256(b"root" + bytes([i])).digest()
        indices = derive_check_indices(s.check_seed, root, size)
        assert indices == ref_check_indices(s.check_seed, root, rows, k)
        assert len(set(indices)) == k and all(0 <= x < rows for x in indices)


def test_check_indices_depend_on_root_and_check_seed() -> None:
    size = ComputeSize(n=2, rows=1 << 20, checks=8)
    s, root = seeds(0), bytes(32)
    base = derive_check_indices(s.check_seed, root, size)
    assert derive_check_indices(s.check_seed, b"\x01" + root[1:], size) != base
    assert derive_check_indices(seeds(1).check_seed, root, size) != base
    # The node's own seeds give other indices: it cannot predict the checks.
    assert derive_check_indices(s.compute_seed, root, size) != base


def test_check_indices_are_uniform() -> None:
    rows, counts = 5, [0] * 5
    size = ComputeSize(n=2, rows=rows, checks=1)
    trials = 5000
    for i in range(trials):
        counts[derive_check_indices(SEED, i.to_bytes(32, "big"), size)[0]] += 1
    sigma = math.sqrt(trials * 0.2 * 0.8)
    assert all(abs(c - trials / rows) < 4 * sigma for c in counts), counts


def test_check_indices_reject_bad_inputs() -> None:
    with pytest.raises(ChallengeError) as err:
        derive_check_indices(SEED[:31], bytes(32), TEST_SIZE)
    assert err.value.field == "check_seed"
    with pytest.raises(ChallengeError) as err:
        derive_check_indices(SEED, bytes(33), TEST_SIZE)
    assert err.value.field == "root"


# --- honest node passes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        ComputeSize(n=2, rows=1, checks=1),
        ComputeSize(n=4, rows=3, checks=3),
        ComputeSize(n=16, rows=17, checks=5),
        ComputeSize(n=8, rows=100, checks=10),
        TEST_SIZE,
    ],
)
@pytest.mark.parametrize("i", range(3))
def test_honest_node_passes(size: ComputeSize, i: int) -> None:
    s, answer = honest(size, i)
    verify_openings(s.compute_seed, s.check_seed, size, answer.root, openings_for(s, answer))


@settings(max_examples=60, deadline=None)
@given(
    challenge_seed=st.binary(min_size=32, max_size=32),
    n_half=st.integers(1, 12),
    rows=st.integers(1, 40),
    data=st.data(),
)
def test_honest_openings_always_verify(
    challenge_seed: bytes, n_half: int, rows: int, data: st.DataObject
) -> None:
    size = ComputeSize(n=2 * n_half, rows=rows, checks=data.draw(st.integers(1, rows)))
    s = derive_kind_seeds(challenge_seed)
    answer = compute_product(s.compute_seed, size, device="cpu")
    indices = data.draw(st.lists(st.integers(0, rows - 1), max_size=10))
    for opening in open_rows(answer, indices):
        leaf = compute_row_leaf(opening.index, opening.row)
        assert compute_root_from_proof(leaf, opening.index, rows, opening.proof) == answer.root
    verify_openings(s.compute_seed, s.check_seed, size, answer.root, openings_for(s, answer))


# --- every rejection --------------------------------------------------------------------------


@pytest.fixture
def honest_case() -> tuple[challenges.KindSeeds, compute.ComputeAnswer, list[RowOpening]]:
    s, answer = honest(TEST_SIZE, 7)
    return s, answer, openings_for(s, answer)


Case = tuple[challenges.KindSeeds, compute.ComputeAnswer, list[RowOpening]]


def rejects(
    case: Case, openings: list[RowOpening], match: str, field: str, root: bytes = b""
) -> None:
    s, answer, _ = case
    with pytest.raises(ChallengeError, match=match) as err:
        verify_openings(s.compute_seed, s.check_seed, TEST_SIZE, root or answer.root, openings)
    assert err.value.field == field


def test_rejects_missing_and_extra_openings(honest_case: Case) -> None:
    openings = honest_case[2]
    rejects(honest_case, openings[:-1], "got 7 openings, expected 8", "openings")
    rejects(honest_case, [*openings, openings[0]], "got 9 openings", "openings")
    rejects(honest_case, [], "got 0 openings", "openings")


def test_rejects_wrong_index(honest_case: Case) -> None:
    o = list(honest_case[2])
    o[2], o[3] = o[3], o[2]  # right rows, wrong order
    rejects(honest_case, o, f"opened row {o[2].index}, expected {o[3].index}", "openings[2]")
    unasked = next(i for i in range(TEST_SIZE.rows) if i not in {x.index for x in o})
    o = list(honest_case[2])
    o[0] = open_rows(honest_case[1], [unasked])[0]
    rejects(honest_case, o, f"opened row {unasked}", "openings[0]")


def test_rejects_wrong_row_length(honest_case: Case) -> None:
    o = list(honest_case[2])
    o[1] = replace(o[1], row=o[1].row[:-4])
    rejects(honest_case, o, "row must be 256 bytes", "openings[1].row")
    o[1] = replace(o[1], row=o[1].row + bytes(8))
    rejects(honest_case, o, "row must be 256 bytes", "openings[1].row")


def test_rejects_tampered_row(honest_case: Case) -> None:
    o = list(honest_case[2])
    values = np.frombuffer(o[4].row, dtype="<i4").copy()
    values[3] += 1
    o[4] = replace(o[4], row=values.tobytes())
    rejects(honest_case, o, "does not lead to the root", "openings[4].proof")


def test_rejects_tampered_proof(honest_case: Case) -> None:
    o = list(honest_case[2])
    proof = list(o[0].proof)
    proof[2] = bytes([proof[2][0] ^ 1]) + proof[2][1:]
    o[0] = replace(o[0], proof=tuple(proof))
    rejects(honest_case, o, "does not lead to the root", "openings[0].proof")


def test_rejects_proof_of_wrong_length_or_shape(honest_case: Case) -> None:
    o = list(honest_case[2])
    good = o[5].proof
    o[5] = replace(o[5], proof=good[:-1])
    rejects(honest_case, o, "too short", "openings[5].proof")
    o[5] = replace(o[5], proof=(*good, good[0]))
    rejects(honest_case, o, "has 7 hashes, expected 6", "openings[5].proof")
    o[5] = replace(o[5], proof=(good[0][:31], *good[1:]))
    rejects(honest_case, o, "hash 0 is not 32 bytes", "openings[5].proof")


def test_rejects_wrong_root(honest_case: Case) -> None:
    s, answer, openings = honest_case
    other = hashlib.sha256(answer.root).digest()
    # Against another root the checks are other rows: the openings are at the wrong indices.
    rejects(honest_case, openings, "opened row", "openings[0]", root=other)
    # Rows opened at the other root's indices still do not lead to it.
    moved = open_rows(answer, derive_check_indices(s.check_seed, other, TEST_SIZE))
    rejects(honest_case, moved, "does not lead to the root", "openings[0].proof", root=other)


def test_rejects_committed_wrong_row() -> None:
    # A node that commits to wrong rows and is asked for one: the proof is fine, the value not.
    s, answer = honest(TEST_SIZE, 3)
    product = answer.product.copy()
    product[1::2, 10] -= 5  # every odd row wrong
    cheat = commit_product(TEST_SIZE, product)
    indices = derive_check_indices(s.check_seed, cheat.root, TEST_SIZE)
    wrong = [pos for pos, i in enumerate(indices) if i % 2]
    assert wrong
    with pytest.raises(ChallengeError, match="differs from A\\[i\\]·B at column 10") as err:
        verify_openings(
            s.compute_seed, s.check_seed, TEST_SIZE, cheat.root, open_rows(cheat, indices)
        )
    assert err.value.field == f"openings[{wrong[0]}].row"


def test_rejects_wrong_seeds(honest_case: Case) -> None:
    s, answer, openings = honest_case
    with pytest.raises(ChallengeError, match="differs from A"):
        verify_openings(seeds(8).compute_seed, s.check_seed, TEST_SIZE, answer.root, openings)
    with pytest.raises(ChallengeError) as err:
        verify_openings(b"short", s.check_seed, TEST_SIZE, answer.root, openings)
    assert err.value.field == "compute_seed"
    with pytest.raises(ChallengeError) as err:
        compute_product(b"", TEST_SIZE)
    assert err.value.field == "compute_seed"


def test_open_rows_rejects_out_of_range() -> None:
    _, answer = honest(TEST_SIZE)
    with pytest.raises(ChallengeError, match="row 64 is outside") as err:
        open_rows(answer, [0, 64])
    assert err.value.field == "indices[1]"
    with pytest.raises(ChallengeError):
        open_rows(answer, [-1])


# --- soundness: a node that skips work is caught at the stated rate ----------------------------


@pytest.mark.parametrize(("rows", "bad", "k", "trials"), [(64, 16, 8, 1500), (40, 4, 10, 1000)])
def test_partial_work_is_caught_at_the_stated_rate(
    rows: int, bad: int, k: int, trials: int
) -> None:
    size = ComputeSize(n=8, rows=rows, checks=k)
    passed = 0
    for t in range(trials):
        s = seeds(10_000 + t)
        product = compute_product(s.compute_seed, size, device="cpu").product.copy()
        # The cheater picks its skipped rows without knowing check_seed (it never sees it).
        skipped = np.random.default_rng(t).choice(rows, size=bad, replace=False)
        product[skipped] = 0
        product[skipped, 0] = 1 << 20  # a value no honest row can hold (|C| <= 64n)
        cheat = commit_product(size, product)
        openings = open_rows(cheat, derive_check_indices(s.check_seed, cheat.root, size))
        try:
            verify_openings(s.compute_seed, s.check_seed, size, cheat.root, openings)
            passed += 1
        except ChallengeError:
            pass
    f = bad / rows
    exact = math.comb(rows - bad, k) / math.comb(rows, k)  # distinct checks: hypergeometric
    assert exact <= (1 - f) ** k == pytest.approx(1 - detection_probability(f, k))
    tolerance = 4 * math.sqrt(trials * exact * (1 - exact))
    assert abs(passed - trials * exact) <= tolerance, (passed, trials * exact)


def test_detection_probability_and_flops() -> None:
    assert detection_probability(0.0, 32) == 0.0
    assert detection_probability(1.0, 1) == 1.0
    assert detection_probability(0.1, 32) == pytest.approx(1 - 0.9**32)
    assert detection_probability(0.5, 0) == 0.0
    for bad, field in ((-0.1, "skipped_fraction"), (1.5, "skipped_fraction")):
        with pytest.raises(ConfigError) as err:
            detection_probability(bad, 4)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        detection_probability(0.5, -1)
    assert err.value.field == "checks"
    assert verified_flops(ComputeSize(n=1024, rows=8, checks=1)) == 2 * 8 * 1024 * 1024
    cpu, gpu = COMPUTE_SIZES["cpu"], COMPUTE_SIZES["gpu"]
    assert verified_flops(gpu) > verified_flops(cpu) > verified_flops(COMPUTE_SIZES["test"])


# --- sizes, devices ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 3, "rows": 4, "checks": 1}, "n"),
        ({"n": 0, "rows": 4, "checks": 1}, "n"),
        ({"n": compute.MAX_N + 2, "rows": 4, "checks": 1}, "n"),
        ({"n": 4, "rows": 0, "checks": 1}, "rows"),
        ({"n": 4, "rows": 2**32 + 1, "checks": 1}, "rows"),
        ({"n": 4, "rows": 4, "checks": 0}, "checks"),
        ({"n": 4, "rows": 4, "checks": 5}, "checks"),
    ],
)
def test_compute_size_rejects(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        ComputeSize(**kwargs)
    assert err.value.field == field


def test_named_sizes_keep_products_exact() -> None:
    assert set(COMPUTE_SIZES) >= {"test", "cpu", "gpu"}
    for size in COMPUTE_SIZES.values():
        assert 64 * size.n < 2**24


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'auto', 'cpu' or 'cuda'") as err:
        compute_product(SEED, TEST_SIZE, device="tpu")
    assert err.value.field == "device"
    monkeypatch.setattr(compute, "_import_torch", lambda: None)
    assert challenges.resolve_compute_device("auto") == "cpu"
    assert challenges.resolve_compute_device("cpu") == "cpu"
    assert (
        compute_product(SEED, TEST_SIZE, device="auto").root
        == compute_product(SEED, TEST_SIZE, device="cpu").root
    )
    with pytest.raises(ConfigError, match="needs torch with a CUDA device"):
        compute_product(SEED, TEST_SIZE, device="cuda")


def test_torch_path_matches_numpy_when_installed() -> None:
    torch = compute._import_torch()
    if torch is None:
        pytest.skip("needs torch")
    size = ComputeSize(n=64, rows=100, checks=8)
    expected = compute_product(SEED, size, device="cpu").product
    assert np.array_equal(compute._product_torch(SEED, size, "cpu"), expected)


def test_cuda_matches_cpu_when_available() -> None:
    torch = compute._import_torch()
    if torch is None or not torch.cuda.is_available():
        pytest.skip("needs torch with a CUDA device")
    for size in (ComputeSize(n=256, rows=1000, checks=8), COMPUTE_SIZES["cpu"]):
        cuda = compute_product(SEED, size, device="cuda")
        assert cuda.root == compute_product(SEED, size, device="cpu").root


# --- kind seeds and domain separation ---------------------------------------------------------


def test_kind_seeds_are_distinct_hashes() -> None:
    challenge_seed = hashlib.sha256(b"x").digest()
    s = derive_kind_seeds(challenge_seed)
    for label, value in (
        (b"dnanet/compute", s.compute_seed),
        (b"dnanet/upload", s.upload_seed),
        (b"dnanet/download", s.download_seed),
        (b"dnanet/latency", s.latency_seed),
        (b"dnanet/spot-check", s.check_seed),
    ):
        assert value == hashlib.sha256(label + challenge_seed).digest()
    values = [s.compute_seed, s.upload_seed, s.download_seed, s.latency_seed, s.check_seed]
    assert len(set(values)) == 5
    with pytest.raises(ChallengeError) as err:
        derive_kind_seeds(challenge_seed[:-1])
    assert err.value.field == "challenge_seed"


def test_no_label_is_a_prefix_of_another() -> None:
    labels = [
        value
        for module in (challenges, compute, bandwidth, latency)
        for name, value in vars(module).items()
        if name.startswith("LABEL_")
    ]
    labels = [*sorted(set(labels)), b"dnanet/challenge", b"dnanet/round"]  # the lead's labels
    assert len(labels) >= 12
    for x in labels:
        for y in labels:
            assert x == y or not y.startswith(x), (x, y)
