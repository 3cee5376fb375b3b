"""The service files under deploy/: a systemd unit per role, checked by ``systemd-analyze
verify`` where that binary exists, and a container recipe. Neither puts a secret on a
command line or in an environment value; both run the commands and config files this
release has."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnanet.cli import build_parser

DEPLOY = Path(__file__).parents[1] / "deploy"
ROLES = ("node", "mixer", "validator")
REQUIRED = {
    "node": ["--rpc", "r", "--deployment", "d", "--keystore", "k", "--data-dir", "s"],
    "mixer": ["--rpc", "r", "--deployment", "d", "--keystore", "k", "--data-dir", "s",
              "--validator", "v"],
    "validator": ["--deployment", "d", "--keystore", "k", "--data-dir", "s"],
}


def unit(role: str) -> str:
    return (DEPLOY / "systemd" / f"dnanet-{role}.service").read_text()


def directives(text: str, key: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line.split("=", 1)[1].strip() for line in joined.splitlines()
            if line.startswith(f"{key}=")]


@pytest.mark.parametrize("role", ROLES)
def test_each_unit_runs_its_role_from_its_config_with_the_password_as_a_credential(
        role: str) -> None:
    text = unit(role)
    (exec_start,) = directives(text, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[1:5] == [role, "run", "--config", f"/etc/dnanet/{role}/{role}.toml"]
    assert f"keystore-password:/etc/dnanet/{role}/keystore-password" in \
        directives(text, "LoadCredential")
    assert "DNANET_KEYSTORE_PASSWORD_FILE=%d/keystore-password" in directives(text, "Environment")
    assert directives(text, "User") == ["dnanet"] and directives(text, "UMask") == ["0077"]
    assert directives(text, "StateDirectory") == [f"dnanet/{role}"]
    # no secret value anywhere: only the names of files that hold them
    assert not re.search(r"PASSWORD=(?!.*FILE)|GATEWAY_KEYS=|--gateway-key\s", text)
    # the options the unit passes exist (the others come from the config file)
    args = build_parser().parse_args([*argv[1:], *REQUIRED[role]])
    assert args.config == f"/etc/dnanet/{role}/{role}.toml"


def test_the_mixer_unit_reads_its_gateway_keys_from_a_credential() -> None:
    text = unit("mixer")
    assert "gateway-keys:/etc/dnanet/mixer/gateway-keys" in directives(text, "LoadCredential")
    (exec_start,) = directives(text, "ExecStart")
    assert "--gateway-key-file %d/gateway-keys" in exec_start


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` with the unit's ExecStart pointed at this checkout's
    ``dnanet`` (it checks that the command exists): no error and no warning."""
    dnanet = Path(sys.executable).parent / "dnanet"
    assert dnanet.exists()
    paths = []
    for role in ROLES:
        path = tmp_path / f"dnanet-{role}.service"
        path.write_text(unit(role).replace("/opt/dnanet/.venv/bin/dnanet", str(dnanet)))
        paths.append(str(path))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths],
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_container_runs_as_a_user_and_takes_secrets_as_files() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    instructions = [line for line in text.replace("\\\n", " ").splitlines()
                    if line and not line.startswith("#")]
    assert instructions[-2:] == ['ENTRYPOINT ["dnanet"]', 'CMD ["--help"]']
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = " ".join(line for line in instructions if line.startswith("ENV "))
    assert "DNANET_KEYSTORE_PASSWORD_FILE=/run/secrets/keystore-password" in env
    assert not re.search(r"DNANET_KEYSTORE_PASSWORD=|DNANET_GATEWAY_KEYS=", env)
    assert "STOPSIGNAL SIGTERM" in instructions
    # the example in its header runs a command and a config file this release has
    example = next(line for line in text.splitlines() if "node run --config" in line)
    assert "dnanet node run --config /etc/dnanet/node/node.toml" in example
    assert "mode=0400" in text  # a secret file only its owner reads, as dnanet requires
