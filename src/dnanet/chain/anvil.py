"""Run anvil (Foundry's local EVM node) from the npm package ``@foundry-rs/anvil``.

The npm package ships no binary itself: npm installs the prebuilt one from the optional
dependency that matches the platform (``@foundry-rs/anvil-linux-amd64`` and so on), at
``node_modules/@foundry-rs/anvil-<os>-<arch>/bin/anvil``; ``node_modules/.bin/anvil`` is a
node wrapper around it. Both work offline once ``npm ci`` has run. `find_anvil` prefers the
binary (signals reach it directly) and falls back to the wrapper.

`start_anvil` launches it on a free loopback port, waits until it answers JSON-RPC, and
returns an `AnvilProcess` that stops it on `stop()`, on leaving a ``with`` block, or when the
interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from dnanet.errors import ChainError, ConfigError
from dnanet.ports import free_port

ANVIL_PACKAGE = "@foundry-rs/anvil"
DEFAULT_CHAIN_ID = 31337
_OS = {"linux": "linux", "darwin": "darwin", "win32": "win32"}
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def platform_package() -> str | None:
    """The npm package holding anvil's binary for this machine, or None if unsupported."""
    osname = _OS.get(sys.platform)
    arch = _ARCH.get(platform.machine().lower())
    if osname is None or arch is None:
        return None
    return f"{ANVIL_PACKAGE}-{osname}-{arch}"


def find_anvil(npm_dir: str | os.PathLike[str]) -> Path:
    """The anvil executable that ``npm ci`` installed under ``npm_dir``.

    Raises ConfigError saying what is missing (no install, unsupported platform, no binary).
    """
    modules = Path(npm_dir) / "node_modules"
    if not (modules / ANVIL_PACKAGE / "package.json").is_file():
        raise ConfigError(
            f"{ANVIL_PACKAGE} is not installed in {npm_dir}: run `npm ci` there first"
        )
    exe = "anvil.exe" if sys.platform == "win32" else "anvil"
    package = platform_package()
    if package is not None:
        binary = modules / package / "bin" / exe
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    wrapper = modules / ".bin" / "anvil"
    if wrapper.exists() and shutil.which("node"):
        return wrapper
    raise ConfigError(
        f"{ANVIL_PACKAGE} is installed in {npm_dir} but ships no binary for this platform "
        f"({sys.platform}/{platform.machine()}; expected the optional package {package})"
    )


def rpc_chain_id(url: str, timeout_s: float = 2.0) -> int:
    """``eth_chainId`` at ``url`` over plain HTTP; raises OSError/ValueError if no answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        reply = json.loads(response.read())
    return int(reply["result"], 16)


@dataclass
class AnvilProcess:
    """A running anvil: its URL, chain id and process. Stop it with `stop()`."""

    url: str
    port: int
    chain_id: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate anvil (kill it if it lingers); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_anvil(
    binary: str | os.PathLike[str],
    *,
    chain_id: int = DEFAULT_CHAIN_ID,
    extra_args: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> AnvilProcess:
    """Launch anvil on a free 127.0.0.1 port and wait until it answers ``eth_chainId``.

    Raises ChainError with anvil's own output if it exits or stays silent past ``timeout_s``.
    """
    last_error = ""
    for _ in range(3):  # another process may grab the port between probe and bind
        port = free_port()
        fd, log_name = tempfile.mkstemp(prefix="dnanet-anvil-", suffix=".log")
        log_path = Path(log_name)
        args = [os.fspath(binary), "--host", "127.0.0.1", "--port", str(port),
                "--chain-id", str(chain_id), *extra_args]
        with os.fdopen(fd, "wb") as log:
            try:
                process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            except OSError as exc:
                log_path.unlink(missing_ok=True)
                raise ChainError(f"cannot start anvil ({binary}): {exc}") from None
        anvil = AnvilProcess(f"http://127.0.0.1:{port}", port, chain_id, process, log_path)
        atexit.register(anvil.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                if rpc_chain_id(anvil.url, timeout_s=1.0) == chain_id:
                    return anvil
            except (OSError, ValueError, KeyError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        last_error = anvil.log_tail()
        exited = process.poll()
        anvil.stop()
        if exited is None:
            raise ChainError(
                f"anvil did not answer on {anvil.url} within {timeout_s:g} s; its output:\n"
                f"{last_error}"
            )
    raise ChainError(f"anvil exited at start-up; its output:\n{last_error}")


__all__ = [
    "ANVIL_PACKAGE",
    "DEFAULT_CHAIN_ID",
    "AnvilProcess",
    "find_anvil",
    "free_port",
    "platform_package",
    "rpc_chain_id",
    "start_anvil",
]


NPM_TEMPLATE = Path(__file__).parent / "npm"


def anvil_cache_dir() -> Path:
    """Where ``ensure_anvil`` installs the pinned npm package (per lock file contents)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    lock = (NPM_TEMPLATE / "package-lock.json").read_bytes()
    import hashlib

    return base / "dnanet" / f"anvil-{hashlib.sha256(lock).hexdigest()[:12]}"


def ensure_anvil() -> Path:
    """The anvil binary, installing the pinned ``@foundry-rs/anvil`` with ``npm ci`` on first
    use (a lock file serializes concurrent installers). Raises ConfigError without npm."""
    import fcntl

    target = anvil_cache_dir()
    with contextlib.suppress(ConfigError):
        return find_anvil(target)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise ConfigError("--chain anvil needs node and npm on PATH (npm installs anvil)")
    target.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(ConfigError):
            return find_anvil(target)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NPM_TEMPLATE / name, target / name)
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target,
            capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise ConfigError(f"npm ci for anvil failed in {target}:\n{result.stderr[-2000:]}")
        return find_anvil(target)
