"""Log set-up for the serving commands: human-readable lines, or one JSON object per line.

``--log-format json`` (or ``log_format: json`` in the config file) is for log pipelines that parse
JSON (Loki, Elasticsearch, Cloud Logging): each record becomes ``{"time", "level", "logger",
"message"}`` (plus ``exception``, the traceback, when one is logged), so nothing has to be parsed
out of free text. The messages are the same as in the text format, and the same rule holds for
both: the product never logs a personal value (samples are redacted and fingerprinted upstream of
any log call), and request lines — which carry paths and query strings — are never logged.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys

import orjson

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``time`` is ISO 8601 in UTC with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
                      .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        # default=str: a stray non-JSON argument never breaks logging itself
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger on stderr (replacing earlier handlers: called once per command)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    logging.captureWarnings(True)          # library warnings in the same format, not as stray stderr text
    logging.getLogger("aiohttp.access").disabled = True      # request lines carry paths; never logged
