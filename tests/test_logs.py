"""Logging set-up of every command: DNANET_LOG (level) and DNANET_LOG_FORMAT (text or json)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest

from dnanet.errors import ConfigError
from dnanet.service.logs import QUIET_LOGGERS, close_role_log, configure_logging, open_role_log


def bare_root(monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    """The root logger without pytest's handlers (configure_logging leaves a configured root
    alone; pytest adds its own as each test starts); handlers and level restored after."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    return root


def test_json_lines_carry_time_level_logger_message_extra_fields_and_the_exception(
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = bare_root(monkeypatch)
    monkeypatch.setenv("DNANET_LOG_FORMAT", "json")
    monkeypatch.setenv("DNANET_LOG", "debug")
    out = io.StringIO()
    configure_logging("WARNING", stream=out)
    assert root.level == logging.DEBUG
    log = logging.getLogger("dnanet.test")
    log.info("epoch %d settled", 7, extra={"epoch": 7, "tx": b"\x01"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed: %s", "héllo")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert {k: first[k] for k in ("level", "logger", "message", "epoch", "tx")} == {
        "level": "INFO", "logger": "dnanet.test", "message": "epoch 7 settled", "epoch": 7,
        "tx": "b'\\x01'"}
    assert "exc" not in first and "args" not in first and "msg" not in first
    assert second["level"] == "ERROR" and second["message"] == "failed: héllo"
    assert second["exc"].startswith("Traceback") and "ValueError: boom" in second["exc"]


def test_text_is_the_default_at_the_commands_level(monkeypatch: pytest.MonkeyPatch) -> None:
    bare_root(monkeypatch)
    monkeypatch.delenv("DNANET_LOG_FORMAT", raising=False)
    monkeypatch.delenv("DNANET_LOG", raising=False)
    out = io.StringIO()
    configure_logging("WARNING", stream=out)
    logging.getLogger("dnanet.test").info("not shown")
    logging.getLogger("dnanet.test").warning("shown %s", 1)
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" WARNING dnanet.test: shown 1")


@pytest.mark.parametrize(("variable", "value"), [
    ("DNANET_LOG", "loud"), ("DNANET_LOG", "10"), ("DNANET_LOG_FORMAT", "xml")])
def test_a_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                          value: str) -> None:
    root = bare_root(monkeypatch)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}="):
        configure_logging("INFO", stream=io.StringIO())
    assert root.handlers == []


def keep_levels(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logger.level)


def test_httpx_does_not_log_each_request_unless_debugging(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    bare_root(monkeypatch)
    keep_levels(monkeypatch, *QUIET_LOGGERS)
    monkeypatch.setenv("DNANET_LOG", "INFO")
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:1/v1/batches 200")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("httpx").warning("a warning still shows")
    logging.getLogger("dnanet.mixer").info("round 3/7: 12 challenges")
    assert [line.split(" ", 3)[3] for line in out.getvalue().splitlines()] == [
        "httpx: a warning still shows", "dnanet.mixer: round 3/7: 12 challenges"]
    # DEBUG is for seeing everything, the HTTP calls too.
    bare_root(monkeypatch)
    monkeypatch.setenv("DNANET_LOG", "DEBUG")
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1:1/health 200")
    assert "HTTP Request" in out.getvalue()


class Talker:
    """A daemon that logs from its start, from a task it starts and from a worker thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = logging.getLogger(f"dnanet.{name}")
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.log.info("%s starts", self.name)
        await asyncio.to_thread(self.log.info, "%s works in a thread", self.name)
        self.task = asyncio.create_task(self._later())
        await self.task
        logging.getLogger("httpx").info("HTTP Request: GET http://x/ 200")

    async def _later(self) -> None:
        self.log.warning("%s warns from its task", self.name)

    async def stop(self) -> None:
        self.log.info("%s stops", self.name)


def test_each_role_of_one_process_writes_its_own_info_log_and_the_terminal_stays_quiet(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dnanet.devnet import DaemonThread, role_log_path

    bare_root(monkeypatch)
    keep_levels(monkeypatch, *QUIET_LOGGERS)
    monkeypatch.delenv("DNANET_LOG", raising=False)
    monkeypatch.delenv("DNANET_LOG_FORMAT", raising=False)
    terminal = io.StringIO()
    configure_logging("WARNING", stream=terminal)
    own = open_role_log(None, tmp_path / "devnet.log")

    async def body() -> None:
        threads = [DaemonThread(Talker(role), f"{role}-thread", role_log_path(tmp_path / role),
                                role=role) for role in ("validator", "mixer-1a2b3c4d")]
        for thread in threads:
            await thread.start()
        logging.getLogger("dnanet.devnet").info("epoch 0 settled")
        for thread in threads:
            await thread.stop()

    try:
        asyncio.run(body())
    finally:
        close_role_log(own)

    def messages(path: Path) -> list[str]:
        return [line.split(": ", 1)[1] for line in path.read_text().splitlines()]

    for role in ("validator", "mixer-1a2b3c4d"):
        assert messages(tmp_path / role / f"{role}.log") == [
            f"{role} starts", f"{role} works in a thread", f"{role} warns from its task",
            f"{role} stops"]
    assert messages(tmp_path / "devnet.log") == ["epoch 0 settled"]
    # The terminal: warnings only, whoever logged them.
    assert sorted(messages_of(terminal)) == ["mixer-1a2b3c4d warns from its task",
                                             "validator warns from its task"]
    assert logging.getLogger().handlers == terminal_handlers(terminal)


def messages_of(stream: io.StringIO) -> list[str]:
    return [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]


def terminal_handlers(stream: io.StringIO) -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and h.stream is stream]
