"""Logging for every dnanet command: text for a terminal, or one JSON object per line.

``DNANET_LOG`` sets the level (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``; each command has its
default) and ``DNANET_LOG_FORMAT`` the format: ``text`` (default) or ``json``, for a log
collector. A JSON line holds ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, ``exc`` when an exception is logged, and any field passed with ``extra=``.

httpx and httpcore log every HTTP call at INFO; their loggers are kept at WARNING (unless
``DNANET_LOG=DEBUG``), so a daemon's INFO log tells what it did, not each request it sent.

Several roles in one process (the embedded devnet) each get their own log file: a role runs
its coroutines ``in_role`` (a context variable, inherited by the tasks and threads they start)
and ``open_role_log`` writes that role's records, and only those, to its file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Coroutine
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from dnanet.errors import ConfigError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
QUIET_LOGGERS = ("httpx", "httpcore")
"""Libraries that log each HTTP call at INFO: kept at WARNING unless DNANET_LOG=DEBUG."""
ROLE: ContextVar[str | None] = ContextVar("dnanet.role", default=None)
"""The role (``validator``, ``mixer-1a2b3c4d``...) whose work the current context does."""
T = TypeVar("T")

# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _settings(default_level: str) -> tuple[str, str]:
    level = os.environ.get("DNANET_LOG", default_level).strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"DNANET_LOG={level!r}: use one of {', '.join(LEVELS)}")
    kind = os.environ.get("DNANET_LOG_FORMAT", "text").strip().lower()
    if kind not in FORMATS:
        raise ConfigError(f"DNANET_LOG_FORMAT={kind!r}: use text or json")
    return level, kind


def _formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(default_level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Set up the root logger from ``DNANET_LOG`` and ``DNANET_LOG_FORMAT``; raises
    ConfigError naming the variable when either holds something else."""
    level, kind = _settings(default_level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_formatter(kind))
    handler.setLevel(level)  # role logs may lower the root logger's level, not this one's
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where handlers are set
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


class RoleFilter(logging.Filter):
    """Passes the records logged in ``role``'s context (``role`` None: in no role's)."""

    def __init__(self, role: str | None) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        return ROLE.get() == self.role


async def in_role(role: str, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` as ``role``: its records, and those of the tasks and ``to_thread``
    workers it starts, go to ``role``'s log."""
    ROLE.set(role)
    return await coro


def open_role_log(role: str | None, path: Path, level: str = "INFO") -> logging.Handler:
    """Write the records of ``role`` (None: of no role) at ``level`` and above to ``path``
    (appended, in ``DNANET_LOG_FORMAT``), beside the terminal's handler and at its own level.
    Returns the handler: pass it to ``close_role_log`` when the role stops."""
    _, kind = _settings(level)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_formatter(kind))
    handler.setLevel(level)
    handler.addFilter(RoleFilter(role))
    root = logging.getLogger()
    if root.getEffectiveLevel() > handler.level:
        root.setLevel(handler.level)
    for name in QUIET_LOGGERS:
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
    root.addHandler(handler)
    return handler


def close_role_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


__all__ = [
    "FORMATS",
    "LEVELS",
    "QUIET_LOGGERS",
    "ROLE",
    "JsonFormatter",
    "RoleFilter",
    "close_role_log",
    "configure_logging",
    "in_role",
    "open_role_log",
]
