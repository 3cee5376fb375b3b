"""Logging for every dnanet command: text for a terminal, or one JSON object per line.

``DNANET_LOG`` sets the level (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``; each command has its
default) and ``DNANET_LOG_FORMAT`` the format: ``text`` (default) or ``json``, for a log
collector. A JSON line holds ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
``message``, ``exc`` when an exception is logged, and any field passed with ``extra=``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from dnanet.errors import ConfigError

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")

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


def configure_logging(default_level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Set up the root logger from ``DNANET_LOG`` and ``DNANET_LOG_FORMAT``; raises
    ConfigError naming the variable when either holds something else."""
    level = os.environ.get("DNANET_LOG", default_level).strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"DNANET_LOG={level!r}: use one of {', '.join(LEVELS)}")
    kind = os.environ.get("DNANET_LOG_FORMAT", "text").strip().lower()
    if kind not in FORMATS:
        raise ConfigError(f"DNANET_LOG_FORMAT={kind!r}: use text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where handlers are set


__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "configure_logging"]
