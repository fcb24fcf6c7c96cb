"""Structured logging: one JSON object per line on stderr, through the stdlib ``logging`` module.

Fields passed with ``extra={...}`` become top-level keys, so a log line can carry the topic, partition,
offset or listing id it is about and be filtered by them.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "configure_json_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, extras, and exc on exceptions."""

    def __init__(self, static_fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static_fields = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static_fields,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def configure_json_logging(
    level: int | str = logging.INFO,
    *,
    stream: TextIO | None = None,
    static_fields: dict[str, Any] | None = None,
) -> logging.Handler:
    """Route the root logger to JSON lines on ``stream`` (stderr by default), replacing its handlers.

    ``static_fields`` (e.g. ``{"worker_id": ...}``) are added to every line. Returns the handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(static_fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler
