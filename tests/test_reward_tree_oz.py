"""RewardTree against OpenZeppelin's own StandardMerkleTree (npm `@openzeppelin/merkle-tree`).

The pinned package is installed into tests/js with `npm ci` on first use; the tests skip only
when node or npm is not on PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnanet.protocol.rollup import UINT256_LIMIT, RewardTree

pytestmark = pytest.mark.npm

JS_DIR = Path(__file__).parent / "js"
OZ_PACKAGE = JS_DIR / "node_modules" / "@openzeppelin" / "merkle-tree" / "package.json"


def _installed_version() -> str | None:
    try:
        return str(json.loads(OZ_PACKAGE.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def oz() -> Iterator[str]:
    """Path to `node`, once tests/js/node_modules holds the pinned merkle-tree package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(
            f"the OpenZeppelin cross-check needs node and npm on PATH (node: {node}, npm: {npm})"
        )
    pinned = json.loads((JS_DIR / "package.json").read_text())["dependencies"][
        "@openzeppelin/merkle-tree"
    ]
    # pytest-xdist workers share tests/js: one installs, the others wait on the lock
    lock_name = "dnanet-oz-npm-" + hashlib.sha256(str(JS_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() != pinned:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if result.returncode != 0:
                pytest.fail(f"npm ci in {JS_DIR} failed:\n{result.stdout}\n{result.stderr}")
        assert _installed_version() == pinned
    yield node


def oz_tree(node: str, entries: list[tuple[str, int]]) -> tuple[bytes, list[list[bytes]]]:
    """Root and per-entry proofs from OZ's StandardMerkleTree.of(entries, [address, uint256])."""
    request = {"entries": [[address, str(amount)] for address, amount in entries]}
    result = subprocess.run(
        [node, str(JS_DIR / "oz_tree.mjs")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    root = bytes.fromhex(reply["root"].removeprefix("0x"))
    proofs = [[bytes.fromhex(p.removeprefix("0x")) for p in proof] for proof in reply["proofs"]]
    return root, proofs


def assert_same_as_oz(node: str, entries: list[tuple[str, int]]) -> None:
    root, proofs = oz_tree(node, entries)
    tree = RewardTree.build(entries)
    assert tree.root == root
    assert len(proofs) == len(entries)
    for (address, _), proof in zip(entries, proofs, strict=True):
        assert tree.proof(address) == proof, address


def random_entries(seed: int, n: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    entries: dict[str, int] = {}
    while len(entries) < n:
        raw = rng.randbytes(20).hex()
        # mixed case, as checksummed addresses arrive; OZ takes any case too
        address = "0x" + "".join(c.upper() if rng.random() < 0.3 else c for c in raw)
        # amounts of every size: wei dust, whole tokens, full uint256
        amount = rng.choice(
            [rng.randrange(1000), rng.randrange(10**24), rng.randrange(UINT256_LIMIT)]
        )
        entries[address] = amount
    return list(entries.items())


@pytest.mark.parametrize(
    ("seed", "n"), [(11, 1), (12, 2), (13, 3), (14, 7), (15, 100), (16, 1000), (17, 1000)]
)
def test_random_trees_match_oz(oz: str, seed: int, n: int) -> None:
    assert_same_as_oz(oz, random_entries(seed, n))


FIXED_CASES: dict[str, list[tuple[str, int]]] = {
    "extreme_values": [
        ("0x" + "00" * 20, 0),
        ("0x" + "ff" * 20, UINT256_LIMIT - 1),
        ("0x" + "00" * 19 + "01", 1),
        ("0x" + "FF" * 19 + "Fe", 2**255),
    ],
    "checksummed": [
        ("0x52908400098527886E0F7030069857D2E4169EE7", 10**18),
        ("0x8617E340B3D01FA5F11F306F4090FD50E238070D", 2 * 10**18),
        ("0xde709f2102306220921060314715629080e2fb77", 3 * 10**18),
        ("0x27b1fdb04752bbc536007a920d24acb045561c26", 4 * 10**18),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", 5 * 10**18),
    ],
    "same_amounts": [("0x" + f"{i:040x}", 7) for i in range(1, 6)],
    "power_of_two": [("0x" + f"{i * 0x1111:040x}", i) for i in range(1, 17)],
    "one_past_power_of_two": [("0x" + f"{i * 0x1111:040x}", i) for i in range(1, 18)],
}


@pytest.mark.parametrize("case", sorted(FIXED_CASES))
def test_fixed_trees_match_oz(oz: str, case: str) -> None:
    assert_same_as_oz(oz, FIXED_CASES[case])
