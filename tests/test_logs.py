"""Logging set-up of every command: DNANET_LOG (level) and DNANET_LOG_FORMAT (text or json)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from dnanet.errors import ConfigError
from dnanet.service.logs import configure_logging


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
