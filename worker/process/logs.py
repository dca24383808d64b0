"""Logging for worker processes. Job ids, model names and messages come from other writers:
every line is escaped so that no value can forge a log line (a newline, a terminal escape, a
bidirectional-text override).

Quiet by default: at LOG_LEVEL=INFO a worker logs its start, failures, dead letters, paused
queues and opened circuits, not one line per job (those are at DEBUG). LOG_FORMAT=json writes
one JSON object a line (`ts`, `level`, `logger`, `message`, and `exc` with a traceback) for a
log pipeline; JSON escapes every control character itself.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from ..contract.settings import Settings

# Control characters (tab aside), DEL, line and paragraph separators and bidi overrides/isolates.
_UNSAFE = [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}


class EscapeUnsafe(logging.Filter):
    """Escapes the formatted message of every record (not the traceback a handler appends)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = message.translate(_ESCAPES)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ts (UTC, ISO 8601), level, logger, message, exc (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def setup(settings: Settings | None = None) -> None:
    """A worker process's logging: LOG_LEVEL (default INFO) and LOG_FORMAT (`text`: one escaped
    line per record; `json`), from `settings` or else the environment."""
    level = settings.log_level if settings else os.environ.get("LOG_LEVEL", "INFO")
    json_lines = (settings.log_format if settings else os.environ.get("LOG_FORMAT", "text")) == "json"
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")
    if json_lines:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    guard()


def guard() -> None:
    """Escape every record that reaches a handler configured so far (ours, or arq's own CLI's)."""
    for name in (None, "arq"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, EscapeUnsafe) for f in handler.filters):
                handler.addFilter(EscapeUnsafe())
