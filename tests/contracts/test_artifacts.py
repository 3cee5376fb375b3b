"""The checked-in artifacts are what the sources compile to, and they load and deploy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import boa
import pytest
from eth_abi import encode

from dnanet.chain import artifacts
from dnanet.chain.artifacts import (
    CONTRACT_NAMES,
    REGENERATE_HINT,
    Artifact,
    compile_all,
    load_all,
    load_artifact,
    render,
    write_all,
)
from dnanet.errors import ChainError, ConfigError


@pytest.fixture(scope="module")
def fresh() -> dict[str, Artifact]:
    return compile_all()


@pytest.mark.slow
def test_checked_in_artifacts_are_not_stale(fresh: dict[str, Artifact]) -> None:
    for name, compiled in fresh.items():
        current = load_artifact(name)
        for part in ("abi", "bytecode", "runtime_bytecode"):
            assert getattr(current, part) == getattr(compiled, part), (
                f"artifacts/{name}.json is stale ({part} differs from a fresh compilation of "
                f"contracts/{name}.vy); regenerate with `{REGENERATE_HINT}`"
            )


@pytest.mark.slow
def test_written_files_are_byte_identical(fresh, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(artifacts, "compile_all", lambda: fresh)
    paths = write_all(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.json" for n in CONTRACT_NAMES)
    for path in paths:
        assert path.read_text() == (artifacts.ARTIFACTS_DIR / path.name).read_text(), (
            f"{path.name} is stale; regenerate with `{REGENERATE_HINT}`"
        )


@pytest.mark.slow
def test_check_command_reports_stale_artifacts(fresh, monkeypatch, capsys) -> None:
    monkeypatch.setattr(artifacts, "compile_all", lambda: fresh)
    assert artifacts.main(["--check"]) == 0
    changed = dict(fresh)
    changed["MixerSet"] = dataclasses.replace(fresh["MixerSet"], bytecode=b"\x00")
    monkeypatch.setattr(artifacts, "compile_all", lambda: changed)
    assert artifacts.stale_artifacts() == ["MixerSet"]
    assert artifacts.main(["--check"]) == 1
    assert REGENERATE_HINT in capsys.readouterr().err


def test_artifacts_load_with_their_public_functions() -> None:
    loaded = load_all()
    assert list(loaded) == list(CONTRACT_NAMES)
    functions = {
        name: {item["name"] for item in a.abi if item["type"] == "function"}
        for name, a in loaded.items()
    }
    assert {"transfer", "transferFrom", "approve", "mint", "burn", "set_minter"} <= functions["DNAToken"]
    assert {"add_mixer", "remove_mixer", "members", "is_member", "threshold", "member_count",
            "mixer_info", "current_epoch", "verify_quorum"} <= functions["MixerSet"]
    assert {"register", "top_up", "unbond", "withdraw", "punish", "unjail", "is_active",
            "node_info", "node_count", "node_at"} <= functions["NodeRegistry"]
    assert {"submit_epoch", "claim", "claimed", "merkle_root", "emission"} <= functions[
        "RewardsDistributor"
    ]
    for a in loaded.values():
        assert a.bytecode and a.runtime_bytecode


def test_artifact_bytecode_deploys() -> None:
    token = load_artifact("DNAToken")
    holder = "0x" + "ab" * 20
    args = encode(["address", "uint256"], [holder, 12345])
    with boa.env.anchor():
        address, _ = boa.env.deploy_code(bytecode=token.bytecode + args)
        contract = boa.loads_abi(json.dumps(token.abi), name="DNAToken").at(address)
        assert contract.balanceOf(holder) == 12345
        assert contract.symbol() == "DNA"


def test_unknown_contract_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown contract"):
        load_artifact("Nope")


def test_malformed_artifact_is_rejected(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path)
    with pytest.raises(ChainError, match="cannot read artifact"):
        load_artifact("DNAToken")
    (tmp_path / "DNAToken.json").write_text("{not json")
    with pytest.raises(ChainError, match="cannot read artifact"):
        load_artifact("DNAToken")
    (tmp_path / "DNAToken.json").write_text(json.dumps({"contractName": "DNAToken", "abi": []}))
    with pytest.raises(ChainError, match="malformed artifact"):
        load_artifact("DNAToken")
    good = render(Artifact("DNAToken", [], b"\x01", b"\x02"))
    (tmp_path / "DNAToken.json").write_text(good.replace('"0x01"', '"01"'))
    with pytest.raises(ChainError, match="malformed artifact"):
        load_artifact("DNAToken")
    (tmp_path / "DNAToken.json").write_text(good)
    assert load_artifact("DNAToken") == Artifact("DNAToken", [], b"\x01", b"\x02")
