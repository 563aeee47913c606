"""Logging set-up for `anchor worker`: readable lines by default, one JSON object per line with
``--log-format json``.

The worker logs through the standard ``logging`` module (loggers under ``anchor_py``), one line per
transition; the task fields travel as ``extra`` attributes (task_id, task_name, attempt, outcome,
duration_ms, ...), so the JSON format carries them as keys while the text format keeps them in the
message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has: anything else on a record came in through `extra`.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send anchor_py's logs (and the root logger's) to ``stream`` (stderr) in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # psycopg's pool logs every reconnect attempt at INFO; our own lines already say what happened
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
