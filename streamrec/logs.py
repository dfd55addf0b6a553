"""Logging for every streamrec program: plain text for people, or one JSON object per line for machines.

Request and event ids travel in a context variable (``bind``), so every log line written while a
request or an event is handled carries them without each call passing them along. Fields given as
``extra={...}`` become JSON fields too.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

FORMATS = ("text", "json")
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "streamrec_log", default=None
)
# attributes every LogRecord has; whatever else a record carries came from ``extra``
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def bind(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add fields (request_id, event_id) to every log line of this context until ``unbind``."""
    return _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})


def unbind(token: contextvars.Token[dict[str, Any] | None]) -> None:
    """Restore the fields bound before the ``bind`` call that returned ``token``."""
    _CONTEXT.reset(token)


def context() -> dict[str, Any]:
    """A copy of the fields bound in this context (empty outside any)."""
    return dict(_CONTEXT.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record, so both formatters can show them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Copy the bound fields onto ``record`` (never over its own); always keeps the record."""
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the bound ids, extra fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one compact JSON object (a line of its own)."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, with the bound ids appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The text line, then the bound request and event ids as ``[key=value …]``."""
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("request_id", "event_id") if hasattr(record, k)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def formatter(fmt: str) -> logging.Formatter:
    """The log formatter for ``fmt`` ('json' or 'text'); raises ValueError for any other name."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: str = "text") -> None:
    """Send every logger's records to stderr in ``fmt`` at ``level`` (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def dict_config(level: str, fmt: str, own: tuple[str, ...] = ()) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for programs that configure logging themselves (gunicorn's
    ``logconfig_dict``, Faust's ``logging_config``), so their lines come out in the same format.
    Loggers in ``own`` get the handler directly (those programs stop them from propagating)."""
    handler = {"level": level.upper(), "handlers": ["stderr"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"streamrec": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "streamrec",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": handler,
        "loggers": {name: {**handler, "propagate": False} for name in own},
    }
