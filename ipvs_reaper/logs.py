"""Log lines a person can read at 3 am, or a log pipeline can parse: time, level, logger, message.

Quiet by default: the libraries underneath (kopf, urllib3, aiohttp) log at INFO for every watch event and
retry, which on a large cluster buries the lines that matter; they are shown from WARNING unless the level
asked for is DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# Library loggers and the level they start at: kopf logs every handled watch event at INFO, urllib3 every
# retry of a request at WARNING (our own loops retry and say so once per outage).
_NOISY = {
    "kopf": "WARNING",
    "aiohttp": "WARNING",
    "asyncio": "WARNING",
    "kubernetes": "WARNING",
    "urllib3": "ERROR",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a message that is itself a JSON object (a deletion record) is merged in,
    so the record's fields are fields of the line and not a string inside it."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        message = record.getMessage()
        fields = _json_object(message)
        if fields is not None:
            line.update({key: value for key, value in fields.items() if key not in line})
        else:
            line["message"] = message
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, sort_keys=False)


def _json_object(message: str) -> dict[str, object] | None:
    if not message.startswith("{"):
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def configure_logging(level: str, form: str, *, plain: bool = False) -> None:
    """`plain`: the message alone (scan and reap print to a person's terminal, which has its own clock)."""
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    elif plain:
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        text = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        text.converter = time.gmtime
        handler.setFormatter(text)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in _NOISY.items():
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else quiet)
