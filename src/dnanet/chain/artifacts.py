"""Compiled contracts: load the checked-in artifacts, or compile the Vyper sources afresh.

Each contract ``contracts/<Name>.vy`` has an artifact ``artifacts/<Name>.json`` holding its ABI,
its deployment bytecode and its runtime bytecode, compiled with the pinned Vyper version. The
artifacts are what the chain client deploys; a test compiles the sources again and fails when
they differ. Regenerate them after editing a contract with::

    python -m dnanet.chain.artifacts --write

Compiler settings (EVM version, optimization) are pragmas in the sources themselves, so any
tool that compiles them (titanoboa in the tests, ``vyper`` on the command line) agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnanet.errors import ChainError, ConfigError

VYPER_VERSION = "0.4.3"
CONTRACT_NAMES = ("DNAToken", "MixerSet", "NodeRegistry", "RewardsDistributor")
"""Every deployable contract, in deployment order."""

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
REGENERATE_HINT = "python -m dnanet.chain.artifacts --write"


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    """Deployment (init) code; append the ABI-encoded constructor arguments to deploy."""
    runtime_bytecode: bytes
    """Code the chain stores at the contract's address (immutables not yet filled in)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "contractName": self.name,
            "compiler": f"vyper-{VYPER_VERSION}",
            "abi": self.abi,
            "bytecode": "0x" + self.bytecode.hex(),
            "deployedBytecode": "0x" + self.runtime_bytecode.hex(),
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str) -> Artifact:
        """Parse an artifact file's content; raises ChainError naming what is wrong."""
        try:
            name = data["contractName"]
            abi = data["abi"]
            bytecode = _hex_bytes(data["bytecode"])
            runtime = _hex_bytes(data["deployedBytecode"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"malformed artifact {source}: {exc!r}; regenerate with "
                             f"`{REGENERATE_HINT}`") from None
        if not isinstance(name, str) or not isinstance(abi, list):
            raise ChainError(f"malformed artifact {source}: bad contractName or abi")
        return cls(name=name, abi=abi, bytecode=bytecode, runtime_bytecode=runtime)


def _hex_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"expected a 0x-prefixed hex string, got {value!r}")
    return bytes.fromhex(value[2:])


def _check_name(name: str) -> None:
    if name not in CONTRACT_NAMES:
        raise ConfigError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")


def load_artifact(name: str) -> Artifact:
    """The checked-in artifact of contract ``name`` (one of CONTRACT_NAMES)."""
    _check_name(name)
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ChainError(f"cannot read artifact {path}: {exc}; regenerate with "
                         f"`{REGENERATE_HINT}`") from None
    return Artifact.from_json(data, source=str(path))


def load_all() -> dict[str, Artifact]:
    """Every checked-in artifact, by contract name."""
    return {name: load_artifact(name) for name in CONTRACT_NAMES}


def compile_contract(name: str) -> Artifact:
    """Compile ``contracts/<name>.vy`` with the installed Vyper (which must be VYPER_VERSION).

    Sources are loaded by their path relative to the contracts folder, so the output does not
    depend on where the checkout lives.
    """
    _check_name(name)
    try:
        import vyper
        from vyper.compiler import compile_from_file_input
        from vyper.compiler.input_bundle import FilesystemInputBundle
    except ImportError:
        raise ConfigError("compiling contracts needs the `vyper` package "
                          f"(pip install vyper=={VYPER_VERSION})") from None
    installed = str(vyper.__version__).split("+")[0]
    if installed != VYPER_VERSION:
        raise ConfigError(f"contracts are compiled with vyper {VYPER_VERSION}, "
                          f"found {vyper.__version__}")
    bundle = FilesystemInputBundle([CONTRACTS_DIR])
    file_input = bundle.load_file(Path(f"{name}.vy"))
    out = compile_from_file_input(
        file_input,
        input_bundle=bundle,
        output_formats=["abi", "bytecode", "bytecode_runtime"],
    )
    return Artifact(
        name=name,
        abi=out["abi"],
        bytecode=_hex_bytes(out["bytecode"]),
        runtime_bytecode=_hex_bytes(out["bytecode_runtime"]),
    )


def compile_all() -> dict[str, Artifact]:
    """Compile every contract afresh, by contract name."""
    return {name: compile_contract(name) for name in CONTRACT_NAMES}


def render(artifact: Artifact) -> str:
    """The exact text of an artifact file (stable key order, trailing newline)."""
    return json.dumps(artifact.to_json(), indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = ARTIFACTS_DIR) -> list[Path]:
    """Compile every contract and write its artifact into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in compile_all().items():
        path = directory / f"{name}.json"
        path.write_text(render(artifact))
        written.append(path)
    return written


def stale_artifacts() -> list[str]:
    """Names of contracts whose checked-in artifact differs from a fresh compilation."""
    stale = []
    for name, fresh in compile_all().items():
        try:
            current = load_artifact(name)
        except ChainError:
            stale.append(name)
            continue
        if (current.abi, current.bytecode, current.runtime_bytecode) != (
            fresh.abi,
            fresh.bytecode,
            fresh.runtime_bytecode,
        ):
            stale.append(name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnanet.chain.artifacts [--write | --check]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dnanet.chain.artifacts",
        description="Compile dnanet's Vyper contracts and write or check their artifacts.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate artifacts/*.json")
    group.add_argument("--check", action="store_true", help="exit 1 if any artifact is stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_all():
            print(f"wrote {path}")
        return 0
    stale = stale_artifacts()
    if stale:
        print(f"stale artifacts: {', '.join(stale)}; regenerate with `{REGENERATE_HINT}`",
              file=sys.stderr)
        return 1
    print("artifacts are up to date")
    return 0


__all__ = [
    "ARTIFACTS_DIR",
    "CONTRACTS_DIR",
    "CONTRACT_NAMES",
    "VYPER_VERSION",
    "Artifact",
    "compile_all",
    "compile_contract",
    "load_all",
    "load_artifact",
    "stale_artifacts",
    "write_all",
]

if __name__ == "__main__":
    sys.exit(main())
