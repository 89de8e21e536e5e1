"""Logs an operator can use: every line about a message says which message, route and participant.

A worker thread handles one message at a time; ``message_context`` puts its id (and
route, once known) in a context variable for as long as the handler runs, and
``annotate`` adds what the handler learns (the participant). A filter on the handler
copies them into every record, so a line logged deep inside the delivery code, or by
a library, is tied to its message without each call passing it along.

``ZL_LOG_FORMAT=json`` writes one JSON object per line (time, level, process, logger,
message, and message_id, route, participant when known) for a log collector; the
default text format appends the same fields in brackets. Messages themselves are
masked where they are made (``gateway.masking``): a log line never carries patient data.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("message_id", "route", "participant")
#: Libraries that write whole SOAP messages at DEBUG (zeep the bodies it posts and receives, spyne the
#: requests it reads): held at INFO whatever ``ZL_LOG_LEVEL`` says, since those bodies carry patient data.
BODY_LOGGERS = ("zeep", "spyne")
_context: ContextVar[dict[str, str] | None] = ContextVar("zl_log_context", default=None)


@contextmanager
def message_context(message_id: object, route: object = None, participant: object = None) -> Iterator[None]:
    """While the block runs, every log line of this thread names this message (and route, participant)."""
    fields = {k: str(v) for k, v in zip(FIELDS, (message_id, route, participant)) if v}
    token = _context.set(fields)
    try:
        yield
    finally:
        _context.reset(token)


def annotate(**fields: object) -> None:
    """Add what a handler learned (``participant=…``, ``route=…``) to the current message's log context."""
    current = _context.get()
    if current is not None:
        current.update({k: str(v) for k, v in fields.items() if k in FIELDS and v})


def about(message_id: object, route: object = None, participant: object = None) -> dict[str, Any]:
    """``extra=`` for one line about a message logged outside any message context (the sweeper's)."""
    return {"zl": {k: str(v) for k, v in zip(FIELDS, (message_id, route, participant)) if v}}


class ContextFilter(logging.Filter):
    """Copies the message context (and a line's own ``extra=about(…)``) into ``record.zl``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.zl = {**(_context.get() or {}), **(getattr(record, "zl", None) or {})}
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "process": self.process_name, "pid": record.process,
            "logger": record.name, "message": record.getMessage(), **getattr(record, "zl", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "zl", None)
        if not fields:
            return text
        first, newline, rest = text.partition("\n")
        return first + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" + newline + rest


def configure(process_name: str, level: str = "INFO") -> None:
    """The root logger's one handler: JSON lines with ``ZL_LOG_FORMAT=json``, else text; both carry the context."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if os.environ.get("ZL_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter(process_name))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s {process_name}[%(process)d] %(levelname)s %(name)s: "
                                           "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in BODY_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.INFO))
