"""Secrets hygiene (issue 14): keystores are written mode 0600, an empty keystore password is
refused unless ``--empty-password`` says it is meant, a password file others may read is
refused, and the devnet hands its roles the gateway key and the keystore password through
their environment, never their command lines (which every user sees in ``ps``)."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from dnanet.chain.backends import connect_embedded, fund
from dnanet.cli import main
from dnanet.crypto.keys import Identity
from dnanet.devnet import KEYSTORE_PASSWORD, ProcessDevnet
from dnanet.errors import KeystoreError
from dnanet.keyfiles import PASSWORD_ENV, PASSWORD_FILE_ENV, load_identity, read_password
from dnanet.params import TEST


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_password(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    return monkeypatch


def test_a_new_keystore_is_mode_0600_and_reads_back(tmp_path: Path,
                                                     no_password: pytest.MonkeyPatch) -> None:
    no_password.setenv(PASSWORD_ENV, "correct horse")
    no_password.setattr("os.umask", lambda mask: 0)  # even a permissive umask
    out = tmp_path / "node.json"
    assert main(["keys", "new", "--out", str(out)]) == 0
    assert mode(out) == 0o600
    address = json.loads(out.read_text())["address"]
    assert load_identity(out).address == "0x" + address.lower().removeprefix("0x")


def test_an_empty_password_is_refused_unless_meant(tmp_path: Path,
                                                   no_password: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    no_password.setenv(PASSWORD_ENV, "")
    out = tmp_path / "empty.json"
    assert main(["keys", "new", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert ("the keystore password from $DNANET_KEYSTORE_PASSWORD is empty, which leaves the "
            "key unprotected: set one, or pass --empty-password if that is meant") in err
    assert not out.exists()
    assert main(["keys", "new", "--out", str(out), "--empty-password"]) == 0
    assert load_identity(out, "").address  # meant: written, and it opens with ""


def test_importing_a_key_refuses_an_empty_password_too(tmp_path: Path,
                                                       no_password: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    import io

    no_password.setenv(PASSWORD_ENV, "")
    no_password.setattr("sys.stdin", io.StringIO("11" * 32 + "\n"))
    assert main(["keys", "import", "--out", str(tmp_path / "k.json")]) == 2
    assert "--empty-password" in capsys.readouterr().err


def test_a_password_file_must_be_private(tmp_path: Path,
                                         no_password: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("from a file\nsecond line ignored\n")
    secret.chmod(0o640)
    no_password.setenv(PASSWORD_FILE_ENV, str(secret))
    with pytest.raises(KeystoreError, match=r"may be read by other users \(mode 0640\): "
                                            r"chmod 600"):
        read_password()
    secret.chmod(0o400)
    assert read_password() == "from a file"
    secret.write_text("\n")
    secret.chmod(0o600)
    assert read_password() == ""  # reading an existing keystore: whatever it was made with
    with pytest.raises(KeystoreError, match="is empty"):
        read_password(allow_empty=False)
    no_password.setenv(PASSWORD_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(KeystoreError, match=r"password file .*missing does not exist"):
        read_password()


def test_without_a_password_source_or_terminal_the_error_names_both_variables(
        no_password: pytest.MonkeyPatch) -> None:
    import io

    no_password.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(KeystoreError, match=f"set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}"):
        read_password()


def test_keys_show_prints_one_field_for_scripts(tmp_path: Path,
                                                no_password: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    no_password.setenv(PASSWORD_ENV, "pw")
    out = tmp_path / "mixer.json"
    assert main(["keys", "new", "--out", str(out)]) == 0
    made = json.loads(capsys.readouterr().out)
    assert main(["keys", "show", str(out), "--field", "address"]) == 0
    assert capsys.readouterr().out == made["address"] + "\n"
    assert main(["keys", "show", str(out), "--vrf", "--field", "vrf_public_key"]) == 0
    assert capsys.readouterr().out == made["vrf_public_key"] + "\n"
    assert main(["keys", "show", str(out), "--field", "vrf_public_key"]) == 2
    assert "needs --vrf" in capsys.readouterr().err


class _Stop(Exception):
    """Ends the recording devnet's set-up once every role was (not) started."""


class RecordingDevnet(ProcessDevnet):
    """``ProcessDevnet``'s set-up on the embedded chain, recording each role's command line
    and environment instead of starting it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(chain="embedded-test", **kwargs)
        self.spawned: list[tuple[str, list[str], dict[str, str]]] = []

    def _connect_chain(self) -> None:
        self._w3 = connect_embedded().w3
        self.rpc_url = "http://127.0.0.1:9"
        self.deployer = Identity.from_entropy(b"\x05" * 32)
        fund(self._w3, self.deployer.address, 10**21)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.spawned.append((name, args, env))
        self.processes.append((name, None))

    async def _wait_healthy(self, name: str, url: str, timeout_s: float = 60) -> None:
        if name != "validator":  # every mixer and node has been spawned by now
            raise _Stop


def test_the_process_devnet_keeps_secrets_off_command_lines_and_keystores_private(
        tmp_path: Path, no_password: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    devnet = RecordingDevnet(nodes=2, mixers=2, preset=TEST, data_dir=tmp_path,
                             out=lines.append, backend="trivial")

    async def main() -> None:
        try:
            with pytest.raises(_Stop):
                await devnet.setup()
        finally:
            await devnet.http.aclose()

    asyncio.run(main())
    names = [name for name, _, _ in devnet.spawned]
    assert names[0] == "validator" and len(names) == 1 + 2 + 2
    for name, argv, env in devnet.spawned:
        assert devnet.api_key not in " ".join(argv), name
        assert KEYSTORE_PASSWORD not in " ".join(argv), name
        assert "--gateway-key" not in argv
        assert env["DNANET_KEYSTORE_PASSWORD"] == KEYSTORE_PASSWORD
        assert env["DNANET_GATEWAY_KEYS"] == devnet.api_key
    keys = tmp_path / "keys"
    assert mode(keys) == 0o700
    stores = sorted(keys.iterdir())
    assert len(stores) == 1 + 2 + 2 and {mode(p) for p in stores} == {0o600}
    assert any(f"devnet: keystores in {keys} (mode 0600), password 'dnanet-devnet'" in line
               for line in lines)
