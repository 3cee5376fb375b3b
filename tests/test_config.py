"""A TOML file per role (``--config FILE``): its keys are the role's long options, read as the
flags' own text is; a flag overrides a key; a bad key or value is refused naming the file,
the key and what is wrong; ``<role> config init`` writes a file every command accepts."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dnanet.cli import _parse, build_parser, main
from dnanet.errors import ConfigError
from dnanet.params import WEI_PER_DNA

RUN = ["node", "run"]


def parse(argv: list[str]) -> argparse.Namespace:
    return _parse(build_parser(), argv)


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


NODE = """
rpc = "http://127.0.0.1:8545"
deployment = "deployment.json"
keystore = "/etc/dnanet/node.json"
data-dir = "state"
port = 0
stake = 150.5
device = "cpu"
backend = ["trivial"]
"""


def test_a_file_gives_the_options_and_relative_paths_are_read_from_its_directory(
        tmp_path: Path) -> None:
    config = write(tmp_path, NODE)
    args = parse([*RUN, "--config", str(config)])
    assert args.rpc == "http://127.0.0.1:8545"
    assert args.deployment == str(tmp_path / "deployment.json")
    assert args.keystore == "/etc/dnanet/node.json"
    assert args.data_dir == str(tmp_path / "state")
    assert (args.port, args.device, args.backend) == (0, "cpu", ["trivial"])
    assert args.stake == 150_500_000_000_000_000_000  # read as the flag reads it: exact wei
    assert args.host == "127.0.0.1"  # not in the file: the option's default


def test_flags_override_the_file_and_a_repeated_flag_replaces_its_list(tmp_path: Path) -> None:
    config = write(tmp_path, NODE)
    args = parse([*RUN, "--config", str(config), "--rpc", "http://rpc.example",
                  "--backend", "minilm", "--stake", "100", "--data-dir", "elsewhere"])
    assert (args.rpc, args.backend, args.stake) == ("http://rpc.example", ["minilm"],
                                                     100 * WEI_PER_DNA)
    assert args.data_dir == "elsewhere"  # a flag's relative path is the caller's
    args = parse([*RUN, f"--config={config}"])
    assert args.backend == ["trivial"]


def test_underscores_read_as_dashes_and_flags_take_true_or_false(tmp_path: Path) -> None:
    config = write(tmp_path, """
rpc = "r"
deployment = "d"
keystore = "k"
data_dir = "m"
validator = "http://v"
no_gateway = true
canary-rate = 0.25
""", "mixer.toml")
    args = parse(["mixer", "run", "--config", str(config)])
    assert args.no_gateway is True and args.canary_rate == 0.25
    config.write_text(config.read_text().replace("no_gateway = true", "no_gateway = false"))
    assert parse(["mixer", "run", "--config", str(config)]).no_gateway is False


def test_one_file_serves_every_command_of_the_role(tmp_path: Path) -> None:
    """node claim and node status read the same node.toml: the keys node run has and they
    lack (port, backend, ...) are left to it."""
    config = write(tmp_path, NODE + 'validator = "http://validator:8700"\n')
    claim = parse(["node", "claim", "--config", str(config)])
    assert (claim.validator, claim.rpc) == ("http://validator:8700", "http://127.0.0.1:8545")
    assert not hasattr(claim, "port")
    status = parse(["node", "status", "--config", str(config)])  # the keystore names it
    assert status.keystore == "/etc/dnanet/node.json" and status.address is None


@pytest.mark.parametrize(("text", "message"), [
    ('rpc = "r"\nprot = 8701\n', "unknown key 'prot' (the keys of `dnanet node` commands: "),
    ('port = 70000\n', "port: a port is 0 to 65535, got 70000"),
    ('port = "eighty"\n', "port: not a whole number: 'eighty'"),
    ('stake = -5\n', "stake: must be a positive amount of DNA, got -5"),
    ('device = "tpu"\n', "device: 'tpu' is not one of auto, cpu, cuda"),
    ('port = true\n', "port: expected a string or a number, got true"),
    ('backend = [1.5]\n', "backend: '1.5' is not one of minilm, llm, trivial, none"),
    ('rpc = ["a", "b"]\n', "rpc: expected a string or a number, got [\"a\", \"b\"]"),
    ('[node]\nrpc = "r"\n', "[node] is a table; the file is flat (key = value)"),
    ('rpc = "r\n', "not a TOML file: "),
    ('config = "other.toml"\n', "unknown key 'config'"),
])
def test_a_bad_key_or_value_is_refused_naming_the_file_and_the_key(
        tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse([*RUN, "--config", str(config)])
    assert str(info.value).startswith(f"{config}: ")
    assert message in str(info.value)


def test_a_flag_of_a_role_is_a_boolean_in_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'no-gateway = "yes"\n', "mixer.toml")
    with pytest.raises(ConfigError, match="no-gateway: expected true or false, got \"yes\""):
        parse(["mixer", "run", "--config", str(config)])


def test_a_missing_or_huge_file_is_named(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*RUN, "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot read the configuration file" in capsys.readouterr().err
    huge = write(tmp_path, "# " + "x" * 300_000 + "\n")
    with pytest.raises(ConfigError, match="a configuration file holds at most 262144"):
        parse([*RUN, "--config", str(huge)])


def test_a_required_option_still_missing_is_argparses_usual_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, 'rpc = "r"\n')
    with pytest.raises(SystemExit):
        parse([*RUN, "--config", str(config)])
    assert "the following arguments are required: --deployment, --keystore, --data-dir" in \
        capsys.readouterr().err


@pytest.mark.parametrize("role", ["node", "mixer", "validator"])
def test_config_init_writes_a_commented_file_that_the_role_accepts(
        role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"{role}.toml"
    assert main([role, "config", "init", "--out", str(out)]) == 0
    text = out.read_text()
    table: dict[str, Any] = tomllib.loads(text)
    assert "# ---- read by" in text and f"`dnanet {role} run --config FILE`" in text
    assert {"rpc", "deployment", "keystore", "data-dir"} <= set(table) | {"rpc"}
    args = parse([role, "run", "--config", str(out)])
    assert args.data_dir == f"/var/lib/dnanet/{role}"
    assert args.keystore == f"/etc/dnanet/{role}/keystore.json"
    # every commented key is a valid one too: uncomment them all
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line else line
                            for line in text.splitlines())
    assert len(tomllib.loads(uncommented)) > len(table)
    write(tmp_path, uncommented, "all.toml")
    parse([role, "run", "--config", str(tmp_path / "all.toml")])
    assert main([role, "config", "init", "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main([role, "config", "init", "--out", str(out), "--force"]) == 0


def test_config_init_prints_without_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "config", "init"]) == 0
    out = capsys.readouterr().out
    assert 'keystore = "/etc/dnanet/node/keystore.json"' in out
    assert "# port = 8701" in out and "# validator = " in out
    tomllib.loads(out)
