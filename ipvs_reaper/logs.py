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
# The `extra` key under which a record carries structured fields (a deletion record) for JSON logs.
FIELDS = "fields"
FORMATS = ("text", "json")
# Library loggers and the level they start at: kopf logs every handled watch event at INFO, urllib3 every
# retry of a request at WARNING (our own loops retry and say so once per outage).
_NOISY = {
    "kopf": "WARNING",
    "aiohttp": "WARNING",
    "asyncio": "WARNING",
    "kubernetes": "WARNING",
    "urllib3": "ERROR",
    # kopf's client logs every failed request at ERROR; the agent's loops say so once per outage.
    "ipvs_reaper.cluster.requests": "CRITICAL",
    # kopf's discovery of the API's resources (GET /api, /apis), which it runs whatever it serves and retries
    # for ever through an outage, two ERROR lines with a long repr per attempt. The agent watches nothing
    # through kopf, so the discovery serves it nothing; its own loops say the outage once.
    "kopf._core.reactor.observation": "CRITICAL",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a record's structured fields (a deletion record's) are fields of the line,
    not a string inside it."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            line.update({key: value for key, value in fields.items() if key not in line})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, sort_keys=False)


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
    quiet_libraries(level)


def quiet_libraries(level: str) -> None:
    """The libraries' loggers at their quiet levels, or all at DEBUG when debugging."""
    for name, quiet in _NOISY.items():
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else quiet)
