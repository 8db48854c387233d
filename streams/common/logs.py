"""Logging setup shared by every dlabel process: plain text or one JSON object per line.

``dlabel --log-format json ...`` (or ``DLABEL_LOG_FORMAT=json``) makes every line a JSON
object with ``ts`` (UTC, ISO-8601), ``level``, ``logger`` and ``message`` (plus ``exc``
for a traceback), so that log pipelines can parse them. Child processes (the dataset
sink, retraining jobs) inherit the choice through the environment variable.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone

LOG_FORMAT_ENV = "DLABEL_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, tz=timezone.utc)
               .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: int | str, fmt: str | None = None) -> None:
    """Configure the root logger (``fmt``: "text" or "json"; default from the env)."""
    fmt = (fmt or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r} is not text or json")
    os.environ[LOG_FORMAT_ENV] = fmt  # children log the same way
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
