"""Gateway logging: one `key=value` line per event, to stderr.

    log.warning("rejected", extra=kv(node="node-01", reason="version", offset=1))

reads

    ts=2025-11-21T08:00:00.123Z level=WARNING logger=meterlink.gateway event=rejected \
node=node-01 reason=version offset=1

Values with spaces, quotes, `=` or control characters are JSON-quoted, so a line always parses
back with a logfmt reader; a traceback becomes one quoted `exc=` field, never extra lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any, TextIO

LOGGER_ROOT = "meterlink"
_FIELDS = "meterlink_fields"
_PLAIN_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_-.:/+@,()[]{}'*#%")


def kv(**fields: Any) -> dict[str, Any]:
    """`extra=` argument carrying the fields of one log event."""
    return {_FIELDS: fields}


def format_value(value: Any) -> str:
    """A value as it appears after `key=`: bare when safe, else JSON-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and all(ch in _PLAIN_SAFE for ch in text):
        return text
    return json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """Formats records as `ts=... level=... logger=... event=... k=v ...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname}",
                 f"logger={record.name}", f"event={format_value(record.getMessage())}"]
        for key, value in getattr(record, _FIELDS, {}).items():
            parts.append(f"{key}={format_value(value)}")
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            parts.append(f"exc={format_value(text)}")
        return " ".join(parts)


def configure_logging(level: str, *, stream: TextIO | None = None) -> logging.Logger:
    """Sends the `meterlink.*` loggers to `stream` (stderr) at `level`, one line per event.

    Calling it again replaces the handler it installed before.
    """
    root = logging.getLogger(LOGGER_ROOT)
    for handler in list(root.handlers):
        if isinstance(handler.formatter, KeyValueFormatter):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return root
