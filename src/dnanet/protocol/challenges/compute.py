"""Compute challenge: a seeded exact integer product, committed by rows, spot-checked.

The node computes ``C = A·B`` with ``A`` (``rows`` x ``n``) and ``B`` (``n`` x ``n``), commits to
``C`` with a Merkle root over its rows, and then opens the ``checks`` rows the mixer asks for. The
mixer regenerates only those rows of ``A`` plus ``B`` and compares each opened row with
``A[i]·B``. Node work: ``2·rows·n²`` FLOPs; mixer work: ``n²`` generated entries plus
``2·checks·n²`` FLOPs.

Derivation rules (normative; every integer is unsigned big-endian unless stated):

- Entries. Row ``i`` of ``A`` is ``SHAKE-128(b"dnanet/A" || compute_seed || u32(i))`` squeezed to
  ``n/2`` bytes; row ``j`` of ``B`` is the same with label ``b"dnanet/B"``. Each byte gives two
  entries, low nibble first: ``entry = nibble - 8``, so entries lie in ``[-8, 7]``.
- Exactness. ``|C[i][j]| <= 64·n`` and every partial sum of a row-times-column product is an
  integer of at most that size; with ``n <= 2^18`` that is below ``2^24``, so float32 BLAS, and GPU
  tensor cores (TF32 keeps small integers exact, accumulation is float32), compute ``C`` exactly.
- Row leaf. ``leaf_i = SHA-256(0x00 || u32(i) || C[i] as n int32 little-endian)``.
- Merkle tree. Level 0 is the leaves in row order. Each next level pairs neighbours:
  ``SHA-256(0x01 || left || right)``; an odd last node is promoted unchanged (not duplicated). The
  root is the single node of the last level (the leaf itself when ``rows == 1``). A proof lists
  the sibling of each level from the leaf up, skipping levels where the node was promoted; its
  length is therefore fixed by ``(index, rows)``. This is exactly the RFC 6962 Merkle Tree Hash
  (and audit path) over the entries ``u32(i) || C[i]``.
- Check indices. ``check_seed`` is a seed the node never sees (see ``derive_kind_seeds``). Read
  ``SHAKE-128(b"dnanet/checks" || check_seed || root)`` as successive u32 words ``w``; reject
  ``w >= 2^32 - (2^32 mod rows)`` (no modulo bias); ``i = w mod rows``; skip an ``i`` already
  drawn; stop after ``checks`` distinct indices. The order of drawing is the order of openings.

Soundness. The indices are drawn after the root, from a seed unknown to the node, so the node
cannot grind its root until the checks miss the rows it skipped. A node that leaves a fraction
``f`` of rows wrong passes all ``k`` distinct checks with probability
``C(rows - f·rows, k) / C(rows, k) <= (1 - f)^k``.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from dnanet.errors import ChallengeError, ConfigError

LABEL_A: Final = b"dnanet/A"
LABEL_B: Final = b"dnanet/B"
LABEL_CHECKS: Final = b"dnanet/checks"
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"

SEED_BYTES: Final = 32
ENTRY_MIN: Final = -8
ENTRY_MAX: Final = 7
MAX_N: Final = 1 << 18  # keeps |C| <= 64n < 2^24: exact in float32
MAX_ROWS: Final = 1 << 32  # row indices are u32
INT32_LE: Final = np.dtype("<i4")

# Rows of A generated and multiplied at a time on the CPU: bounds the float32 scratch memory.
_CPU_BLOCK_ENTRIES: Final = 1 << 24

# Byte -> (low nibble - 8, high nibble - 8), float32: one gather maps keystream to entries.
_NIBBLE_LUT: Final = np.stack(
    [(np.arange(256) & 15) - 8, (np.arange(256) >> 4) - 8], axis=1
).astype(np.float32)
# The same for two bytes at once (u16 little-endian -> 4 entries, stream order). Each record of
# 16 bytes is viewed as one complex128 only so that numpy gathers it as a single element:
# about 6x faster than gathering float32 pairs.
_PAIR_LUT: Final = (
    np.stack([((np.arange(1 << 16) >> s) & 15) - 8 for s in (0, 4, 8, 12)], axis=1)
    .astype(np.float32)
    .view(np.complex128)
    .reshape(1 << 16)
)


@dataclass(frozen=True)
class ComputeSize:
    """Shape of one compute challenge: ``A`` is ``rows`` x ``n``, ``B`` is ``n`` x ``n``."""

    n: int
    rows: int
    checks: int

    def __post_init__(self) -> None:
        if not 2 <= self.n <= MAX_N or self.n % 2:
            raise ConfigError(f"must be even and in [2, {MAX_N}], got {self.n}", field="n")
        if not 1 <= self.rows <= MAX_ROWS:
            raise ConfigError(f"must be in [1, {MAX_ROWS}], got {self.rows}", field="rows")
        if not 1 <= self.checks <= self.rows:
            raise ConfigError(
                f"must be in [1, rows={self.rows}], got {self.checks}", field="checks"
            )


# Named sizes per declared hardware class. "cpu": about 0.5-2 s of node work on a 2-core x86
# CPU (measured by bench/compute.py); "local": the local preset's, tens of milliseconds. "gpu": 16x the FLOPs of "cpu", same check count; the
# larger n halves the node's per-FLOP generation and hashing cost, the mixer's B grows 4x.
COMPUTE_SIZES: Final[dict[str, ComputeSize]] = {
    "test": ComputeSize(n=64, rows=64, checks=8),
    "local": ComputeSize(n=1024, rows=1024, checks=16),
    "cpu": ComputeSize(n=2048, rows=8192, checks=32),
    "gpu": ComputeSize(n=4096, rows=32768, checks=32),
}


@dataclass(frozen=True)
class RowOpening:
    """One opened row of ``C``: its index, its ``n`` int32 little-endian values, its proof."""

    index: int
    row: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, eq=False)
class ComputeAnswer:
    """The node's committed product: ``root`` is what it signs, the rest serves openings."""

    size: ComputeSize
    root: bytes
    product: npt.NDArray[np.int32]
    levels: tuple[tuple[bytes, ...], ...]


def _check_seed(seed: bytes, field: str) -> None:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ChallengeError(f"must be {SEED_BYTES} bytes", field=field)


def _keystream_rows(label: bytes, seed: bytes, indices: Sequence[int], n: int) -> bytes:
    half = n // 2
    return b"".join(
        hashlib.shake_128(label + seed + i.to_bytes(4, "big")).digest(half) for i in indices
    )


def _entries_f32(keystream: bytes, count: int, n: int) -> npt.NDArray[np.float32]:
    data = np.frombuffer(keystream, dtype=np.uint8)
    if data.size % 2:
        return _NIBBLE_LUT[data].reshape(count, n)
    entries: npt.NDArray[np.float32] = _PAIR_LUT[data.view("<u2")].view(np.float32)
    return entries.reshape(count, n)


def compute_matrix_rows(
    label: bytes, seed: bytes, indices: Sequence[int], n: int
) -> npt.NDArray[np.int8]:
    """Rows ``indices`` of the matrix named by ``label`` (``LABEL_A`` or ``LABEL_B``), as int8."""
    _check_seed(seed, "compute_seed")
    data = np.frombuffer(_keystream_rows(label, seed, indices, n), dtype=np.uint8)
    out = np.empty((data.size, 2), dtype=np.int8)
    out[:, 0] = data & 15
    out[:, 1] = data >> 4
    out -= 8
    return out.reshape(len(indices), n)


def compute_a_rows(compute_seed: bytes, n: int, indices: Sequence[int]) -> npt.NDArray[np.int8]:
    """Rows ``indices`` of ``A`` (int8, entries in [-8, 7])."""
    return compute_matrix_rows(LABEL_A, compute_seed, indices, n)


def compute_b(compute_seed: bytes, n: int) -> npt.NDArray[np.int8]:
    """The ``n`` x ``n`` matrix ``B`` (int8, entries in [-8, 7])."""
    return compute_matrix_rows(LABEL_B, compute_seed, range(n), n)


def _b_f32(compute_seed: bytes, n: int) -> npt.NDArray[np.float32]:
    return _entries_f32(_keystream_rows(LABEL_B, compute_seed, range(n), n), n, n)


def resolve_compute_device(device: str) -> str:
    """The device ``compute_product`` will use for ``device``: "cpu" or "cuda".

    With "auto" this imports torch when it is installed (slow the first time): a node should
    call it once at start-up, so that no challenge pays for the import.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"must be 'auto', 'cpu' or 'cuda', got {device!r}", field="device")
    if device == "cpu":
        return "cpu"
    torch = _import_torch()
    has_cuda = torch is not None and bool(torch.cuda.is_available())
    if device == "cuda" and not has_cuda:
        raise ConfigError(
            "'cuda' needs torch with a CUDA device; install torch or use 'cpu'", field="device"
        )
    return "cuda" if has_cuda else "cpu"


def _import_torch() -> Any:
    # torch is optional and heavy: import it only when a GPU is asked for or probed.
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def _product_cpu(compute_seed: bytes, size: ComputeSize) -> npt.NDArray[np.int32]:
    n, rows = size.n, size.rows
    b = _b_f32(compute_seed, n)
    product = np.empty((rows, n), dtype=INT32_LE)
    a_colsum = np.zeros(n, dtype=np.float64)
    block = max(1, _CPU_BLOCK_ENTRIES // n)
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        a = _entries_f32(
            _keystream_rows(LABEL_A, compute_seed, range(start, stop), n), stop - start, n
        )
        c = a @ b
        product[start:stop] = c
        a_colsum += a.sum(axis=0, dtype=np.float64)
    # Verify the product exactly with the all-ones vector: 1ᵀC = (1ᵀA)·B. All terms are
    # integers below 2^53, so the float64 comparison is exact; it catches a BLAS that rounds.
    if not np.array_equal(product.sum(axis=0, dtype=np.int64), (a_colsum @ b.astype(np.float64))):
        raise ChallengeError("local product is inexact (column sums differ)", field="device")
    return product


def _product_torch(compute_seed: bytes, size: ComputeSize, device: str) -> npt.NDArray[np.int32]:
    torch = _import_torch()
    n, rows = size.n, size.rows

    def entries(label: bytes, count: int) -> Any:
        # Ship the keystream (half a byte per entry) and map nibbles on the device.
        stream = bytearray(_keystream_rows(label, compute_seed, range(count), n))
        raw = torch.frombuffer(stream, dtype=torch.uint8).to(device)
        pairs = torch.stack((raw & 15, raw >> 4), dim=1)  # low nibble first
        return pairs.reshape(count, n).to(torch.float32) - 8

    a = entries(LABEL_A, rows)
    b = entries(LABEL_B, n)
    c = a @ b
    # Verify exactness on the device with the all-ones vector (float64: exact below 2^53).
    lhs = c.sum(dim=0, dtype=torch.float64)
    rhs = a.sum(dim=0, dtype=torch.float64) @ b.double()
    if not bool(torch.equal(lhs, rhs)):
        raise ChallengeError("local product is inexact (column sums differ)", field="device")
    product: npt.NDArray[np.int32] = c.to(torch.int32).cpu().numpy()  # the one copy back
    return np.ascontiguousarray(product, dtype=INT32_LE)


def compute_product(
    compute_seed: bytes, size: ComputeSize, device: str = "auto", workers: int = 1
) -> ComputeAnswer:
    """Node side: compute ``C = A·B`` exactly and commit to its rows.

    ``device``: "cpu" (numpy float32 BLAS), "cuda" (torch, float32 on the GPU), or "auto"
    (CUDA when torch sees a GPU). ``workers`` threads hash the rows (hashlib releases the GIL).
    The result is bit-identical on every device.
    """
    _check_seed(compute_seed, "compute_seed")
    if resolve_compute_device(device) == "cuda":
        product = _product_torch(compute_seed, size, "cuda")
    else:
        product = _product_cpu(compute_seed, size)
    return commit_product(size, product, workers=workers)


def compute_row_leaf(index: int, row: bytes) -> bytes:
    """Merkle leaf of row ``index``: ``SHA-256(0x00 || u32(index) || row)``."""
    return hashlib.sha256(LEAF_PREFIX + index.to_bytes(4, "big") + row).digest()


def _hash_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _row_leaves(product: npt.NDArray[np.int32], workers: int) -> list[bytes]:
    rows = product.shape[0]
    view = product.data.cast("B")
    width = product.shape[1] * 4

    def leaves(start: int, stop: int) -> list[bytes]:
        out = []
        for i in range(start, stop):
            h = hashlib.sha256(LEAF_PREFIX + i.to_bytes(4, "big"))
            h.update(view[i * width : (i + 1) * width])
            out.append(h.digest())
        return out

    if workers <= 1 or rows < 2 * workers:
        return leaves(0, rows)
    step = math.ceil(rows / workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda s: leaves(s, min(rows, s + step)), range(0, rows, step))
        return [leaf for part in parts for leaf in part]


def _merkle_levels(leaves: list[bytes]) -> tuple[tuple[bytes, ...], ...]:
    levels = [tuple(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        nxt = [_hash_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # odd node promoted, never duplicated
        levels.append(tuple(nxt))
    return tuple(levels)


def commit_product(size: ComputeSize, product: npt.NDArray[Any], workers: int = 1) -> ComputeAnswer:
    """Commit to a ``rows`` x ``n`` integer product: the Merkle root over its row leaves."""
    if product.shape != (size.rows, size.n):
        raise ChallengeError(
            f"shape {product.shape} is not ({size.rows}, {size.n})", field="product"
        )
    c = np.ascontiguousarray(product, dtype=INT32_LE)
    levels = _merkle_levels(_row_leaves(c, workers))
    return ComputeAnswer(size=size, root=levels[-1][0], product=c, levels=levels)


def _merkle_proof(levels: tuple[tuple[bytes, ...], ...], index: int) -> tuple[bytes, ...]:
    proof = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return tuple(proof)


def open_rows(answer: ComputeAnswer, indices: Sequence[int]) -> list[RowOpening]:
    """Node side: open the rows the mixer asked for, in the order asked."""
    openings = []
    for pos, index in enumerate(indices):
        if not 0 <= index < answer.size.rows:
            raise ChallengeError(
                f"row {index} is outside [0, {answer.size.rows})", field=f"indices[{pos}]"
            )
        openings.append(
            RowOpening(
                index=index,
                row=answer.product[index].tobytes(),
                proof=_merkle_proof(answer.levels, index),
            )
        )
    return openings


def compute_root_from_proof(
    leaf: bytes, index: int, rows: int, proof: Sequence[bytes], field: str = "proof"
) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` in a tree of ``rows`` leaves.

    Raises ``ChallengeError`` when the proof is not exactly as long as that position needs.
    """
    node, width, used = leaf, rows, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof):
                raise ChallengeError(f"too short: {len(proof)} hashes", field=field)
            other = proof[used]
            if not isinstance(other, bytes) or len(other) != 32:
                raise ChallengeError(f"hash {used} is not 32 bytes", field=field)
            node = _hash_node(node, other) if index % 2 == 0 else _hash_node(other, node)
            used += 1
        index //= 2
        width = (width + 1) // 2
    if used != len(proof):
        raise ChallengeError(f"has {len(proof)} hashes, expected {used}", field=field)
    return node


def derive_check_indices(check_seed: bytes, root: bytes, size: ComputeSize) -> list[int]:
    """Mixer side: the ``size.checks`` distinct rows to open, drawn after the commitment."""
    _check_seed(check_seed, "check_seed")
    if not isinstance(root, bytes) or len(root) != 32:
        raise ChallengeError("must be 32 bytes", field="root")
    rows, want = size.rows, size.checks
    limit = (1 << 32) - (1 << 32) % rows
    xof = hashlib.shake_128(LABEL_CHECKS + check_seed + root)
    chosen: list[int] = []
    seen: set[int] = set()
    stream, pos = b"", 0
    while len(chosen) < want:
        if pos == len(stream):
            # SHAKE output is prefix-stable: squeeze a longer stream and continue where we were.
            stream = xof.digest(max(64, 2 * len(stream), 8 * want))
        word = int.from_bytes(stream[pos : pos + 4], "big")
        pos += 4
        if word >= limit:
            continue
        index = word % rows
        if index not in seen:
            seen.add(index)
            chosen.append(index)
    return chosen


def verify_openings(
    compute_seed: bytes,
    check_seed: bytes,
    size: ComputeSize,
    root: bytes,
    openings: Sequence[RowOpening],
) -> None:
    """Mixer side: check the node's openings against ``root`` and against ``A[i]·B``.

    Raises ``ChallengeError`` naming the first problem: wrong count, wrong index, wrong row
    length, a proof that does not lead to ``root``, or a row that differs from ``A[i]·B``.
    """
    _check_seed(compute_seed, "compute_seed")
    indices = derive_check_indices(check_seed, root, size)
    # Verify the count
    if len(openings) != size.checks:
        raise ChallengeError(
            f"got {len(openings)} openings, expected {size.checks}", field="openings"
        )
    row_bytes = 4 * size.n
    for pos, (opening, index) in enumerate(zip(openings, indices, strict=True)):
        field = f"openings[{pos}]"
        # Verify the index is the one drawn for this position
        if opening.index != index:
            raise ChallengeError(f"opened row {opening.index}, expected {index}", field=field)
        # Verify the row length
        if not isinstance(opening.row, bytes) or len(opening.row) != row_bytes:
            raise ChallengeError(
                f"row must be {row_bytes} bytes ({size.n} int32)", field=f"{field}.row"
            )
        # Verify the row is the committed one
        leaf = compute_row_leaf(index, opening.row)
        if compute_root_from_proof(leaf, index, size.rows, opening.proof, f"{field}.proof") != root:
            raise ChallengeError("Merkle proof does not lead to the root", field=f"{field}.proof")
    # Verify each row equals A[i]·B (float32 is exact here, as for the node: see the docstring)
    a = _entries_f32(_keystream_rows(LABEL_A, compute_seed, indices, size.n), len(indices), size.n)
    expected = (a @ _b_f32(compute_seed, size.n)).astype(np.int64)
    got = np.stack([np.frombuffer(o.row, dtype=INT32_LE) for o in openings]).astype(np.int64)
    bad = np.nonzero(np.any(expected != got, axis=1))[0]
    if bad.size:
        pos = int(bad[0])
        col = int(np.nonzero(expected[pos] != got[pos])[0][0])
        raise ChallengeError(
            f"row {indices[pos]} differs from A[i]·B at column {col}: "
            f"got {int(got[pos, col])}, expected {int(expected[pos, col])}",
            field=f"openings[{pos}].row",
        )


def detection_probability(skipped_fraction: float, checks: int) -> float:
    """Lower bound on catching a node that left ``skipped_fraction`` of rows wrong.

    ``1 - (1 - f)^k``; drawing distinct rows makes the true figure at least this.
    """
    if not 0.0 <= skipped_fraction <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {skipped_fraction}", field="skipped_fraction")
    if checks < 0:
        raise ConfigError(f"must be >= 0, got {checks}", field="checks")
    return 1.0 - (1.0 - skipped_fraction) ** checks


def verified_flops(size: ComputeSize) -> int:
    """FLOPs of the node's product: ``2·rows·n²`` (one multiply and one add per term)."""
    return 2 * size.rows * size.n * size.n


__all__ = [
    "COMPUTE_SIZES",
    "LABEL_A",
    "LABEL_B",
    "LABEL_CHECKS",
    "ComputeAnswer",
    "ComputeSize",
    "RowOpening",
    "commit_product",
    "compute_a_rows",
    "compute_b",
    "compute_matrix_rows",
    "compute_product",
    "compute_root_from_proof",
    "compute_row_leaf",
    "derive_check_indices",
    "detection_probability",
    "open_rows",
    "resolve_compute_device",
    "verified_flops",
    "verify_openings",
]
