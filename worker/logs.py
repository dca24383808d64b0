"""Logging for worker processes. Job ids, model names and messages come from other writers:
every line is escaped so that no value can forge a log line (a newline, a terminal escape, a
bidirectional-text override)."""

from __future__ import annotations

import logging
import os

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


def setup() -> None:
    """A worker process's logging: LOG_LEVEL (default INFO), one escaped line per record."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    guard()


def guard() -> None:
    """Escape every record that reaches a handler configured so far (ours, or arq's own CLI's)."""
    for name in (None, "arq"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, EscapeUnsafe) for f in handler.filters):
                handler.addFilter(EscapeUnsafe())
