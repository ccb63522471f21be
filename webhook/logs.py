"""Structured logs: one JSON object per line, on stderr.

Admission logs are on the hot path, so they bypass the logging module's
record machinery and are written as one pre-serialised line. Request bodies
are never logged: they carry whatever the pod's creator put in them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec


_encode = msgspec.json.Encoder(enc_hook=str).encode


def _stream() -> TextIO:
    return sys.stderr


def event(kind: str, /, level: str = "info", **fields: Any) -> None:
    """Write one structured line; never raises (a log failure must not fail an admission)."""
    record = {"ts": round(time.time(), 3), "level": level, "event": kind, **fields}
    try:
        _stream().write(_encode(record).decode() + "\n")
    except (OSError, ValueError, TypeError, msgspec.EncodeError):
        pass


class JSONFormatter(logging.Formatter):
    """Everything else (uvicorn, the TLS reloader, the controller) in the same shape."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return _encode(payload).decode()


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
